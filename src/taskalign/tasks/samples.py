"""Task samples from the cache: the rows a task can use, the items loader workers read, and the batched operations
that make the encoder input and the target on the training device (`TaskDataset.on_device`).

Loader workers only read cached arrays and draw each item's random parameters (augmentation, the distortion's
scale); augmentation and degradations run on a batch where the model trains (taskalign.tasks.augment,
taskalign.tasks.degrade). Augmentation runs on the clean arrays first; restoration inputs are then degraded from the
augmented image. Training draws augmentation and degradations from the item seed its loader drew for the epoch
(`taskalign.tasks.loader.SeededShuffle`); val/test draw degradations from (seed, case), so every encoder is scored
on the same degraded inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from taskalign.data.dataset import CacheDataset, item_key
from taskalign.tasks.augment import apply_augmentation, augmentation, draw_augmentation
from taskalign.tasks.degrade import (distance_to_mask, downsample_depth, rectal_air_shift, upsample_depth,
                                     warp_along_h)
from taskalign.tasks.spec import Task


def usable_rows(index: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Rows with the task's target (and degradation masks): a case without a lesion has no sector, etc."""
    needed = [task.type.target, *task.type.masks, *task.inputs]
    keep = index[needed].notna().all(axis=1) & (index[needed].astype(str) != "").all(axis=1)
    return index[keep].reset_index(drop=True)


def target_norm(rows: pd.DataFrame, task: Task) -> dict:
    """Regression targets are standardised with the training split's mean and std (kept with the model)."""
    if not task.kind.normalised:
        return {}
    values = rows[task.type.target].astype(float)
    return {"offset": float(values.mean()), "scale": float(values.std(ddof=0)) or 1.0}


class TaskDataset(Dataset):
    """Items as loader workers make them: the cached arrays and the item's random draws, no computation; a batch of
    them becomes the model's input and target on the training device through `on_device`.

    Item keys: `index`; `image` (C, D, H, W) clean and the task's masks (1, D, H, W), as the cache stores them
    (`CacheDataset(as_stored=True)`); `target` for classification and
    regression; `augment` (`draw_augmentation`) in training with augmentation; distortion also `spacing_mm` (3,),
    `rectum_distance` (1, D, H, W) with `rectum_distance_present`, and `distortion_scale`, the field's random part.

    `channels`: the cache's channel order. `contract`: the input contract (JSON) of the encoder the items feed: the
    image then has the contract's channels in its order and normalisation (taskalign.data.dataset.contract_image),
    and `self.channels` are those."""

    def __init__(self, rows: pd.DataFrame, task: Task, channels: list[str], *, train: bool, seed: int,
                 augment: dict | None = None, norm: dict | None = None, contract: dict | None = None):
        self.task = task
        self.channels = list(contract["channels"]) if contract else list(channels)
        self.train = train
        self.seed = seed
        self.norm = norm or {}
        self.transform = augmentation(task, augment, task.type.masks) if train and augment else None
        self.cache = CacheDataset(rows, masks=task.type.masks, fields=task.type.cache_fields, as_stored=True,
                                  contract=contract)
        self.index = self.cache.index
        self.input_mask = torch.tensor([c in task.inputs for c in self.channels])
        if not self.input_mask.any():
            raise ValueError(f"task {task.name}: none of its inputs {list(task.inputs)} is among the model's input "
                             f"channels {self.channels}")
        missing = [c for c in task.options.get("random_inputs", []) if c not in self.channels]
        needed = task.type.target if task.kind.target_from == "image" else None
        if needed is not None and needed not in self.channels:
            missing.append(needed)
        if missing:
            raise ValueError(f"task {task.name} needs {missing}, which is not among the model's input channels "
                             f"{self.channels} (its encoder's input contract)")
        # random_inputs: one of them is drawn per item (`keep`), the others are zeroed with the unused channels
        self.drawn = [self.channels.index(c) for c in task.options.get("random_inputs", [])]
        self.target_channel = self.channels.index(needed) if needed is not None else None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, item_seed = item_key(key)
        item = self.cache[i]
        sample = {"index": i, "image": item["image"], **{m: item[m] for m in self.task.type.masks}}
        if self.transform is not None:  # the seed CacheDataset gave MONAI: the item's, else its index
            sample["augment"] = draw_augmentation(self.transform, i if item_seed is None else item_seed)
        row = self.index.iloc[i]
        if self.task.kind.target_from == "row":
            value = row[self.task.type.target]
            if self.task.kind.normalised:
                value = (float(value) - self.norm["offset"]) / self.norm["scale"]
            sample["target"] = self.task.kind.item_target(self.task, value)
        # training draws follow the item seed a shuffling loader drew for this epoch; val/test are fixed per case
        per_epoch = self.train and item_seed is not None
        rng = np.random.default_rng([self.seed, i, item_seed] if per_epoch else [self.seed, i])
        if self.drawn:
            mask = self.input_mask.clone()
            mask[self.drawn] = False
            mask[self.drawn[rng.integers(len(self.drawn))]] = True
            sample["input_mask"] = mask
        if self.task.type.degradation == "rectal_air":
            sample["distortion_scale"] = torch.tensor(rng.uniform(0.5, 1.0), dtype=torch.float64)
            sample.update({k: item[k] for k in ("spacing_mm", "rectum_distance", "rectum_distance_present")})
        return sample

    def on_device(self, batch: dict) -> dict:
        """A collated batch of items, on the training device -> `image` (B, C, D, H, W) encoder input (unused
        channels zeroed), `target`, `index`; super-resolution also `low_res` (B, 1, D / factor, H, W), the acquired
        thick-slice T2W. Full precision whatever autocast the caller runs under."""
        with torch.autocast(batch["image"].device.type, enabled=False):
            input_mask = batch["input_mask"] if "input_mask" in batch else self.input_mask.view(1, -1)
            return task_batch(batch, self.task, input_mask, self.target_channel)

    def sample(self, i: int) -> dict:
        """Item i as the model sees it, on the CPU (`on_device` of a batch of one, unbatched)."""
        batch = self.on_device(default_collate([self[i]]))
        return {k: v[0] if torch.is_tensor(v) else v for k, v in batch.items()}


