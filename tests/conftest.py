"""Shared fixtures: one tiny, deterministic MVTec-layout dataset for the whole session."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: What :func:`write_tiny_mvtec` writes, for tests that count samples.
TINY_CATEGORIES = {"tex": ("texture", "spot"), "obj": ("object", "square")}
TINY_SIZE = 64
TINY_N_TRAIN = 6
TINY_N_TEST_GOOD = 3
TINY_N_TEST_DEFECT = 3


def _normal_image(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A smooth, slightly noisy uint8 RGB image; objects get a dark disc in the middle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    base = 110.0 + 10.0 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    if kind == "object":
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.3 * size) ** 2
        base = np.where(disc, 60.0, base)
    img = base[..., None] + rng.normal(0.0, 4.0, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _defect(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bright square well inside the centre crop; returns its boolean mask."""
    side = size // 5
    top, left = (int(v) for v in rng.integers(size // 4, size - size // 4 - side, 2))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def write_tiny_mvtec(root: Path, size: int = TINY_SIZE, seed: int = 0) -> Path:
    """Write the tiny dataset under ``root`` (MVTec AD layout, plus a dataset.json of kinds)."""
    root = Path(root)
    for ci, (cat, (kind, defect)) in enumerate(TINY_CATEGORIES.items()):
        rng = np.random.default_rng([seed, ci])
        cat_dir = root / cat
        for split, folder, n in (("train", "good", TINY_N_TRAIN), ("test", "good", TINY_N_TEST_GOOD)):
            out = cat_dir / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_normal_image(rng, kind, size)).save(out / f"{i:03d}.png")
        img_dir, gt_dir = cat_dir / "test" / defect, cat_dir / "ground_truth" / defect
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(TINY_N_TEST_DEFECT):
            img = _normal_image(rng, kind, size)
            mask = _defect(rng, size)
            img[mask] = 250
            Image.fromarray(img).save(img_dir / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(gt_dir / f"{i:03d}_mask.png")
    meta = {"categories": {cat: {"kind": kind} for cat, (kind, _) in TINY_CATEGORIES.items()}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory) -> Path:
    """Root of a tiny MVTec-layout dataset: categories ``tex`` (texture, defect ``spot``)
    and ``obj`` (object, defect ``square``); 64x64 PNGs, 6 train/good, 3 test/good and
    3 anomalous test images with ``ground_truth/<defect>/<stem>_mask.png`` masks.
    The anomaly is a bright square on a smooth noisy background. Treat as read-only."""
    return write_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))


class FakeEncoder:
    """Deterministic sentence vectors (seeded by a hash of the sentence): fast and offline."""

    name, dim, identity = "fake", 16, "fake:v1"

    def encode(self, sentences):
        import torch

        out = []
        for s in sentences:
            seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(out), dim=1)


@pytest.fixture
def fake_text(monkeypatch):
    """Replace the text encoder of pre-training with :class:`FakeEncoder`."""
    import tabad.text.encoders as enc

    monkeypatch.setattr(enc, "get_text_encoder", lambda *a, **k: FakeEncoder())


def score_tiny_obj(method: str, backbone, root: Path, size: tuple[int, int] = (64, 56), overrides: dict | None = None):
    """Fit ``method`` (config ``overrides``) on the tiny ``obj`` category and score its test set:
    (test split, scores, maps)."""
    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry
    from tabad.methods import create_method

    cat = read_category(root, "obj")
    geometry = Geometry(*size)
    train, test = load_split(cat.train, geometry), load_split(cat.test, geometry)
    model = create_method(method, backbone, overrides).fit(train.batches(4))
    scores, maps = model.predict(next(iter(test.batches(32))))
    return test, scores.numpy(), maps
