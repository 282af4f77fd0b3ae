"""Synthetic-anomaly generators (methods.md §6).

TAB pre-trains its backbone on pairs of normal images and *synthetic*
anomalies made from them; NSA is the generator TAB uses (methods.md §6a,
tab_reference_code.md §2). The other generators are the alternatives TAB's
paper compares against (Table 6): CutPaste (§6b), DRAEM-style Perlin noise
with a texture (§6c) and RIAD-style grid masking (§6d).

Common interface
----------------
Every generator is a pure function::

    generator(image, others, rng, **options) -> (synthetic, mask)

* ``image``: ``np.ndarray`` ``uint8`` ``(H, W, 3)``, RGB; it is never modified.
* ``others``: a sequence of other *normal* images of the same class, each
  ``uint8 (H, W, 3)`` of the same size as ``image`` (a size mismatch raises
  ``ValueError``). NSA takes its source patch from one of them; CutPaste uses
  them only with ``from_others=True``; Perlin and mask ignore them. An empty
  sequence is allowed everywhere (NSA then falls back to ``image`` itself).
* ``rng``: a ``numpy.random.Generator``; it is the *only* source of
  randomness (the global numpy / python RNGs are never touched), so the same
  generator state always gives the same result. Anything else raises
  ``TypeError``.
* ``**options``: the fields of the generator's options dataclass
  (:data:`OPTIONS`), e.g. ``nsa(img, others, rng, mode="normal")``; a ready
  instance can be given as ``options=NSAOptions(...)`` (further keywords then
  override its fields). Unknown option names raise ``ValueError`` listing
  the valid ones.
* returns ``synthetic``: a new ``uint8 (H, W, 3)`` array, and ``mask``: a
  ``bool (H, W)`` array marking the anomalous pixels.

A generator may return an *empty* mask (and then the unchanged image) when
no anomaly could be made, e.g. NSA on a perfectly flat image where Poisson
blending changes nothing; the caller decides what to do with such a sample
(skip it, or train on it as normal).

Registry: :data:`GENERATORS` maps the canonical names to the functions,
:data:`ALIASES` maps alternative spellings to canonical names, and
:func:`get_generator` resolves either.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

# --------------------------------------------------------------------------- shared helpers
# Defined before the submodules are imported: they import these names.


def check_rng(rng: Any) -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``, else raise ``TypeError``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Validate a ``uint8 (H, W, 3)`` array; return it as a C-contiguous array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"{name} is too small: {image.shape}")
    return np.ascontiguousarray(image)


def check_others(others: Sequence[np.ndarray] | None, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Validate the other normal images: each ``uint8`` of exactly ``shape``."""
    if others is None:
        return []
    if isinstance(others, np.ndarray) and others.ndim == 3:
        raise TypeError("others must be a sequence of images, not a single image; wrap it in a list")
    checked = []
    for i, other in enumerate(others):
        other = check_image(other, f"others[{i}]")
        if other.shape != tuple(shape):
            raise ValueError(f"others[{i}] has shape {other.shape} but image has shape {tuple(shape)}; resize them first")
        checked.append(other)
    return checked


def resolve_options(cls: type, options: dict[str, Any]):
    """Build an options dataclass from keyword options (see the module docstring)."""
    options = dict(options)
    base = options.pop("options", None)
    if base is not None and not isinstance(base, cls):
        raise TypeError(f"options= must be a {cls.__name__}, got {type(base).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; valid options: {', '.join(valid)}")
    if base is None:
        return cls(**options)
    return dataclasses.replace(base, **options) if options else base


def as_pair(value: Any, name: str, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    """Validate an ordered ``(lo, hi)`` pair, optionally within ``[low, high]``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi), got {value!r}") from None
    if not lo <= hi or (low is not None and lo < low) or (high is not None and hi > high):
        bounds = f" within [{low}, {high}]" if low is not None or high is not None else ""
        raise ValueError(f"{name} must satisfy lo <= hi{bounds}, got {value!r}")
    return lo, hi


# --------------------------------------------------------------------------- registry

from tabad.anomalies.cutpaste import CutPasteOptions, ScarOptions, cutpaste, cutpaste_scar  # noqa: E402
from tabad.anomalies.mask import MaskOptions, grid_mask  # noqa: E402
from tabad.anomalies.nsa import NSAOptions, nsa, nsa_with_label  # noqa: E402
from tabad.anomalies.perlin import PerlinOptions, perlin, perlin_noise  # noqa: E402

Generator = Callable[..., "tuple[np.ndarray, np.ndarray]"]

#: Canonical generator names -> functions with the common interface.
GENERATORS: dict[str, Generator] = {
    "nsa": nsa,
    "cutpaste": cutpaste,
    "cutpaste-scar": cutpaste_scar,
    "perlin": perlin,
    "mask": grid_mask,
}

#: Canonical generator names -> their options dataclass.
OPTIONS: dict[str, type] = {
    "nsa": NSAOptions,
    "cutpaste": CutPasteOptions,
    "cutpaste-scar": ScarOptions,
    "perlin": PerlinOptions,
    "mask": MaskOptions,
}

#: Alternative names accepted by :func:`get_generator` -> canonical names.
ALIASES: dict[str, str] = {
    "natural-synthetic-anomalies": "nsa",
    "poisson": "nsa",
    "cutpaste-normal": "cutpaste",
    "scar": "cutpaste-scar",
    "cutpaste_scar": "cutpaste-scar",
    "draem": "perlin",
    "perlin-dtd": "perlin",
    "riad": "mask",
    "masking": "mask",
    "grid-mask": "mask",
}


def canonical_name(name: str) -> str:
    """Resolve a generator name or alias (case-insensitive); ``ValueError`` if unknown."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in GENERATORS:
        aliases = ", ".join(f"{a} -> {c}" for a, c in ALIASES.items())
        raise ValueError(
            f"unknown anomaly generator {name!r}; choose one of: {', '.join(GENERATORS)} (aliases: {aliases})"
        )
    return key


def get_generator(name: str) -> Generator:
    """The generator function registered under ``name`` (or one of its :data:`ALIASES`)."""
    return GENERATORS[canonical_name(name)]


__all__ = [
    "ALIASES",
    "GENERATORS",
    "OPTIONS",
    "CutPasteOptions",
    "MaskOptions",
    "NSAOptions",
    "PerlinOptions",
    "ScarOptions",
    "canonical_name",
    "cutpaste",
    "cutpaste_scar",
    "get_generator",
    "grid_mask",
    "nsa",
    "nsa_with_label",
    "perlin",
    "perlin_noise",
]
