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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss, SSIMLoss
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from taskalign.data.dataset import read_index
from taskalign.evaluate.scoring import score_loader
from taskalign.models.checkpoint_io import load_encoder
from taskalign.models.encoder import Encoder, EncoderGeometry
from taskalign.models.heads import encoder_model, n_model_outputs, specialist_model, start_at_prior
from taskalign.runtime import atomic_path
from taskalign.tasks.samples import TaskDataset, target_norm, usable_rows
from taskalign.tasks.spec import PIRADS_CLASSES, Task, check_combination
from taskalign.train.checkpoint import ResumeFile, file_digest, fingerprint, index_digest
from taskalign.train.data import make_loader
from taskalign.train.device import select_device
from taskalign.train.loop import adamw_warmup_cosine, fit, start_first_epoch, train_one_epoch, write_history

log = logging.getLogger(__name__)


def apply_protocol(model: torch.nn.Module, protocol: str) -> list[str]:
    """Set requires_grad for the protocol; return the names of the trainable parameters."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and protocol != "full":
        keep = 0 if protocol == "frozen" else int(protocol.split(":")[1])
        n_blocks = len(encoder.blocks)
        if keep > n_blocks:
            raise ValueError(f"protocol {protocol}: the encoder has {n_blocks} blocks")
        trainable = {f"blocks.{i}." for i in range(n_blocks - keep, n_blocks)} | ({"norm."} if keep else set())
        for name, param in encoder.named_parameters():
            param.requires_grad = any(name.startswith(prefix) for prefix in trainable)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def build_model(task: Task, init: str, encoder: Encoder | None, params: dict) -> torch.nn.Module:
    """The task model around `encoder` (None for the specialist)."""
    if init == "specialist":
        return specialist_model(task, params["channels"], params["specialist"])
    if encoder is None:
        raise ValueError(f"init {init} needs an encoder")
    return encoder_model(task, encoder, params["channels"], params["head"])


def load_task_model(path: Path, task: Task, channels: list[str]) -> tuple[torch.nn.Module, dict]:
    """A fine-tuned model file -> (model, metadata); the metadata has everything to rebuild the model."""
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    encoder = Encoder(EncoderGeometry(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in meta["geometry"].items()})) if meta["geometry"] else None
    model = build_model(task, meta["init"], encoder, {"channels": channels, **meta["architecture"]})
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), meta


def class_weights(task: Task, rows) -> torch.Tensor | None:
    """Inverse-frequency weights for PI-RADS (weighted CE, SPEC); classes absent from training get weight 0."""
    if task.name != "pirads_cls":
        return None
    counts = torch.tensor([(rows[task.type.target] == c).sum() for c in PIRADS_CLASSES], dtype=torch.float32)
    weights = torch.where(counts > 0, counts.sum() / (len(PIRADS_CLASSES) * counts.clamp(min=1)), torch.zeros(()))
    return weights


def task_loss(task: Task, weights: torch.Tensor | None, device):
    """The SPEC's loss per task: (weighted) CE, MSE, Dice + CE (batch Dice + BCE for binary masks), L1,
    L1 + SSIM (translation)."""
    if task.kind == "classification":
        ce = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
        return lambda out, target: ce(out.float(), target)
    if task.kind == "regression":
        return lambda out, target: torch.nn.functional.mse_loss(out.float(), target)
    if task.kind == "segmentation":
        if task.type.n_outputs > 1:
            return DiceCELoss(softmax=True, to_onehot_y=True)
        # lesions are ~0.1% of the crop and absent from some cases: a per-case Dice alone stalls at "predict
        # nothing", so Dice over the whole batch plus BCE (a Dice of 0.02 against 0.17 after 30 epochs here)
        return DiceCELoss(sigmoid=True, batch=True)
    if task.name == "translation":
        ssim = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=3)  # 3^3 window: a third of the cost of 5^3

        def l1_ssim(out, target):
            low, high = target.amin(dim=(1, 2, 3, 4), keepdim=True), target.amax(dim=(1, 2, 3, 4), keepdim=True)
            scale = (high - low).clamp(min=1e-6)  # SSIM on [0, 1]-scaled volumes
            return torch.nn.functional.l1_loss(out.float(), target) + ssim((out.float() - low) / scale,
                                                                          (target - low) / scale)
        return l1_ssim
    return lambda out, target: torch.nn.functional.l1_loss(out.float(), target)


def mask_prior(rows, task: Task) -> torch.Tensor:
    """Class frequencies of the target masks over `rows` (their cache folders), background first: 2 values for a
    binary mask, n_model_outputs for labels. One count is added per class, so that a class absent from these
    cases still gets a finite log-prior."""
    n_out = n_model_outputs(task)
    n_classes = 2 if n_out == 1 else n_out
    counts = np.ones(n_classes)
    for case in rows["cache_dir"]:
        mask = np.load(Path(case) / f"{task.type.target}.npy")
        labels = (mask > 0) if n_out == 1 else mask
        counts += np.bincount(labels.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
    return torch.as_tensor(counts / counts.sum())


def task_datasets(task: Task, indexes: list[Path], params: dict) -> tuple[TaskDataset, TaskDataset, dict]:
    rows = read_index(indexes)
    rows = usable_rows(rows, task)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if len(train_rows) < 2 or val_rows.empty:
        raise ValueError(f"task {task.name}: {len(train_rows)} train and {len(val_rows)} val cases with a "
                         f"{task.type.target} label in {', '.join(map(str, indexes))}; need 2+ and 1+")
    norm = target_norm(train_rows, task)
    seed = params["seed"]
    train = TaskDataset(train_rows, task, params["channels"], train=True, seed=seed, augment=params["augment"],
                        norm=norm)
    val = TaskDataset(val_rows, task, params["channels"], train=False, seed=seed, norm=norm)
    return train, val, norm


def run_finetune(*, task: Task, init: str, protocol: str, encoder_path: Path | None, indexes: list[Path],
                 params: dict, model_out: Path, history_csv: Path, curve_png: Path, timing_json: Path,
                 resume_dir: Path, threads: int | None = None) -> list[dict]:
    device = select_device(threads)
    seed = params["seed"]
    torch.manual_seed(seed)
    train_set, val_set, norm = task_datasets(task, indexes, params)
    batch = params["batch_size"]
    train_loader = make_loader(train_set, batch, shuffle=True, seed=seed, device=device,
                               drop_last=len(train_set) >= 2 * batch)
    val_loader = make_loader(val_set, batch, shuffle=False, seed=seed, device=device)
    check_combination(init, protocol)
    resume = ResumeFile(resume_dir, fingerprint(
        params, task.name, init, protocol, file_digest(encoder_path) if encoder_path else None,
        [index_digest(p) for p in indexes]))
    first_epoch = start_first_epoch(train_loader, resume, seed)

    encoder = load_encoder(encoder_path) if encoder_path is not None else None
    model = build_model(task, init, encoder, params)
    if task.kind == "segmentation":
        start_at_prior(model, task, mask_prior(train_set.index, task))
    trainable = apply_protocol(model, protocol)
    model = model.to(device)
    log.info("%s %s %s seed %d: %d train, %d val cases; %d of %d parameters trainable", task.name, init, protocol,
             seed, len(train_set), len(val_set), sum(p.numel() for p in model.parameters() if p.requires_grad),
             sum(p.numel() for p in model.parameters()))
    loss = task_loss(task, class_weights(task, train_set.index), device)

    def loss_fn(net, b):
        return {"total": loss(net(b["image"]), b["target"])}

    steps = len(train_loader)
    optimizer, scheduler = adamw_warmup_cosine(
        [p for p in model.parameters() if p.requires_grad], lr=params["lr"], weight_decay=params["weight_decay"],
        warmup_steps=params["warmup_epochs"] * steps, total_steps=params["epochs"] * steps,
    )
    metric = task.type.metric
    started, cpu_started = time.time(), time.process_time()
    history, best = fit(
        model=model, optimizer=optimizer, scheduler=scheduler, epochs=params["epochs"],
        train_epoch=lambda epoch: train_one_epoch(model, train_loader, optimizer, scheduler, device, loss_fn),
        validate=lambda: score_loader(model, val_loader, task, device, norm)[1],
        monitor=f"val_{metric}", mode="max" if task.type.higher_is_better else "min", resume=resume,
        stage=f"finetune[{task.name}/{init}/{protocol}/seed{seed}]", seed=seed,
        start_epoch=train_loader.start_epoch, first_epoch=first_epoch,
    )
    resume.load_best(model)
    meta = {"task": task.name, "init": init, "protocol": protocol, "seed": seed, "norm": norm,
            "geometry": asdict(encoder.geometry) if encoder is not None else None,
            "architecture": {k: params[k] for k in ("head", "specialist") if k in params},
            "best_epoch": best["epoch"], f"val_{metric}": best["score"], "trainable": len(trainable)}
    with atomic_path(model_out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})
    # time of this process only: a resumed run adds the epochs it trained, not the ones before the preemption
    epoch_seconds = sum(row["seconds"] for row in history)
    timing = {"wall_seconds_this_run": time.time() - started, "cpu_seconds_this_run": time.process_time() - cpu_started,
              "epoch_seconds_total": epoch_seconds, "device": device.type,
              "device_hours": epoch_seconds / 3600 if device.type == "cuda" else 0.0, "epochs": len(history)}
    with atomic_path(timing_json) as tmp:
        tmp.write_text(json.dumps(timing, indent=2))
    write_history(history, history_csv, curve_png, f"{task.name} {init} {protocol} seed {seed}: val {metric}")
    log.info("%s: best val %s %.4f at epoch %d", task.name, metric, best["score"], best["epoch"])
    return history
