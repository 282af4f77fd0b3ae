"""One results store for every protocol: resume keys, per-unit results, training states, final reports.

Every protocol (one-class benchmark, few-shot, classification) computes
*units* — a (category, method, weights) pair, a (category, weights, K), a
(weights, mode) — that take minutes to hours each, and writes one report over
all of them. They share one folder layout::

    OUT/results.json   {"provenance": {...}, "results": [...]}
    OUT/results.csv    one row per result
    OUT/results.md     the Markdown report
    OUT/pairs/         <unit>.json (+ <unit><suffix> arrays): the resume state
                       <unit>.train.pt: the training state of an unfinished unit

A unit's JSON carries the ``key`` of the settings it was computed with
(:func:`run_key`). A rerun reuses a unit only when its key matches and its
files read back whole; a missing, damaged or mismatched file is recomputed,
never trusted. Everything is written atomically (:mod:`tabad.files`), the
arrays before the JSON, so a unit's JSON exists only once the unit is
complete: an interrupted run loses no finished work and never sees half of
one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tabad.files import atomic_write, atomic_write_json, atomic_write_text
from tabad.tables import csv_text

#: Hex digits of a key: 80 bits, plenty to tell settings apart, short enough to read in a JSON.
KEY_LENGTH = 20
#: Suffix of a unit's training state; the finished unit supersedes it.
CHECKPOINT_SUFFIX = ".train.pt"


def run_key(**settings: Any) -> str:
    """The resume key of a unit: the sha256 of its settings as sorted JSON, truncated to :data:`KEY_LENGTH`.

    ``settings`` must hold everything that changes the unit's numbers (data,
    weights hash, options, seed, package version…). Values JSON cannot write
    (paths, dataclass reprs) are hashed through ``str``. The text hashed is the
    one every protocol has hashed since its first release, so result folders
    written before this module existed still resume.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def save_npz(path: str | Path, **arrays) -> Path:
    """Compressed npz, written atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)


def load_npz(path: str | Path) -> dict | None:
    """Every array of an npz file, read into memory; None when the file is missing or damaged."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str]) -> Path:
    """:func:`tabad.tables.csv_text` of ``rows``, written atomically."""
    return atomic_write_text(path, csv_text(rows, columns))


@dataclass(frozen=True)
class ResultStore:
    """The output folder of one run: stored units under ``out/folder``, the report files under ``out``.

    ``resume=False`` ignores every stored unit (each is recomputed and
    overwritten), the state a ``--no-resume`` run asks for. ``checkpoints``
    names another folder for training states (the few-shot protocol keeps
    them under ``train/``); by default they sit next to the units.
    """

    out: Path
    resume: bool = True
    folder: str = "pairs"
    checkpoints: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))

    @property
    def units(self) -> Path:
        """The folder of the stored units."""
        return self.out / self.folder

    def path(self, name: str, suffix: str = ".json") -> Path:
        return self.units / f"{name}{suffix}"

    def load(self, name: str, key: str) -> dict | None:
        """The stored result of unit ``name`` if it was computed under ``key``; else None (recompute it)."""
        if not self.resume:
            return None
        try:
            row = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing or damaged: recomputed, never trusted
        return row if isinstance(row, dict) and row.get("key") == key else None

    def load_arrays(self, name: str, key: str, suffix: str = ".npz") -> dict | None:
        """The arrays stored with unit ``name``, only when its result is stored under ``key`` too.

        The arrays hold no key of their own: they belong to the JSON written
        after them, so they are trusted exactly when that JSON is.
        """
        if self.load(name, key) is None:
            return None
        return load_npz(self.path(name, suffix))

    def save(self, name: str, row: Mapping, arrays: Mapping | None = None, suffix: str = ".npz") -> Path:
        """Store unit ``name``: ``arrays`` (npz at ``<name><suffix>``) first, then ``row`` as ``<name>.json``.

        ``row`` must hold its ``key``: a result without one could never be
        reused. The JSON goes last, so it exists only for a complete unit.
        """
        if "key" not in row:
            raise ValueError(f"result {name!r} has no 'key'; it could never be resumed")
        if arrays is not None:
            save_npz(self.path(name, suffix), **arrays)
        return atomic_write_json(self.path(name), row)

    def checkpoint(self, name: str, suffix: str = CHECKPOINT_SUFFIX) -> Path:
        """Where the training state of unit ``name`` lives (its folder exists); a resumed run continues from it."""
        path = self._checkpoint_path(name, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def drop_checkpoint(self, name: str, suffix: str = CHECKPOINT_SUFFIX) -> None:
        """Delete a training state once its unit is stored: the result supersedes it."""
        self._checkpoint_path(name, suffix).unlink(missing_ok=True)

    def _checkpoint_path(self, name: str, suffix: str) -> Path:
        return (self.out / self.checkpoints if self.checkpoints else self.units) / f"{name}{suffix}"

    def write(self, results: Sequence[Mapping], provenance: Mapping, markdown: str,
              csv_columns: Sequence[str]) -> dict:
        """Write the run's report: ``results.json``, ``results.csv`` (``csv_columns``) and ``results.md``.

        Returns the ``results.json`` content, which every ``run_*`` function returns.
        """
        report = {"provenance": provenance, "results": results}
        atomic_write_json(self.out / "results.json", report)
        write_csv(self.out / "results.csv", results, csv_columns)
        atomic_write_text(self.out / "results.md", markdown)
        return report
