"""The epoch loop shared by every training stage: optimiser and schedule, steps, resume, best tracking."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from monai.optimizers import WarmupCosineSchedule

from taskalign.models.device import autocast, to_device
from taskalign.tasks.loader import EpochAheadLoader
from taskalign.tasks.rng import preserved_rngs
from taskalign.train.resume import ResumeFile

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


@dataclass(frozen=True)
class Schedule:
    """How a stage trains: its optimiser and per-step LR scheduler (or None), for how many epochs, and which
    history column (e.g. "val_total", "val_dice") selects the best epoch, lower ("min") or higher ("max")."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    epochs: int
    monitor: str
    mode: str

    @classmethod
    def warmup_cosine(cls, trainable, params: dict, steps_per_epoch: int, *, monitor: str, mode: str) -> "Schedule":
        """`adamw_warmup_cosine` from a stage's params: lr, weight_decay, warmup_epochs, epochs."""
        optimizer, scheduler = adamw_warmup_cosine(
            trainable, lr=params["lr"], weight_decay=params["weight_decay"],
            warmup_steps=params["warmup_epochs"] * steps_per_epoch, total_steps=params["epochs"] * steps_per_epoch,
        )
        return cls(optimizer, scheduler, params["epochs"], monitor, mode)

    def improves(self, score: float, best: float | None) -> bool:
        return best is None or (score < best if self.mode == "min" else score > best)


def fit(*, model: torch.nn.Module, schedule: Schedule, loader: EpochAheadLoader,
        train_epoch: Callable[[int], dict[str, float]], validate: Callable[[], dict[str, float]],
        resume: ResumeFile, stage: str) -> tuple[list[dict], dict]:
    """Run epochs (resuming after the last completed one), checkpoint each, keep the best model's weights.

    Returns the history (one dict per epoch) and the best record {"epoch", "score"}; the best weights are in
    `resume.best_path`. Every epoch's randomness (batch order, augmentation, dropout, masking) comes from RNGs the
    training `loader` reseeds from (seed, epoch), so a resumed run matches an uninterrupted one bit for bit on
    CPU. The loader starts the next epoch before validation, so that its first batches load meanwhile;
    validation leaves the RNGs as it found them, so the batches and weights are the same."""
    optimizer, scheduler, epochs = schedule.optimizer, schedule.scheduler, schedule.epochs
    history, best, start = [], {"epoch": None, "score": None}, 0
    restored = resume.load(model=model, optimizer=optimizer, scheduler=scheduler)
    if restored is not None:
        history, best, start = restored["history"], restored["best"], restored["epoch"] + 1
    for epoch in range(start, epochs):
        loader.begin_epoch(epoch)
        started = time.time()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in train_epoch(epoch).items()})
        if epoch + 1 < epochs:
            loader.start_epoch(epoch + 1)
        with preserved_rngs():
            row.update({f"val_{k}": v for k, v in validate().items()})
        row["seconds"] = time.time() - started
        history.append(row)
        score = row[schedule.monitor]
        losses = [v for k, v in row.items() if k.startswith("train_")]
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"{stage}: training loss is not finite after epoch {epoch + 1}: {row}")
        if not math.isfinite(score):  # e.g. an AUC on a validation split with one class: not a divergence
            log.warning("%s: %s undefined after epoch %d; the epoch cannot be selected", stage, schedule.monitor,
                        epoch + 1)
        elif schedule.improves(score, best["score"]):
            best = {"epoch": epoch + 1, "score": score}
            resume.save_best(model)
        if best["score"] is None and epoch + 1 == epochs:  # never defined: the last epoch is the model
            best = {"epoch": epoch + 1, "score": score}
            resume.save_best(model)
        resume.save(epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler, history=history, best=best)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_")))
        log.info("%s epoch %d/%d  %s  (%.1f s)", stage, epoch + 1, epochs, shown, row["seconds"])
    return history, best
