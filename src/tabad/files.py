"""Atomic writes and file hashes.

A result file is either complete or absent: everything is written to a
temporary file in the destination folder and renamed over the target, which
is atomic on POSIX file systems.

Torch files go through :func:`atomic_write_torch`, so equal tensors give
byte-identical files (the sha256 recorded in provenance is a content hash).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; the bytes depend on ``obj`` only, not on ``path``.

    ``torch.save`` to a file names the zip archive inside after that file, here
    the random temporary name, so equal tensors would hash differently. Saved to
    memory the archive is always ``archive/``, and torch's zip writer adds no
    timestamps (entries are dated 1980) and a serialisation id hashed from the
    content.
    """
    import torch  # lazily: importing tabad (and ``tabad --help``) must not import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
