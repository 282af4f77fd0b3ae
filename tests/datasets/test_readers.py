"""Dataset readers: the three layouts, auto-detection and every bad-input case."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tabad.datasets.mvtec import MVTEC_LAYOUTS as LAYOUTS
from tabad.datasets.readers import (
    LayoutError,
    SkippedFilesWarning,
    detect_layout,
    list_categories,
    read_category,
)
from tabad.errors import DataError, TabadError

SIZE = (16, 12)  # (width, height)
CAT = "widget"
TEST_COUNTS = {"good": 2, "crack": 2, "scratch": 1}
N_TRAIN = 3
N_TEST = sum(TEST_COUNTS.values())
N_ANOMALOUS = N_TEST - TEST_COUNTS["good"]

REAL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# --------------------------------------------------------------------------- fixture builders


def write_image(path: Path, size=SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size=SIZE, empty: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    if not empty:
        arr[2:5, 3:9] = 255
    Image.fromarray(arr).save(path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def build(root: Path, layout: str = "mvtec", category: str = CAT, with_gt: bool = True) -> Path:
    """Write a tiny category in ``layout``; return the category folder.

    mvtec and mvtec-stem images are ``.png`` and ``.jpg`` respectively (the
    stem layout's masks stay ``.png``, as in the hazelnut toy set). mvtec3d
    also gets empty masks for good images, an ``xyz/`` folder of TIFFs and a
    validation split, like the real data.
    """
    cat = root / category
    ext = ".jpg" if layout == "mvtec-stem" else ".png"
    rgb = "rgb" if layout == "mvtec3d" else ""
    for i in range(N_TRAIN):
        write_image(cat / "train" / "good" / rgb / f"{i:03d}{ext}", seed=i)
    if layout == "mvtec3d":
        for i in range(2):
            write_image(cat / "validation" / "good" / "rgb" / f"{i:03d}.png", seed=50 + i)
    for d, n in TEST_COUNTS.items():
        for i in range(n):
            stem = f"{i:03d}"
            write_image(cat / "test" / d / rgb / f"{stem}{ext}", seed=100 + i)
            if layout == "mvtec3d":
                write_image(cat / "test" / d / "xyz" / f"{stem}.tiff", seed=200 + i)
                if with_gt:
                    write_mask(cat / "test" / d / "gt" / f"{stem}.png", empty=(d == "good"))
            elif with_gt and d != "good":
                name = f"{stem}_mask.png" if layout == "mvtec" else f"{stem}.png"
                write_mask(cat / "ground_truth" / d / name)
    return cat


def image_in_test(cat: Path, layout: str, defect: str, i: int) -> Path:
    ext = ".jpg" if layout == "mvtec-stem" else ".png"
    sub = "rgb" if layout == "mvtec3d" else ""
    return cat / "test" / defect / sub / f"{i:03d}{ext}"


def mask_of(cat: Path, layout: str, defect: str, i: int) -> Path:
    if layout == "mvtec3d":
        return cat / "test" / defect / "gt" / f"{i:03d}.png"
    name = f"{i:03d}_mask.png" if layout == "mvtec" else f"{i:03d}.png"
    return cat / "ground_truth" / defect / name


def train_image(cat: Path, layout: str, i: int) -> Path:
    ext = ".jpg" if layout == "mvtec-stem" else ".png"
    sub = "rgb" if layout == "mvtec3d" else ""
    return cat / "train" / "good" / sub / f"{i:03d}{ext}"


def read_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean read must not warn
        return read_category(*args, **kwargs)


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_and_is_detected(tmp_path, layout):
    cat = build(tmp_path, layout)
    assert detect_layout(cat) == layout
    data = read_quietly(tmp_path, CAT)
    assert data.layout == layout and data.category == CAT and data.root == tmp_path
    assert len(data.train) == N_TRAIN and len(data.test) == N_TEST
    assert data.n_test_anomalous == N_ANOMALOUS and data.has_masks and data.skipped == []
    assert all(s.split == "train" and s.label == 0 and s.defect_type == "good" for s in data.train)
    assert all(s.mask_path is None for s in data.train)
    assert [s.image_path for s in data.train] == [train_image(cat, layout, i) for i in range(N_TRAIN)]
    assert [s.defect_type for s in data.test] == ["crack", "crack", "good", "good", "scratch"]
    for s in data.test:
        assert s.split == "test" and s.category == CAT
        if s.defect_type == "good":
            assert s.label == 0 and s.mask_path is None
        else:
            i = int(s.image_path.stem)
            assert s.label == 1
            assert s.image_path == image_in_test(cat, layout, s.defect_type, i)
            assert s.mask_path == mask_of(cat, layout, s.defect_type, i)
    # Forcing the right layout gives the same answer.
    assert read_quietly(tmp_path, CAT, layout=layout) == data


WRONG = [(right, wrong) for right in LAYOUTS for wrong in LAYOUTS if wrong != right]


@pytest.mark.parametrize("layout,wrong", WRONG, ids=[f"{r}-as-{w}" for r, w in WRONG])
def test_forcing_a_wrong_layout_fails_clearly(tmp_path, layout, wrong):
    build(tmp_path, layout)
    with pytest.raises(DataError) as info:
        read_category(tmp_path, CAT, layout=wrong)
    message = str(info.value)
    assert str(tmp_path / CAT) in message
    assert f"looks like layout {layout!r}" in message and repr(wrong) in message


def test_unknown_layout_name(tmp_path):
    build(tmp_path)
    for call in (lambda: read_category(tmp_path, CAT, layout="mvtec-ad"), lambda: list_categories(tmp_path, "x")):
        with pytest.raises(LayoutError, match="mvtec3d") as info:
            call()
        assert isinstance(info.value, TabadError) and isinstance(info.value, ValueError)


def test_category_without_ground_truth_is_allowed(tmp_path):
    cat = build(tmp_path, "mvtec", with_gt=False)
    assert detect_layout(cat) == "mvtec"
    for layout in ("auto", "mvtec", "mvtec-stem"):
        data = read_quietly(tmp_path, CAT, layout=layout)
        assert data.n_test_anomalous == N_ANOMALOUS and not data.has_masks
        assert all(s.mask_path is None for s in data.test)


def test_mvtec3d_without_gt_folders_is_allowed(tmp_path):
    build(tmp_path, "mvtec3d", with_gt=False)
    data = read_quietly(tmp_path, CAT)
    assert data.n_test_anomalous == N_ANOMALOUS and not data.has_masks


def test_mvtec3d_good_masks_and_validation(tmp_path):
    cat = build(tmp_path, "mvtec3d")
    # The empty masks of good images are not orphans, and xyz/ is not read.
    data = read_quietly(tmp_path, CAT)
    assert all(s.image_path.parent.name == "rgb" for s in data.train + data.test)
    with_val = read_quietly(tmp_path, CAT, include_validation=True)
    assert len(with_val.train) == N_TRAIN + 2
    assert [s.split for s in with_val.train] == ["train"] * N_TRAIN + ["validation"] * 2
    assert with_val.train[-1].image_path == cat / "validation" / "good" / "rgb" / "001.png"
    build(tmp_path, "mvtec", category="flat")
    with pytest.raises(DataError, match="validation folder missing") as info:
        read_category(tmp_path, "flat", include_validation=True)
    assert str(tmp_path / "flat" / "validation" / "good") in str(info.value)


def test_mvtec_masks_in_ground_truth_good_are_ignored(tmp_path):
    cat = build(tmp_path)
    write_mask(cat / "ground_truth" / "good" / "000_mask.png", empty=True)
    assert read_quietly(tmp_path, CAT).skipped == []


def test_hidden_and_foreign_files_ignored_natural_order_any_case(tmp_path):
    cat = build(tmp_path)
    good = cat / "train" / "good"
    write_image(good / "10.PNG")
    write_image(good / "5.JpEg")
    write_image(good / ".hidden.png")
    (good / "notes.txt").write_text("not an image")
    (good / "Thumbs.db").write_bytes(b"\0\1")
    write_image(cat / "test" / ".ipynb_checkpoints" / "x.png")
    write_mask(cat / "ground_truth" / "crack" / ".001_mask.png")
    data = read_quietly(tmp_path, CAT)
    assert [s.image_path.name for s in data.train] == ["000.png", "001.png", "002.png", "5.JpEg", "10.PNG"]
    assert len(data.test) == N_TEST


def test_same_stem_mask_prefers_the_image_format(tmp_path):
    cat = build(tmp_path)
    write_mask(cat / "ground_truth" / "crack" / "000_mask.bmp")
    data = read_quietly(tmp_path, CAT)
    assert mask_of(cat, "mvtec", "crack", 0) in {s.mask_path for s in data.test}


def test_check_files_false_opens_nothing(tmp_path):
    cat = build(tmp_path)
    truncate(train_image(cat, "mvtec", 0))
    write_mask(mask_of(cat, "mvtec", "crack", 0), size=(5, 5))
    data = read_quietly(tmp_path, CAT, check_files=False)
    assert len(data.train) == N_TRAIN and len(data.test) == N_TEST
    with pytest.raises(DataError):
        read_category(tmp_path, CAT)


# --------------------------------------------------------------------------- root conventions


def test_root_may_be_the_category_folder(tmp_path):
    cat = build(tmp_path, "mvtec3d")
    expected = read_quietly(tmp_path, CAT)
    assert read_quietly(cat, CAT) == expected
    assert read_quietly(cat) == expected
    assert list_categories(cat) == [CAT]


def test_list_categories(tmp_path):
    build(tmp_path, "mvtec", category="zeta")
    build(tmp_path, "mvtec3d", category="alpha")
    build(tmp_path, "mvtec-stem", category="mid")
    (tmp_path / "docs").mkdir()
    (tmp_path / ".cache" / "train").mkdir(parents=True)
    (tmp_path / "readme.txt").write_text("x")
    assert list_categories(tmp_path) == ["alpha", "mid", "zeta"]
    assert list_categories(str(tmp_path), layout="mvtec") == ["alpha", "mid", "zeta"]
    assert {read_quietly(tmp_path, c).layout for c in list_categories(tmp_path)} == set(LAYOUTS)


def test_list_categories_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        list_categories(missing)
    assert str(missing) in str(info.value)
    (tmp_path / "docs").mkdir()
    with pytest.raises(DataError, match="no category found") as info:
        list_categories(tmp_path)
    assert str(tmp_path) in str(info.value) and "train/" in str(info.value) and "docs" in str(info.value)


def test_detect_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "odd" / "test").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        detect_layout(tmp_path / "odd")
    message = str(info.value)
    assert str(tmp_path / "odd") in message
    assert "train/good/rgb/" in message and "train/good/" in message and "_mask" in message


# --------------------------------------------------------------------------- structural problems


def _structural_cases(tmp_path: Path):
    """name -> (make the problem, read arguments, path the error must name)."""
    cat = tmp_path / CAT
    train_good = cat / "train" / "good"

    def no_root():
        return (tmp_path / "absent", CAT), tmp_path / "absent"

    def no_category():
        return (tmp_path, "other"), tmp_path / "other"

    def no_train_folder():
        for p in train_good.iterdir():
            p.unlink()
        train_good.rmdir()
        # Auto-detection finds no layout and says what it looked for.
        return (tmp_path, CAT), cat

    def no_train_folder_forced():
        no_train_folder()
        return (tmp_path, CAT, "mvtec"), train_good

    def empty_train():
        for p in train_good.iterdir():
            p.unlink()
        (train_good / "notes.txt").write_text("x")
        return (tmp_path, CAT), train_good

    def no_test_folder():
        import shutil

        shutil.rmtree(cat / "test")
        return (tmp_path, CAT), cat / "test"

    def no_test_images():
        for p in (cat / "test").rglob("*.png"):
            p.unlink()
        return (tmp_path, CAT), cat / "test"

    return {
        "no_root": no_root,
        "no_category": no_category,
        "no_train_folder": no_train_folder,
        "no_train_folder_forced": no_train_folder_forced,
        "empty_train": empty_train,
        "no_test_folder": no_test_folder,
        "no_test_images": no_test_images,
    }


STRUCTURAL = [
    "no_root",
    "no_category",
    "no_train_folder",
    "no_train_folder_forced",
    "empty_train",
    "no_test_folder",
    "no_test_images",
]


@pytest.mark.parametrize("case", STRUCTURAL)
@pytest.mark.parametrize("skip_bad", [False, True])
def test_structural_problems_always_raise(tmp_path, case, skip_bad):
    build(tmp_path)
    args, offending = _structural_cases(tmp_path)[case]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        with pytest.raises(DataError) as info:
            read_category(*args, skip_bad=skip_bad)
    assert str(offending) in str(info.value)
    assert info.value.path == offending
    if case == "no_train_folder":
        assert "train/good/" in str(info.value)


def test_no_training_image_left_after_skipping_raises(tmp_path):
    cat = build(tmp_path)
    train_good = cat / "train" / "good"
    for p in train_good.iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError) as info:  # without skip_bad: the first bad file
        read_category(tmp_path, CAT)
    assert info.value.path == train_good / "000.png"
    with pytest.warns(SkippedFilesWarning), pytest.raises(DataError, match="no readable training") as info:
        read_category(tmp_path, CAT, skip_bad=True)
    assert info.value.path == train_good


# --------------------------------------------------------------------------- per-file problems


def _file_cases(layout: str):
    """name -> function(cat) returning (offending path, train lost, test lost)."""

    def unreadable_train(cat):
        p = train_image(cat, layout, 1)
        p.write_bytes(b"\x89PNG but not really")
        return p, 1, 0

    def truncated_test(cat):
        return truncate(image_in_test(cat, layout, "crack", 0)), 0, 1

    def truncated_good_test(cat):
        return truncate(image_in_test(cat, layout, "good", 1)), 0, 1

    def unreadable_mask(cat):
        p = mask_of(cat, layout, "crack", 1)
        p.write_bytes(b"")
        return p, 0, 1

    def size_mismatch(cat):
        return write_mask(mask_of(cat, layout, "scratch", 0), size=(SIZE[0] + 1, SIZE[1])), 0, 1

    def missing_mask(cat):
        mask_of(cat, layout, "scratch", 0).unlink()
        return image_in_test(cat, layout, "scratch", 0), 0, 1

    def orphan_mask(cat):
        return write_mask(mask_of(cat, layout, "crack", 7)), 0, 0

    cases = {
        "unreadable_train": unreadable_train,
        "truncated_test": truncated_test,
        "truncated_good_test": truncated_good_test,
        "unreadable_mask": unreadable_mask,
        "size_mismatch": size_mismatch,
        "missing_mask": missing_mask,
        "orphan_mask": orphan_mask,
    }
    if layout != "mvtec3d":

        def orphan_defect_folder(cat):
            return write_mask(mask_of(cat, layout, "dent", 0)), 0, 0

        def ambiguous_masks(cat):
            mask_of(cat, layout, "crack", 0).unlink()
            stem = "000_mask" if layout == "mvtec" else "000"
            write_mask(cat / "ground_truth" / "crack" / f"{stem}.bmp")
            write_mask(cat / "ground_truth" / "crack" / f"{stem}.tif")
            return image_in_test(cat, layout, "crack", 0), 0, 1

        cases["orphan_defect_folder"] = orphan_defect_folder
        cases["ambiguous_masks"] = ambiguous_masks
    if layout == "mvtec":

        def misnamed_mask(cat):
            return write_mask(cat / "ground_truth" / "crack" / "000.png"), 0, 0

        cases["misnamed_mask"] = misnamed_mask
    return cases


FILE_CASES = [(layout, name) for layout in LAYOUTS for name in _file_cases(layout)]


@pytest.mark.parametrize("layout,case", FILE_CASES, ids=[f"{l}-{c}" for l, c in FILE_CASES])
def test_file_problem_raises_naming_the_file(tmp_path, layout, case):
    cat = build(tmp_path, layout)
    offending, _, _ = _file_cases(layout)[case](cat)
    with pytest.raises(DataError) as info:
        read_category(tmp_path, CAT, layout="auto")
    assert info.value.path == offending
    assert str(offending) in str(info.value) and "skip_bad=True" in str(info.value)


@pytest.mark.parametrize("layout,case", FILE_CASES, ids=[f"{l}-{c}" for l, c in FILE_CASES])
def test_file_problem_is_skipped_with_one_warning(tmp_path, layout, case):
    cat = build(tmp_path, layout)
    offending, train_lost, test_lost = _file_cases(layout)[case](cat)
    with pytest.warns(SkippedFilesWarning) as record:
        data = read_category(tmp_path, CAT, skip_bad=True)
    assert len(record) == 1 and str(offending) in str(record[0].message)
    assert [p for p, _ in data.skipped] == [offending]
    assert all(reason for _, reason in data.skipped)
    assert len(data.train) == N_TRAIN - train_lost and len(data.test) == N_TEST - test_lost
    kept = {s.image_path for s in data.train + data.test} | {s.mask_path for s in data.test}
    assert offending not in kept


def test_several_problems_are_all_reported(tmp_path):
    cat = build(tmp_path)
    bad_train = truncate(train_image(cat, "mvtec", 0))
    bad_mask = write_mask(mask_of(cat, "mvtec", "crack", 1), size=(3, 3))
    orphan = write_mask(mask_of(cat, "mvtec", "scratch", 4))
    with pytest.raises(DataError) as info:
        read_category(tmp_path, CAT)
    # Pairing problems are found without decoding, so the orphan comes first.
    assert info.value.path == orphan
    with pytest.warns(SkippedFilesWarning) as record:
        data = read_category(tmp_path, CAT, skip_bad=True)
    assert len(record) == 1
    assert {p for p, _ in data.skipped} == {bad_train, bad_mask, orphan}
    for p in (bad_train, bad_mask, orphan):
        assert str(p) in str(record[0].message)
    assert len(data.train) == N_TRAIN - 1 and len(data.test) == N_TEST - 1


def test_error_mentions_further_problems(tmp_path):
    cat = build(tmp_path)
    first = write_mask(mask_of(cat, "mvtec", "crack", 5))
    second = write_mask(mask_of(cat, "mvtec", "crack", 6))
    with pytest.raises(DataError, match=r"and 1 more problem") as info:
        read_category(tmp_path, CAT)
    assert info.value.path == first and str(second) in str(info.value)


def test_mask_size_message_names_both_files(tmp_path):
    cat = build(tmp_path)
    mask = write_mask(mask_of(cat, "mvtec", "crack", 0), size=(8, 8))
    with pytest.raises(DataError, match="8x8") as info:
        read_category(tmp_path, CAT)
    assert str(mask) in str(info.value) and str(image_in_test(cat, "mvtec", "crack", 0)) in str(info.value)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (REAL_DATA / "mvtec3d" / "tire").is_dir(), reason="shared real data not present")
def test_real_mvtec3d_tire():
    root = REAL_DATA / "mvtec3d"
    assert list_categories(root) == ["tire"]
    assert detect_layout(root / "tire") == "mvtec3d"
    data = read_quietly(root, "tire")
    assert data.layout == "mvtec3d"
    assert len(data.train) == 210 and len(data.test) == 112 and data.n_test_anomalous == 87
    assert all(s.mask_path is not None for s in data.test if s.label == 1)
    assert all(s.mask_path is None for s in data.test if s.label == 0)
    assert {s.defect_type for s in data.test} == {"good", "combined", "contamination", "cut", "hole"}
    assert len(read_quietly(root, "tire", include_validation=True, check_files=False).train) == 239


@pytest.mark.skipif(not (REAL_DATA / "hazelnut_toy" / "hazelnut").is_dir(), reason="shared real data not present")
def test_real_hazelnut_toy():
    cat = REAL_DATA / "hazelnut_toy" / "hazelnut"
    assert detect_layout(cat) == "mvtec-stem"
    data = read_quietly(cat, "hazelnut")
    assert data.layout == "mvtec-stem"
    assert len(data.train) == 28 and len(data.test) == 23 and data.n_test_anomalous == 17
    assert all(s.mask_path is not None and s.mask_path.stem == s.image_path.stem for s in data.test if s.label == 1)
