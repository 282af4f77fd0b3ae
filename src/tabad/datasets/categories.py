"""Texture or object? Needed for the paper-style averages (Tables 1-3)."""

from __future__ import annotations

import json
from pathlib import Path

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw",
                 "toothbrush", "transistor", "zipper")
# MVTec 3D-AD: all ten categories are objects.
MVTEC3D_OBJECTS = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
                   "rope", "tire")


def category_kind(root: str | Path, category: str) -> str:
    """"texture", "object" or "other".

    A ``dataset.json`` with a ``categories`` mapping (written by
    ``tabad make-data``) wins; otherwise the published MVTec assignments.
    """
    meta = Path(root) / "dataset.json"
    if meta.is_file():
        try:
            cats = json.loads(meta.read_text()).get("categories", {})
            entry = cats.get(category)
            kind = entry.get("kind") if isinstance(entry, dict) else entry
            if kind in ("texture", "object"):
                return kind
        except (json.JSONDecodeError, AttributeError):
            pass
    if category in MVTEC_TEXTURES:
        return "texture"
    if category in MVTEC_OBJECTS or category in MVTEC3D_OBJECTS:
        return "object"
    return "other"
