"""Resumable training state, kept outside Snakemake's declared outputs (which are deleted before a rerun).

A resume file is only used when its fingerprint (a hash of the run's parameters and of its inputs' content) matches
the current run, so a config change or an upstream rerun (new encoder, regenerated cache) starts training afresh
instead of continuing a run on other inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from taskalign.runtime import atomic_path
from taskalign.tasks.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """Stable hash of JSON-serialisable parts (parameters, input digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (an encoder checkpoint): a rerun upstream that changes it invalidates resume files."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def index_digest(index: Path) -> str:
    """An index CSV's bytes plus the name, size and mtime of every cached array it lists: rerunning preprocessing
    rewrites the arrays even when the index reads the same (hashing their bytes would cost a pass over the cache)."""
    digest = hashlib.sha256(Path(index).read_bytes())
    for case_dir in pd.read_csv(index, usecols=["cache_dir"])["cache_dir"]:
        for array in sorted(Path(case_dir).iterdir()):
            stat = array.stat()
            digest.update(f"{array.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class ResumeFile:
    """`<dir>/last.pt`: model, optimiser, scheduler, RNG states, epoch, history and best score after each epoch."""

    def __init__(self, directory: Path, run_fingerprint: str):
        self.path = Path(directory) / "last.pt"
        self.best_path = Path(directory) / "best_model.pt"
        self.fingerprint = run_fingerprint

    def save_best(self, model) -> None:
        """The best model's weights so far; kept here so that a preempted job does not lose them."""
        with atomic_path(self.best_path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "model": model.state_dict()}, tmp)

    def load_best(self, model) -> None:
        state = torch.load(self.best_path, map_location="cpu", weights_only=True)
        if state["fingerprint"] != self.fingerprint:
            raise RuntimeError(f"{self.best_path} belongs to a run with other settings")
        model.load_state_dict(state["model"])

    def save(self, *, epoch: int, model, optimizer, scheduler, history: list[dict], best: dict) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "history": history,
            "best": best,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self, *, model, optimizer, scheduler) -> dict | None:
        """Restore everything and return {"epoch", "history", "best"}, or None when there is nothing to resume."""
        if not self.path.exists():
            return None
        # Our own file, written by save(); it holds RNG states (tuples, numpy arrays), hence not weights_only.
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: written by a run with other settings", self.path)
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        log.info("resuming from %s after epoch %d", self.path, state["epoch"] + 1)
        return {"epoch": state["epoch"], "history": state["history"], "best": state["best"]}
