"""anomalib half of the side-by-side comparisons: what every ``anomalib_<method>_runner.py`` shares.

Imported by the runners, which run with anomalib's own interpreter (``.anomalib-venv/bin/python``);
it imports neither tabad nor the driver's modules, and anomalib, torch and Lightning only inside
functions (the runner times those imports itself).

Every runner takes ``--data --category --layout --weights --batch-size --threads --seed --out``
(:func:`runner_parser`), uses anomalib the way a user would (``Engine`` + ``Folder`` datamodule),
and writes to ``--out``:

``predictions.npz``
    ``scores`` (N,) and ``maps`` (N, H, W): the RAW outputs of the torch model (before
    anomalib's PostProcessor), ``labels`` (N,), ``masks`` (N, H, W) uint8 0/1, ``image_paths``
    (relative to ``--data``), plus whatever the runner adds.
``anomalib.json``
    ``timings`` (``import_seconds``, ``fit_seconds``, ``test_seconds``, … as the runner
    measures its phases; the driver reports their medians), ``versions``, the runner's own
    checks and anomalib's own metric values.
"""

from __future__ import annotations

import time

PROCESS_T0 = time.perf_counter()  # the runner imports this module first

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
LAYOUTS = ("mvtec", "mvtec3d", "mvtec-stem")


# ----------------------------------------------------------------------------- command line
def runner_parser(doc: str, *, batch_size: int = 32) -> argparse.ArgumentParser:
    """The flags every runner takes (the driver's ``run_anomalib`` passes them)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MVTec-like root holding <category>/")
    p.add_argument("--category", required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    p.add_argument("--weights", required=True, help="torchvision-keyed resnet18 state dict (.pt)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    return p


def prepare(args) -> tuple[Path, Path]:
    """Thread default for OpenMP and the output folder: ``(out, data_root)``."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out, Path(args.data)


def import_stack(*modules: str) -> float:
    """Import anomalib's stack and ``modules`` (e.g. ``anomalib.models``): the seconds it took, the runner's
    ``import_seconds``. The runner's own imports of the same modules then cost nothing."""
    import importlib

    t0 = time.perf_counter()
    for name in ("numpy", "torch", "torchvision.transforms.v2", "anomalib", "anomalib.engine", "anomalib.metrics",
                 "anomalib.pre_processing", "lightning.pytorch", *modules):
        importlib.import_module(name)
    return time.perf_counter() - t0


def seed_and_threads(args) -> None:
    import torch
    from lightning.pytorch import seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)


# ----------------------------------------------------------------------------- data
def folder_dirs(cat_root: Path, layout: str) -> dict:
    """Folder arguments (paths relative to the category root) for one layout.

    ``mvtec``       images ``<cat>/train/good``, ``<cat>/test/<defect>``;
                    masks ``<cat>/ground_truth/<defect>/<stem>_mask.png``
    ``mvtec3d``     images ``<cat>/train/good/rgb``, ``<cat>/test/<defect>/rgb``;
                    masks ``<cat>/test/<defect>/gt/<same name>``
    ``mvtec-stem``  as ``mvtec`` but masks are ``<cat>/ground_truth/<defect>/<stem>.png``
    """
    test_root = cat_root / "test"
    defects = sorted(d.name for d in test_root.iterdir() if d.is_dir() and d.name != "good")
    if not defects:
        raise SystemExit(f"no defect folders under {test_root}")
    if layout == "mvtec3d":
        return {
            "normal_dir": "train/good/rgb",
            "abnormal_dir": [f"test/{d}/rgb" for d in defects],
            "normal_test_dir": "test/good/rgb",
            "mask_dir": [f"test/{d}/gt" for d in defects],
            "defects": defects,
        }
    return {
        "normal_dir": "train/good",
        "abnormal_dir": [f"test/{d}" for d in defects],
        "normal_test_dir": "test/good",
        "mask_dir": [f"ground_truth/{d}" for d in defects],
        "defects": defects,
    }


def expected_mask(image_path: Path, layout: str) -> tuple[str, str]:
    """(defect folder, mask stem) that the image's mask must have."""
    if layout == "mvtec3d":  # test/<defect>/rgb/<name> -> test/<defect>/gt/<name>
        return image_path.parent.parent.name, image_path.stem
    if layout == "mvtec":  # test/<defect>/<stem>.png -> ground_truth/<defect>/<stem>_mask.png
        return image_path.parent.name, image_path.stem + "_mask"
    return image_path.parent.name, image_path.stem  # mvtec-stem


def mask_key(mask_path: Path, layout: str) -> tuple[str, str]:
    if layout == "mvtec3d":
        return mask_path.parent.parent.name, mask_path.stem
    return mask_path.parent.name, mask_path.stem


