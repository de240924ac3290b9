"""Fine-tuning stage: one task x init x protocol x seed (SPEC "Inits and protocols").

Inits: `random` (the seeded random encoder, frozen: the random-weight FM), `scratch` (the same random encoder,
all trained), `pretrained:<variant>`, `continual:<variant>`, `specialist` (a MONAI network, no encoder).
Protocols: `full`, `frozen` (head only), `partial:k` (the last k blocks and the final norm, plus the head).
The best-on-validation weights are exported; per-epoch training loss and validation metric go to a CSV + PNG.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from taskalign.data.dataset import read_index
from taskalign.evaluate.scoring import score_loader
from taskalign.models.checkpoint_io import EncoderFile, load_trained_state
from taskalign.models.device import select_device
from taskalign.models.task_model import apply_protocol, build_model, mask_prior, save_task_model, start_at_prior
from taskalign.runtime import atomic_path
from taskalign.tasks.loader import make_loader
from taskalign.tasks.losses import class_weights, task_loss
from taskalign.tasks.samples import TaskDataset, target_norm, usable_rows
from taskalign.tasks.spec import Task, check_combination
from taskalign.train.curves import write_history
from taskalign.train.loop import Schedule, TrainingOptions, fit, train_one_epoch
from taskalign.train.resume import ResumeFile, fingerprint, index_digest

log = logging.getLogger(__name__)


def task_datasets(task: Task, indexes: list[Path], params: dict,
                  contract: dict | None = None) -> tuple[TaskDataset, TaskDataset, dict]:
    """Train and val items as the model's input contract declares them (the cache's own for a specialist or an
    encoder file without one)."""
    rows = read_index(indexes)
    rows = usable_rows(rows, task)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if len(train_rows) < 2 or val_rows.empty:
        raise ValueError(f"task {task.name}: {len(train_rows)} train and {len(val_rows)} val cases with a "
                         f"{task.type.target} label in {', '.join(map(str, indexes))}; need 2+ and 1+")
    norm = target_norm(train_rows, task)
    seed = params["seed"]
    train = TaskDataset(train_rows, task, params["channels"], train=True, seed=seed, augment=params["augment"],
                        norm=norm, contract=contract)
    val = TaskDataset(val_rows, task, params["channels"], train=False, seed=seed, norm=norm, contract=contract)
    return train, val, norm


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning run (rule `finetune`): the task, init and protocol, the starting encoder file, the cache
    indexes and params, where it writes, its resume state, threads and training options."""

    task: Task
    init: str
    protocol: str
    encoder_path: Path | None
    indexes: list[Path]
    params: dict
    model_out: Path
    history_csv: Path
    curve_png: Path
    timing_json: Path
    resume_dir: Path
    threads: int | None = None
    options: TrainingOptions = TrainingOptions()


def run_finetune(job: FinetuneJob) -> list[dict]:
    device = select_device(job.threads)
    cpu_started = time.process_time()
    seed = job.params["seed"]
    torch.manual_seed(seed)
    encoder_file = EncoderFile.read(job.encoder_path) if job.encoder_path is not None else None  # the one read of it
    contract = encoder_file.contract.to_json() if encoder_file is not None and encoder_file.contract else None
    train_set, val_set, norm = task_datasets(job.task, job.indexes, job.params, contract)
    batch = job.params["batch_size"]
    train_loader = make_loader(train_set, batch, shuffle=True, seed=seed, device=device,
                               drop_last=len(train_set) >= 2 * batch)
    val_loader = make_loader(val_set, batch, shuffle=False, seed=seed, device=device)
    check_combination(job.init, job.protocol)
    resume = ResumeFile(job.resume_dir, fingerprint(
        job.params, job.task.name, job.init, job.protocol, encoder_file.sha256 if encoder_file else None,
        [index_digest(p) for p in job.indexes]), job.options.checkpoint_minutes)
    if not resume.path.exists():  # a resumed run's next epoch is known once its model is restored
        train_loader.start_first_epoch()

    with torch.device(device):  # built where it trains: no CPU build then copy on a GPU
        encoder = encoder_file.build(device) if encoder_file is not None else None
        model = build_model(job.task, job.init, encoder, {**job.params, "channels": train_set.channels})
    if job.task.kind.starts_at_prior:
        start_at_prior(model, job.task, mask_prior(train_set.index, job.task))
    trainable = apply_protocol(model, job.protocol)
    log.info("%s %s %s seed %d: %d train, %d val cases; %d of %d parameters trainable", job.task.name, job.init,
             job.protocol, seed, len(train_set), len(val_set), sum(p.numel() for p in model.parameters() if p.requires_grad),
             sum(p.numel() for p in model.parameters()))
    loss = task_loss(job.task, class_weights(job.task, train_set.index), device)

    def loss_fn(net, b):
        b = train_set.on_device(b)  # augmentation and degradations, batched where the model trains
        return {"total": job.task.kind.train_loss(job.task, net, b, loss)}  # the kind's step (DDPM: a denoising one)

    metric = job.task.type.metric
    schedule = Schedule.warmup_cosine([p for p in model.parameters() if p.requires_grad], job.params, len(train_loader),
                                      monitor=f"val_{metric}", mode="max" if job.task.type.higher_is_better else "min")
    stepped = job.options.training_module(model, device)
    fitted = fit(
        model=model, schedule=schedule, loader=train_loader,
        train_epoch=lambda progress: train_one_epoch(stepped, train_loader, schedule.optimizer, schedule.scheduler,
                                                     device, loss_fn, progress),
        validate=lambda: score_loader(model, val_loader, job.task, device, norm)[1],
        resume=resume, stage=f"finetune[{job.task.name}/{job.init}/{job.protocol}/seed{seed}]",
    )
    history, best = fitted.history, fitted.best
    load_trained_state(model, fitted.best_state)
    meta = {"task": job.task.name, "init": job.init, "protocol": job.protocol, "seed": seed, "norm": norm,
            **(encoder_file.spec() if encoder_file is not None else {"geometry": None}),
            "architecture": {k: job.params[k] for k in ("head", "specialist") if k in job.params},
            "best_epoch": best["epoch"], f"val_{metric}": best["score"], "trainable": len(trainable)}
    save_task_model(model, job.model_out, meta, encoder_file)
    write_timing(job.timing_json, resume, history, device, cpu_started)
    write_history(history, job.history_csv, job.curve_png,
                  f"{job.task.name} {job.init} {job.protocol} seed {seed}: val {metric}")
    resume.remove()
    log.info("%s: best val %s %.4f at epoch %d", job.task.name, metric, best["score"], best["epoch"])
    return history


def write_timing(path: Path, resume: ResumeFile, history: list[dict], device: torch.device,
                 cpu_started: float) -> None:
    """`wall_seconds` and `device_hours` summed over the job's attempts (a preempted job's earlier processes
    included; device hours are the seconds in epochs, on CUDA only); `*_this_run` for this process alone."""
    clock = resume.clock
    timing = {"wall_seconds": clock.wall_seconds(),
              "device_hours": clock.epoch_seconds() / 3600 if device.type == "cuda" else 0.0,
              "wall_seconds_this_run": clock.wall_this_run(), "cpu_seconds_this_run": time.process_time() - cpu_started,
              "epoch_seconds_total": sum(row["seconds"] for row in history), "device": device.type,
              "epochs": len(history)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(timing, indent=2))
