"""Encoder pretraining stage: MAE or PRISM-style multitask objectives on the pretraining pool."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from taskalign.data.dataset import CacheDataset, read_index
from taskalign.models.checkpoint_io import load_trained_state, save_encoder
from taskalign.models.families.base import InputContract, geometry_from_json
from taskalign.models.families.vit3d import ViT3dEncoder, ViT3dGeometry
from taskalign.models.pretraining import PretrainingModel
from taskalign.models.device import select_device
from taskalign.tasks.loader import holdout_patients, make_loader
from taskalign.train.curves import write_history
from taskalign.train.loop import Schedule, TrainingOptions, evaluate_losses, fit, train_one_epoch
from taskalign.train.resume import ResumeFile, fingerprint, index_digest

log = logging.getLogger(__name__)


def pretraining_loss(model, batch):
    return model(batch)


@dataclass(frozen=True)
class PretrainJob:
    """One pretraining job (rule `pretrain`): the variant, its cache indexes and params, where it writes, its
    resume state, threads and training options."""

    variant: str
    indexes: list[Path]
    params: dict
    encoder_out: Path
    last_out: Path
    history_csv: Path
    curve_png: Path
    resume_dir: Path
    threads: int | None = None
    options: TrainingOptions = TrainingOptions()


def run_pretraining(job: PretrainJob) -> list[dict]:
    """Train one pretraining variant; write the best (held-out loss) and last encoders, history and curve.

    `params`: geometry (ViT3dGeometry fields), input (the input contract of the cache), channels, objectives,
    mask_ratio, weights, decoder_layers,
    epochs, batch_size, lr, warmup_epochs, weight_decay, holdout_fraction, seed."""
    device = select_device(job.threads)
    seed = job.params["seed"]
    torch.manual_seed(seed)
    pool = read_index(job.indexes, splits=["train"])  # never val/test of any cohort
    train_rows, holdout_rows = holdout_patients(pool, job.params["holdout_fraction"], seed)
    if holdout_rows.empty:
        holdout_rows = train_rows
    log.info("%s: %d training cases, %d held out, objectives %s", job.variant, len(train_rows), len(holdout_rows),
             job.params["objectives"])
    batch = job.params["batch_size"]
    train_loader = make_loader(CacheDataset(train_rows), batch, shuffle=True, seed=seed, device=device,
                               drop_last=len(train_rows) >= 2 * batch)
    holdout_loader = make_loader(CacheDataset(holdout_rows), batch, shuffle=False, seed=seed, device=device)
    resume = ResumeFile(job.resume_dir, fingerprint(job.params, [index_digest(p) for p in job.indexes]),
                        job.options.checkpoint_minutes)
    if not resume.path.exists():  # a resumed run's next epoch is known once its model is restored
        train_loader.start_first_epoch()

    with torch.device(device):  # built where it trains: no CPU build then copy on a GPU
        model = PretrainingModel(
            ViT3dEncoder(geometry_from_json(ViT3dGeometry, job.params["geometry"])),
            objectives=job.params["objectives"],
            channels=job.params["channels"],
            mask_ratio=job.params["mask_ratio"],
            weights=job.params["weights"],
            decoder_layers=job.params["decoder_layers"],
        )
    schedule = Schedule.warmup_cosine(model.parameters(), job.params, len(train_loader), monitor="val_total",
                                      mode="min")
    stepped = job.options.training_module(model, device)
    fitted = fit(
        model=model, schedule=schedule, loader=train_loader,
        train_epoch=lambda progress: train_one_epoch(stepped, train_loader, schedule.optimizer, schedule.scheduler,
                                                     device, pretraining_loss, progress),
        validate=lambda: evaluate_losses(model, holdout_loader, device, pretraining_loss, seed=seed),
        resume=resume, stage=f"pretrain[{job.variant}]",
    )
    history, best = fitted.history, fitted.best
    meta = {"variant": job.variant, "objectives": job.params["objectives"], "epochs": job.params["epochs"]}
    contract = InputContract.from_json(job.params["input"])
    save_encoder(model.encoder, job.last_out, {**meta, "epoch": len(history)}, contract=contract)
    load_trained_state(model, fitted.best_state)
    save_encoder(model.encoder, job.encoder_out, {**meta, "epoch": best["epoch"], "val_total": best["score"]},
                 contract=contract)
    write_history(history, job.history_csv, job.curve_png,
                  f"pretraining {job.variant}: {', '.join(job.params['objectives'])}")
    resume.remove()
    log.info("%s: best held-out loss %.4g at epoch %d", job.variant, best["score"], best["epoch"])
    if not math.isfinite(best["score"]):
        raise FloatingPointError(f"{job.variant}: non-finite held-out loss")
    return history
