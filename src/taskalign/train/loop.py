"""The epoch loop shared by every training stage: optimiser and schedule, steps, resume, best tracking."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from monai.optimizers import WarmupCosineSchedule

from taskalign.models.checkpoint_io import cpu_copy, load_trained_state, trained_state
from taskalign.models.device import autocast, to_device
from taskalign.tasks.loader import EpochAheadLoader
from taskalign.tasks.rng import preserved_rngs, rng_state, set_rng_state
from taskalign.runtime import mark_ready
from taskalign.train.preemption import Stopped, stop_requested
from taskalign.train.resume import ResumeFile

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TrainingOptions:
    """How a job trains, not what it learns: no part of the resume fingerprint, and no rerun trigger.

    checkpoint_minutes: cadence of resume-state writes (0: after every epoch). compile: "auto" (on CUDA only),
    "on" or "off": the training forward and backward through `torch.compile` (CUDA graphs: mode reduce-overhead),
    against the kernel-launch cost of small-batch steps."""

    checkpoint_minutes: float = 10.0
    compile: str = "off"

    def training_module(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module training steps call: `model` itself, or compiled (it shares the parameters)."""
        if self.compile == "on" or (self.compile == "auto" and device.type == "cuda"):
            return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
        return model


def adamw_warmup_cosine(params, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW (betas of MAE pretraining) with linear warmup and cosine decay, stepped per iteration."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=max(total_steps, warmup_steps + 1))
    return optimizer, scheduler


@dataclass
class EpochProgress:
    """Where an epoch stands after `step` training steps: its running loss sums, the learning rate it started at
    and its seconds so far; `rngs`, the RNG states after its last step, when a stop interrupted it."""

    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    seconds: float = 0.0
    rngs: dict | None = None

    def means(self) -> dict[str, float]:
        return {name: total / max(self.step, 1) for name, total in self.sums.items()}


class EpochInterrupted(Exception):
    """A stop was requested; the epoch's progress holds its state after the last step."""


def train_one_epoch(model, loader, optimizer, scheduler, device, loss_fn: LossFn,
                    progress: EpochProgress | None = None) -> dict[str, float]:
    """One pass over `loader`; `loss_fn(model, batch)` returns named losses with "total". Returns their means.

    A stop request ends the epoch after the current step (EpochInterrupted, `progress` up to date). An epoch
    resumed from such a progress draws its first `progress.step` batches again without training on them (the
    loader's order and each item's randomness come from the epoch's seed), then continues from the RNG states
    saved after that step: the same steps as without the stop."""
    progress = progress if progress is not None else EpochProgress()
    model.train()
    batches = iter(loader)
    if progress.step:
        for _ in range(progress.step):
            next(batches)
        set_rng_state(progress.rngs)
    for batch in batches:
        batch = to_device(batch, device)
        with autocast(device):
            losses = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, value in losses.items():
            progress.sums[name] = progress.sums.get(name, 0.0) + float(value.detach())
        progress.step += 1
        if stop_requested() is not None:
            progress.rngs = rng_state()
            raise EpochInterrupted
    return progress.means()


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


@dataclass
class Fitted:
    """What `fit` returns: one history row per epoch, the best record {"epoch", "score"} and the best epoch's
    trained state (`trained_state`, host memory)."""

    history: list[dict]
    best: dict
    best_state: dict[str, torch.Tensor]


# What `resume_state` writes and `restore` reads: a resume file without any of them is ignored.
RESUME_KEYS = ("epoch", "progress", "model", "optimizer", "scheduler", "rng", "history", "best", "best_state")


def resume_state(model, schedule: Schedule, epoch: int, progress: EpochProgress | None, history: list[dict],
                 best: dict, best_state) -> dict:
    """What a stopped job resumes from: the epoch to train (and how far it got), trained parameters (frozen
    ones come from the job's inputs again), optimiser, scheduler, RNG states, history and the best so far."""
    return {"epoch": epoch, "progress": asdict(progress) if progress is not None else None,
            "model": trained_state(model), "optimizer": schedule.optimizer.state_dict(),
            "scheduler": schedule.scheduler.state_dict() if schedule.scheduler is not None else None,
            "rng": rng_state(), "history": history, "best": best, "best_state": best_state}


def restore(state: dict, model, schedule: Schedule) -> None:
    load_trained_state(model, state["model"])
    schedule.optimizer.load_state_dict(state["optimizer"])
    if schedule.scheduler is not None and state["scheduler"] is not None:
        schedule.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])


