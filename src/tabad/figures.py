"""Figures of the TAB paper's supplementary material, redrawn from tabad outputs.

* :func:`tsne_figure` — t-SNE of global image features, one panel per weights
  source (supplementary Fig. 7, and the feature-space view of Fig. 2), from a
  ``tabad benchmark`` results folder.
* :func:`similarity_figure` — image-text similarity matrix of a TAB
  pre-training run (supplementary Fig. 4): unit visual features of normal
  images and their synthetic anomalies against the normal / abnormal text
  prototypes of every class.

Both are pure functions of files on disk: everything they need (data root,
categories and layouts, weights sources and their hashes, geometry, seeds) is
read from the provenance the benchmark or the pre-training run recorded, so a
figure can be redrawn later and is checked against the weights that produced
the numbers. Each PNG is written atomically (matplotlib's Agg backend) next to
a JSON sidecar of the plotted values (``tsne.json`` / ``similarity.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tabad.device import resolve_device
from tabad.errors import TabadError, WeightsError
from tabad.files import atomic_write, atomic_write_json

#: Layer whose global-average-pooled output is embedded by :func:`tsne_figure`:
#: the deepest stage, the feature TAB aligns with text (paper §3.3).
TSNE_LAYER = "layer4"

_MARKERS = {0: "o", 1: "x"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise TabadError(f"{path}: not found; is this a {what}?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TabadError(f"{path}: not valid JSON ({exc})") from exc


# --------------------------------------------------------------------------- t-SNE


def rebuild_backbone(weights: dict, arch: str, seed: int):
    """The backbone a benchmark used, from one ``provenance["weights"]`` entry.

    Random sources are regenerated from their ``source`` string and the
    benchmark seed; file sources (``imagenet`` or a path) are read from the
    recorded ``path`` after checking its sha256. Either way the resulting
    weights must hash to the recorded ``sha256``, else :class:`TabadError`.
    """
    from tabad.backbones import build_backbone
    from tabad.files import sha256_file

    source, want = weights["source"], weights["sha256"]
    label = weights.get("label", source)
    if source == "random" or source.startswith("random:"):
        bb = build_backbone(arch, source, seed=seed)
    else:
        path = Path(weights.get("path") or source)
        if not path.is_file():
            raise TabadError(f"weights {label!r}: file {path} recorded in the provenance is missing")
        got = sha256_file(path)
        if got != want:
            raise TabadError(f"weights {label!r}: {path} has sha256 {got[:16]}… but the benchmark used "
                             f"{want[:16]}…; the file changed since the results were computed")
        bb = build_backbone(arch, str(path), seed=seed)
    if bb.info.sha256 != want:
        raise TabadError(f"weights {label!r} ({source}): rebuilt weights have sha256 {bb.info.sha256[:16]}… "
                         f"but the benchmark recorded {want[:16]}…")
    return bb


def pooled_features(backbone, images_uint8, layer: str = TSNE_LAYER, batch_size: int = 32,
                    device="cpu") -> np.ndarray:
    """Global-average-pooled ``layer`` features (N, C) of uint8 images (N, 3, H, W)."""
    from tabad.datasets.transforms import normalize

    out = []
    for i in range(0, len(images_uint8), batch_size):
        norm = backbone.normalisation  # the family's statistics (EfficientNet-Lite: 0.5 / 0.5)
        x = normalize(images_uint8[i : i + batch_size].to(device), norm.mean, norm.std)
        f = backbone(x, [layer])[layer]
        out.append(f.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (sklearn; ``init="pca"``, perplexity ``min(30, n-1)``, ``random_state=seed``)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise TabadError(f"t-SNE needs at least 3 images, got {n}")
    return TSNE(n_components=2, perplexity=float(min(30, n - 1)), init="pca", random_state=seed,
                learning_rate="auto").fit_transform(features)


def _test_images(prov: dict, max_per_category: int, seed: int):
    """Test images of every category of a benchmark (a seeded subset of at most ``max_per_category``)."""
    import torch

    from tabad.datasets.loader import load_split
    from tabad.datasets.readers import read_category
    from tabad.datasets.transforms import Geometry

    geometry = Geometry(prov["resize"], prov["crop"])
    images, cats, labels, files = [], [], [], []
    for category, info in prov["categories"].items():
        # results written before multi-root runs carry only data_root and the category name
        data = read_category(info.get("root", prov["data_root"]), info.get("category", category),
                             layout=info.get("layout", "auto"), skip_bad=bool(info.get("skipped")))
        samples = list(data.test)
        if max_per_category and len(samples) > max_per_category:
            keep = np.sort(np.random.default_rng([seed, len(cats)]).choice(len(samples), max_per_category,
                                                                              replace=False))
            samples = [samples[i] for i in keep]
        split = load_split(samples, geometry)
        images.append(split.images)
        cats += [category] * len(samples)
        labels += [int(v) for v in split.labels]
        files += [str(s.image_path) for s in samples]
    return torch.cat(images), cats, np.array(labels), files


def tsne_figure(results_dir: str | Path, out_path: str | Path | None = None, max_per_category: int = 60,
                seed: int = 0, device: str = "auto") -> Path:
    """t-SNE of the test images' features for each weights source of a benchmark (supplementary Fig. 7 / Fig. 2).

    Reads ``<results_dir>/results.json``; for every weights source in its
    provenance the backbone is rebuilt (and checked against the recorded
    sha256, see :func:`rebuild_backbone`), the test images of every category
    (at most ``max_per_category`` each, a subset drawn with ``seed``) are
    embedded as global-average-pooled ``layer4`` features, and sklearn's t-SNE
    (``random_state=seed``, ``init="pca"``, perplexity ``min(30, n-1)``) maps
    them to 2-D. One panel per weights source: colour = category, marker
    ``o`` = normal, ``x`` = anomalous. Default output:
    ``<results_dir>/figures/tsne.png`` (plus ``tsne.json`` with the points).
    """
    results_dir = Path(results_dir)
    prov = _read_json(results_dir / "results.json", "tabad benchmark results folder").get("provenance")
    if not prov or not prov.get("weights") or not prov.get("categories"):
        raise TabadError(f"{results_dir / 'results.json'}: no provenance with weights and categories")
    out_path = Path(out_path) if out_path is not None else results_dir / "figures" / "tsne.png"
    dev = resolve_device(device)

    images, cats, labels, files = _test_images(prov, max_per_category, seed)
    # Check every weights source before the slow part: a changed file fails in seconds.
    backbones = [(w, rebuild_backbone(w, prov["backbone"], int(prov.get("seed", 0)))) for w in prov["weights"]]
    panels = []
    for w, bb in backbones:
        feats = pooled_features(bb.to(dev), images, device=dev)
        panels.append({"label": w["label"], "source": w["source"], "sha256": w["sha256"],
                       "xy": tsne_embedding(feats, seed)})

    plt = _pyplot()
    categories = list(dict.fromkeys(cats))
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    colours = {c: cmap(i % cmap.N) for i, c in enumerate(categories)}
    cats_arr = np.array(cats)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        xy = panel["xy"]
        for c in categories:
            for lab, marker in _MARKERS.items():
                sel = (cats_arr == c) & (labels == lab)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], c=[colours[c]], marker=marker, s=18,
                               linewidths=1.0 if marker == "x" else 0.3,
                               edgecolors=None if marker == "x" else "k")
        ax.set_title(panel["label"], fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="s", color=colours[c], label=c) for c in categories]
    handles += [Line2D([], [], ls="", marker="o", color="gray", label="normal"),
                Line2D([], [], ls="", marker="x", color="gray", label="anomalous")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.suptitle(f"t-SNE of {TSNE_LAYER} features ({prov['backbone']}, {len(cats)} test images)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic_write(out_path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    atomic_write_json(out_path.with_suffix(".json"), {
        "figure": "t-SNE (TAB supplementary Fig. 7)", "results": str(results_dir.resolve()),
        "layer": TSNE_LAYER, "seed": seed, "max_per_category": max_per_category,
        "points": [{"category": c, "label": int(lab), "file": f} for c, lab, f in zip(cats, labels, files)],
        "panels": [{"label": p["label"], "source": p["source"], "sha256": p["sha256"],
                    "xy": np.round(p["xy"], 4).tolist()} for p in panels],
    })
    return out_path


# --------------------------------------------------------------------------- similarity matrix


def _spread_over_classes(members: Sequence[np.ndarray], n: int, seed: int) -> list[int]:
    """Up to ``n`` indices taken round-robin over classes, in a seeded order within each class."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(m)) for m in members]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(int(q.pop(0)))
    return chosen


