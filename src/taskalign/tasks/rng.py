"""The global RNGs (torch CPU and CUDA, numpy, random) that an epoch's batch order, augmentation, dropout and
masking draw from: seeded per epoch, snapshotted for resume files, preserved around validation."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def rng_state() -> dict:
    """Tensors and plain values only (numpy's key as a tensor), so that a resume file holding them loads with
    `torch.load(weights_only=True)`, which unpickles nothing else."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rngs():
    """Leave torch's (CPU and CUDA), numpy's and Python's global RNGs as they were before the block."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random from (seed, epoch)."""
    value = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
