"""Tests of the procedural default dataset (tiny counts and sizes: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tabad.datasets import procedural as P
from tabad.errors import DataError

TINY = dict(n_train=2, n_test_good=1, n_test_per_defect=1, size=64, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("proc") / "ds"
    return out, P.make_dataset(out, seed=0, **TINY)


def test_category_lists():
    assert len(P.TEXTURES) >= 4 and len(P.OBJECTS) >= 4
    assert set(P.TEXTURES) | set(P.OBJECTS) == set(P.CATEGORIES)
    assert not set(P.TEXTURES) & set(P.OBJECTS)
    assert all(P.CATEGORIES[c] == "texture" for c in P.TEXTURES)
    assert all(P.CATEGORIES[c] == "object" for c in P.OBJECTS)
    assert set(P.DEFECTS) == set(P.CATEGORIES)
    for c, defects in P.DEFECTS.items():
        assert 2 <= len(defects) <= 4, c
        assert "good" not in defects


def test_layout_and_masks(tiny):
    out, summary = tiny
    assert not summary["reused"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["generator_version"] == P.GENERATOR_VERSION
    assert meta["parameters"]["seed"] == 0
    assert set(meta["categories"]) == set(P.CATEGORIES)
    n_total = 0
    for c, kind in P.CATEGORIES.items():
        assert meta["categories"][c]["kind"] == kind
        assert summary["categories"][c]["kind"] == kind
        root = out / c
        train = sorted((root / "train" / "good").glob("*.png"))
        assert [p.name for p in train] == ["000.png", "001.png"]
        assert sorted(p.name for p in (root / "test").iterdir()) == sorted(("good",) + P.DEFECTS[c])
        assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(P.DEFECTS[c])
        for p in train + sorted((root / "test" / "good").glob("*.png")):
            im = Image.open(p)
            assert im.mode == "RGB" and im.size == (64, 64)
            n_total += 1
        for d in P.DEFECTS[c]:
            imgs = sorted((root / "test" / d).glob("*.png"))
            assert len(imgs) == 1
            for p in imgs:
                im = Image.open(p)
                assert im.mode == "RGB" and im.size == (64, 64)
                m = Image.open(root / "ground_truth" / d / f"{p.stem}_mask.png")
                assert m.mode == "L" and m.size == im.size
                a = np.asarray(m)
                assert set(np.unique(a)) <= {0, 255}
                assert (a > 0).any(), f"{c}/{d}: empty mask"
                n_total += 1
    assert n_total == summary["n_images"] == meta["counts"]["images"]
    # good images never have masks
    assert not list(out.glob("*/ground_truth/good"))


@pytest.mark.parametrize("category", list(P.CATEGORIES))
def test_mask_is_exactly_the_changed_pixels(category):
    # The normal image rendered from the same seed is the base the defect was
    # painted on: outside the mask nothing may differ, inside (almost) every
    # pixel must (a rare sensor-noise clip at 0/255 may hide a change).
    for size in (64, 100):
        for d in P.DEFECTS[category]:
            for i in range(2):
                ss = P.image_seed(3, category, f"test/{d}", i)
                good, no_mask = P.render_sample(category, ss, None, size)
                bad, mask = P.render_sample(category, ss, d, size)
                assert no_mask is None
                assert good.shape == bad.shape == (size, size, 3) and good.dtype == np.uint8
                assert mask.shape == (size, size) and mask.dtype == np.uint8
                m = mask > 0
                assert m.any(), (category, d, size, i)
                changed = (good != bad).any(axis=2)
                assert not changed[~m].any(), (category, d, size, i)
                assert changed[m].mean() >= 0.99, (category, d, size, i)


def test_written_files_match_render_sample(tiny):
    out, _ = tiny
    ss = P.image_seed(0, "gear", "test/missing_part", 0)
    rgb, mask = P.render_sample("gear", ss, "missing_part", 64)
    assert np.array_equal(np.asarray(Image.open(out / "gear/test/missing_part/000.png")), rgb)
    assert np.array_equal(np.asarray(Image.open(out / "gear/ground_truth/missing_part/000_mask.png")), mask)
    rgb, _ = P.render_sample("wood", P.image_seed(0, "wood", "train", 1), None, 64)
    assert np.array_equal(np.asarray(Image.open(out / "wood/train/good/001.png")), rgb)


def test_deterministic_and_subset_independent(tiny, tmp_path):
    out, _ = tiny
    # same seed, different subset given in a different order
    sub = tmp_path / "sub"
    P.make_dataset(sub, seed=0, categories=["pcb", "fabric"], **TINY)
    assert sorted(p.name for p in sub.iterdir() if p.is_dir()) == ["fabric", "pcb"]
    for c in ("fabric", "pcb"):
        assert _files(sub / c) == _files(out / c)
    # same subset again: identical bytes, including dataset.json
    again = tmp_path / "again"
    P.make_dataset(again, seed=0, categories=["fabric", "pcb"], **TINY)
    assert _files(again) == _files(sub)
    # another seed: different images
    other = tmp_path / "other"
    P.make_dataset(other, seed=1, categories=["fabric", "pcb"], **TINY)
    a, b = _files(other), _files(sub)
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".png") and "ground_truth" not in name:
            assert a[name] != b[name], name


def test_image_seed_is_stable():
    a = P.image_seed(0, "bolt", "train", 0).generate_state(4)
    assert np.array_equal(a, P.image_seed(0, "bolt", "train", 0).generate_state(4))
    assert not np.array_equal(a, P.image_seed(0, "bolt", "train", 1).generate_state(4))
    assert not np.array_equal(a, P.image_seed(0, "bolt", "test/good", 0).generate_state(4))
    assert not np.array_equal(a, P.image_seed(0, "pill", "train", 0).generate_state(4))
    assert not np.array_equal(a, P.image_seed(2**40, "bolt", "train", 0).generate_state(4))
    with pytest.raises(ValueError):
        P.image_seed(-1, "bolt", "train", 0)


def test_reuse_mismatch_and_overwrite(tmp_path):
    out = tmp_path / "ds"
    kw = dict(TINY, categories=["pill"])
    first = P.make_dataset(out, seed=5, **kw)
    assert not first["reused"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = P.make_dataset(out, seed=5, **kw)
    assert second["reused"] and second["n_images"] == first["n_images"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(DataError, match="seed"):
        P.make_dataset(out, seed=6, **kw)
    with pytest.raises(DataError, match="difficulty"):
        P.make_dataset(out, seed=5, difficulty=2.0, **kw)
    third = P.make_dataset(out, seed=6, overwrite=True, **kw)
    assert not third["reused"]
    assert json.loads((out / "dataset.json").read_text())["parameters"]["seed"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporaries left


def test_refuses_foreign_folder(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an empty folder"):
        P.make_dataset(out, categories=["wood"], overwrite=True, **TINY)
    assert (out / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not P.make_dataset(empty, categories=["wood"], **TINY)["reused"]
    assert (empty / "dataset.json").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = P._write_one

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "_write_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        P.make_dataset(tmp_path / "ds", categories=["bolt", "gear"], **TINY)
    assert list(tmp_path.iterdir()) == []


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="size"):
        P.make_dataset(tmp_path / "a", **dict(TINY, size=32))
    with pytest.raises(ValueError, match="unknown categories"):
        P.make_dataset(tmp_path / "b", categories=["carpet_xyz"], **TINY)
    with pytest.raises(ValueError, match="seed"):
        P.make_dataset(tmp_path / "c", seed=-1, **TINY)
    with pytest.raises(ValueError, match="difficulty"):
        P.make_dataset(tmp_path / "d", difficulty=0.0, **TINY)
    with pytest.raises(ValueError, match="no defect"):
        P.render_sample("bolt", P.image_seed(0, "bolt", "x", 0), "hole")
    assert not any(tmp_path.iterdir())


def test_difficulty_scales_contrast():
    ss = P.image_seed(0, "metal_plate", "test/stain", 0)
    good, _ = P.render_sample("metal_plate", ss, None, 64)
    diffs = []
    for difficulty in (0.5, 1.0, 2.0):
        bad, mask = P.render_sample("metal_plate", ss, "stain", 64, difficulty=difficulty)
        diffs.append(np.abs(bad.astype(int) - good.astype(int)).sum())
    assert diffs[0] > diffs[1] > diffs[2] > 0
