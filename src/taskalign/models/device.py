"""CUDA when present (bf16 autocast), CPU otherwise; threads from the scheduler."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from taskalign.runtime import available_cores

log = logging.getLogger(__name__)


# Held for the life of the process: the lock on the GPU this job claimed (local runs only).
_CLAIMED: list = []


def claim_gpu(n_devices: int, lock_dir: Path | None = None, poll_seconds: float = 5.0) -> int:
    """A GPU no other job on this machine holds: an exclusive lock per device index, kept until the process ends.

    Local Snakemake never sets CUDA_VISIBLE_DEVICES; its `gpu` resource only caps how many GPU jobs run at once
    (profiles/local). Jobs wait here when every device is taken."""
    lock_dir = Path(lock_dir or os.environ.get("TASKALIGN_GPU_LOCKS", Path(tempfile.gettempdir()) / "taskalign-gpus"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(n_devices):
            handle = open(lock_dir / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _CLAIMED.append(handle)
            return index
        if not waited:
            log.info("all %d GPUs are taken by other jobs; waiting", n_devices)
            waited = True
        time.sleep(poll_seconds)


def select_device(threads: int | None = None) -> torch.device:
    """The job's device; on CPU, torch uses the cores the job was given (rule `threads`, SLURM affinity).
    Under SLURM, CUDA_VISIBLE_DEVICES names the job's GPU; without it (local runs) the job claims a free one."""
    torch.set_num_threads(available_cores(threads))
    if torch.cuda.is_available():
        index = 0
        if "CUDA_VISIBLE_DEVICES" not in os.environ and torch.cuda.device_count() > 1:
            index = claim_gpu(torch.cuda.device_count())
        torch.cuda.set_device(index)
        if os.environ.get("TASKALIGN_DETERMINISTIC") == "1":  # config `deterministic`
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        device = torch.device("cuda", index)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log.info("device: %s (%s)", device, torch.cuda.get_device_name(index))
    else:
        device = torch.device("cpu")
        log.info("device: cpu, %d threads", torch.get_num_threads())
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
