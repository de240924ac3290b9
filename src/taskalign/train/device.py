"""CUDA when present (bf16 autocast), CPU otherwise; threads from the scheduler."""

from __future__ import annotations

import contextlib
import logging

import torch

from taskalign.runtime import available_cores

log = logging.getLogger(__name__)


def select_device(threads: int | None = None) -> torch.device:
    """The job's device; on CPU, torch uses the cores the job was given (rule `threads`, SLURM affinity)."""
    torch.set_num_threads(available_cores(threads))
    if torch.cuda.is_available():
        device = torch.device("cuda")  # SLURM / the local profile set CUDA_VISIBLE_DEVICES
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log.info("device: %s (%s)", device, torch.cuda.get_device_name(0))
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
