"""Decode a list of samples into compact in-memory tensors.

The evaluation sets of anomaly detection are small (hundreds of images), so
each split is decoded once and kept as uint8 (a 224 px image is 150 kB) and
normalised batch by batch. One decode serves every weights source and method
of a benchmark run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from tabad.datasets.images import load_image, load_mask
from tabad.datasets.sample import Sample
from tabad.datasets.transforms import Geometry, normalize, resize_crop_image, resize_crop_mask
from tabad.errors import DataError


@dataclass
class LoadedSplit:
    """Images (N, 3, H, W) uint8, masks (N, H, W) bool and labels (N,) of one split."""

    samples: list[Sample]
    images: "object"  # torch.Tensor uint8
    masks: "object"  # torch.Tensor bool
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int, device="cpu", *, normalise=True) -> "Batches":
        """Normalised float batches (B, 3, H, W) in order; re-iterable, with shuffled epochs.

        ``normalise`` is a method's ``normalisation`` (an object with ``mean``
        and ``std``), True for ImageNet statistics, or False / None for [0, 1]
        floats (RegAD's input, methods.md §4).
        """
        return Batches(self.images, batch_size, device, normalise)


@dataclass
class Batches:
    """Batches of a decoded split, for one-pass methods and for training loops alike.

    Iterating gives the images in order (what a training-free ``fit`` and
    every ``predict`` use); :meth:`epoch` gives a shuffled pass whose order
    depends only on ``(seed, epoch)``, so a resumed training run sees exactly
    the batches the uninterrupted run would have seen.
    """

    images: "object"  # torch.Tensor uint8 (N, 3, H, W), or float model inputs passed through as they are
    batch_size: int
    device: "object" = "cpu"
    #: True (ImageNet statistics), an object with ``mean`` and ``std``, or False / None ([0, 1] floats).
    normalise: "object" = True

    def __len__(self) -> int:  # batches per pass
        return -(-len(self.images) // self.batch_size)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def _convert(self, x):
        x = x.to(self.device)
        if x.is_floating_point():  # already model inputs (e.g. tabad fit's own resize and normalisation)
            return x
        if self.normalise is True:
            return normalize(x)
        if not self.normalise:
            return x.float().div_(255.0)
        return normalize(x, self.normalise.mean, self.normalise.std)

    def __iter__(self) -> Iterator["object"]:
        for i in range(0, len(self.images), self.batch_size):
            yield self._convert(self.images[i : i + self.batch_size])

    def epoch(self, epoch: int, seed: int = 0, drop_last: bool = False) -> Iterator["object"]:
        """One shuffled pass. ``drop_last`` drops a short final batch (BatchNorm in
        training mode cannot take a batch of one)."""
        import torch

        g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
        order = torch.randperm(len(self.images), generator=g)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            if drop_last and len(idx) < self.batch_size and len(order) > self.batch_size:
                break
            yield self._convert(self.images[idx])


def _load_one(sample: Sample, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    img = load_image(sample.image_path)
    arr = resize_crop_image(img, geometry)
    if sample.mask_path is not None:
        mask = load_mask(sample.mask_path)
        if mask.shape != (img.height, img.width):
            raise DataError(sample.mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                                              f"{sample.image_path} is {img.width}x{img.height}")
        m = resize_crop_mask(mask, geometry)
    else:
        m = np.zeros(arr.shape[:2], dtype=bool)
    return arr, m


def load_split(samples: Sequence[Sample], geometry: Geometry, workers: int = 2, progress: bool = False,
               desc: str = "loading") -> LoadedSplit:
    """Decode, resize and crop every sample (threads: PIL releases the GIL while decoding)."""
    import torch

    samples = list(samples)
    h, w = geometry.output_size
    images = torch.empty((len(samples), 3, h, w), dtype=torch.uint8)
    masks = torch.zeros((len(samples), h, w), dtype=torch.bool)
    from tabad.progress import progress as progress_bar

    bar = progress_bar(total=len(samples), desc=desc, unit="img", leave=False, disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (arr, m) in enumerate(pool.map(lambda s: _load_one(s, geometry), samples)):
            images[i] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            masks[i] = torch.from_numpy(np.ascontiguousarray(m))
            bar.update()
    bar.close()
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return LoadedSplit(samples, images, masks, labels)
