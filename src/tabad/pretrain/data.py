"""Pre-training data: normal images of every class and their synthetic anomalies.

The training images of all classes are decoded once (resize → centre crop,
uint8) and kept in memory. Item ``k`` of an epoch is addressed as
``epoch · N + i``: its randomness (synthetic anomaly, partner image) comes
from ``numpy.random.default_rng([seed, epoch, i])``, so the sample is the same
whichever worker makes it, and a resumed run sees exactly the batches an
uninterrupted one would.

:func:`monitor_split` sets aside the held-out normal images on which the
trainer measures, each epoch, how far the features moved from the initial
backbone's (:mod:`tabad.pretrain.cka`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from tabad.datasets.transforms import Geometry


@dataclass
class PretrainImages:
    """Decoded normal images (N, 3, H, W) uint8 with their class index."""

    class_folders: list[str]  # folder names, index = class id
    images: torch.Tensor
    labels: np.ndarray
    files: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def members(self) -> list[np.ndarray]:
        """Indices of each class's images."""
        return [np.flatnonzero(self.labels == c) for c in range(len(self.class_folders))]

    def subset(self, indices: Sequence[int]) -> "PretrainImages":
        """These images only (same classes and class indices)."""
        idx = np.asarray(indices, dtype=np.int64)
        return PretrainImages(list(self.class_folders), self.images[torch.from_numpy(idx)], self.labels[idx],
                              [self.files[i] for i in idx] if self.files else [], list(self.roots))


@dataclass
class MonitorSplit:
    """Which images train and which monitor the features (indices into the loaded images)."""

    train: np.ndarray
    monitor: np.ndarray
    #: True when the monitor images could not be held out and are training images too.
    monitor_trained_on: bool


def monitor_split(images: PretrainImages, fraction: float = 0.1, max_images: int = 64, seed: int = 0) -> MonitorSplit:
    """Hold out a seeded ``fraction`` of the images (at least 1, at most ``max_images``) for monitoring.

    Images are taken in a seeded random order, skipping any whose class would
    be left without a training image, so every class still trains. When that
    leaves fewer than 2 training images (or holds nothing out), the monitor
    images are taken from the training images instead and
    ``monitor_trained_on`` says so. ``fraction == 0``: no monitoring.
    """
    n = len(images)
    everything = np.arange(n)
    if fraction <= 0 or max_images <= 0:
        return MonitorSplit(everything, np.zeros(0, dtype=np.int64), False)
    k = int(min(max_images, max(1, round(fraction * n))))
    order = np.random.default_rng([seed, 0xC4A]).permutation(n)
    left = np.bincount(images.labels, minlength=len(images.class_folders))
    held: list[int] = []
    for i in order:
        if len(held) == k:
            break
        if left[images.labels[i]] >= 2:
            left[images.labels[i]] -= 1
            held.append(int(i))
    if not held or n - len(held) < 2:
        return MonitorSplit(everything, np.sort(order[:k]), True)
    monitor = np.sort(np.array(held, dtype=np.int64))
    return MonitorSplit(np.setdiff1d(everything, monitor), monitor, False)


def load_pretrain_images(roots: Sequence[str | Path], categories: Sequence[str] | None, geometry: Geometry,
                         layout: str = "auto", progress: bool = True) -> PretrainImages:
    """Normal training images of ``categories`` (default: all) of one or more dataset roots.

    A class is identified by its folder name; the same name in two roots is one class.
    """
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import list_categories, read_category
    from tabad.errors import TabadError

    per_class: dict[str, list] = {}
    for root in roots:
        cats = list_categories(root, layout)
        chosen = [c for c in cats if categories is None or c in categories]
        for c in chosen:
            data = read_category(root, c, layout=layout)
            per_class.setdefault(c, []).extend(data.train)
    if categories is not None:
        missing = sorted(set(categories) - set(per_class))
        if missing:
            raise TabadError(f"categories {missing} not found under {', '.join(map(str, roots))}")
    if not per_class:
        raise TabadError(f"no categories with training images under {', '.join(map(str, roots))}")
    names = sorted(per_class)
    samples = [s for n in names for s in per_class[n]]
    labels = np.array([names.index(s.category) for s in samples], dtype=np.int64)
    split = load_split(samples, geometry, progress=progress, desc="pre-training images")
    return PretrainImages(names, split.images, labels, [str(s.image_path) for s in samples],
                          [str(Path(r).resolve()) for r in roots])


class SyntheticPairs(torch.utils.data.Dataset):
    """(normal image, synthetic anomaly, class) triples, deterministic per (seed, epoch, index).

    ``generator`` is a name from :data:`tabad.anomalies.GENERATORS` or None
    (normal images only, for the normal-text-only ablation).
    """

    def __init__(self, images: PretrainImages, generator: str | None = "nsa", options: dict | None = None,
                 seed: int = 0):
        self.images = images
        self.generator_name = generator
        self.options = dict(options or {})
        self.seed = seed
        self._members = images.members()
        self._fn = None

    def __len__(self) -> int:
        return len(self.images)

    def _generator(self):
        if self._fn is None:
            from tabad.anomalies import get_generator

            self._fn = get_generator(self.generator_name)
        return self._fn

    def _hwc(self, i: int) -> np.ndarray:
        return self.images.images[i].permute(1, 2, 0).numpy()

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self))
        label = int(self.images.labels[i])
        normal = self.images.images[i]
        if self.generator_name is None:
            return normal, normal, label
        rng = np.random.default_rng([self.seed, epoch, i])
        peers = self._members[label]
        peers = peers[peers != i]
        # NSA takes its patch from another image of the same class (paper §3.1).
        partner = [self._hwc(int(rng.choice(peers)))] if len(peers) else []
        out, _mask = self._generator()(np.ascontiguousarray(self._hwc(i)), partner, rng, **self.options)
        abnormal = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return normal, abnormal, label


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch (classes mixed in every batch), sharded across DDP ranks.

    Yields keys ``epoch · N + i`` for :class:`SyntheticPairs`. Each rank takes
    every ``world``-th index of the padded permutation so all ranks run the
    same number of steps.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.rank, self.world = n, seed, epoch, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch, 0xBA7C]).permutation(self.n)
        pad = (-len(perm)) % self.world
        return np.concatenate([perm, perm[:pad]]) if pad else perm

    def __len__(self) -> int:
        return len(self.permutation()) // self.world

    def __iter__(self) -> Iterator[int]:
        return iter((self.epoch * self.n + self.permutation()[self.rank :: self.world]).tolist())
