"""Prompt sentences for TAB's text side: Industrial Domain Prompt Association (IDPA).

A sentence is built from a *template* (with ``{}`` for the state), a *state*
(with ``{}`` for the class name) and the class name::

    template.format(state.format(class_name))
    'a photo of the {}.'.format('damaged {}'.format('transistor'))
    -> 'a photo of the damaged transistor.'

The three lists are copied verbatim from the TAB supplementary material §2
(2.1 prompt normal: 8 states, 2.2 prompt abnormal: 17 states, 2.3 industrial
domain prompt template: 20 templates), odd spellings included ("an
manufacturing photo", "a closed-up photo", "a photo of a unblemished ..."):
changing them would change the text features and so the pre-trained weights.

Variants (the rows of the paper's Table 8 prompt-design ablation). The paper
names the rows but gives **no exact prompt lists** for the ablation rows; the
lists below are our reading of its text (§4.9.5) and are not from the authors:

``one-class``
    normal = abnormal = ``["{c}"]``: the bare class name, no anomaly word. Both
    branches align to the same class text; nothing tells normal from abnormal.
``two-class``
    normal = ``["normal {c}"]``, abnormal = ``["anomalous {c}"]``. The paper says
    this row adds "textual supervision for the term 'anomalous'", so we use that
    word (the IDPA abnormal list itself says "abnormal {c}").
``state-ensemble``
    all 8 normal / 17 abnormal states, no template (the sentence is the state).
``clip-template``
    states x the 10 generic templates of the §2.3 list, i.e. those without
    "industrial" or "manufacturing" (:data:`GENERIC_TEMPLATES`). The authors may
    have used a different, CLIP/WinCLIP-style generic list; ours keeps the
    comparison with ``idpa`` to exactly the domain keywords.
``idpa``
    states x all 20 templates: the full method (160 normal, 340 abnormal
    sentences per class).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping, Sequence

from tabad.errors import TabadError

#: Supplementary §2.1 "prompt normal" (8). ``{}`` is the class name.
NORMAL_STATES: tuple[str, ...] = (
    "good {}",
    "unblemished {}",
    "normal {}",
    "perfect {}",
    "good condition {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

#: Supplementary §2.2 "prompt abnormal" (17). ``{}`` is the class name.
ABNORMAL_STATES: tuple[str, ...] = (
    "not good {}",
    "blemished {}",
    "abnormal {}",
    "imperfect {}",
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
    "{} with distortion",
    "{} with stains",
    "{} with missing parts",
    "{} with broken parts",
    "{} with bumpy surfaces",
    "{} with dirty background",
    "{} with scratch",
    "{} with hole",
)

#: Supplementary §2.3 "industrial domain prompt template" (20), verbatim. ``{}`` is the state.
INDUSTRIAL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "an industrial photo of a {}.",
    "an industrial photo of the {}.",
    "an manufacturing photo of a {}.",
    "an manufacturing photo of the {}.",
    "a high reflection industrial photo of a {}.",
    "a high reflection industrial photo of the {}.",
    "an industrial photo of a rotated {}.",
    "an industrial photo of the rotated {}.",
    "a manufacturing cropped photo of a {}.",
    "a manufacturing cropped photo of the {}.",
    "a photo of the rotated {}.",
    "a closed-up photo of the {}.",
    "a blurry photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
    "a low resolution photo of the {}.",
    "a photo of one {}.",
    "a photo of multiple {}.",
)

#: The 10 templates of the list without a domain keyword ("industrial", "manufacturing").
GENERIC_TEMPLATES: tuple[str, ...] = tuple(
    t for t in INDUSTRIAL_TEMPLATES if "industrial" not in t and "manufacturing" not in t
)

#: Prompt variants, weakest first (paper Table 8 rows; see the module docstring).
VARIANTS: tuple[str, ...] = ("one-class", "two-class", "state-ensemble", "clip-template", "idpa")

_TWO_CLASS = (("normal {}",), ("anomalous {}",))


def _states_and_templates(variant: str) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    """(normal states, abnormal states, templates) of ``variant``."""
    identity = ("{}",)
    if variant == "one-class":
        return identity, identity, identity
    if variant == "two-class":
        return _TWO_CLASS[0], _TWO_CLASS[1], identity
    if variant == "state-ensemble":
        return NORMAL_STATES, ABNORMAL_STATES, identity
    if variant == "clip-template":
        return NORMAL_STATES, ABNORMAL_STATES, GENERIC_TEMPLATES
    if variant == "idpa":
        return NORMAL_STATES, ABNORMAL_STATES, INDUSTRIAL_TEMPLATES
    raise TabadError(f"unknown prompt variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def build_prompts(class_name: str, variant: str = "idpa") -> tuple[list[str], list[str]]:
    """Normal and abnormal sentences for one class, states outer, templates inner.

    ``class_name`` is used as given: pass a readable name
    (:func:`readable_class_name`), not a folder name like ``metal_nut``.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise TabadError(f"class name must be a non-empty string, got {class_name!r}")
    normal_states, abnormal_states, templates = _states_and_templates(variant)

    def sentences(states: Sequence[str]) -> list[str]:
        return [t.format(s.format(class_name)) for s in states for t in templates]

    return sentences(normal_states), sentences(abnormal_states)


def readable_class_name(folder_name: str, mapping: Mapping[str, str] | None = None) -> str:
    """The class name written into prompts: ``metal_nut`` -> ``metal nut``.

    ``mapping`` (folder name -> name) overrides; otherwise underscores and
    hyphens become spaces and runs of whitespace collapse to one space. Case is
    kept (the industrial dataset's folders are e.g. ``Metal Tube``).
    """
    if mapping is not None and folder_name in mapping:
        name = " ".join(str(mapping[folder_name]).split())
    else:
        name = " ".join(re.sub(r"[_\-]+", " ", folder_name).split())
    if not name:
        raise TabadError(f"class folder {folder_name!r} gives an empty class name; map it to a name")
    return name


def load_class_name_mapping(path: str | Path) -> dict[str, str]:
    """Read ``{folder: class name}`` from a YAML (``.yaml``/``.yml``) or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise TabadError(f"{path}: class-name mapping file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TabadError(f"{path}: cannot read class-name mapping ({exc})") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise TabadError(f"{path}: not valid {kind} ({exc.__class__.__name__}: {exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TabadError(f"{path}: expected a mapping {{folder: class name}}, got {type(data).__name__}")
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise TabadError(f"{path}: class name for {key!r} must be a non-empty string, got {value!r}")
        out[str(key)] = " ".join(value.split())
    return out


def prompts_hash(prompts: tuple[Sequence[str], Sequence[str]] | Sequence[tuple[Sequence[str], Sequence[str]]]) -> str:
    """sha256 (hex) of sentence lists, stable across runs and platforms.

    Accepts one ``(normal, abnormal)`` pair as returned by
    :func:`build_prompts`, or a sequence of such pairs (one per class).
    Sentence order matters.
    """
    if len(prompts) == 2 and all(isinstance(s, str) for part in prompts for s in part):
        pairs = [prompts]
    else:
        pairs = list(prompts)
    payload = [[list(normal), list(abnormal)] for normal, abnormal in pairs]
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
