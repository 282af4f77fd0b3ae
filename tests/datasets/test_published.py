"""Readers for published layouts: BTAD, KSDD2, VisA, MVTec LOCO, DAGM and class folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tabad.datasets.images import load_mask
from tabad.datasets.mvtec import MVTEC_LAYOUTS as LAYOUTS
from tabad.datasets.published import EXCLUDED_REASON, PUBLISHED_LAYOUTS
from tabad.datasets.readers import (
    ALL_LAYOUTS,
    SkippedFilesWarning,
    detect_layout,
    list_categories,
    read_category,
)
from tabad.errors import DataError

SIZE = (16, 12)  # (width, height)
PORTRAIT = (8, 20)  # KSDD2 images are tall and narrow


def write_image(path: Path, size=SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size=SIZE, value: int = 255, box=(2, 5, 3, 9)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    if value:
        arr[box[0]:box[1], box[2]:box[3]] = value
    Image.fromarray(arr).save(path)
    return path


def read_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_category(*args, **kwargs)


# --------------------------------------------------------------------------- fixture builders


def build_btad(root: Path, product: str = "01", ext: str = ".bmp") -> Path:
    cat = root / product
    for i in range(3):
        write_image(cat / "train" / "ok" / f"{i:04d}{ext}", seed=i)
    for i in range(2):
        write_image(cat / "test" / "ok" / f"{i:04d}{ext}", seed=10 + i)
    for i in range(2):
        write_image(cat / "test" / "ko" / f"{i:04d}{ext}", seed=20 + i)
        write_mask(cat / "ground_truth" / "ko" / f"{i:04d}.png")
    return cat


def build_ksdd2(root: Path) -> Path:
    for split, labels in (("train", [0, 0, 1, 0]), ("test", [0, 1, 0])):
        for i, label in enumerate(labels):
            stem = f"{10000 + i + (100 if split == 'test' else 0)}"
            write_image(root / split / f"{stem}.png", size=PORTRAIT, seed=i)
            write_mask(root / split / f"{stem}_GT.png", size=PORTRAIT, value=255 if label else 0, box=(3, 15, 2, 6))
    return root


def build_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, seed=i)
            rows.append(f"{obj},train,normal,{rel},")
        rel = f"{obj}/Data/Images/Normal/0100.JPG"
        write_image(root / rel, seed=7)
        rows.append(f"{obj},test,normal,{rel},")
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, seed=30 + i)
            arr = np.zeros((SIZE[1], SIZE[0]), np.uint8)
            arr[1:3, 1:3] = 1  # component indices, not 0/255
            arr[6:9, 8:12] = 2
            (root / mrel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / mrel)
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def build_loco(root: Path, cat_name: str = "juice_bottle") -> Path:
    cat = root / cat_name
    for i in range(3):
        write_image(cat / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(cat / "validation" / "good" / "000.png", seed=9)
    write_image(cat / "test" / "good" / "000.png", seed=10)
    for d in ("logical_anomalies", "structural_anomalies"):
        write_image(cat / "test" / d / "000.png", seed=20)
        write_mask(cat / "ground_truth" / d / "000" / "000.png", box=(0, 2, 0, 2))
        write_mask(cat / "ground_truth" / d / "000" / "001.png", box=(8, 10, 10, 12))
    return cat


def build_dagm(root: Path, name: str = "Class1") -> Path:
    cat = root / name
    lines = {"Train": ["1"], "Test": ["1"]}
    for split, labels in (("Train", [0, 1, 0, 0]), ("Test", [0, 1])):
        for i, label in enumerate(labels, start=1):
            write_image(cat / split / f"{i:04d}.PNG", seed=i)
            if label:
                write_mask(cat / split / "Label" / f"{i:04d}_label.PNG")
            lines[split].append(f"{i - 1}\t{label}\t{i:04d}.PNG\t0\t" + (f"{i:04d}_label.PNG" if label else "0"))
        (cat / split / "Label").mkdir(parents=True, exist_ok=True)
        (cat / split / "Label" / "Labels.txt").write_text("\n".join(lines[split]) + "\n")
    return cat


def build_folders(root: Path) -> Path:
    for cls, n in (("bolts", 3), ("fabric", 2)):
        for i in range(n):
            write_image(root / cls / f"{i}.{'jpg' if cls == 'fabric' else 'png'}", seed=i)
    return root


# --------------------------------------------------------------------------- reading each layout


def test_layout_names():
    assert LAYOUTS == ("mvtec", "mvtec3d", "mvtec-stem")
    assert ALL_LAYOUTS == LAYOUTS + PUBLISHED_LAYOUTS


def test_btad(tmp_path):
    build_btad(tmp_path, "01", ".bmp")
    build_btad(tmp_path, "02", ".png")
    assert list_categories(tmp_path) == ["01", "02"]
    assert detect_layout(tmp_path / "01") == "btad"
    data = read_quietly(tmp_path, "01")
    assert data.layout == "btad" and data.root == tmp_path and data.skipped == []
    assert len(data.train) == 3 and all(s.defect_type == "good" and s.label == 0 for s in data.train)
    assert [(s.defect_type, s.label) for s in data.test] == [("ko", 1), ("ko", 1), ("good", 0), ("good", 0)]
    ko = [s for s in data.test if s.label]
    assert [s.image_path.suffix for s in ko] == [".bmp", ".bmp"]
    assert [s.mask_path for s in ko] == [tmp_path / "01" / "ground_truth" / "ko" / f"{i:04d}.png" for i in range(2)]
    assert read_quietly(tmp_path, "01", layout="btad") == data
    assert read_quietly(tmp_path, "02").test[0].image_path.suffix == ".png"


def test_ksdd2_excludes_defective_training_images(tmp_path):
    root = build_ksdd2(tmp_path / "KolektorSDD2")
    assert detect_layout(root) == "ksdd2"
    assert list_categories(root) == ["ksdd2"]
    data = read_quietly(root)  # the exclusion alone does not warn
    assert data.category == "ksdd2" and data.layout == "ksdd2" and data.root == root
    assert [s.image_path.name for s in data.train] == ["10000.png", "10001.png", "10003.png"]
    assert data.skipped == [(root / "train" / "10002.png", EXCLUDED_REASON)]
    assert [(s.label, s.defect_type) for s in data.test] == [(0, "good"), (1, "defect"), (0, "good")]
    assert [s.mask_path for s in data.test] == [None, root / "test" / "10101_GT.png", None]
    assert load_mask(data.test[1].mask_path).shape == (PORTRAIT[1], PORTRAIT[0])
    assert read_quietly(root, "ksdd2") == data == read_quietly(root, layout="ksdd2")
    assert read_quietly(tmp_path, "KolektorSDD2").category == "ksdd2"


def test_visa_reads_csv_and_binarises_index_masks(tmp_path):
    root = build_visa(tmp_path / "VisA")
    assert detect_layout(root) == "visa"
    assert list_categories(root) == ["candle", "pcb1"]
    data = read_quietly(root, "pcb1")
    assert data.layout == "visa" and data.root == root and data.category == "pcb1"
    assert len(data.train) == 3 and all(s.split == "train" and s.label == 0 for s in data.train)
    assert [(s.label, s.defect_type) for s in data.test] == [(0, "good"), (1, "anomaly"), (1, "anomaly")]
    mask = load_mask(data.test[1].mask_path)
    assert mask.dtype == bool and mask.sum() == 4 + 12
    assert data.test[0].mask_path is None
    assert read_quietly(root / "candle").category == "candle"  # a category folder of a VisA root
    with pytest.raises(DataError, match="pcb1") as info:
        read_category(root, "capsules")
    assert "not listed" in str(info.value)


def test_loco_mask_folders_are_unioned(tmp_path):
    cat = build_loco(tmp_path)
    assert detect_layout(cat) == "loco"
    data = read_quietly(tmp_path, "juice_bottle")
    assert data.layout == "loco" and len(data.train) == 3
    assert [s.defect_type for s in data.test] == ["good", "logical_anomalies", "structural_anomalies"]
    folder = cat / "ground_truth" / "logical_anomalies" / "000"
    assert data.test[1].mask_path == folder
    mask = load_mask(folder)
    assert mask.shape == (SIZE[1], SIZE[0]) and mask.sum() == 4 + 4 and mask[0, 0] and mask[9, 11]
    with_val = read_quietly(tmp_path, "juice_bottle", include_validation=True)
    assert [s.split for s in with_val.train] == ["train"] * 3 + ["validation"]
    # an empty mask folder is a per-file problem
    for f in (cat / "ground_truth" / "structural_anomalies" / "000").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="holds no mask images"):
        read_category(tmp_path, "juice_bottle")


def test_dagm_label_folder(tmp_path):
    build_dagm(tmp_path, "Class1")
    build_dagm(tmp_path, "Class10")
    assert list_categories(tmp_path) == ["Class1", "Class10"]
    assert detect_layout(tmp_path / "Class1") == "dagm"
    data = read_quietly(tmp_path, "Class1")
    cat = tmp_path / "Class1"
    assert data.layout == "dagm" and [s.image_path.name for s in data.train] == ["0001.PNG", "0003.PNG", "0004.PNG"]
    assert data.skipped == [(cat / "Train" / "0002.PNG", EXCLUDED_REASON)]
    assert [(s.label, s.mask_path) for s in data.test] == [(0, None), (1, cat / "Test" / "Label" / "0002_label.PNG")]


def test_folders_layout_is_train_only(tmp_path):
    root = build_folders(tmp_path / "industrial")
    assert detect_layout(root) == "folders" and detect_layout(root / "bolts") == "folders"
    assert list_categories(root) == ["bolts", "fabric"]
    data = read_quietly(root, "fabric")
    assert data.layout == "folders" and data.test == [] and data.root == root
    assert [s.image_path.name for s in data.train] == ["0.jpg", "1.jpg"]
    assert all(s.category == "fabric" and s.split == "train" for s in data.train)
    assert read_quietly(root / "bolts").category == "bolts"
    with pytest.raises(DataError, match="bolts, fabric"):
        read_category(root, layout="folders")


def test_existing_layouts_are_not_misdetected(tmp_path):
    for name, folder in (("a", "train/good"), ("b", "test/good")):
        write_image(tmp_path / name / folder / "000.png")
    write_image(tmp_path / "a" / "test" / "crack" / "000.png")
    write_mask(tmp_path / "a" / "ground_truth" / "crack" / "000_mask.png")
    assert detect_layout(tmp_path / "a") == "mvtec"
    assert list_categories(tmp_path) == ["a"]


# --------------------------------------------------------------------------- errors


def test_unrecognised_root_lists_every_layout(tmp_path):
    (tmp_path / "odd" / "stuff").mkdir(parents=True)
    (tmp_path / "odd" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        detect_layout(tmp_path / "odd")
    message = str(info.value)
    for needle in ("train/good/rgb/", "_mask", "train/ok/", "_GT.png", "split_csv/1cls.csv", "Train/",
                   "ground_truth/<defect>/<stem>/", "no train/"):
        assert needle in message, needle
    for layout in ALL_LAYOUTS:
        assert layout in message
    with pytest.raises(DataError) as info:
        list_categories(tmp_path / "odd")
    assert "split_csv/1cls.csv" in str(info.value) and "dagm" in str(info.value)
    with pytest.raises(DataError) as info:
        read_category(tmp_path, "odd")
    assert "ksdd2" in str(info.value) and "folders" in str(info.value)


def test_forcing_a_wrong_published_layout_hints(tmp_path):
    build_btad(tmp_path)
    with pytest.raises(DataError) as info:
        read_category(tmp_path, "01", layout="loco")
    assert "looks like layout 'btad'" in str(info.value)
    with pytest.raises(DataError) as info:
        read_category(tmp_path, "01", layout="mvtec")
    assert "looks like layout 'btad'" in str(info.value)


def _mismatch_btad(tmp_path):
    cat = build_btad(tmp_path)
    (cat / "ground_truth" / "ko" / "0001.png").unlink()
    orphan = write_mask(cat / "ground_truth" / "ko" / "0009.png")
    return (tmp_path, "01"), cat / "test" / "ko" / "0001.bmp", orphan


def _mismatch_ksdd2(tmp_path):
    root = build_ksdd2(tmp_path)
    (root / "test" / "10100_GT.png").unlink()
    orphan = write_mask(root / "test" / "10999_GT.png", size=PORTRAIT)
    return (root,), root / "test" / "10100.png", orphan


def _mismatch_visa(tmp_path):
    root = build_visa(tmp_path)
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    orphan = write_mask(root / "candle" / "Data" / "Masks" / "Anomaly" / "077.png")
    return (root, "candle"), root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG", orphan


@pytest.mark.parametrize("make", [_mismatch_btad, _mismatch_ksdd2, _mismatch_visa], ids=["btad", "ksdd2", "visa"])
def test_image_without_mask_and_mask_without_image(tmp_path, make):
    args, lonely_image, orphan_mask = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_category(*args)
    message = str(info.value)
    assert str(lonely_image) in message and str(orphan_mask) in message
    assert "mask without image" in message and "pass skip_bad=True" in message
    with pytest.warns(SkippedFilesWarning) as record:
        data = read_category(*args, skip_bad=True)
    assert len(record) == 1
    skipped = dict(data.skipped)
    assert lonely_image in skipped and orphan_mask in skipped
    assert lonely_image not in {s.image_path for s in data.test}


def test_truncated_image_is_skipped_with_one_warning(tmp_path):
    root = build_ksdd2(tmp_path)
    bad = root / "test" / "10102.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError) as info:
        read_category(root)
    assert info.value.path == bad
    with pytest.warns(SkippedFilesWarning):
        data = read_category(root, skip_bad=True)
    assert (root / "train" / "10002.png", EXCLUDED_REASON) in data.skipped and bad in dict(data.skipped)
    assert read_quietly(root, check_files=False).test[-1].image_path == bad
