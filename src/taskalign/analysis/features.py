"""Layer-wise features: the spatial mean of each chosen level's map and of `final`, per case; with
`analysis.mmd.layer: head`, also the task model's head features (`head_features`).

Levels are the encoder family's (taskalign.models.families.base): `analysis.layers` holds level names or integers
counting the levels from the shallowest (`final` left out; vit3d: n is `block{n}`, the mean of block n's patch
tokens), or a map {family: such a list} for runs that mix families (a family without an entry: all its levels);
`final` is always added. The features file stores each under its level name.

Extracted once per encoder x task (rule `features`) and reused by every analysis, which reads them through
taskalign.analysis.feature_files. The encoder sees the task's own inputs as its input contract declares them (its
channels and normalisation; unused channels zeroed, degraded inputs for the restoration tasks) for every split, so CKA and MMD can use the test cases and the radiomic lens can fit on train
and hold out val/test. Encoders run in eval mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from taskalign.analysis.feature_files import write_features
from taskalign.data.dataset import read_index
from taskalign.models.checkpoint_io import EncoderFile
from taskalign.models.device import autocast, select_device, to_device
from taskalign.models.families.base import FINAL, FoundationEncoder
from taskalign.tasks.loader import make_loader
from taskalign.tasks.samples import TaskDataset, usable_rows
from taskalign.tasks.spec import Task
from taskalign.runtime import mark_ready

log = logging.getLogger(__name__)

def encoder_of(path: Path, source: str, task: Task, channels: list[str],
               device: torch.device) -> tuple[FoundationEncoder, dict | None]:
    """(encoder, its input contract as JSON) of an encoder file (`encoder`) or inside a fine-tuned task model
    (`finetuned`), on `device`."""
    if source == "encoder":
        encoder_file = EncoderFile.read(path)
        return encoder_file.build(device), (encoder_file.contract.to_json() if encoder_file.contract else None)
    model, contract = finetuned_model(path, task, channels, device)
    return model.encoder, contract


def finetuned_model(path: Path, task: Task, channels: list[str], device: torch.device):
    """(a fine-tuned FM task model, its encoder's input contract as JSON)."""
    from taskalign.models.task_model import load_task_model

    model, meta = load_task_model(path, task, channels, device)
    if not hasattr(model, "encoder"):
        raise ValueError(f"{path}: init {meta['init']} has no foundation-model encoder to extract features from")
    return model, meta.get("input")


def task_model_of(path: Path, source: str, task: Task, params: dict, device: torch.device):
    """(task model, contract JSON): a fine-tuned task model (`finetuned`), or for an encoder file the task model
    around it with its head at the initialisation seeded by params["seed"] (the FM before fine-tuning: 001's Φ_pre
    and Φ_rand)."""
    from taskalign.models.task_model import build_model

    if source != "encoder":
        return finetuned_model(path, task, params["channels"], device)
    encoder, contract = encoder_of(path, source, task, params["channels"], device)
    channels = list(contract["channels"]) if contract else params["channels"]
    torch.manual_seed(params["seed"])
    with torch.device(device):
        return build_model(task, "pretrained:encoder", encoder, {**params, "channels": channels}).eval(), contract


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
def level_means(encoder: FoundationEncoder, loader, names: list[str], device: torch.device) -> dict[str, np.ndarray]:
    """The spatial mean of each named level's map (B, C, d, h, w) -> (cases, C)."""
    encoder = encoder.to(device).eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in loader:
        batch = loader.dataset.on_device(to_device(batch, device))  # the task's (degraded) inputs
        with autocast(device):
            levels = encoder(batch["image"])
        for name in names:
            out[name].append(levels[name].float().flatten(2).mean(dim=2).cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in out.items()}


def extract(*, task: Task, model_path: Path, source: str, indexes: list[Path], params: dict, out_npz: Path,
            threads: int | None = None) -> None:
    device = select_device(threads)
    # the `head` level (analysis.mmd.layer: head) reads the task model's head too
    if "head" in params:
        model, contract = task_model_of(model_path, source, task, params, device)
        encoder = model.encoder
    else:
        model, (encoder, contract) = None, encoder_of(model_path, source, task, params["channels"], device)
    try:
        chosen = encoder.resolve_levels(params["layers"]) or encoder.level_names()  # no entry: every level
        names = [n for n in chosen if n != FINAL] + [FINAL]
    except ValueError as err:
        raise ValueError(f"analysis.layers {params['layers']}: {model_path}: {err}") from err
    rows = usable_rows(read_index(indexes), task)
    # the regression target norm only scales targets, which features never see
    dataset = TaskDataset(rows, task, params["channels"], train=False, seed=params["seed"],
                          norm={"offset": 0.0, "scale": 1.0}, contract=contract)
    loader = make_loader(dataset, params["batch_size"], shuffle=False, seed=params["seed"], device=device)
    mark_ready()  # the model is built and the data open: start-up ends (runtime)
    features = level_means(encoder, loader, names, device)
    if model is not None:
        features["head"] = head_features(model, task, loader, device)
    write_features(out_npz, dataset.index, features)
    log.info("%s: %d cases x %d levels (%d final features) from %s", task.name, len(rows), len(features),
             features[FINAL].shape[1], model_path)
