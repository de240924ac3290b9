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


def contract_image(image, meta: dict, contract: dict, case: Path):
    """The cached image as an encoder's input contract declares it: its channels in its order, and for
    `zscore_nonzero` every channel re-normalised over its non-zero voxels (MONAI NormalizeIntensity(nonzero=True,
    channel_wise=True)). Returns (image (C', D, H, W), channel names present).

    The cache holds z = (clip(raw, low, high) - centre) / scale per channel with those values in meta.json, so
    raw = z * scale + centre where raw was not clipped: exact when preprocess.clip_percentiles is [0, 100] (and the
    cache is float32), except that the voxels at the foreground minimum read 0 (the cache maps raw 0 and that
    minimum to the same value; the statistics still count them). Absent channels stay zero. A spacing or crop other than the contract's is an error."""
    names = list(meta["channels"])
    wanted = list(contract["channels"])
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"{case}: the encoder's input contract needs channel(s) {missing}, the cache has "
                         f"{names} (preprocess.channels)")
    for key, cached in (("spacing_mm", meta["spacing_mm"]), ("size", meta["shape"])):
        want = contract.get(key)
        if want is not None and not np.allclose(np.asarray(want, float), np.asarray(cached, float)):
            raise ValueError(f"{case}: the encoder's input contract has {key} {list(want)}, the cache "
                             f"{list(cached)} (preprocess.{'size' if key == 'size' else 'spacing_mm'}); a family "
                             "that adapts to the crop was adapted at import, so this encoder cannot be fed this cache")
    idx = [names.index(c) for c in wanted]
    present = [c for c in wanted if c in meta["channels_present"]]
    if contract["normalisation"] == "clip_zscore":
        return (image if idx == list(range(len(names))) else image[idx]), present
    out = np.zeros((len(idx), *image.shape[1:]), dtype=np.float32)
    for j, (i, name) in enumerate(zip(idx, wanted)):
        stats = meta["normalisation"].get(name)
        if stats is None or name not in present:
            continue
        stored = np.asarray(image[i])
        background = np.asarray(np.float32(stats["background"])).astype(stored.dtype)
        nonzero = stored != background
        raw = stored.astype(np.float64) * stats["scale"] + stats["centre"]
        values = raw[nonzero]
        # foreground voxels at the clip floor look like background: the statistics still count them (the
        # cache records how many foreground voxels there were), only their own output stays 0
        floor = max(int(stats["foreground_voxels"]) - values.size, 0)
        n = values.size + floor
        if n:
            mean = (values.sum() + floor * stats["clip_low"]) / n
            var = (np.square(values - mean).sum() + floor * (stats["clip_low"] - mean) ** 2) / n
            std = np.sqrt(var) if var > 0 else 1.0
            out[j][nonzero] = ((values - mean) / std).astype(np.float32)
    return out, present


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

    `contract`: an encoder's input contract as JSON (channels, normalisation, spacing_mm, size), `contract_image`:
    `image` and `channels_present` then follow the contract's channels; None: the cache's own.

    A key is an index, or (index, seed) from a shuffling loader (`taskalign.tasks.loader.SeededShuffle`): the
    transform's random state is set from the seed (from the index alone when there is none), so an item is a
    function of its key whichever process loads it.
    """

    def __init__(self, index: pd.DataFrame, masks: tuple[str, ...] = (), transform=None, fields: tuple[str, ...] = (),
                 as_stored: bool = False, contract: dict | None = None):
        self.index = index.reset_index(drop=True)
        self.contract = contract
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
        names = meta["channels"]
        if self.contract is not None:
            image, present = contract_image(image, meta, self.contract, case)
            image, names = torch.as_tensor(image), self.contract["channels"]
            meta["channels_present"] = present
        metadata, known = metadata_targets(row)
        item = {
            "image": image,
            "channels_present": torch.tensor([c in meta["channels_present"] for c in names]),
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
