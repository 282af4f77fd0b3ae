"""Wafer maps for defect classification: the MixedWM38 file and a procedural stand-in.

**MixedWM38** (Wang et al. 2020; the TAB paper's defect-classification
benchmark, Table 3) ships as one file, ``Wafer_Map_Datasets.npz``:

* ``arr_0``: ``(N, 52, 52)`` integer wafer maps; 0 = no die (outside the
  wafer), 1 = normal (passing) die, 2 = defective (failing) die;
* ``arr_1``: ``(N, 8)`` 0/1 labels, *multi-hot* over the 8 basic patterns
  :data:`PATTERNS` in the file's column order (the dataset's README calls it
  "one-hot", but the 29 mixed types set several columns). An all-zero row is
  a normal wafer.

The 38 classes are: normal, the 8 single patterns, and 29 mixtures of 2, 3
or 4 patterns (:data:`MIXEDWM38_CLASSES`). Near-full and Random occur only
alone; Center and Donut never occur together, nor do Edge-Loc and Edge-Ring.

:func:`read_wafer_npz` reads and checks such a file (or a folder holding it).
:func:`make_wafers` writes a procedurally generated file in the very same
format, with every one of the 38 classes, so the whole classification
pipeline runs offline. :func:`wafer_to_image` turns maps into CNN input.

The generator draws each map as follows (coordinates in units of the wafer
radius R, so the patterns look the same at any ``size``):

* a circular wafer of radius R ≈ size/2 (0 outside, 1 inside);
* a failure probability per die: sparse background failures (density
  0.2–2 %) united with each pattern's probability field,
  ``P = 1 - prod(1 - P_k)``; a die fails when a uniform draw is below ``P``;
* the patterns, each with random position, size, orientation and density
  (a Loc or Scratch is placed clear of the patterns drawn before it, so
  that it stays visible in a mixture):

  - **Center**: a (slightly elliptical) blob near the middle, radius 0.15–0.4 R;
  - **Donut**: a ring around the middle, inner radius 0.22–0.45 R, width
    0.12–0.25 R, sometimes with a gap;
  - **Edge-Loc**: a half-ellipse on the rim, 40–100° wide, 0.18–0.4 R deep;
  - **Edge-Ring**: a band along the rim, 0.07–0.16 R deep, covering 270–360°;
  - **Loc**: a compact blob inside the wafer, radius 0.1–0.2 R, between
    0.15 R and 0.85 R from the centre;
  - **Near-full**: 80–97 % of the dies fail, with a few passing islands;
  - **Scratch**: a thin curved line (one to two dies wide), 0.5–1.4 R long;
  - **Random**: failures scattered over the whole wafer (density 10–30 %).

Determinism: every map is drawn from a :class:`numpy.random.SeedSequence`
keyed by ``(seed, class name, index)`` through SHA-256, and the ``.npz`` is
written with fixed zip time stamps, so the same arguments give a
byte-identical file.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tabad.errors import DataError

__all__ = [
    "DEFAULT_FILE_NAME",
    "MIXEDWM38_CLASSES",
    "PATTERNS",
    "WaferData",
    "class_names",
    "make_wafers",
    "read_wafer_npz",
    "render_wafer",
    "resize_nearest",
    "wafer_to_image",
]

#: Bump whenever the maps produced for given arguments change.
GENERATOR_VERSION = "1"

#: The 8 basic patterns, in the column order of MixedWM38's ``arr_1``.
PATTERNS: tuple[str, ...] = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Scratch", "Random")

#: File name of the published dataset; a folder given as data must hold it.
DEFAULT_FILE_NAME = "Wafer_Map_Datasets.npz"

#: Grey level of each die state in :func:`wafer_to_image`: no die, normal, defective.
GREY_LEVELS = (0, 127, 255)


def _mixtures() -> list[tuple[str, ...]]:
    # Groups whose members never co-occur in MixedWM38; any 2..4 of the four
    # groups combine. 3*3*2*2 = 36 subsets: 1 empty, 6 single, 13 + 12 + 4 mixed.
    import itertools

    out = []
    for a, b, loc, scr in itertools.product((None, "Center", "Donut"), (None, "Edge-Loc", "Edge-Ring"),
                                            (None, "Loc"), (None, "Scratch")):
        members = tuple(p for p in (a, b, loc, scr) if p)
        if len(members) >= 2:
            out.append(members)
    out.sort(key=lambda m: (len(m), [PATTERNS.index(p) for p in m]))
    return [tuple(sorted(m, key=PATTERNS.index)) for m in out]


#: The 38 classes of MixedWM38 as tuples of patterns: normal ``()``, the 8
#: single patterns, then the 13 two-, 12 three- and 4 four-pattern mixtures.
MIXEDWM38_CLASSES: tuple[tuple[str, ...], ...] = (
    (), *((p,) for p in PATTERNS), *_mixtures())


@dataclass
class WaferData:
    """Wafer maps and their multi-hot labels."""

    maps: np.ndarray  # uint8 (N, H, W), values 0/1/2
    labels: np.ndarray  # uint8 (N, 8), 0/1 over PATTERNS
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def class_names(self) -> list[str]:
        """One name per map: ``normal`` or the patterns joined with ``+``."""
        return class_names(self.labels)


def class_name(patterns: Sequence[str]) -> str:
    return "+".join(patterns) if patterns else "normal"


def class_names(labels: np.ndarray) -> list[str]:
    """``normal`` or ``Center+Loc``-style names for each multi-hot row."""
    labels = np.asarray(labels)
    return [class_name([PATTERNS[j] for j in np.flatnonzero(row)]) for row in labels]


def labels_of(patterns: Sequence[str]) -> np.ndarray:
    """The multi-hot uint8 row of a set of pattern names."""
    row = np.zeros(len(PATTERNS), dtype=np.uint8)
    for p in patterns:
        if p not in PATTERNS:
            raise ValueError(f"unknown pattern {p!r}; known: {', '.join(PATTERNS)}")
        row[PATTERNS.index(p)] = 1
    return row


# ----------------------------------------------------------------------------
# reading


def resolve_wafer_path(path: str | Path) -> Path:
    """``path`` itself when a file, ``path/Wafer_Map_Datasets.npz`` when a folder."""
    path = Path(path)
    if path.is_dir():
        inner = path / DEFAULT_FILE_NAME
        if not inner.is_file():
            raise DataError(path, f"folder has no {DEFAULT_FILE_NAME} (the MixedWM38 file)")
        return inner
    if not path.exists():
        raise DataError(path, "wafer map file not found")
    return path


def read_wafer_npz(path: str | Path) -> WaferData:
    """Read and check a MixedWM38-format ``.npz`` (or a folder holding ``Wafer_Map_Datasets.npz``).

    Every problem raises :class:`tabad.errors.DataError` naming the file:
    a missing file, a file that is not an npz archive, missing ``arr_0`` /
    ``arr_1``, maps that are not ``(N, H, W)``, labels that are not
    ``(N, 8)``, different N, map values other than 0/1/2, label values other
    than 0/1.
    """
    path = resolve_wafer_path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"not a readable .npz archive ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(path, "not an .npz archive (a single .npy array?); expected arr_0 (maps) and arr_1 (labels)")
    with archive:
        missing = [k for k in ("arr_0", "arr_1") if k not in archive.files]
        if missing:
            raise DataError(path, f"missing array(s) {', '.join(missing)}; the archive holds "
                                  f"{', '.join(archive.files) or 'nothing'} (expected arr_0 = maps, arr_1 = labels)")
        try:
            maps, labels = archive["arr_0"], archive["arr_1"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(path, f"cannot read the arrays ({exc.__class__.__name__}: {exc})") from None
    if maps.ndim != 3:
        raise DataError(path, f"arr_0 (maps) must have 3 dimensions (N, H, W), got shape {maps.shape}")
    if labels.ndim != 2:
        raise DataError(path, f"arr_1 (labels) must have 2 dimensions (N, 8), got shape {labels.shape}")
    if labels.shape[1] != len(PATTERNS):
        raise DataError(path, f"arr_1 (labels) must have {len(PATTERNS)} columns ({', '.join(PATTERNS)}), "
                              f"got {labels.shape[1]}")
    if maps.shape[0] != labels.shape[0]:
        raise DataError(path, f"arr_0 has {maps.shape[0]} maps but arr_1 has {labels.shape[0]} label rows")
    if maps.shape[0] == 0:
        raise DataError(path, "the archive holds no wafer maps")
    if not (np.issubdtype(maps.dtype, np.number) or maps.dtype == bool):
        raise DataError(path, f"arr_0 (maps) must be numeric, got dtype {maps.dtype}")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise DataError(path, f"arr_1 (labels) must be numeric, got dtype {labels.dtype}")
    bad = ~np.isin(maps, (0, 1, 2))
    if bad.any():
        values = np.unique(maps[bad])[:5]
        raise DataError(path, f"arr_0 (maps) holds values other than 0 (no die), 1 (normal), 2 (defective): "
                              f"{', '.join(str(v) for v in values)} (e.g. at map {int(np.argwhere(bad)[0][0])})")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        values = np.unique(labels[bad])[:5]
        raise DataError(path, f"arr_1 (labels) must be 0/1, got {', '.join(str(v) for v in values)} "
                              f"(e.g. in row {int(np.argwhere(bad)[0][0])})")
    return WaferData(maps.astype(np.uint8), labels.astype(np.uint8), path)


# ----------------------------------------------------------------------------
# CNN input


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes to ``size`` x ``size``.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * H / size)``, so
    an integer up-scaling repeats every die exactly ``size / H`` times.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return images[..., rows[:, None], cols[None, :]]


def wafer_to_image(maps: np.ndarray, size: int | None = None) -> np.ndarray:
    """Wafer maps ``(N, H, W)`` → uint8 images ``(N, 3, S, S)`` for a CNN.

    Colour mapping: 0 (no die) → 0 (black), 1 (normal die) → 127 (grey),
    2 (defective die) → 255 (white), replicated to the 3 channels (the
    mapping of methods.md §7). With ``size``, the maps are resized with
    nearest neighbour first, so every die stays a flat block of one grey
    level (the paper does not state its input size; methods.md §7 suggests
    224; ``tabad classify`` keeps the maps' own size unless given ``--image-size``).
    """
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, H, W), got {maps.shape}")
    if size is not None:
        maps = resize_nearest(maps, int(size))
    lut = np.array(GREY_LEVELS, dtype=np.uint8)
    grey = lut[np.clip(maps, 0, 2).astype(np.intp)]
    return np.repeat(grey[:, None], 3, axis=1)


# ----------------------------------------------------------------------------
# generation


def wafer_seed(seed: int, name: str, index: int) -> np.random.SeedSequence:
    """Seed sequence of one generated map (stable across processes and versions of Python)."""
    if not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    digest = hashlib.sha256(f"tabad-wafers|{GENERATOR_VERSION}|{name}|{int(index)}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    seed = int(seed)
    return np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, *words])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _angle_diff(theta: np.ndarray, theta0: float) -> np.ndarray:
    """Signed angular distance in (-pi, pi]."""
    return (theta - theta0 + math.pi) % (2 * math.pi) - math.pi


class _Field:
    """Coordinates of one map in wafer-radius units, and the pattern fields drawn on them."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.R = size / 2.0 - rng.uniform(0.3, 1.2)
        c = (size - 1) / 2.0
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        self.u, self.v = (x - c) / self.R, (y - c) / self.R
        self.r = np.hypot(self.u, self.v)
        self.theta = np.arctan2(self.v, self.u)
        self.inside = self.r <= 1.0
        self.soft = 0.6 / self.R  # about half a die: soft but visible borders
        self.rng = rng
        self.occupied = np.zeros_like(self.r)  # union of the pattern fields drawn so far

    def _blob(self, cx: float, cy: float, radius: float, aspect: float, angle: float) -> np.ndarray:
        du, dv = self.u - cx, self.v - cy
        ca, sa = math.cos(angle), math.sin(angle)
        a, b = du * ca + dv * sa, -du * sa + dv * ca
        d = np.hypot(a / math.sqrt(aspect), b * math.sqrt(aspect))
        return _sigmoid((radius - d) / self.soft)

    def center(self) -> np.ndarray:
        g = self.rng
        cx, cy = np.clip(g.normal(0.0, 0.05, 2), -0.12, 0.12)
        return g.uniform(0.75, 0.98) * self._blob(cx, cy, g.uniform(0.15, 0.4), g.uniform(0.75, 1.3),
                                                  g.uniform(0, math.pi))

    def donut(self) -> np.ndarray:
        g = self.rng
        cx, cy = np.clip(g.normal(0.0, 0.04, 2), -0.1, 0.1)
        r_in = g.uniform(0.22, 0.45)
        width = g.uniform(0.12, 0.25)
        d = np.hypot(self.u - cx, self.v - cy)
        ring = _sigmoid((d - r_in) / self.soft) * _sigmoid((r_in + width - d) / self.soft)
        if g.random() < 0.4:  # a gap in the ring
            gap = g.uniform(0.3, 1.2)
            ring = ring * _sigmoid((np.abs(_angle_diff(self.theta, g.uniform(-math.pi, math.pi))) - gap / 2)
                                   / 0.15)
        return g.uniform(0.7, 0.95) * ring

    def edge_loc(self) -> np.ndarray:
        g = self.rng
        theta0 = g.uniform(-math.pi, math.pi)
        half = math.radians(g.uniform(20, 50))
        depth = g.uniform(0.18, 0.4)
        t = _angle_diff(self.theta, theta0) / half
        inner = 1.0 - depth * np.sqrt(np.clip(1.0 - t * t, 0.0, None))  # a half-ellipse on the rim
        return g.uniform(0.7, 0.95) * _sigmoid((self.r - inner) / self.soft) * (np.abs(t) < 1.0)

    def edge_ring(self) -> np.ndarray:
        g = self.rng
        depth = g.uniform(0.07, 0.16)
        # the depth wobbles a little around the rim
        phase = g.uniform(0, 2 * math.pi)
        inner = 1.0 - depth * (1.0 + 0.3 * np.sin(2 * self.theta + phase))
        band = _sigmoid((self.r - inner) / self.soft)
        coverage = g.uniform(0.75, 1.0) * 2 * math.pi
        if coverage < 2 * math.pi - 0.05:
            gap = 2 * math.pi - coverage
            band = band * (np.abs(_angle_diff(self.theta, g.uniform(-math.pi, math.pi))) > gap / 2)
        return g.uniform(0.75, 0.95) * band

    def _placed(self, draw) -> np.ndarray:
        """The first of up to 12 draws that stays clear of the patterns drawn so far and
        inside the wafer (or the least bad one), so a Loc or Scratch is not hidden in a
        Center blob or a Donut ring and its label stays visible."""
        best, best_bad = None, math.inf
        for _ in range(12):
            p = draw()
            mass = float(p.sum()) + 1e-9
            bad = float((p * self.occupied).sum() + p[~self.inside].sum()) / mass
            if bad < best_bad:
                best, best_bad = p, bad
            if bad < 0.05:
                break
        return best

    def loc(self) -> np.ndarray:
        def draw():
            g = self.rng
            radius = g.uniform(0.1, 0.2)
            r0, t0 = g.uniform(0.15 + radius, 0.85 - radius), g.uniform(-math.pi, math.pi)
            return g.uniform(0.75, 0.95) * self._blob(r0 * math.cos(t0), r0 * math.sin(t0), radius,
                                                     g.uniform(0.6, 1.6), g.uniform(0, math.pi))

        return self._placed(draw)

    def near_full(self) -> np.ndarray:
        g = self.rng
        p = np.full_like(self.r, g.uniform(0.8, 0.97))
        for _ in range(int(g.integers(0, 4))):  # a few passing islands
            r0, t0 = g.uniform(0.0, 0.8), g.uniform(-math.pi, math.pi)
            p = p * (1.0 - 0.8 * self._blob(r0 * math.cos(t0), r0 * math.sin(t0), g.uniform(0.05, 0.15), 1.0, 0.0))
        return p

    def scratch(self) -> np.ndarray:
        return self._placed(self._scratch)

    def _scratch(self) -> np.ndarray:
        g = self.rng
        length = g.uniform(0.5, 1.4)
        r0, t0 = g.uniform(0.0, 0.6), g.uniform(-math.pi, math.pi)
        start = np.array([r0 * math.cos(t0), r0 * math.sin(t0)])
        heading = g.uniform(-math.pi, math.pi)
        curvature = g.uniform(-1.5, 1.5)  # radians of turn over the whole length
        n_seg = 24
        step = length / n_seg
        pts = [start]
        for i in range(n_seg):
            heading += curvature / n_seg + g.normal(0.0, 0.03)
            pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        pts = np.array(pts)
        half_width = g.uniform(0.6, 1.1) / self.R  # one to two dies wide
        density = g.uniform(0.9, 1.0)
        # distances only inside the curve's bounding box (plus a margin): the rest stays 0
        margin = half_width + 3.0 / self.R
        cols = np.flatnonzero((self.u[0] >= pts[:, 0].min() - margin) & (self.u[0] <= pts[:, 0].max() + margin))
        rows = np.flatnonzero((self.v[:, 0] >= pts[:, 1].min() - margin) & (self.v[:, 0] <= pts[:, 1].max() + margin))
        out = np.zeros_like(self.r)
        if not len(rows) or not len(cols):
            return out
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        u, v = self.u[box], self.v[box]
        a, b = pts[:-1], pts[1:]
        ab = b - a  # (S, 2)
        pu = u[None] - a[:, 0, None, None]
        pv = v[None] - a[:, 1, None, None]
        t = np.clip((pu * ab[:, 0, None, None] + pv * ab[:, 1, None, None])
                    / (ab ** 2).sum(1)[:, None, None], 0.0, 1.0)
        d = np.hypot(pu - t * ab[:, 0, None, None], pv - t * ab[:, 1, None, None]).min(0)
        out[box] = density * _sigmoid((half_width - d) / (0.25 / self.R))
        return out

    def random(self) -> np.ndarray:
        return np.full_like(self.r, self.rng.uniform(0.1, 0.3))


_PATTERN_FN = {
    "Center": _Field.center, "Donut": _Field.donut, "Edge-Loc": _Field.edge_loc, "Edge-Ring": _Field.edge_ring,
    "Loc": _Field.loc, "Near-full": _Field.near_full, "Scratch": _Field.scratch, "Random": _Field.random,
}


def render_wafer(patterns: Iterable[str], seed_seq: np.random.SeedSequence | int, size: int = 52) -> np.ndarray:
    """One wafer map (uint8 ``(size, size)``, 0/1/2) showing ``patterns`` (empty: a normal wafer)."""
    patterns = tuple(patterns)
    unknown = [p for p in patterns if p not in PATTERNS]
    if unknown:
        raise ValueError(f"unknown pattern(s) {unknown}; known: {', '.join(PATTERNS)}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed_seq)
    f = _Field(size, rng)
    keep = np.full(f.r.shape, 1.0 - rng.uniform(0.002, 0.02))  # 1 - background failure probability
    for p in sorted(patterns, key=PATTERNS.index):
        field = _PATTERN_FN[p](f)
        f.occupied = 1.0 - (1.0 - f.occupied) * (1.0 - field)
        keep = keep * (1.0 - field)
    failing = rng.random(f.r.shape) >= keep
    out = np.zeros((size, size), dtype=np.uint8)
    out[f.inside] = 1
    out[f.inside & failing] = 2
    return out


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-able npz with fixed time stamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def make_wafers(out: str | Path, n_per_class: int = 30, size: int = 52, seed: int = 0,
                classes: Sequence[Sequence[str]] | None = None) -> Path:
    """Write a procedural MixedWM38-format ``.npz`` (``arr_0`` maps, ``arr_1`` labels) to ``out``.

    ``n_per_class`` maps of each of the 38 classes (or of ``classes``, tuples
    of pattern names), class by class in :data:`MIXEDWM38_CLASSES` order;
    ``size`` x ``size`` maps (MixedWM38: 52). ``out`` may be a folder, which
    then receives ``Wafer_Map_Datasets.npz``. The file is written atomically,
    and the same arguments give the same bytes. Returns the file's path.
    """
    from tabad.files import atomic_write_bytes

    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    wafer_seed(seed, "check", 0)  # validates the seed
    out = Path(out)
    if out.is_dir() or (not out.suffix and not out.exists()):
        out = out / DEFAULT_FILE_NAME
    classes = MIXEDWM38_CLASSES if classes is None else tuple(tuple(c) for c in classes)
    maps = np.zeros((len(classes) * n_per_class, size, size), dtype=np.uint8)
    labels = np.zeros((len(classes) * n_per_class, len(PATTERNS)), dtype=np.uint8)
    k = 0
    for patterns in classes:
        name = class_name(patterns)
        row = labels_of(patterns)
        for i in range(n_per_class):
            maps[k] = render_wafer(patterns, wafer_seed(seed, name, i), size)
            labels[k] = row
            k += 1
    return atomic_write_bytes(out, _npz_bytes({"arr_0": maps, "arr_1": labels}))
