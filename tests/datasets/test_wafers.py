"""MixedWM38-format wafer maps: reader checks, procedural generator, CNN input."""

from __future__ import annotations

import numpy as np
import pytest

from tabad.datasets.wafers import (
    DEFAULT_FILE_NAME,
    MIXEDWM38_CLASSES,
    PATTERNS,
    class_names,
    make_wafers,
    read_wafer_npz,
    render_wafer,
    resize_nearest,
    wafer_seed,
    wafer_to_image,
)
from tabad.errors import DataError


def _write(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _valid(n=3, size=6):
    maps = np.ones((n, size, size), dtype=np.int64)
    maps[:, 0, 0] = 0
    maps[1, 2, 2] = 2
    labels = np.zeros((n, 8), dtype=np.int64)
    labels[1, [0, 4]] = 1
    return maps, labels


# --------------------------------------------------------------------------- reader


def test_reads_file_and_folder(tmp_path):
    maps, labels = _valid()
    path = _write(tmp_path / DEFAULT_FILE_NAME, arr_0=maps, arr_1=labels)
    for where in (path, tmp_path):
        wd = read_wafer_npz(where)
        assert wd.maps.dtype == np.uint8 and wd.labels.dtype == np.uint8
        assert np.array_equal(wd.maps, maps) and np.array_equal(wd.labels, labels)
        assert wd.path == path and len(wd) == 3
        assert wd.class_names == ["normal", "Center+Loc", "normal"]


@pytest.mark.parametrize("case, arrays, message", [
    ("missing arr_1", lambda m, l: {"arr_0": m}, r"missing array\(s\) arr_1"),
    ("maps 2-d", lambda m, l: {"arr_0": m[0], "arr_1": l}, "3 dimensions"),
    ("labels 1-d", lambda m, l: {"arr_0": m, "arr_1": l[:, 0]}, "2 dimensions"),
    ("7 columns", lambda m, l: {"arr_0": m, "arr_1": l[:, :7]}, "8 columns"),
    ("N mismatch", lambda m, l: {"arr_0": m, "arr_1": l[:2]}, "3 maps but arr_1 has 2"),
    ("value 3", lambda m, l: {"arr_0": np.where(m == 2, 3, m), "arr_1": l}, "values other than 0"),
    ("label 2", lambda m, l: {"arr_0": m, "arr_1": l * 2}, "must be 0/1"),
    ("empty", lambda m, l: {"arr_0": m[:0], "arr_1": l[:0]}, "no wafer maps"),
])
def test_bad_arrays_name_the_file(tmp_path, case, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays(*_valid()))
    with pytest.raises(DataError, match=message) as exc:
        read_wafer_npz(path)
    assert str(path) in str(exc.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_wafer_npz(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=f"no {DEFAULT_FILE_NAME}"):
        read_wafer_npz(tmp_path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="not a readable .npz") as exc:
        read_wafer_npz(junk)
    assert str(junk) in str(exc.value)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="not an .npz archive"):
        read_wafer_npz(npy)


# --------------------------------------------------------------------------- classes and generator


def test_mixedwm38_classes():
    assert len(MIXEDWM38_CLASSES) == 38 and len(set(MIXEDWM38_CLASSES)) == 38
    sizes = [len(c) for c in MIXEDWM38_CLASSES]
    assert [sizes.count(k) for k in range(5)] == [1, 8, 13, 12, 4]
    for c in MIXEDWM38_CLASSES:
        if len(c) > 1:
            assert not {"Near-full", "Random"} & set(c)
            assert not {"Center", "Donut"} <= set(c) and not {"Edge-Loc", "Edge-Ring"} <= set(c)


def test_make_wafers_is_deterministic_and_in_format(tmp_path):
    a = make_wafers(tmp_path / "a.npz", n_per_class=2, size=40, seed=3)
    b = make_wafers(tmp_path / "b.npz", n_per_class=2, size=40, seed=3)
    c = make_wafers(tmp_path / "c.npz", n_per_class=2, size=40, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with np.load(a) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
    wd = read_wafer_npz(a)
    assert wd.maps.shape == (76, 40, 40) and wd.labels.shape == (76, 8)
    names = wd.class_names
    assert names[:2] == ["normal", "normal"] and len(set(names)) == 38
    # a mixture's label is the union of its patterns
    i = names.index("Center+Edge-Ring+Loc+Scratch")
    assert [PATTERNS[j] for j in np.flatnonzero(wd.labels[i])] == ["Center", "Edge-Ring", "Loc", "Scratch"]
    # a folder gets the dataset's file name
    folder = tmp_path / "folder"
    folder.mkdir()
    assert make_wafers(folder, n_per_class=1, size=32).name == DEFAULT_FILE_NAME


def _stats(patterns, n=12, size=52):
    """Mean defect fraction in radial bands and the angular spread, over n maps."""
    inner, mid, rim, total, spread = [], [], [], [], []
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - c, y - c) / (size / 2)
    theta = np.arctan2(y - c, x - c)
    for i in range(n):
        m = render_wafer(patterns, wafer_seed(0, "test-" + "+".join(patterns), i), size)
        d, inside = m == 2, m > 0
        inner.append(d[r < 0.3].mean())
        mid.append(d[(r > 0.35) & (r < 0.7)].mean())
        rim.append(d[inside & (r > 0.85)].mean())
        total.append(d[inside].mean())
        # mean resultant length of the rim defects' angles: 1 = one direction, 0 = all around
        a = theta[d & (r > 0.8)]
        spread.append(np.hypot(np.cos(a).mean(), np.sin(a).mean()) if len(a) else 0.0)
    return {k: float(np.mean(v)) for k, v in
            dict(inner=inner, mid=mid, rim=rim, total=total, direction=spread).items()}


def test_each_pattern_lands_where_expected():
    normal = _stats(())
    assert normal["total"] < 0.05
    center = _stats(("Center",))
    assert center["inner"] > 0.5 and center["rim"] < 0.1
    donut = _stats(("Donut",))
    assert donut["mid"] > 0.25 and donut["rim"] < 0.1 and donut["inner"] < donut["mid"]
    ring = _stats(("Edge-Ring",))
    assert ring["rim"] > 0.4 and ring["inner"] < 0.1 and ring["direction"] < 0.35
    edge_loc = _stats(("Edge-Loc",))
    assert 0.08 < edge_loc["rim"] < ring["rim"] and edge_loc["inner"] < 0.1 and edge_loc["direction"] > 0.6
    near_full = _stats(("Near-full",))
    assert near_full["total"] > 0.7
    random = _stats(("Random",))
    assert 0.08 < random["total"] < 0.4 and abs(random["inner"] - random["rim"]) < 0.1
    loc, scratch = _stats(("Loc",)), _stats(("Scratch",))
    for s in (loc, scratch):
        assert normal["total"] + 0.005 < s["total"] < 0.2 and s["rim"] < 0.1
    mixed = _stats(("Center", "Edge-Ring"))
    assert mixed["inner"] > 0.5 and mixed["rim"] > 0.4


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown pattern"):
        render_wafer(["Blob"], 0)
    with pytest.raises(ValueError, match="seed"):
        wafer_seed(-1, "x", 0)


# --------------------------------------------------------------------------- CNN input


def test_wafer_to_image_and_resize():
    maps = np.array([[[0, 1], [2, 1]]], dtype=np.uint8)
    img = wafer_to_image(maps)
    assert img.shape == (1, 3, 2, 2) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [[0, 127], [255, 127]] and (img[0, 0] == img[0, 2]).all()
    big = wafer_to_image(maps, 4)
    assert big.shape == (1, 3, 4, 4)
    assert big[0, 0].tolist() == [[0, 0, 127, 127], [0, 0, 127, 127], [255, 255, 127, 127], [255, 255, 127, 127]]
    assert resize_nearest(np.arange(9).reshape(3, 3), 3).tolist() == np.arange(9).reshape(3, 3).tolist()
    assert wafer_to_image(np.zeros((52, 52), np.uint8), 64).shape == (1, 3, 64, 64)
    assert class_names(np.array([[0, 0, 0, 0, 0, 1, 0, 0]])) == ["Near-full"]
