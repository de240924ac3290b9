"""Layer-wise features: the token-mean embedding of chosen blocks and of the final normed output, per case.

Extracted once per encoder x task (rule `features`) and reused by every analysis, which reads them through
taskalign.analysis.feature_files. The encoder sees the task's own inputs (unused channels zeroed, degraded inputs for
the restoration tasks) for every split, so CKA and MMD can use the test cases and the radiomic lens can fit on train
and hold out val/test. Encoders run in eval mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from taskalign.analysis.feature_files import layer_names, write_features
from taskalign.data.dataset import read_index
from taskalign.models.checkpoint_io import load_encoder
from taskalign.models.device import autocast, select_device, to_device
from taskalign.models.encoder import Encoder
from taskalign.tasks.loader import make_loader
from taskalign.tasks.samples import TaskDataset, usable_rows
from taskalign.tasks.spec import Task

log = logging.getLogger(__name__)

def encoder_of(path: Path, source: str, task: Task, channels: list[str], device: torch.device) -> Encoder:
    """The encoder in an encoder file (`encoder`) or inside a fine-tuned task model (`finetuned`), on `device`."""
    if source == "encoder":
        return load_encoder(path, device)
    from taskalign.models.task_model import load_task_model

    model, meta = load_task_model(path, task, channels, device)
    if not hasattr(model, "encoder"):
        raise ValueError(f"{path}: init {meta['init']} has no foundation-model encoder to extract features from")
    return model.encoder


@torch.no_grad()
def token_means(encoder: Encoder, loader, layers: list[int], device: torch.device) -> dict[str, np.ndarray]:
    """Mean over patch tokens (class token left out) of each chosen block's output and of the normed output."""
    encoder = encoder.to(device).eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in layer_names(layers)}
    for batch in loader:
        batch = loader.dataset.on_device(to_device(batch, device))  # the task's (degraded) inputs
        with autocast(device):
            normed, hidden = encoder(batch["image"])
        for n in layers:
            out[f"block{n}"].append(hidden[n][:, 1:].float().mean(dim=1).cpu().numpy())
        out["final"].append(normed[:, 1:].float().mean(dim=1).cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in out.items()}


def extract(*, task: Task, model_path: Path, source: str, indexes: list[Path], params: dict, out_npz: Path,
            threads: int | None = None) -> None:
    device = select_device(threads)
    encoder = encoder_of(model_path, source, task, params["channels"], device)
    unknown = [n for n in params["layers"] if not 0 <= n < len(encoder.blocks)]
    if unknown:
        raise ValueError(f"analysis.layers {unknown}: {model_path} has blocks 0..{len(encoder.blocks) - 1}")
    rows = usable_rows(read_index(indexes), task)
    # the regression target norm only scales targets, which features never see
    dataset = TaskDataset(rows, task, params["channels"], train=False, seed=params["seed"],
                          norm={"offset": 0.0, "scale": 1.0})
    loader = make_loader(dataset, params["batch_size"], shuffle=False, seed=params["seed"], device=device)
    features = token_means(encoder, loader, params["layers"], device)
    write_features(out_npz, dataset.index, features)
    log.info("%s: %d cases x %d layers (%d features) from %s", task.name, len(rows), len(features),
             features["final"].shape[1], model_path)
