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

from typing import Callable

import numpy as np

from tabad.anomalies.checks import as_pair, check_image, check_others, check_rng, resolve_options  # noqa: F401
from tabad.anomalies.cutpaste import CutPasteOptions, ScarOptions, cutpaste, cutpaste_scar
from tabad.anomalies.mask import MaskOptions, grid_mask
from tabad.anomalies.nsa import NSAOptions, nsa, nsa_with_label
from tabad.anomalies.perlin import PerlinOptions, perlin, perlin_noise

# --------------------------------------------------------------------------- registry

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