def fit(*, model: torch.nn.Module, schedule: Schedule, loader: EpochAheadLoader,
        train_epoch: Callable[[EpochProgress], dict[str, float]], validate: Callable[[], dict[str, float]],
        resume: ResumeFile, stage: str) -> Fitted:
    """Run epochs (resuming where a stopped attempt left off), keep the best epoch's weights in memory.

    `train_epoch(progress)` trains one epoch from `progress` (`train_one_epoch`). The resume state is written
    when `resume.due()` at an epoch's end, and when a stop is requested (SIGTERM/SIGUSR1): after the current
    step, then the job exits non-zero (`Stopped`). Every epoch's randomness (batch order, augmentation,
    dropout, masking) comes from RNGs the training `loader` reseeds from (seed, epoch), so a resumed run matches
    an uninterrupted one bit for bit on CPU. The loader starts the next epoch before validation, so that its
    first batches load meanwhile; validation leaves the RNGs as it found them, so the batches and weights are
    the same."""
    optimizer, epochs = schedule.optimizer, schedule.epochs
    history, best, best_state = [], {"epoch": None, "score": None}, None
    epoch, progress = 0, EpochProgress()
    restored = resume.load(RESUME_KEYS)
    if restored is not None:
        restore(restored, model, schedule)
        history, best, best_state, epoch = (restored["history"], restored["best"], restored["best_state"],
                                            restored["epoch"])
        if restored["progress"] is not None:
            progress = EpochProgress(**restored["progress"])
        log.info("resuming from %s at epoch %d, step %d", resume.path, epoch + 1, progress.step)
    mark_ready()
    while epoch < epochs:
        loader.begin_epoch(epoch)
        started = time.time()
        if progress.lr is None:
            progress.lr = optimizer.param_groups[0]["lr"]
        try:
            train = train_epoch(progress)
        except EpochInterrupted:
            progress.seconds += time.time() - started
            resume.clock.epochs_this_run += time.time() - started
            resume.save(resume_state(model, schedule, epoch, progress, history, best, best_state))
            log.info("%s: stopped by signal %d after step %d of epoch %d", stage, stop_requested(), progress.step,
                     epoch + 1)
            raise Stopped(stop_requested())
        row = {"epoch": epoch + 1, "lr": progress.lr, **{f"train_{k}": v for k, v in train.items()}}
        if epoch + 1 < epochs:
            loader.start_epoch(epoch + 1)
        with preserved_rngs():
            row.update({f"val_{k}": v for k, v in validate().items()})
        row["seconds"] = progress.seconds + time.time() - started
        resume.clock.epochs_this_run += time.time() - started
        history.append(row)
        score = row[schedule.monitor]
        losses = [v for k, v in row.items() if k.startswith("train_")]
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"{stage}: training loss is not finite after epoch {epoch + 1}: {row}")
        if not math.isfinite(score):  # e.g. an AUC on a validation split with one class: not a divergence
            log.warning("%s: %s undefined after epoch %d; the epoch cannot be selected", stage, schedule.monitor,
                        epoch + 1)
        elif schedule.improves(score, best["score"]):
            best, best_state = {"epoch": epoch + 1, "score": score}, cpu_copy(trained_state(model))
        if best["score"] is None and epoch + 1 == epochs:  # never defined: the last epoch is the model
            best, best_state = {"epoch": epoch + 1, "score": score}, cpu_copy(trained_state(model))
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_")))
        log.info("%s epoch %d/%d  %s  (%.1f s)", stage, epoch + 1, epochs, shown, row["seconds"])
        epoch, progress = epoch + 1, EpochProgress()
        signum = stop_requested()
        if epoch < epochs and (signum is not None or resume.due()):
            resume.save(resume_state(model, schedule, epoch, None, history, best, best_state))
            if signum is not None:
                log.info("%s: stopped by signal %d after epoch %d", stage, signum, epoch)
                raise Stopped(signum)
    return Fitted(history, best, best_state)
