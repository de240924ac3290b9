"""Layer-wise features: the token-mean embedding of chosen blocks and of the final normed output, per case; with
`analysis.mmd.layer: head`, also the task model's head features (`head_features`).

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
    return task_model_of(path, source, task, {"channels": channels}, device).encoder


def task_model_of(path: Path, source: str, task: Task, params: dict, device: torch.device):
    """A fine-tuned task model (`finetuned`), or for an encoder file the task model around it with its head at
    the initialisation seeded by params["seed"] (the FM before fine-tuning: 001's Φ_pre and Φ_rand)."""
    from taskalign.models.task_model import build_model, load_task_model

    if source == "encoder":
        torch.manual_seed(params["seed"])
        with torch.device(device):
            return build_model(task, "pretrained:encoder", load_encoder(path, device), params).eval()
    model, meta = load_task_model(path, task, params["channels"], device)
    if not hasattr(model, "encoder"):
        raise ValueError(f"{path}: init {meta['init']} has no foundation-model encoder to extract features from")
    return model


@torch.no_grad()
def head_features(model, task: Task, loader, device: torch.device) -> np.ndarray:
    """The input of the model's output layer per case, averaged over voxels for dense heads: what fine-tuning
    changes even when the encoder stays frozen (001's D2P of its frozen FM)."""
    from taskalign.models.heads import output_layer

    parts: list[np.ndarray] = []
    hook = output_layer(model).register_forward_pre_hook(
        lambda module, args: parts.append(args[0].float().flatten(2).mean(dim=2).cpu().numpy()
                                          if args[0].dim() > 2 else args[0].float().cpu().numpy()))
    try:
        for batch in loader:
            batch = loader.dataset.on_device(to_device(batch, device))
            with autocast(device):
                task.kind.feature_pass(task, model, batch["image"])
    finally:
        hook.remove()
    return np.concatenate(parts).astype(np.float32)


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
    # the `head` level (analysis.mmd.layer: head) reads the task model's head too
    model = task_model_of(model_path, source, task, params, device) if "head" in params else None
    encoder = model.encoder if model is not None else encoder_of(model_path, source, task, params["channels"], device)
    unknown = [n for n in params["layers"] if not 0 <= n < len(encoder.blocks)]
    if unknown:
        raise ValueError(f"analysis.layers {unknown}: {model_path} has blocks 0..{len(encoder.blocks) - 1}")
    rows = usable_rows(read_index(indexes), task)
    # the regression target norm only scales targets, which features never see
    dataset = TaskDataset(rows, task, params["channels"], train=False, seed=params["seed"],
                          norm={"offset": 0.0, "scale": 1.0})
    loader = make_loader(dataset, params["batch_size"], shuffle=False, seed=params["seed"], device=device)
    features = token_means(encoder, loader, params["layers"], device)
    if model is not None:
        features["head"] = head_features(model, task, loader, device)
    write_features(out_npz, dataset.index, features)
    log.info("%s: %d cases x %d layers (%d features) from %s", task.name, len(rows), len(features),
             features["final"].shape[1], model_path)