def similarity_matrix_plot(path: str | Path, sim: np.ndarray, row_labels: Sequence[str],
                           col_labels: Sequence[str], title: str = "") -> Path:
    """Draw an image × text similarity matrix: diverging colours (red high, blue low) and a colorbar."""
    plt = _pyplot()
    sim = np.asarray(sim, dtype=np.float64)
    lo, hi = float(sim.min()), float(sim.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1e-3, hi + 1e-3
    r, c = sim.shape
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * c, 1.2 + 0.24 * r))
    # Linear scale over the matrix's own range: the contrast between columns is what the figure shows.
    im = ax.imshow(sim, cmap="RdBu_r", vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(c))
    ax.set_xticklabels(col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(r))
    ax.set_yticklabels(row_labels, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine similarity", fraction=0.05)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)


def _load_run_file(path: Path) -> dict:
    """A dict saved by ``tabad pretrain``, read without executing code; else :class:`WeightsError` naming it."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or objects other than tensors and plain values
        raise WeightsError(f"{path}: not a readable tabad pre-training file (truncated, damaged, or holding more "
                           f"than tensors and plain values: {type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict saved by tabad pretrain, got {type(obj).__name__}")
    return obj


def similarity_figure(run_dir: str | Path, data_root: str | Path, out_path: str | Path | None = None,
                      n_images: int = 16, seed: int = 0, device: str = "auto") -> Path:
    """Image-text similarity matrix of a TAB pre-training run (supplementary Fig. 4).

    Loads ``backbone.pt`` (checked against ``backbone.json``'s sha256) into a
    torchvision ``arch``, the projection head from ``head.pt`` into a
    :class:`~tabad.pretrain.model.TABModel`, and the text prototypes from
    ``text_features.pt``. ``n_images`` normal training images of ``data_root``
    (spread round-robin over the run's classes, picked with ``seed``) and
    their synthetic anomalies (the run's generator and seed, epoch 0) give
    unit visual features; the matrix is their cosine similarity with the
    rows of ``[T_normal; T_abnormal]`` (2C columns). Rows: the normal images,
    then their anomalies. Default output: ``<run_dir>/figures/similarity.png``
    (plus ``similarity.json`` with the matrix). A ``classification`` run has
    no text features: :class:`TabadError`.
    """
    import torch

    from tabad.backbones import family_of, load_weights
    from tabad.datasets.transforms import Geometry, normalize
    from tabad.pretrain.data import SyntheticPairs, load_pretrain_images
    from tabad.pretrain.model import TABModel

    run_dir = Path(run_dir)
    side = _read_json(run_dir / "backbone.json", "tabad pretrain run folder")
    head_path, text_path = run_dir / "head.pt", run_dir / "text_features.pt"
    if not head_path.is_file():
        raise TabadError(f"{head_path}: not found; the similarity figure needs the projection head of the run")
    head = _load_run_file(head_path)
    loss = head.get("loss", side.get("loss"))
    if loss == "classification":
        raise TabadError(f"{run_dir}: a 'classification' run has no text features; the image-text similarity "
                         "figure applies to runs with loss tab, joint or normal-only")
    if not text_path.is_file():
        raise TabadError(f"{text_path}: not found; the similarity figure needs the run's text prototypes")
    text = _load_run_file(text_path)
    cfg = side.get("config", {})

    backbone, info = load_weights(side["arch"], str(run_dir / "backbone.pt"))
    if side.get("sha256") and info.sha256 != side["sha256"]:
        raise TabadError(f"{run_dir / 'backbone.pt'}: sha256 {info.sha256[:16]}… differs from the "
                         f"{side['sha256'][:16]}… recorded in backbone.json")
    t_n, t_a = text["normal"].float(), text["abnormal"].float()
    class_folders = list(head.get("class_folders") or text["class_folders"])
    class_names = list(head.get("class_names") or text["class_names"])
    model = TABModel(backbone, t_n.shape[1], len(class_folders), loss=loss, head=head.get("head_kind", "mlp"),
                     family=family_of(side["arch"]))
    model.head.load_state_dict(head["head"])
    dev = resolve_device(device)
    model = model.to(dev).eval()

    images = load_pretrain_images([data_root], class_folders, Geometry(cfg.get("resize", 256), cfg.get("crop", 224)),
                                  layout=cfg.get("layout", "auto"), progress=False)
    generator = cfg.get("synthetic") or side.get("synthetic") or "nsa"
    pairs = SyntheticPairs(images, generator, cfg.get("synthetic_options") or {}, int(cfg.get("seed", 0)))
    idx = _spread_over_classes(images.members(), n_images, seed)
    normal = torch.stack([pairs[i][0] for i in idx])
    abnormal = torch.stack([pairs[i][1] for i in idx])
    with torch.no_grad():
        norm = family_of(side["arch"]).normalisation(side["arch"])
        z = model(normalize(torch.cat([normal, abnormal]).to(dev), norm.mean, norm.std)).float().cpu()
    z = torch.nn.functional.normalize(z, dim=-1)
    texts = torch.nn.functional.normalize(torch.cat([t_n, t_a]), dim=-1)
    sim = (z @ texts.T).numpy()

    row_cls = [images.class_folders[int(images.labels[i])] for i in idx]
    rows = [f"{c}/normal" for c in row_cls] + [f"{c}/abnormal" for c in row_cls]
    cols = [f"normal {n}" for n in class_names] + [f"abnormal {n}" for n in class_names]
    out_path = Path(out_path) if out_path is not None else run_dir / "figures" / "similarity.png"
    similarity_matrix_plot(out_path, sim, rows, cols,
                           title=f"image-text similarity ({run_dir.name}, loss {loss}, {generator} anomalies)")
    atomic_write_json(out_path.with_suffix(".json"), {
        "figure": "image-text similarity (TAB supplementary Fig. 4)", "run": str(run_dir.resolve()),
        "backbone_sha256": info.sha256, "seed": seed, "rows": rows, "columns": cols,
        "files": [images.files[i] for i in idx], "similarity": np.round(sim, 6).tolist(),
    })
    return out_path
