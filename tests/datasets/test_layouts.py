"""The layout registry: one consistent list of layouts, cheap to import, dispatched by the readers."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tabad.datasets import layouts
from tabad.datasets.layouts import ALL_LAYOUTS, DETECTION_ORDER, REGISTRY, LayoutError, get_layout
from tabad.datasets.reading import Layout, SkippedFilesWarning
from tabad.datasets.readers import read_category


def test_every_registered_layout_loads_under_its_name():
    assert len(set(ALL_LAYOUTS)) == len(ALL_LAYOUTS) == len(REGISTRY)
    for name in ALL_LAYOUTS:
        layout = get_layout(name)
        assert isinstance(layout, Layout) and layout.name == name
        assert layout.looks_for.endswith(f"(layout {name})") or f"(layout {name}," in layout.looks_for


def test_detection_order_names_every_layout_once_catch_alls_last():
    assert sorted(DETECTION_ORDER) == sorted(ALL_LAYOUTS)
    catch_all = [get_layout(n).catch_all for n in DETECTION_ORDER]
    assert catch_all == sorted(catch_all), "a catch-all layout must not hide the ones after it"


def test_unknown_and_auto_are_not_layouts():
    for name in ("mvtec-ad", "auto"):
        with pytest.raises(LayoutError):
            get_layout(name)


def test_registry_imports_nothing_heavy():
    # The CLI builds --layout from this module; numpy/PIL would make `tabad --help` slow.
    code = ("import sys, tabad.datasets.layouts as L; L.ALL_LAYOUTS; "
            "heavy = [m for m in ('numpy', 'PIL', 'torch') if m in sys.modules]; assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_new_layout_is_one_registry_entry(tmp_path, monkeypatch):
    """A layout defined outside tabad is detected and read once registered, with no other change."""
    from tabad.datasets.listing import image_files
    from tabad.datasets.reading import finish_category
    from tabad.datasets.sample import Sample

    def read(folder, category, hint, options):
        train = [Sample(p, category, 0, "good", None, "train") for p in image_files(folder / "normal")]
        test = [Sample(p, category, 1, "defect", None, "test") for p in image_files(folder / "defect")]
        return finish_category(root=folder.parent, cat_dir=folder, category=category, layout="flat", train=train,
                               test=test, problems=[], excluded=[], options=options, hint=hint,
                               train_dir=folder / "normal", test_dir=folder / "defect")

    module = type(sys)("flat_layout")
    module.FLAT = Layout(name="flat", looks_for="normal/ and defect/ (layout flat)",
                         detect=lambda f: (f / "normal").is_dir() and (f / "defect").is_dir(), read=read)
    monkeypatch.setitem(sys.modules, "flat_layout", module)
    monkeypatch.setattr(layouts, "REGISTRY", REGISTRY + (layouts.LayoutEntry("flat", "flat_layout:FLAT", "x"),))
    monkeypatch.setattr(layouts, "ALL_LAYOUTS", ALL_LAYOUTS + ("flat",))
    monkeypatch.setattr(layouts, "DETECTION_ORDER", ("flat",) + DETECTION_ORDER)
    get_layout.cache_clear()
    try:
        cat = tmp_path / "widget"
        for split, n in (("normal", 2), ("defect", 1)):
            for i in range(n):
                (cat / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / split / f"{i}.png")
        with warnings.catch_warnings():
            warnings.simplefilter("error", SkippedFilesWarning)
            data = read_category(tmp_path, "widget")
        assert data.layout == "flat" and len(data.train) == 2 and data.n_test_anomalous == 1
    finally:
        get_layout.cache_clear()


def test_skipped_files_warning_points_at_the_caller(tmp_path):
    cat = tmp_path / "c"
    for i in range(2):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / "train" / "good" / f"{i}.png")
    (cat / "test" / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / "test" / "good" / "0.png")
    (cat / "test" / "good" / "1.png").write_bytes(b"not a png")
    with pytest.warns(SkippedFilesWarning) as record:
        read_category(tmp_path, "c", skip_bad=True)
    assert Path(record[0].filename) == Path(__file__)
