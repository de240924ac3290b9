"""Torch datasets over the preprocessed cache (docs/data-contract.md, section 3): memory-mapped, no decoding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from taskalign.runtime import read_array

# T2W acquisition metadata as regression targets: (centre, scale) of typical prostate T2 TSE values, so the
# targets are O(1) whatever the cohort. Missing values are masked out of the loss, not imputed.
METADATA_SCALES = {"tr": (4500.0, 1500.0), "te": (105.0, 15.0), "flip_angle": (140.0, 20.0)}


def read_index(index_csvs: list[Path], splits: list[str] | None = None) -> pd.DataFrame:
    """Concatenate cohort cache indexes, keeping only `splits` (None: all)."""
    frames = [pd.read_csv(p, dtype={"case_id": str, "patient_id": str}) for p in index_csvs]
    index = pd.concat(frames, ignore_index=True)
    if splits is not None:
        index = index[index["split"].isin(splits)].reset_index(drop=True)
    if index.empty:
        raise ValueError(f"no cases in {', '.join(map(str, index_csvs))} for splits {splits}")
    return index


def metadata_targets(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (TR, TE, flip angle) and a mask of which are known."""
    values = np.zeros(len(METADATA_SCALES), dtype=np.float32)
    known = np.zeros(len(METADATA_SCALES), dtype=bool)
    for i, (key, (centre, scale)) in enumerate(METADATA_SCALES.items()):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            values[i] = (float(v) - centre) / scale
            known[i] = True
    return values, known


def untracked(transform, item: dict) -> dict:
    """`transform(item)` with MONAI's metadata tracking off: the arrays come out identical (tested) as plain tensors,
    and a training sample with the default augmentation takes ~10 ms instead of ~17 ms (benchmarks/)."""
    from monai.data import get_track_meta, set_track_meta

    tracking = get_track_meta()
    set_track_meta(False)
    try:
        return transform(item)
    finally:
        set_track_meta(tracking)


def item_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, seed) of a dataset key; seed None for a plain index."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


class CacheDataset(Dataset):
    """One item per cached case: a dict of tensors.

    Keys: `image` (C, D, H, W) float32 (a float16 cache, preprocess.cache_dtype, widened); `channels_present` (C,) bool; `metadata` (3,) float32 and
    `metadata_known` (3,) bool (TR, TE, flip angle, normalised with METADATA_SCALES); `spacing_mm` (3,) float64;
    each requested mask and each requested field (e.g. `rectum_distance`, docs/data-contract.md) as (1, D, H, W)
    float32 (zeros and `<name>_present` False when the case lacks it); `index` (int, row in `self.index`).
    `transform` (e.g. MONAI dictionary transforms) is applied to the dict. `as_stored`: image, masks and fields in
    the cache's dtypes (masks uint8), mapped from their files (copy-on-write) rather than copied, for a consumer that
    converts them where it computes (`taskalign.tasks.samples.TaskDataset`): a paper-geometry image is 50 MB, and a
    loader worker's copies of it cost more than everything else it does.

    A key is an index, or (index, seed) from a shuffling loader (`taskalign.tasks.loader.SeededShuffle`): the
    transform's random state is set from the seed (from the index alone when there is none), so an item is a
    function of its key whichever process loads it.
    """

    def __init__(self, index: pd.DataFrame, masks: tuple[str, ...] = (), transform=None, fields: tuple[str, ...] = (),
                 as_stored: bool = False):
        self.index = index.reset_index(drop=True)
        self.masks = tuple(masks)
        self.fields = tuple(fields)
        self.transform = transform
        self.as_stored = as_stored

    def _array(self, path: Path) -> torch.Tensor:
        if self.as_stored:
            return torch.from_numpy(read_array(path, mmap_mode="c"))
        return torch.from_numpy(read_array(path).astype(np.float32, copy=False))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, seed = item_key(key)
        row = self.index.iloc[i].to_dict()
        case = Path(row["cache_dir"])
        meta = json.loads((case / "meta.json").read_text())
        image = self._array(case / "image.npy")
        metadata, known = metadata_targets(row)
        item = {
            "image": image,
            "channels_present": torch.tensor([c in meta["channels_present"] for c in meta["channels"]]),
            "metadata": torch.from_numpy(metadata),
            "metadata_known": torch.from_numpy(known),
            "spacing_mm": torch.tensor(meta["spacing_mm"], dtype=torch.float64),
            "index": i,
        }
        for name in (*self.masks, *self.fields):
            path = case / f"{name}.npy"
            present = path.exists()
            # an absent mask stored would be uint8, an absent field float32
            absent = torch.uint8 if self.as_stored and name in self.masks else torch.float32
            item[name] = (self._array(path) if present else torch.zeros(image.shape[1:], dtype=absent))[None]
            item[f"{name}_present"] = torch.tensor(present)
        if self.transform is None:
            return item
        self.transform.set_random_state(seed=i if seed is None else seed)
        return untracked(self.transform, item)