def check_pairing(samples, layout: str) -> dict:
    """Verify that Folder paired every abnormal test image with the right mask.

    ``Folder`` sorts all image and mask paths, pairs them by position and only checks that the
    mask stem *contains* the image stem: with several defect folders of identically named files
    (MVTec 3D-AD) a missing mask would shift pairs silently.
    """
    n_abnormal = n_checked = 0
    bad = []
    for row in samples.itertuples():
        if int(row.label_index) != 1:
            if row.mask_path:
                bad.append((row.image_path, row.mask_path, "normal image with a mask"))
            continue
        n_abnormal += 1
        want = expected_mask(Path(row.image_path), layout)
        got = mask_key(Path(row.mask_path), layout) if row.mask_path else None
        if got != want:
            bad.append((row.image_path, row.mask_path, f"expected {want}"))
        else:
            n_checked += 1
    if bad:
        for b in bad[:10]:
            print("MASK PAIRING ERROR:", b, file=sys.stderr)
        raise SystemExit(f"Folder paired {len(bad)} test images with the wrong mask")
    return {"n_abnormal": n_abnormal, "n_pairs_verified": n_checked}


def folder_datamodule(cat_root: Path, category: str, layout: str, batch_size: int, seed: int):
    """anomalib's ``Folder`` datamodule for one category (``val_split_mode="same_as_test"``,
    ``test_split_mode="from_dir"``, ``num_workers=0``), set up, with its mask pairing checked:
    ``(dirs, datamodule, pairing)``."""
    from anomalib.data import Folder

    dirs = folder_dirs(cat_root, layout)
    datamodule = Folder(name=category, root=cat_root, normal_dir=dirs["normal_dir"],
                        abnormal_dir=dirs["abnormal_dir"], normal_test_dir=dirs["normal_test_dir"],
                        mask_dir=dirs["mask_dir"], train_batch_size=batch_size, eval_batch_size=batch_size,
                        num_workers=0, test_split_mode="from_dir", val_split_mode="same_as_test", seed=seed)
    datamodule.setup()
    return dirs, datamodule, check_pairing(datamodule.test_data.samples, layout)


# ----------------------------------------------------------------------------- model
def transform(resize: int, crop: int | None = None):
    """``Resize((resize, resize))`` [→ ``CenterCrop(crop)``] → ImageNet ``Normalize`` (torchvision v2; anomalib
    gives masks the same geometry, NEAREST)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize((resize, resize), antialias=True), *([v2.CenterCrop(crop)] if crop else []),
                       v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def evaluator_metrics() -> list:
    """anomalib's test metrics: image and pixel AUROC, pixel AUPRO (``fpr_limit=0.3``), image and pixel F1-max."""
    from anomalib.metrics import AUPRO, AUROC, F1Max

    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def load_backbone(fx, path: str, what: str = "weights") -> dict:
    """Load a torchvision-keyed ResNet state dict into anomalib's timm feature extractor ``fx``.

    ``strict=False``: nothing may be missing, only ``layer4.*``/``fc.*`` may be unexpected (timm's
    ``features_only`` model stops at the last requested layer); every loaded tensor is checked to be
    the file's. Returns ``loaded_tensors`` and the ``unexpected_keys`` prefixes.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    res = fx.load_state_dict(state, strict=False)
    stray = [k for k in res.unexpected_keys if not k.startswith(("layer4.", "fc."))]
    if res.missing_keys or stray:
        raise SystemExit(f"{what} do not fit: missing={res.missing_keys} unexpected={stray}")
    loaded = fx.state_dict()
    if not all(torch.equal(loaded[k], state[k]) for k in loaded if k in state):
        raise SystemExit(f"{what}: a loaded tensor differs from the file's")
    unexpected = set(res.unexpected_keys)
    return {"loaded_tensors": sum(1 for k in state if k not in unexpected),
            "unexpected_keys": sorted({k.split(".")[0] for k in unexpected})}


class RawOutputs:
    """The raw outputs of anomalib's torch model in eval mode (before the PostProcessor), with its forward time.

    Forward hooks on ``model.model``: every eval-mode forward that returns an ``anomaly_map`` appends
    ``(scores (B,), maps (B, H, W))`` and adds its duration to ``forward_seconds``.
    """

    def __init__(self, module) -> None:
        self.batches: list[tuple] = []
        self.forward_seconds = 0.0
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, inputs) -> None:
        self._t0 = time.perf_counter()

    def _post(self, module, inputs, output) -> None:
        if not module.training and hasattr(output, "anomaly_map"):
            self.forward_seconds += time.perf_counter() - self._t0
            n = len(output.pred_score)
            self.batches.append((output.pred_score.detach().cpu().float().reshape(-1),
                                 output.anomaly_map.detach().cpu().float().reshape(n, *output.anomaly_map.shape[-2:])))

    def __len__(self) -> int:
        return len(self.batches)

    def clear(self) -> None:
        self.batches.clear()
        self.forward_seconds = 0.0

    def arrays(self):
        """``(scores, maps)`` as numpy arrays."""
        import torch

        return (torch.cat([s for s, _ in self.batches]).numpy(), torch.cat([m for _, m in self.batches]).numpy())


def record_test_batches(data_root: Path):
    """A Lightning callback keeping the labels, masks and file names (relative to ``data_root``) of every test
    batch, in order; ``.arrays()`` gives ``(labels int64, masks uint8 0/1, image_paths)``."""
    import numpy as np
    import torch
    from lightning.pytorch import Callback

    class TestRecorder(Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            n = len(batch.gt_label)
            self.records.append({"labels": batch.gt_label.detach().cpu().reshape(-1),
                                 "masks": batch.gt_mask.detach().cpu().reshape(n, *batch.gt_mask.shape[-2:]),
                                 "image_paths": [os.path.relpath(p, data_root) for p in batch.image_path]})

        def __len__(self) -> int:
            return len(self.records)

        def arrays(self):
            labels = torch.cat([r["labels"] for r in self.records]).numpy().astype(np.int64)
            masks = (torch.cat([r["masks"] for r in self.records]).numpy() > 0).astype(np.uint8)
            return labels, masks, [p for r in self.records for p in r["image_paths"]]

    return TestRecorder()


def rss_mb() -> float:
    """The process's current resident set size (Linux), for diagnostics in the log."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stage_timer(log_rss: bool = False):
    """A Lightning callback recording ``time.perf_counter()`` at every train-epoch start/end and validation
    start/end (``.first(name)``, ``.last(name)``, ``.validation_seconds()``); ``log_rss`` prints the RSS at
    validation start."""
    from lightning.pytorch import Callback

    class StageTimer(Callback):
        def __init__(self) -> None:
            self.t: dict[str, list[float]] = {}

        def _mark(self, name: str) -> None:
            self.t.setdefault(name, []).append(time.perf_counter())

        def first(self, name: str, default=None):
            return self.t[name][0] if self.t.get(name) else default

        def last(self, name: str, default=None):
            return self.t[name][-1] if self.t.get(name) else default

        def validation_seconds(self) -> float | None:
            start, end = self.last("validation_start"), self.last("validation_end")
            return None if start is None or end is None else end - start

        def on_train_epoch_start(self, trainer, pl_module):
            self._mark("train_epoch_start")

        def on_train_epoch_end(self, trainer, pl_module):
            self._mark("train_epoch_end")

        def on_validation_start(self, trainer, pl_module):
            if log_rss:
                print(f"[rss] validation start {rss_mb():.0f} MB", flush=True)
            self._mark("validation_start")

        def on_validation_end(self, trainer, pl_module):
            self._mark("validation_end")

    return StageTimer()


