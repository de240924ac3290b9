"""Encoder pretraining stage: MAE or PRISM-style multitask objectives on the pretraining pool."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from taskalign.data.dataset import CacheDataset, read_index
from taskalign.models.checkpoint_io import save_encoder
from taskalign.models.encoder import Encoder, EncoderGeometry
from taskalign.models.pretraining import PretrainingModel
from taskalign.models.device import select_device
from taskalign.tasks.loader import holdout_patients, make_loader
from taskalign.train.curves import write_history
from taskalign.train.loop import Schedule, evaluate_losses, fit, train_one_epoch
from taskalign.train.resume import ResumeFile, fingerprint, index_digest

log = logging.getLogger(__name__)


def pretraining_loss(model, batch):
    return model(batch)


def run_pretraining(*, variant: str, indexes: list[Path], params: dict, encoder_out: Path, last_out: Path,
                    history_csv: Path, curve_png: Path, resume_dir: Path, threads: int | None = None) -> list[dict]:
    """Train one pretraining variant; write the best (held-out loss) and last encoders, history and curve.

    `params`: geometry (EncoderGeometry fields), channels, objectives, mask_ratio, weights, decoder_layers,
    epochs, batch_size, lr, warmup_epochs, weight_decay, holdout_fraction, seed."""
    device = select_device(threads)
    seed = params["seed"]
    torch.manual_seed(seed)
    pool = read_index(indexes, splits=["train"])  # never val/test of any cohort
    train_rows, holdout_rows = holdout_patients(pool, params["holdout_fraction"], seed)
    if holdout_rows.empty:
        holdout_rows = train_rows
    log.info("%s: %d training cases, %d held out, objectives %s", variant, len(train_rows), len(holdout_rows),
             params["objectives"])
    batch = params["batch_size"]
    train_loader = make_loader(CacheDataset(train_rows), batch, shuffle=True, seed=seed, device=device,
                               drop_last=len(train_rows) >= 2 * batch)
    holdout_loader = make_loader(CacheDataset(holdout_rows), batch, shuffle=False, seed=seed, device=device)
    resume = ResumeFile(resume_dir, fingerprint(params, [index_digest(p) for p in indexes]))
    if not resume.path.exists():  # a resumed run's next epoch is known once its model is restored
        train_loader.start_first_epoch()

    encoder = Encoder(EncoderGeometry(**params["geometry"]))
    model = PretrainingModel(
        encoder,
        objectives=params["objectives"],
        channels=params["channels"],
        mask_ratio=params["mask_ratio"],
        weights=params["weights"],
        decoder_layers=params["decoder_layers"],
    ).to(device)
    schedule = Schedule.warmup_cosine(model.parameters(), params, len(train_loader), monitor="val_total", mode="min")
    history, best = fit(
        model=model, schedule=schedule, loader=train_loader,
        train_epoch=lambda epoch: train_one_epoch(model, train_loader, schedule.optimizer, schedule.scheduler, device,
                                                  pretraining_loss),
        validate=lambda: evaluate_losses(model, holdout_loader, device, pretraining_loss, seed=seed),
        resume=resume, stage=f"pretrain[{variant}]",
    )
    meta = {"variant": variant, "objectives": params["objectives"], "epochs": params["epochs"]}
    save_encoder(model.encoder.cpu(), last_out, {**meta, "epoch": len(history)})
    resume.load_best(model)
    save_encoder(model.encoder.cpu(), encoder_out, {**meta, "epoch": best["epoch"], "val_total": best["score"]})
    write_history(history, history_csv, curve_png, f"pretraining {variant}: {', '.join(params['objectives'])}")
    log.info("%s: best held-out loss %.4g at epoch %d", variant, best["score"], best["epoch"])
    if not math.isfinite(best["score"]):
        raise FloatingPointError(f"{variant}: non-finite held-out loss")
    return history
