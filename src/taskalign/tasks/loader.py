"""Data loaders for every stage that reads the cache (training, validation, evaluation, feature extraction).

Training loaders own their epochs: `begin_epoch` seeds the global RNGs from (seed, epoch), and an epoch can be
started ahead (`start_epoch`, `start_first_epoch`) so that its first batches load while the model is validated or
built; either way the same batches come out. `holdout_patients` splits the pretraining pool by patient.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from taskalign.data.dataset import CacheDataset
from taskalign.tasks.rng import preserved_rngs, rng_state, seed_epoch, set_rng_state


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

    `EpochAheadLoader.begin_epoch` reseeds that RNG from (seed, epoch), so a resumed run sees the items an uninterrupted one saw, and the
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
    """A DataLoader that seeds its epochs and can start the next one early.

    `begin_epoch(e)` is called when epoch e's training starts: it seeds the global RNGs from (seed, e) unless
    epoch e was started ahead. `start_epoch(e)` seeds them and draws the epoch's order (`SeededShuffle`) now, so
    that workers load its first batches, e.g. while the model is validated; the next `iter()` continues from
    there. Without it, every epoch's first batch is loaded while training waits."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self._ahead = None  # the iterator of the epoch started ahead
        self._ahead_epoch = None
        self._ahead_rngs = None  # the RNG states that epoch trains from, when the caller's were kept

    def start_epoch(self, epoch: int) -> None:
        seed_epoch(self.seed, epoch)
        self._ahead, self._ahead_epoch, self._ahead_rngs = super().__iter__(), epoch, None

    def start_first_epoch(self) -> None:
        """Start epoch 1 before the model is built, so that its first batches load meanwhile instead of while
        training waits. The caller's RNGs are left as found, so the model's initial weights do not change; the
        RNG states after the order was drawn are kept for `begin_epoch(0)`. Only for a fresh run: which epoch a
        resumed run trains next is known once its model is restored."""
        with preserved_rngs():
            self.start_epoch(0)
            self._ahead_rngs = rng_state()

    def begin_epoch(self, epoch: int) -> None:
        if self._ahead is None:
            seed_epoch(self.seed, epoch)
        elif self._ahead_epoch != epoch:
            raise RuntimeError(f"epoch {self._ahead_epoch + 1} was started ahead, but epoch {epoch + 1} trains")
        elif self._ahead_rngs is not None:
            set_rng_state(self._ahead_rngs)

    def __iter__(self):
        ahead, self._ahead, self._ahead_epoch, self._ahead_rngs = self._ahead, None, None, None
        return ahead if ahead is not None else super().__iter__()


def make_loader(dataset: CacheDataset, batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                drop_last: bool = False, workers: int | None = None) -> EpochAheadLoader:
    """A loader whose batches do not depend on `workers` (default: `loader_workers`).

    Shuffling loaders take their order and item seeds from `SeededShuffle`; the loader's own generator (the
    workers' base seed) is a fixed one, so neither starting workers nor keeping them across epochs
    (persistent) draws from the global RNG that dropout and masking use. `seed` also seeds the epochs."""
    workers = loader_workers(device, shuffle) if workers is None else workers
    return EpochAheadLoader(dataset, batch_size=batch_size, sampler=SeededShuffle(len(dataset)) if shuffle else None,
                            drop_last=drop_last, num_workers=workers, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda",
                            seed=seed)
