"""Prompt lists (supplementary §2), variants (Table 8), class names, mapping files."""

from __future__ import annotations

import json

import pytest

from tabad.errors import TabadError
from tabad.text.prompts import (
    ABNORMAL_STATES,
    GENERIC_TEMPLATES,
    INDUSTRIAL_TEMPLATES,
    NORMAL_STATES,
    VARIANTS,
    build_prompts,
    load_class_name_mapping,
    prompts_hash,
    readable_class_name,
)


def test_list_sizes():
    assert len(NORMAL_STATES) == 8
    assert len(ABNORMAL_STATES) == 17
    assert len(INDUSTRIAL_TEMPLATES) == 20
    assert len(GENERIC_TEMPLATES) == 10
    for lst in (NORMAL_STATES, ABNORMAL_STATES, INDUSTRIAL_TEMPLATES):
        assert len(set(lst)) == len(lst)
        assert all(s.count("{}") == 1 for s in lst)


def test_lists_match_supplementary_verbatim():
    assert NORMAL_STATES[0] == "good {}"
    assert NORMAL_STATES[-1] == "{} without damage"
    assert ABNORMAL_STATES[0] == "not good {}"
    assert ABNORMAL_STATES[-1] == "{} with hole"
    assert INDUSTRIAL_TEMPLATES[0] == "a photo of a {}."
    assert INDUSTRIAL_TEMPLATES[-1] == "a photo of multiple {}."
    # The paper's odd spellings are kept: they change the text features.
    assert "an manufacturing photo of a {}." in INDUSTRIAL_TEMPLATES
    assert "an manufacturing photo of the {}." in INDUSTRIAL_TEMPLATES
    assert "a closed-up photo of the {}." in INDUSTRIAL_TEMPLATES
    assert "{} with bumpy surfaces" in ABNORMAL_STATES
    assert "good condition {}" in NORMAL_STATES


def test_generic_templates_are_the_ones_without_domain_words():
    assert all("industrial" not in t and "manufacturing" not in t for t in GENERIC_TEMPLATES)
    domain = [t for t in INDUSTRIAL_TEMPLATES if t not in GENERIC_TEMPLATES]
    assert len(domain) == 10
    assert all("industrial" in t or "manufacturing" in t for t in domain)
    assert GENERIC_TEMPLATES[0] == "a photo of a {}." and GENERIC_TEMPLATES[-1] == "a photo of multiple {}."


def test_idpa_counts_and_construction():
    normal, abnormal = build_prompts("transistor")
    assert len(normal) == 8 * 20 == 160
    assert len(abnormal) == 17 * 20 == 340
    assert len(set(normal)) == 160 and len(set(abnormal)) == 340
    # The supplementary's examples ("A photo of the damaged transistor.", "... transistor with damage.").
    assert "a photo of the damaged transistor." in abnormal
    assert "a photo of the transistor with damage." in abnormal
    assert "a manufacturing cropped photo of the transistor with damage." in abnormal
    assert normal[0] == "a photo of a good transistor."
    assert normal[-1] == "a photo of multiple transistor without damage."
    assert abnormal[0] == "a photo of a not good transistor."
    assert abnormal[-1] == "a photo of multiple transistor with hole."
    assert not set(normal) & set(abnormal)
    assert all("transistor" in s for s in normal + abnormal)


@pytest.mark.parametrize(
    "variant, n_normal, n_abnormal",
    [("one-class", 1, 1), ("two-class", 1, 1), ("state-ensemble", 8, 17), ("clip-template", 80, 170), ("idpa", 160, 340)],
)
def test_variant_counts(variant, n_normal, n_abnormal):
    normal, abnormal = build_prompts("metal nut", variant)
    assert (len(normal), len(abnormal)) == (n_normal, n_abnormal)


def test_variant_contents():
    assert build_prompts("screw", "one-class") == (["screw"], ["screw"])
    assert build_prompts("screw", "two-class") == (["normal screw"], ["anomalous screw"])
    normal, abnormal = build_prompts("screw", "state-ensemble")
    assert normal[0] == "good screw" and abnormal[-1] == "screw with hole"
    normal, abnormal = build_prompts("screw", "clip-template")
    assert not any("industrial" in s or "manufacturing" in s for s in normal + abnormal)
    normal, abnormal = build_prompts("screw", "idpa")
    assert any("industrial" in s for s in normal) and any("manufacturing" in s for s in abnormal)
    assert VARIANTS == ("one-class", "two-class", "state-ensemble", "clip-template", "idpa")


def test_unknown_variant_and_bad_name():
    with pytest.raises(TabadError, match="unknown prompt variant"):
        build_prompts("screw", "winclip")
    with pytest.raises(TabadError):
        build_prompts("  ")


def test_readable_class_name():
    assert readable_class_name("metal_nut") == "metal nut"
    assert readable_class_name("cable-gland") == "cable gland"
    assert readable_class_name("  Metal   Tube ") == "Metal Tube"
    assert readable_class_name("a__b--c") == "a b c"
    assert readable_class_name("bottle") == "bottle"
    assert readable_class_name("macaroni1", {"macaroni1": "macaroni"}) == "macaroni"
    assert readable_class_name("metal_nut", {"other": "x"}) == "metal nut"
    with pytest.raises(TabadError):
        readable_class_name("__")


def test_mapping_yaml_and_json(tmp_path):
    y = tmp_path / "names.yaml"
    y.write_text("macaroni1: macaroni\npcb1: printed  circuit board\n")
    assert load_class_name_mapping(y) == {"macaroni1": "macaroni", "pcb1": "printed circuit board"}
    j = tmp_path / "names.json"
    j.write_text(json.dumps({"metal_nut": "metal nut"}))
    assert load_class_name_mapping(j) == {"metal_nut": "metal nut"}
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert load_class_name_mapping(empty) == {}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.yaml", "a: [unclosed\n", "not valid YAML"),
        ("bad.json", "{not json", "not valid JSON"),
        ("list.yaml", "- a\n- b\n", "expected a mapping"),
        ("num.yaml", "a: 3\n", "must be a non-empty string"),
        ("blank.json", '{"a": "  "}', "must be a non-empty string"),
    ],
)
def test_mapping_errors_name_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TabadError, match=match) as info:
        load_class_name_mapping(path)
    assert str(path) in str(info.value)


def test_mapping_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(TabadError, match="not found") as info:
        load_class_name_mapping(path)
    assert str(path) in str(info.value)


def test_prompts_hash_stable_and_sensitive():
    a = build_prompts("screw")
    assert prompts_hash(a) == prompts_hash(build_prompts("screw"))
    assert len(prompts_hash(a)) == 64
    # Pinned: a change here means the prompt lists changed, and with them every cached
    # text feature and every TAB checkpoint's text targets.
    assert prompts_hash(a) == "08d9c3930e90762d6e7d77034694a514d84a6feb9d98da0b266b2cfbb437748f"
    assert prompts_hash(a) == prompts_hash([a])
    assert prompts_hash(a) != prompts_hash(build_prompts("screws"))
    assert prompts_hash(a) != prompts_hash(build_prompts("screw", "clip-template"))
    assert prompts_hash(a) != prompts_hash((a[0][::-1], a[1]))
    assert prompts_hash(a) != prompts_hash((a[1], a[0]))
    two = [build_prompts("screw"), build_prompts("cable")]
    assert prompts_hash(two) != prompts_hash(two[::-1])
