"""Layer-wise features: the spatial mean of each chosen level's map and of `final`, per case.

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

log = logging.getLogger(__name__)

def encoder_of(path: Path, source: str, task: Task, channels: list[str],
               device: torch.device) -> tuple[FoundationEncoder, dict | None]:
    """(encoder, its input contract as JSON) of an encoder file (`encoder`) or inside a fine-tuned task model
    (`finetuned`), on `device`."""
    if source == "encoder":
        encoder_file = EncoderFile.read(path)
        return encoder_file.build(device), (encoder_file.contract.to_json() if encoder_file.contract else None)
    from taskalign.models.task_model import load_task_model

    model, meta = load_task_model(path, task, channels, device)
    if not hasattr(model, "encoder"):
        raise ValueError(f"{path}: init {meta['init']} has no foundation-model encoder to extract features from")
    return model.encoder, meta.get("input")


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
    encoder, contract = encoder_of(model_path, source, task, params["channels"], device)
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
    features = level_means(encoder, loader, names, device)
    write_features(out_npz, dataset.index, features)
    log.info("%s: %d cases x %d levels (%d final features) from %s", task.name, len(rows), len(features),
             features[FINAL].shape[1], model_path)
