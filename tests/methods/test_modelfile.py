"""Saved fitted models (tabad.methods.modelfile): bit-identical round trips for every method, safe bad-file errors."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from tabad.backbones import build_backbone
from tabad.datasets.loader import Batches
from tabad.methods import REGISTRY, create_method, load_model, method_class
from tabad.methods.base import FEW_SHOT, KINDS, AnomalyModel, AnomalyOutput, FitContext
from tabad.methods.modelfile import ModelFileError, read_header
from tabad.methods.regad import FewShotData

SIZE = 64
#: Small settings per method, so every round trip fits in a few seconds.
OPTIONS = {
    "padim": {"n_features": 20},
    "patchcore": {"coreset_ratio": 0.5},
    "rd4ad": {"epochs": 1, "batch_size": 2},
    "simplenet": {"epochs": 1, "batch_size": 2, "embed_dim": 32, "dsc_hidden": 16},
    "regad": {"epochs": 1, "batch_size": 2, "shots": 2, "image_size": SIZE},
}


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", "random:0")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def _fit(name, backbone, images) -> AnomalyModel:
    torch.manual_seed(0)
    model = create_method(name, backbone, OPTIONS[name])
    if model.kind == FEW_SHOT:
        return model.fit(FewShotData(images[:2], {"other": images[2:]}), FitContext(seed=0))
    return model.fit(Batches(images, model.batch_size, normalise=model.normalisation), FitContext(seed=0))


@pytest.fixture(scope="module")
def fitted(backbone, images, tmp_path_factory):
    """name -> (model, its saved file)."""
    out = {}
    folder = tmp_path_factory.mktemp("models")
    for name in sorted(REGISTRY):
        model = _fit(name, backbone, images)
        out[name] = (model, model.save(folder / f"{name}.tabad", extra={"training_data": {"n_images": len(images)}}))
    return out


def _inputs(model, images):
    return next(iter(Batches(images, 6, normalise=model.normalisation)))


def test_every_registered_method_follows_the_protocol():
    for name in REGISTRY:
        cls = method_class(name)
        assert issubclass(cls, AnomalyModel) and cls.name == name and cls.kind in KINDS
        assert isinstance(cls.uses_backbone, bool) and isinstance(cls.trains, bool)
        assert cls.config_class.paper_geometry is not None


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_round_trip_is_bit_identical(name, fitted, images):
    model, path = fitted[name]
    x = _inputs(model, images)
    with torch.no_grad():
        before = model(x)
        loaded = load_model(path)
        after = loaded(x)
    assert isinstance(before, AnomalyOutput) and type(loaded) is type(model)
    assert torch.equal(before.scores, after.scores) and torch.equal(before.maps, after.maps)
    assert loaded.config == model.config


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fitted_tensors_are_row_major(name, fitted):
    """A model file stores row-major tensors; a column-major fitted buffer would score differently after loading."""
    model, _ = fitted[name]
    loaded = load_model(fitted[name][1])
    # Each tensor must have the layout the loaded model gives it (the backbone runs channels_last in both).
    strides = {k: v.stride() for k, v in loaded.state_dict().items()}
    assert {k: v.stride() for k, v in model.state_dict().items()} == strides


def test_header_records_what_made_the_model(fitted, backbone):
    header = read_header(fitted["patchcore"][1])
    assert header["method"] == "patchcore" and header["kind"] == "one-class"
    assert header["backbone"]["family"] == "resnet" and header["backbone"]["arch"] == "resnet18"
    assert header["backbone"]["weights"]["sha256"] == backbone.info.sha256
    assert header["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert header["training_data"] == {"n_images": 6}
    assert header["fitted"]["grid"] == [8, 8] and header["tabad_version"]


def test_same_model_same_bytes(fitted, tmp_path):
    model, path = fitted["padim"]
    again = model.save(tmp_path / "again.tabad", extra={"training_data": {"n_images": 6}})
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()


def test_load_checks_the_class(fitted):
    from tabad.errors import TabadError
    from tabad.methods.padim import Padim
    from tabad.methods.patchcore import PatchCore

    assert isinstance(Padim.load(fitted["padim"][1]), Padim)
    with pytest.raises(TabadError, match="holds a padim model"):
        PatchCore.load(fitted["padim"][1])


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found") as exc:
        load_model(tmp_path / "nope.tabad")
    assert "nope.tabad" in str(exc.value)


def test_truncated_file(fitted, tmp_path):
    bad = tmp_path / "cut.tabad"
    bad.write_bytes(fitted["padim"][1].read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated or damaged") as exc:
        load_model(bad)
    assert str(bad) in str(exc.value)


def test_tampered_tensor_bytes(fitted, tmp_path):
    raw = bytearray(fitted["padim"][1].read_bytes())
    raw[-5] ^= 0xFF  # inside the last tensor's data
    bad = tmp_path / "tampered.tabad"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="modified after saving"):
        load_model(bad)


def test_foreign_files(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelFileError, match="without a tabad header"):
        load_model(plain)

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "executed"), "w"))

    evil = tmp_path / "evil.tabad"
    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError):
        load_model(evil)
    assert not (tmp_path / "executed").exists()  # nothing in the file was run


def test_header_of_another_format(fitted, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "v9.tabad"
    save_file({"w": torch.zeros(2)}, other, metadata={"tabad": json.dumps({"format": "tabad-model/9"})})
    with pytest.raises(ModelFileError, match="unsupported model format"):
        load_model(other)
