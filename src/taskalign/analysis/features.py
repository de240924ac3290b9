"""Layer-wise features: the token-mean embedding of chosen blocks and of the final normed output, per case.

Extracted once per encoder x task (rule `features`) and reused by every analysis. The encoder sees the task's own
inputs (unused channels zeroed, degraded inputs for the restoration tasks) for every split, so CKA and MMD can use
the test cases and the radiomic lens can fit on train and hold out val/test. Encoders run in eval mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from taskalign.data.dataset import read_index
from taskalign.models.checkpoint_io import load_encoder
from taskalign.models.encoder import Encoder
from taskalign.runtime import atomic_path
from taskalign.tasks.samples import TaskDataset, usable_rows
from taskalign.tasks.spec import Task
from taskalign.train.data import make_loader
from taskalign.train.device import autocast, select_device, to_device

log = logging.getLogger(__name__)

META_KEYS = ("case_id", "patient_id", "split")


def layer_names(layers: list[int]) -> list[str]:
    return [f"block{n}" for n in layers] + ["final"]


def encoder_of(path: Path, source: str, task: Task, channels: list[str]) -> Encoder:
    """The encoder in an encoder file (`encoder`) or inside a fine-tuned task model (`finetuned`)."""
    if source == "encoder":
        return load_encoder(path)
    from taskalign.train.finetune import load_task_model

    model, meta = load_task_model(path, task, channels)
    if not hasattr(model, "encoder"):
        raise ValueError(f"{path}: init {meta['init']} has no foundation-model encoder to extract features from")
    return model.encoder


@torch.no_grad()
def token_means(encoder: Encoder, loader, layers: list[int], device: torch.device) -> dict[str, np.ndarray]:
    """Mean over patch tokens (class token left out) of each chosen block's output and of the normed output."""
    encoder = encoder.to(device).eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in layer_names(layers)}
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            normed, hidden = encoder(batch["image"])
        for n in layers:
            out[f"block{n}"].append(hidden[n][:, 1:].float().mean(dim=1).cpu().numpy())
        out["final"].append(normed[:, 1:].float().mean(dim=1).cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in out.items()}


def extract(*, task: Task, model_path: Path, source: str, indexes: list[Path], params: dict, out_npz: Path,
            threads: int | None = None) -> None:
    device = select_device(threads)
    encoder = encoder_of(model_path, source, task, params["channels"])
    unknown = [n for n in params["layers"] if not 0 <= n < len(encoder.blocks)]
    if unknown:
        raise ValueError(f"analysis.layers {unknown}: {model_path} has blocks 0..{len(encoder.blocks) - 1}")
    rows = usable_rows(read_index(indexes), task)
    # the regression target norm only scales targets, which features never see
    dataset = TaskDataset(rows, task, params["channels"], train=False, seed=params["seed"],
                          norm={"offset": 0.0, "scale": 1.0})
    loader = make_loader(dataset, params["batch_size"], shuffle=False, seed=params["seed"], device=device)
    features = token_means(encoder, loader, params["layers"], device)
    meta = {key: dataset.index[key].to_numpy(dtype=str) for key in META_KEYS}
    with atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **meta, **features)
    log.info("%s: %d cases x %d layers (%d features) from %s", task.name, len(rows), len(features),
             features["final"].shape[1], model_path)


def load_features(path: Path, splits: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(case table, {layer: n x d}) from a features file, optionally only some splits."""
    with np.load(path) as data:
        cases = pd.DataFrame({key: data[key] for key in META_KEYS})
        layers = {key: data[key] for key in data.files if key not in META_KEYS}
    keep = cases["split"].isin(splits).to_numpy() if splits else np.ones(len(cases), bool)
    return cases[keep].reset_index(drop=True), {k: v[keep] for k, v in layers.items()}


def joined(a: Path, b: Path, splits: tuple[str, ...]) -> tuple[list[str], dict, dict]:
    """Features of two encoders on the same cases in the same order (joined by case id)."""
    cases_a, feats_a = load_features(a, splits)
    cases_b, feats_b = load_features(b, splits)
    common = sorted(set(cases_a["case_id"]) & set(cases_b["case_id"]))
    if len(common) < max(len(cases_a), len(cases_b)):
        log.warning("%s and %s share %d of %d/%d cases", a, b, len(common), len(cases_a), len(cases_b))
    pos_a = pd.Series(range(len(cases_a)), index=cases_a["case_id"])[common].to_numpy()
    pos_b = pd.Series(range(len(cases_b)), index=cases_b["case_id"])[common].to_numpy()
    return common, {k: v[pos_a] for k, v in feats_a.items()}, {k: v[pos_b] for k, v in feats_b.items()}