def task_batch(batch: dict, task: Task, input_mask: torch.Tensor, target_channel: int | None) -> dict:
    """`TaskDataset.on_device`: augmentation on the clean arrays, then the target and the degraded input. Restoration
    inputs are degraded from the augmented image, so a distortion or a thick-slice acquisition is never itself
    rotated or zoomed."""
    image = batch["image"].float()
    masks = {m: batch[m].float() for m in task.type.masks}
    reshaped = torch.zeros(image.shape[0], dtype=torch.bool, device=image.device)
    if "augment" in batch:
        image, masks, reshaped = apply_augmentation(image, masks, batch["augment"])
    out = {"index": batch["index"]}
    if task.kind.target_from == "row":
        out["target"] = batch["target"]
    elif task.kind.target_from == "mask":
        mask = masks[task.type.target].round()
        out["target"] = mask.long() if task.type.n_outputs > 1 else mask
    else:
        target = image[:, target_channel : target_channel + 1]
        out["target"] = target
        if task.type.degradation == "thick_slices":
            out["low_res"] = downsample_depth(target, task.option("factor"))
            degraded = upsample_depth(out["low_res"], task.option("factor"))
        elif task.type.degradation == "rectal_air":
            degraded = warp_along_h(target, distortion_shift(batch, masks["rectum"][:, 0] > 0.5, reshaped, task))
        else:
            degraded = target
        image = torch.cat([image[:, :target_channel], degraded, image[:, target_channel + 1 :]], dim=1)
    out["image"] = image * input_mask.to(image).view(*input_mask.shape, 1, 1, 1)
    return out


def distortion_shift(batch: dict, rectum: torch.Tensor, reshaped: torch.Tensor, task: Task) -> torch.Tensor:
    """The rectal-air shift (B, D, H, W) of each item's (augmented) rectum. The distance from it is the cache's
    `rectum_distance` (flipped with the item), or, for an item rotated or zoomed (its mask was resampled) or a
    cache without the file, the exact distance transform of its mask, here on the device."""
    distance = batch["rectum_distance"][:, 0].float()
    if "augment" in batch and "flip" in batch["augment"]:
        flip = batch["augment"]["flip"].to(distance.device).view(-1, 1, 1, 1)
        distance = torch.where(flip, distance.flip(-1), distance)
    stale = (reshaped | ~batch["rectum_distance_present"]) & rectum.flatten(1).any(dim=1)
    if stale.any():
        rows = stale.nonzero()[:, 0]
        distance = distance.index_put((rows,), distance_to_mask(rectum[rows], batch["spacing_mm"][rows]))
    return rectal_air_shift(rectum, distance, batch["spacing_mm"], task.option("amplitude_mm"),
                            task.option("decay_mm"), batch["distortion_scale"])
