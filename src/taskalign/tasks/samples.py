"""Task samples from the cache: the encoder input, the target, and the rows a task can use.

Augmentation (MONAI dictionary transforms) runs on the clean cached arrays first; restoration inputs are then
degraded from the augmented image, so a distortion or a thick-slice acquisition is never itself rotated or zoomed.
Training draws augmentation and degradations from the item seed its loader drew for the epoch
(`taskalign.tasks.loader.SeededShuffle`); val/test draw degradations from (seed, case), so every encoder is scored
on the same degraded inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.transforms import (Compose, RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd,
                              RandZoomd)
from torch.utils.data import Dataset

from taskalign.data.dataset import CacheDataset, item_key
from taskalign.tasks.degrade import downsample_depth, rectal_air_field, upsample_depth, warp
from taskalign.tasks.spec import Task


def usable_rows(index: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Rows with the task's target (and degradation masks): a case without a lesion has no sector, etc."""
    needed = [task.type.target, *task.type.masks, *task.inputs]
    keep = index[needed].notna().all(axis=1) & (index[needed].astype(str) != "").all(axis=1)
    return index[keep].reset_index(drop=True)


def target_norm(rows: pd.DataFrame, task: Task) -> dict:
    """Regression targets are standardised with the training split's mean and std (kept with the model)."""
    if task.kind != "regression":
        return {}
    values = rows[task.type.target].astype(float)
    return {"offset": float(values.mean()), "scale": float(values.std(ddof=0)) or 1.0}


def augmentation(task: Task, augment: dict, masks: tuple[str, ...]):
    """MONAI transforms on the clean image and masks (nearest for masks); None when nothing is enabled."""
    keys = ["image", *masks]
    modes = ["bilinear"] + ["nearest"] * len(masks)
    prob = augment.get("prob", 0.0)
    transforms = []
    if augment.get("flip_prob", 0) > 0 and task.type.flips:
        transforms.append(RandFlipd(keys, prob=augment["flip_prob"], spatial_axis=2))
    if augment.get("rotate_deg", 0) > 0 and prob > 0:
        angle = math.radians(augment["rotate_deg"])
        transforms.append(RandRotated(keys, range_x=angle, prob=prob, mode=modes, padding_mode="border"))
    if augment.get("zoom") and prob > 0:
        low, high = augment["zoom"]
        transforms.append(RandZoomd(keys, min_zoom=low, max_zoom=high, prob=prob, mode=["trilinear"] + ["nearest"] * len(masks),
                                    padding_mode="edge", keep_size=True))
    if augment.get("intensity", 0) > 0 and prob > 0:
        transforms.append(RandScaleIntensityd("image", factors=augment["intensity"], prob=prob))
        transforms.append(RandShiftIntensityd("image", offsets=augment["intensity"], prob=prob))
    return Compose(transforms) if transforms else None


class TaskDataset(Dataset):
    """Items: `image` (C, D, H, W) encoder input (unused channels zeroed), `target`, `index`; super-resolution
    also gives `low_res` (1, D / factor, H, W), the acquired thick-slice T2W."""

    def __init__(self, rows: pd.DataFrame, task: Task, channels: list[str], *, train: bool, seed: int,
                 augment: dict | None = None, norm: dict | None = None):
        self.task = task
        self.channels = list(channels)
        self.train = train
        self.seed = seed
        self.norm = norm or {}
        self.transform = augmentation(task, augment, task.type.masks) if train and augment else None
        self.cache = CacheDataset(rows, masks=task.type.masks, transform=self.transform)
        self.index = self.cache.index
        self.input_mask = torch.tensor([c in task.inputs for c in self.channels], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, item_seed = item_key(key)
        item = self.cache[key]  # the augmentation's random state comes from the key
        image = torch.as_tensor(item["image"]).float()
        # training degradations follow the item seed a shuffling loader drew for this epoch; val/test are fixed
        per_epoch = self.train and item_seed is not None
        rng = np.random.default_rng([self.seed, i, item_seed] if per_epoch else [self.seed, i])
        row = self.index.iloc[i]
        sample = {"index": i}
        kind, degradation = self.task.kind, self.task.type.degradation
        if kind == "classification":
            sample["target"] = torch.tensor(self.task.type.classes.index(int(row[self.task.type.target])))
        elif kind == "regression":
            value = (float(row[self.task.type.target]) - self.norm["offset"]) / self.norm["scale"]
            sample["target"] = torch.tensor([value], dtype=torch.float32)
        elif kind == "segmentation":
            mask = torch.as_tensor(item[self.task.type.target]).round()
            sample["target"] = mask.long() if self.task.type.n_outputs > 1 else mask.float()
        else:
            target_channel = self.channels.index(self.task.type.target)
            sample["target"] = image[target_channel : target_channel + 1].clone()
            degraded = image[target_channel : target_channel + 1].numpy()  # a degradation acts on the target itself
            if degradation == "thick_slices":
                factor = self.task.options["factor"]
                low = downsample_depth(degraded, factor)
                sample["low_res"] = torch.from_numpy(low)
                image[target_channel] = torch.from_numpy(upsample_depth(low, factor))[0]
            elif degradation == "rectal_air":
                spacing = json.loads((Path(row["cache_dir"]) / "meta.json").read_text())["spacing_mm"]
                field = rectal_air_field(np.asarray(item["rectum"])[0] > 0.5, spacing,
                                         self.task.options["amplitude_mm"], self.task.options["decay_mm"], rng)
                image[target_channel] = torch.from_numpy(warp(degraded, field))[0]
        sample["image"] = image * self.input_mask.view(-1, 1, 1, 1)
        return sample
