"""Data loaders for training stages, from cohort cache indexes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

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


class SeededShuffle(Sampler):
    """A shuffled order with one seed per item, both drawn from torch's global RNG when an epoch starts.

    `fit` reseeds that RNG from (seed, epoch), so a resumed run sees the items an uninterrupted one saw, and the
    items themselves (augmentation, degradation) depend only on their seed: the same batches come out whether the
    main process or worker processes load them. Yields (index, seed) keys (see `CacheDataset`)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n).tolist()
        seeds = torch.randint(2**31, (self.n,)).tolist()
        return iter(list(zip(order, seeds)))  # drawn now, not lazily between training steps


def loader_workers(device: torch.device, shuffle: bool) -> int:
    """Worker processes: 4 on a GPU. On CPU one for training loaders, so that the next batch is read and augmented
    while the current step runs, but only with a core to spare beyond torch's threads: on 2 cores running 2
    threads a worker cut the time waiting for data from 18-41% to 4-16% of the step yet made each step 10-24%
    slower, while a 1-thread job (the default config's) gets the worker and faster steps (benchmarks/README.md).
    Evaluation loaders read un-augmented arrays in the main process."""
    if device.type == "cuda":
        return 4
    spare = len(os.sched_getaffinity(0)) > torch.get_num_threads()
    return 1 if shuffle and spare else 0


class EpochAheadLoader(DataLoader):
    """A DataLoader whose next epoch can start early: `start_epoch()` draws the epoch's order (`SeededShuffle`)
    and lets the workers load its first batches, e.g. while the model is validated; the next `iter()` continues
    from there. Without it, every epoch's first batch is loaded while training waits (`fit` calls it)."""

    _ahead = None

    def start_epoch(self) -> None:
        self._ahead = super().__iter__()

    def __iter__(self):
        ahead, self._ahead = self._ahead, None
        return ahead if ahead is not None else super().__iter__()


def make_loader(dataset: CacheDataset, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                drop_last: bool = False, workers: int | None = None) -> EpochAheadLoader:
    """A loader whose batches do not depend on `workers` (default: `loader_workers`).

    Shuffling loaders take their order and item seeds from `SeededShuffle`; the loader's own generator (the
    workers' base seed) is a fixed one, so neither starting workers nor keeping them across epochs
    (persistent) draws from the global RNG that dropout and masking use."""
    workers = loader_workers(device, shuffle) if workers is None else workers
    return EpochAheadLoader(dataset, batch_size=batch_size, sampler=SeededShuffle(len(dataset)) if shuffle else None,
                            drop_last=drop_last, num_workers=workers, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")
