"""Argument checks and option parsing shared by the synthetic-anomaly generators."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np


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
