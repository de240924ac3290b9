"""The epoch loop shared by every training stage: steps, resume, best tracking, history CSV and curve PNG."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from monai.optimizers import WarmupCosineSchedule

from taskalign.runtime import atomic_path
from taskalign.train.checkpoint import ResumeFile, rng_state, set_rng_state
from taskalign.train.device import autocast, to_device

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]


def adamw_warmup_cosine(params, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW (betas of MAE pretraining) with linear warmup and cosine decay, stepped per iteration."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=max(total_steps, warmup_steps + 1))
    return optimizer, scheduler


def train_one_epoch(model, loader, optimizer, scheduler, device, loss_fn: LossFn) -> dict[str, float]:
    """One pass over `loader`; `loss_fn(model, batch)` returns named losses with "total". Returns their means."""
    model.train()
    sums, n = defaultdict(float), 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            losses = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, value in losses.items():
            sums[name] += float(value.detach())
        n += 1
    return {name: total / max(n, 1) for name, total in sums.items()}


@torch.no_grad()
def evaluate_losses(model, loader, device, loss_fn: LossFn, seed: int = 0) -> dict[str, float]:
    """Mean losses over `loader` in eval mode, with a fixed RNG (MAE masking) so epochs are comparable."""
    model.eval()
    cpu_state = torch.get_rng_state()
    torch.manual_seed(seed)
    sums, n = defaultdict(float), 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            losses = loss_fn(model, batch)
        for name, value in losses.items():
            sums[name] += float(value)
        n += 1
    torch.set_rng_state(cpu_state)
    return {name: total / max(n, 1) for name, total in sums.items()}


@contextlib.contextmanager
def preserved_rngs():
    """Leave torch's (CPU and CUDA), numpy's and Python's global RNGs as they were before the block."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random from (seed, epoch)."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def start_first_epoch(loader, resume: ResumeFile, seed: int) -> dict | None:
    """Start a fresh run's first epoch before its model is built, so that the first batches load meanwhile
    instead of while training waits. Returns the RNG states epoch 1 trains from (after its order was drawn), for
    `fit(first_epoch=...)`; the caller's RNGs are left as found, so the model's initial weights do not change.
    None when a resume file exists: which epoch comes next is known only once the model is restored."""
    if resume.path.exists():
        return None
    with preserved_rngs():
        seed_epoch(seed, 0)
        loader.start_epoch()
        return rng_state()


def fit(
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    epochs: int,
    train_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    monitor: str,
    mode: str,
    resume: ResumeFile,
    stage: str,
    seed: int = 0,
    start_epoch: Callable[[], None] | None = None,
    first_epoch: dict | None = None,
) -> tuple[list[dict], dict]:
    """Run epochs (resuming after the last completed one), checkpoint each, keep the best model's weights.

    `monitor` names a history column (e.g. "val_total", "val_dice"); `mode` is "min" or "max". Returns the history
    (one dict per epoch) and the best record {"epoch", "score"}; the best weights are in `resume.best_path`.
    Every epoch's randomness (batch order, augmentation, dropout, masking) comes from RNGs reseeded from
    (seed, epoch), so a resumed run matches an uninterrupted one bit for bit on CPU. `start_epoch` (the training
    loader's `EpochAheadLoader.start_epoch`) starts the next epoch before validation, so that its first batches
    load meanwhile; validation leaves the RNGs as it found them, so the batches and weights are the same.
    `first_epoch` (from `start_first_epoch`) says that epoch 1 was started before the model was built."""
    history, best, start = [], {"epoch": None, "score": None}, 0
    restored = resume.load(model=model, optimizer=optimizer, scheduler=scheduler)
    if restored is not None:
        history, best, start = restored["history"], restored["best"], restored["epoch"] + 1
    started_ahead = first_epoch is not None
    if started_ahead:
        if start != 0:
            raise RuntimeError(f"{stage}: epoch 1 was started ahead, but the run resumes at epoch {start + 1}")
        set_rng_state(first_epoch)
    for epoch in range(start, epochs):
        if not started_ahead:
            seed_epoch(seed, epoch)
        started = time.time()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in train_epoch(epoch).items()})
        started_ahead = start_epoch is not None and epoch + 1 < epochs
        if started_ahead:
            seed_epoch(seed, epoch + 1)
            start_epoch()
        with preserved_rngs():
            row.update({f"val_{k}": v for k, v in validate().items()})
        row["seconds"] = time.time() - started
        history.append(row)
        score = row[monitor]
        losses = [v for k, v in row.items() if k.startswith("train_")]
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"{stage}: training loss is not finite after epoch {epoch + 1}: {row}")
        if not math.isfinite(score):  # e.g. an AUC on a validation split with one class: not a divergence
            log.warning("%s: %s undefined after epoch %d; the epoch cannot be selected", stage, monitor, epoch + 1)
        elif best["score"] is None or (score < best["score"] if mode == "min" else score > best["score"]):
            best = {"epoch": epoch + 1, "score": score}
            resume.save_best(model)
        if best["score"] is None and epoch + 1 == epochs:  # never defined: the last epoch is the model
            best = {"epoch": epoch + 1, "score": score}
            resume.save_best(model)
        resume.save(epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler, history=history, best=best)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_")))
        log.info("%s epoch %d/%d  %s  (%.1f s)", stage, epoch + 1, epochs, shown, row["seconds"])
    return history, best


def write_history(history: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    """Per-epoch CSV and a curve PNG: training losses (left axis) and validation values (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    with atomic_path(Path(csv_path)) as tmp:
        frame.to_csv(tmp, index=False)
    fig, ax = plt.subplots(figsize=(7, 4))
    for column in [c for c in frame.columns if c.startswith("train_")]:
        ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if (frame.filter(like="train_") > 0).all().all() else "linear")
    val_columns = [c for c in frame.columns if c.startswith("val_")]
    if val_columns:
        ax2 = ax.twinx()
        for k, column in enumerate(val_columns):  # dashed, in colours after the training losses'
            ax2.plot(frame["epoch"], frame[column], ls="--", marker="s", ms=3, label=column, color=f"C{k + 5}")
        ax2.set_ylabel("validation")
        ax2.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(Path(png_path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
