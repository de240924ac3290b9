"""LoRA continual pretraining stage (seed 000): LoRA on the linears the encoder's family names (vit3d: Q, K, V, O
of every block), base frozen, the family's pyramid (vit3d: the ViT adapter on 4 blocks) + UperNet decoder trained
with Dice on a segmentation target; the merged encoder is exported with the pretrained one's input contract."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.losses import DiceLoss
from monai.metrics import DiceMetric
from monai.transforms import RandFlipd
from safetensors.torch import save_file

from taskalign.data.dataset import CacheDataset, read_index
from taskalign.models.checkpoint_io import EncoderFile, load_trained_state, save_encoder
from taskalign.models.device import autocast, select_device, to_device
from taskalign.models.lora import add_lora, lora_state_dict, merge_lora
from taskalign.models.upernet import EncoderUperNet
from taskalign.runtime import atomic_path
from taskalign.tasks.loader import make_loader
from taskalign.train.curves import write_history
from taskalign.train.loop import Schedule, TrainingOptions, fit, train_one_epoch
from taskalign.train.resume import ResumeFile, fingerprint, index_digest

log = logging.getLogger(__name__)


def segmentation_model(encoder, params: dict) -> EncoderUperNet:
    """LoRA-injected encoder (base frozen) + adapter + UperNet with one output channel (the target mask)."""
    lora_encoder = add_lora(encoder, rank=params["rank"], alpha=params["alpha"], dropout=params["dropout"])
    return EncoderUperNet(lora_encoder, out_channels=1, layers=params["layers"],
                          channels=params["decoder_channels"])


@torch.no_grad()
def validation_dice(model, loader, device, target: str) -> dict[str, float]:
    """Mean per-case Dice of the thresholded prediction (MONAI DiceMetric; an empty-vs-empty case counts 1)."""
    model.eval()
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            logits = model(batch["image"])
        metric((logits.float() > 0).float(), batch[target])
    return {"dice": float(metric.aggregate())}


@dataclass(frozen=True)
class ContinualJob:
    """One continual-pretraining job (rule `continual`): the variant, its pretrained encoder, the cache index
    and params, where it writes, its resume state, threads and training options."""

    variant: str
    pretrained: Path
    index: Path
    params: dict
    encoder_out: Path
    adapter_out: Path
    history_csv: Path
    curve_png: Path
    resume_dir: Path
    threads: int | None = None
    options: TrainingOptions = TrainingOptions()


def run_continual(job: ContinualJob) -> list[dict]:
    device = select_device(job.threads)
    torch.manual_seed(job.params["seed"])
    target = job.params["target"]
    rows = read_index([job.index])
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if train_rows.empty or val_rows.empty:
        raise ValueError(f"{job.index}: continual pretraining needs train and val cases")
    encoder_file = EncoderFile.read(job.pretrained)  # the one read of it
    contract = encoder_file.contract.to_json() if encoder_file.contract else None
    flips = RandFlipd(keys=["image", target], spatial_axis=2, prob=0.5)  # left-right: anatomy is near-symmetric
    train_set = CacheDataset(train_rows, masks=(target,), transform=flips, contract=contract)
    val_set = CacheDataset(val_rows, masks=(target,), contract=contract)
    train_loader = make_loader(train_set, job.params["batch_size"], shuffle=True, seed=job.params["seed"],
                               device=device)
    val_loader = make_loader(val_set, job.params["batch_size"], shuffle=False, seed=job.params["seed"], device=device)
    log.info("%s: LoRA continual pretraining on %s (%d train, %d val cases), target %s", job.variant, job.index.name,
             len(train_set), len(val_set), target)
    resume = ResumeFile(job.resume_dir, fingerprint(job.params, encoder_file.sha256, index_digest(job.index)),
                        job.options.checkpoint_minutes)
    if not resume.path.exists():  # a resumed run's next epoch is known once its model is restored
        train_loader.start_first_epoch()

    with torch.device(device):  # built where it trains: no CPU build then copy on a GPU
        model = segmentation_model(encoder_file.build(device), job.params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("trainable parameters: %d of %d", sum(p.numel() for p in trainable),
             sum(p.numel() for p in model.parameters()))
    dice_loss = DiceLoss(sigmoid=True)

    def loss_fn(net, batch):
        return {"total": dice_loss(net(batch["image"]), batch[target])}

    schedule = Schedule.warmup_cosine(trainable, job.params, len(train_loader), monitor="val_dice", mode="max")
    stepped = job.options.training_module(model, device)
    fitted = fit(
        model=model, schedule=schedule, loader=train_loader,
        train_epoch=lambda progress: train_one_epoch(stepped, train_loader, schedule.optimizer, schedule.scheduler,
                                                     device, loss_fn, progress),
        validate=lambda: validation_dice(model, val_loader, device, target),
        resume=resume, stage=f"continual[{job.variant}]",
    )
    history, best = fitted.history, fitted.best
    load_trained_state(model, fitted.best_state)
    model = model.cpu()
    adapter_state = {**{f"lora.{k}": v for k, v in lora_state_dict(model.encoder).items()},
                     **{k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}}
    with atomic_path(job.adapter_out) as tmp:
        save_file({k: v.contiguous() for k, v in adapter_state.items()}, str(tmp),
                  metadata={"variant": job.variant, "target": target, "best_epoch": str(best["epoch"])})
    merged = merge_lora(model.encoder)
    save_encoder(merged, job.encoder_out, {"variant": job.variant, "stage": "continual", "target": target,
                                       "epoch": best["epoch"], "val_dice": best["score"]},
                 contract=encoder_file.contract)
    write_history(history, job.history_csv, job.curve_png,
                  f"continual pretraining {job.variant}: validation Dice ({target})")
    resume.remove()
    log.info("%s: best validation Dice %.4f at epoch %d", job.variant, best["score"], best["epoch"])
    return history
