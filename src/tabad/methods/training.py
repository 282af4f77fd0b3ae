"""The epoch loop shared by the methods that train (RD4AD, SimpleNet, RegAD).

A trainable method implements ``train_epoch(batches, epoch) -> dict`` of
scalars (at least ``loss``) and lists what must survive an interruption in
``training_state()`` (modules and optimisers by name). :func:`run_epochs`
does the rest, the same way for every method:

* a progress bar with epoch, loss and images per second;
* after every epoch (or every ``save_every``) the whole training state is
  written atomically to ``checkpoint`` together with a ``key`` describing
  the run (settings, weights, data), so an interrupted run resumes at the
  next epoch and a checkpoint of other settings is never picked up;
* the per-epoch log, returned and kept in the checkpoint.

Methods report the state after the *last* epoch; nothing here looks at test
data, so there is no model selection on the test set.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable, Protocol

import torch

from tabad.files import atomic_write_torch


class Trainable(Protocol):
    def train_epoch(self, batches, epoch: int) -> dict[str, float]: ...

    def training_state(self) -> dict[str, object]: ...


def save_training_state(path: Path, state: dict[str, object], epoch: int, key: str, log: list[dict]) -> None:
    """Write ``state`` (modules and optimisers), the torch RNG, ``epoch`` and ``log`` to ``path`` atomically.

    Only tensors and plain values (str, int, float, bool, None, lists, tuples,
    dicts) are saved, so :func:`load_training_state` can read it with
    ``weights_only=True``.
    """
    payload = {"key": key, "epoch": int(epoch), "log": log,
               "state": {name: obj.state_dict() for name, obj in state.items()},
               "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    atomic_write_torch(Path(path), payload)


def load_training_state(path: Path, state: dict[str, object], key: str) -> tuple[int, list[dict]] | None:
    """Restore ``state`` from ``path`` if it was written for the same ``key``: (epochs done, log).

    ``None`` (train from scratch) when the file is missing, of another ``key``,
    truncated or damaged, or holds anything but tensors and plain values: a
    checkpoint is never unpickled with code execution, and nothing is reported,
    since starting over is the right outcome in every case.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of foreign files it then refuses anyway
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, not a torch file, or unpickling refused: training restarts
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    saved = payload.get("state")
    # checked before anything is loaded, so a malformed file cannot leave the state half restored
    if (not isinstance(saved, dict) or any(name not in saved for name in state)
            or not isinstance(payload.get("epoch"), int) or not isinstance(payload.get("log"), list)
            or not isinstance(payload.get("torch_rng"), torch.Tensor)):
        return None
    for name, obj in state.items():
        obj.load_state_dict(saved[name])
    torch.set_rng_state(payload["torch_rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return int(payload["epoch"]), list(payload["log"])


def run_epochs(method: Trainable, batches, epochs: int, *, checkpoint: Path | None = None, key: str = "",
               progress: bool = False, desc: str = "train", save_every: int = 1,
               on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``method`` for ``epochs`` epochs (resuming from ``checkpoint``); returns the per-epoch log."""
    from tabad.progress import progress as progress_bar

    start, log = 0, []
    if checkpoint is not None:
        restored = load_training_state(checkpoint, method.training_state(), key)
        if restored is not None:
            start, log = restored
    n_images = getattr(batches, "n_images", None)
    bar = progress_bar(total=epochs, initial=start, desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        values = dict(method.train_epoch(batches, epoch))
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in values.items()}, "seconds": round(seconds, 3)}
        if n_images:
            entry["images_per_second"] = round(n_images / max(seconds, 1e-9), 2)
        log.append(entry)
        if on_epoch is not None:
            on_epoch(epoch, entry)
        if checkpoint is not None and ((epoch + 1) % max(save_every, 1) == 0 or epoch + 1 == epochs):
            save_training_state(checkpoint, method.training_state(), epoch + 1, key, log)
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in entry.items() if k != "epoch"})
        bar.update()
    bar.close()
    return log


def autocast(device: torch.device | str, enabled: bool = True):
    """bfloat16 autocast on CUDA (frozen-feature forward passes); a no-op elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
