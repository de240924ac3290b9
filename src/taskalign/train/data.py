"""Data loaders for training stages, from cohort cache indexes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from taskalign.data.dataset import CacheDataset


def holdout_patients(index: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows by patient: (kept, held out), `fraction` of the patients held out (at least one when > 0)."""
    patients = np.array(sorted(index["patient_id"].unique()))
    n_out = int(round(fraction * len(patients)))
    if fraction > 0 and len(patients) > 1:
        n_out = max(1, min(n_out, len(patients) - 1))
    held = set(np.random.default_rng(seed).permutation(patients)[:n_out])
    mask = index["patient_id"].isin(held)
    return index[~mask].reset_index(drop=True), index[mask].reset_index(drop=True)


def make_loader(dataset: CacheDataset, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                drop_last: bool = False) -> DataLoader:
    """Cache reads are memory-mapped and cheap, so CPU runs load in the main process; GPU runs use workers.

    A shuffling loader draws its order (and its workers' seeds) from torch's global RNG, which `fit` reseeds from
    (seed, epoch) at every epoch: a run resumed at epoch k sees exactly the batches an uninterrupted run saw.
    Workers are started per epoch for the same reason. Non-shuffling loaders keep a fixed generator."""
    workers = 4 if device.type == "cuda" else 0
    generator = None if shuffle else torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=workers,
                      generator=generator, pin_memory=device.type == "cuda")
