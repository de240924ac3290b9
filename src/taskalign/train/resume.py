"""Resumable training state, kept outside Snakemake's declared outputs (which are deleted before a rerun), and
only while a job runs: written on a time cadence and when the scheduler asks the job to stop, removed once the
job's outputs are written (a paper-scale state with optimiser moments is gigabytes per run).

A resume file is only used when its fingerprint (a hash of the run's parameters and of its inputs' content) matches
the current run, so a config change or an upstream rerun (new encoder, regenerated cache) starts training afresh
instead of continuing a run on other inputs. It holds tensors and plain values only and is read with
`torch.load(weights_only=True)`: a file planted under results/resume/ cannot run code, and is ignored with the
reason logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from taskalign.models.checkpoint_io import weights_only_refusal
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """Stable hash of JSON-serialisable parts (parameters, input digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def index_digest(index: Path) -> str:
    """An index CSV's bytes plus the name, size and mtime of every cached array it lists: rerunning preprocessing
    rewrites the arrays even when the index reads the same (hashing their bytes would cost a pass over the cache)."""
    digest = hashlib.sha256(Path(index).read_bytes())
    for case_dir in pd.read_csv(index, usecols=["cache_dir"])["cache_dir"]:
        for array in sorted(Path(case_dir).iterdir()):
            stat = array.stat()
            digest.update(f"{array.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass
class AttemptClock:
    """Time summed over a job's attempts (a preempted job's earlier processes included): wall seconds since each
    attempt opened its resume file, and seconds spent in epochs (training + validation)."""

    wall_before: float = 0.0
    epochs_before: float = 0.0
    epochs_this_run: float = 0.0
    opened: float = field(default_factory=time.time)

    def wall_this_run(self) -> float:
        return time.time() - self.opened

    def wall_seconds(self) -> float:
        return self.wall_before + self.wall_this_run()

    def epoch_seconds(self) -> float:
        return self.epochs_before + self.epochs_this_run


class ResumeFile:
    """`<dir>/last.pt`: the training state a stopped job resumes from (see `taskalign.train.loop.fit`), plus the
    attempt clock's totals. `due()` says when `minutes` have passed since this process last wrote it (or
    started)."""

    def __init__(self, directory: Path, run_fingerprint: str, minutes: float = 10.0):
        self.directory = Path(directory)
        self.path = self.directory / "last.pt"
        self.fingerprint = run_fingerprint
        self.minutes = minutes
        self.clock = AttemptClock()
        self._written = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._written >= self.minutes * 60

    def save(self, state: dict) -> None:
        totals = {"wall_seconds": self.clock.wall_seconds(), "epoch_seconds": self.clock.epoch_seconds()}
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint, "totals": totals}, tmp)
        self._written = time.monotonic()
        log.info("resume state written to %s", self.path)

    def load(self, required: tuple[str, ...] = ()) -> dict | None:
        """The saved state (the clock continues from its totals), or None when there is nothing to resume.

        The file is read with `weights_only=True`: torch's allow-list of tensors and plain values (numbers,
        strings, lists, tuples, dicts), so a planted file cannot run code. A file that is unreadable, holds
        anything else, lacks a `required` key or was written by a run with other settings is ignored, with the
        reason logged: training starts afresh and the next save replaces it."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for a disallowed global, RuntimeError/EOFError when corrupt
            log.warning("ignoring %s: not a resume state that loads as tensors and plain values (%s); training "
                        "starts afresh", self.path, weights_only_refusal(error))
            return None
        problem = _envelope_problem(state, required)
        if problem is not None:
            log.warning("ignoring %s: %s; training starts afresh", self.path, problem)
            return None
        if state["fingerprint"] != self.fingerprint:
            log.info("ignoring %s: written by a run with other settings", self.path)
            return None
        self.clock.wall_before = state["totals"]["wall_seconds"]
        self.clock.epochs_before = state["totals"]["epoch_seconds"]
        return state

    def remove(self) -> None:
        """Once the job's outputs are written: nothing is left to resume."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _envelope_problem(state, required: tuple[str, ...]) -> str | None:
    """What makes a loaded resume state unusable, or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a resume state"
    missing = [key for key in ("fingerprint", "totals", *required) if key not in state]
    if missing:
        return f"no {', '.join(missing)} in it"
    totals = state["totals"]
    if not isinstance(state["fingerprint"], str) or not isinstance(totals, dict) or not all(
            isinstance(totals.get(key), (int, float)) for key in ("wall_seconds", "epoch_seconds")):
        return "its fingerprint or totals are malformed"
    return None