def make_engine(out: Path, callbacks, **kwargs):
    """``Engine`` on the CPU, one device, no progress bar, Lightning's files under ``<out>/engine``."""
    from anomalib.engine import Engine

    return Engine(default_root_dir=out / "engine", accelerator="cpu", devices=1, callbacks=list(callbacks),
                  enable_progress_bar=False, deterministic=False, **kwargs)


# ----------------------------------------------------------------------------- outputs
def save_predictions(out: Path, *, scores, maps, labels, masks, image_paths, n_test: int,
                     size: tuple[int, int] | None = None, score_is_map_max: bool = True, **extra) -> None:
    """Check and write ``predictions.npz``: one score per test image, maps and masks of one size (``size`` if
    given), the image score the map's maximum (if the method says so), no mask on a normal image."""
    import numpy as np

    assert len(scores) == n_test == len(labels) == len(image_paths), (len(scores), n_test, len(labels))
    assert maps.shape[1:] == masks.shape[1:], (maps.shape, masks.shape)
    if size is not None:
        assert maps.shape[1:] == tuple(size), (maps.shape, size)
    if score_is_map_max:
        assert np.allclose(scores, maps.reshape(len(maps), -1).max(1), rtol=1e-6, atol=1e-6)
    assert not masks[labels == 0].any(), "a normal test image has a non-empty mask"
    np.savez_compressed(out / "predictions.npz", scores=scores.astype(np.float32), maps=maps.astype(np.float32),
                        labels=labels, masks=masks, image_paths=np.array(image_paths), **extra)


def versions() -> dict:
    import anomalib
    import lightning
    import numpy
    import timm
    import torch
    import torchvision

    return {"python": platform.python_version(), "anomalib": anomalib.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "lightning": lightning.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__}


def write_result(out: Path, args, result: dict, summary: dict | None = None) -> None:
    """``anomalib.json``: ``result`` plus the process time inside the script, versions, torch's thread count,
    the seed and the peak RSS; prints a one-line summary for the log."""
    import torch

    result["timings"]["process_seconds_in_script"] = time.perf_counter() - PROCESS_T0
    result.update({"peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   "versions": versions(), "torch_threads": torch.get_num_threads(), "seed": args.seed})
    (out / "anomalib.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"category": args.category, **(summary or {}), **result["timings"]}), flush=True)
