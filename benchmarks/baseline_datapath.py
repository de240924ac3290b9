"""The per-sample data path as it was before the degradations and augmentation moved to the device: each loader
worker augmented an item with MONAI and degraded it in numpy (scipy's distance transform, gaussian filter and
map_coordinates). Kept, unchanged in what it computes, as the baseline of `benchmarks/bench_datapath.py` and the
reference of `tests/test_datapath.py` (same seeds, same batches up to float rounding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from taskalign.data.dataset import CacheDataset, item_key
from taskalign.tasks.samples import augmentation
from taskalign.tasks.spec import Task


def rectal_air_field(rectum: np.ndarray, spacing_mm, amplitude_mm: float, decay_mm: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Displacement (3, D, H, W) float32 in voxels along H, away from the rectum: amplitude * s * exp(-distance /
    decay), s ~ U(0.5, 1), smoothed with a 1-voxel gaussian; zero without a rectum."""
    scale = rng.uniform(0.5, 1.0)
    rectum = np.asarray(rectum) > 0
    field = np.zeros((3, *rectum.shape), dtype=np.float32)
    if not rectum.any():
        return field
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    distance = distance_transform_edt(~rectum, sampling=spacing_mm)
    magnitude = amplitude_mm * scale * np.exp(-distance / decay_mm)
    centre_h = np.argwhere(rectum)[:, 1].mean()
    h = np.arange(rectum.shape[1], dtype=np.float64)[None, :, None]
    direction = np.sign(h - centre_h) + (h == centre_h)
    field[1] = gaussian_filter(magnitude * direction, sigma=1.0) / spacing_mm[1]
    return field


def warp(image: np.ndarray, field: np.ndarray, order: int = 1) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    grid = np.indices(image.shape[1:], dtype=np.float32) + field
    return np.stack([map_coordinates(c, grid, order=order, mode="nearest") for c in image]).astype(np.float32)


def downsample_depth(image: np.ndarray, factor: int) -> np.ndarray:
    c, d, h, w = image.shape
    return image.reshape(c, d // factor, factor, h, w).mean(axis=2).astype(np.float32)


def upsample_depth(image: np.ndarray, factor: int) -> np.ndarray:
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    size = (image.shape[1] * factor, *image.shape[2:])
    return F.interpolate(volume, size=size, mode="trilinear", align_corners=False)[0].numpy()


class PerSampleTaskDataset(Dataset):
    """Items as the model saw them: `image`, `target`, `index` (and `low_res` for super-resolution), each made in
    the loader worker."""

    def __init__(self, rows, task: Task, channels: list[str], *, train: bool, seed: int,
                 augment: dict | None = None, norm: dict | None = None):
        self.task, self.channels, self.train, self.seed, self.norm = task, list(channels), train, seed, norm or {}
        self.transform = augmentation(task, augment, task.type.masks) if train and augment else None
        self.cache = CacheDataset(rows, masks=task.type.masks, transform=self.transform)
        self.index = self.cache.index
        self.input_mask = torch.tensor([c in task.inputs for c in self.channels], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key) -> dict:
        i, item_seed = item_key(key)
        item = self.cache[key]
        image = torch.as_tensor(item["image"]).float()
        per_epoch = self.train and item_seed is not None
        rng = np.random.default_rng([self.seed, i, item_seed] if per_epoch else [self.seed, i])
        row = self.index.iloc[i]
        sample = {"index": i}
        kind, degradation = self.task.kind.group, self.task.type.degradation
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
            degraded = image[target_channel : target_channel + 1].numpy()
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
