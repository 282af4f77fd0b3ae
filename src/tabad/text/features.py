"""Per-class normal and abnormal text prototypes for TAB pre-training.

For class c and each state (normal, abnormal): every sentence of
:func:`~tabad.text.prompts.build_prompts` is encoded, each embedding is
L2-normalised, the embeddings are averaged, and the mean is L2-normalised again
(paper §3.2 "mean pooling"; supplementary Algorithm 1 ``norm``). The class
rows are stacked with ``torch.stack(rows, dim=0)``, so **row c belongs to
class c**. (The reference code stacked the class vectors along dim 1, giving
[D, C], and then called ``.reshape(C, D)``, which is not a transpose: its rows
mixed bands of dimensions from all classes. See specs/tab_reference_code.md §1.)

Results are cached on disk under ``<cache_dir>/text_features/<key>.pt``, where
the key is a sha256 over the encoder identity, the variant, the prompts hash
and the class names in order. ``cache_dir`` defaults to ``$TABAD_CACHE`` or
``~/.cache/tabad``. A cache file is checked (key, class names, shapes, finite
unit-norm rows) before it is used; a file that fails any check is ignored and
rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tabad.errors import TabadError
from tabad.text.prompts import build_prompts, prompts_hash as _prompts_hash

if TYPE_CHECKING:
    import torch

    from tabad.text.encoders import TextEncoder

#: Bumped when the cache file layout or the feature computation changes.
CACHE_FORMAT = 1


@dataclass(eq=False)
class TextFeatures:
    """Text prototypes: ``normal[c]`` and ``abnormal[c]`` belong to ``class_names[c]``."""

    normal: "torch.Tensor"  # (C, D) float32, unit-norm rows
    abnormal: "torch.Tensor"  # (C, D) float32, unit-norm rows
    class_names: list[str]
    encoder_identity: str
    variant: str
    prompts_hash: str
    n_normal_sentences: int  # per class
    n_abnormal_sentences: int  # per class
    cache_key: str = ""
    cache_path: str | None = field(default=None, compare=False)
    from_cache: bool = field(default=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.normal.shape[1])

    def provenance(self) -> dict:
        """A JSON-ready record of how these features were made."""
        return {
            "encoder": self.encoder_identity,
            "variant": self.variant,
            "prompts_sha256": self.prompts_hash,
            "class_names": list(self.class_names),
            "n_normal_sentences_per_class": self.n_normal_sentences,
            "n_abnormal_sentences_per_class": self.n_abnormal_sentences,
            "dim": self.dim,
            "cache_key": self.cache_key,
        }


def default_cache_dir() -> Path:
    """``$TABAD_CACHE`` if set, else ``~/.cache/tabad``."""
    env = os.environ.get("TABAD_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/tabad").expanduser()


def cache_key(encoder_identity: str, variant: str, prompts_sha256: str, class_names: Sequence[str]) -> str:
    """sha256 (hex) identifying one set of text features."""
    payload = {
        "format": CACHE_FORMAT,
        "encoder": encoder_identity,
        "variant": variant,
        "prompts": prompts_sha256,
        "classes": list(class_names),
    }
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _normalise(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.nn.functional.normalize(x.to(torch.float32), p=2, dim=-1)


def _prototype(embeddings: "torch.Tensor") -> "torch.Tensor":
    """Normalise each row, average, normalise the mean: (N, D) -> (D,)."""
    return _normalise(_normalise(embeddings).mean(dim=0))


def _encode_unique(encoder: "TextEncoder", sentences: list[str]) -> dict[str, "torch.Tensor"]:
    """Encode each distinct sentence once, in one call; returns sentence -> (D,) row."""
    import torch

    unique = list(dict.fromkeys(sentences))
    emb = encoder.encode(unique)
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(unique):
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise TabadError(
            f"text encoder {encoder.identity!r} returned {got} for {len(unique)} sentences; expected ({len(unique)}, D)"
        )
    if not torch.isfinite(emb).all():
        raise TabadError(f"text encoder {encoder.identity!r} returned non-finite embeddings")
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    return {s: emb[i] for i, s in enumerate(unique)}


def compute_text_features(encoder: "TextEncoder", class_names: Sequence[str], variant: str = "idpa") -> TextFeatures:
    """The features of :func:`class_text_features`, always computed (no cache)."""
    import torch

    names, prompts, phash = _prepare(class_names, variant)
    table = _encode_unique(encoder, [s for normal, abnormal in prompts for s in (*normal, *abnormal)])
    normal_rows, abnormal_rows = [], []
    for normal, abnormal in prompts:  # class order == names order
        normal_rows.append(_prototype(torch.stack([table[s] for s in normal], dim=0)))
        abnormal_rows.append(_prototype(torch.stack([table[s] for s in abnormal], dim=0)))
    return TextFeatures(
        normal=torch.stack(normal_rows, dim=0),  # (C, D): row c is class c
        abnormal=torch.stack(abnormal_rows, dim=0),
        class_names=names,
        encoder_identity=encoder.identity,
        variant=variant,
        prompts_hash=phash,
        n_normal_sentences=len(prompts[0][0]),
        n_abnormal_sentences=len(prompts[0][1]),
        cache_key=cache_key(encoder.identity, variant, phash, names),
    )


def _prepare(class_names: Sequence[str], variant: str) -> tuple[list[str], list[tuple[list[str], list[str]]], str]:
    if isinstance(class_names, str):
        raise TabadError("class_names must be a list of class names, not a single string")
    names = [str(n) for n in class_names]
    if not names:
        raise TabadError("class_names is empty: TAB needs at least one class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TabadError(f"duplicate class names {dupes}: each class needs its own text prototype")
    prompts = [build_prompts(n, variant) for n in names]
    return names, prompts, _prompts_hash(prompts)


def class_text_features(
    encoder: "TextEncoder",
    class_names: Sequence[str],
    variant: str = "idpa",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> TextFeatures:
    """Normal and abnormal text prototypes, one row per class, in ``class_names`` order.

    ``class_names`` are written into the prompts as given: pass readable names
    (:func:`~tabad.text.prompts.readable_class_name`). With ``use_cache`` the
    result is read from / written to ``<cache_dir>/text_features/<key>.pt``.
    """
    names, _, phash = _prepare(class_names, variant)
    key = cache_key(encoder.identity, variant, phash, names)
    if not use_cache:
        return compute_text_features(encoder, names, variant)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / "text_features" / f"{key}.pt"
    if path.exists():
        cached, problem = _read_cache(path, key, names, encoder.identity, variant, phash)
        if cached is not None:
            return cached
        warnings.warn(f"{path}: ignoring text-feature cache file ({problem}); recomputing", stacklevel=2)
    feats = compute_text_features(encoder, names, variant)
    _write_cache(path, feats)
    feats.cache_path = str(path)
    return feats


def _write_cache(path: Path, feats: TextFeatures) -> None:
    from tabad.files import atomic_write_torch

    obj = {
        "format": CACHE_FORMAT,
        "key": feats.cache_key,
        "normal": feats.normal.contiguous(),
        "abnormal": feats.abnormal.contiguous(),
        "class_names": list(feats.class_names),
        "encoder_identity": feats.encoder_identity,
        "variant": feats.variant,
        "prompts_hash": feats.prompts_hash,
        "n_normal_sentences": feats.n_normal_sentences,
        "n_abnormal_sentences": feats.n_abnormal_sentences,
    }
    try:
        atomic_write_torch(path, obj)
    except OSError as exc:  # read-only or full cache: the features are still good
        warnings.warn(f"{path}: cannot write text-feature cache ({exc})", stacklevel=3)


def _read_cache(
    path: Path, key: str, names: list[str], identity: str, variant: str, phash: str
) -> tuple[TextFeatures | None, str]:
    """(features, "") if the file is a valid cache for ``key``, else (None, why not)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, unpickling refused
        return None, f"unreadable: {exc.__class__.__name__}"
    if not isinstance(obj, dict):
        return None, f"expected a dict, got {type(obj).__name__}"
    expected = {
        "format": CACHE_FORMAT,
        "key": key,
        "class_names": names,
        "encoder_identity": identity,
        "variant": variant,
        "prompts_hash": phash,
    }
    for field_name, value in expected.items():
        if obj.get(field_name) != value:
            return None, f"{field_name} does not match"
    c = len(names)
    for part in ("normal", "abnormal"):
        t = obj.get(part)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim != 2 or t.shape[0] != c or t.shape[1] < 1:
            return None, f"{part} is not a float32 ({c}, D) tensor"
        if not torch.isfinite(t).all() or not torch.allclose(t.norm(dim=1), torch.ones(c), atol=1e-4):
            return None, f"{part} rows are not finite unit vectors"
    if obj["normal"].shape != obj["abnormal"].shape:
        return None, "normal and abnormal shapes differ"
    for count in ("n_normal_sentences", "n_abnormal_sentences"):
        if not isinstance(obj.get(count), int) or obj[count] < 1:
            return None, f"{count} missing"
    feats = TextFeatures(
        normal=obj["normal"],
        abnormal=obj["abnormal"],
        class_names=list(names),
        encoder_identity=identity,
        variant=variant,
        prompts_hash=phash,
        n_normal_sentences=obj["n_normal_sentences"],
        n_abnormal_sentences=obj["n_abnormal_sentences"],
        cache_key=key,
        cache_path=str(path),
        from_cache=True,
    )
    return feats, ""
