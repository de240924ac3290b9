"""Section 6: job packing. The default DAG's jobs are small models (a 96-wide ViT on 32x64x64 volumes), and torch
gains little from a second intra-op thread on tensors this small, while a job's start-up (imports, reading the
cache) runs on one core whatever its thread count. So on 2 cores, two 1-thread jobs side by side may finish a pair
of jobs sooner than the same two jobs run one after the other at 2 threads each (the `threads` of a rule decides
which Snakemake does). Measured on real fine-tuning jobs (`python -m taskalign.cli.finetune`, the default config's
encoder, head, augmentation and batch size, a few epochs) on the default cache, or on the tests' tiny phantom
cohort when there is none. The two layouts are interleaved and the best of each kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_loading import finetune_setup
from benchmarks.common import REPO, cores, fmt_time, row

SECTION = "6 packing"
CACHE = REPO / "results" / "cache"


def _job_args(task_name: str, index_csv: Path, out: Path, threads: int, epochs: int, tiny: bool) -> list[str]:
    """The command of one fine-tuning job (scratch/full, the default config's settings; encoder in `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    encoder = out / "encoder.safetensors"
    _, _, params = finetune_setup(index_csv, task_name, tiny, epochs, encoder)
    return [sys.executable, "-m", "taskalign.cli.finetune", "--task", task_name, "--init", "scratch",
            "--protocol", "full", "--encoder", str(encoder), "--index", str(index_csv), "--params", json.dumps(params),
            "--model", str(out / "model.safetensors"), "--history", str(out / "history.csv"),
            "--curve", str(out / "curve.png"), "--timing", str(out / "timing.json"),
            "--resume-dir", str(out / "resume"), "--threads", str(threads)]


def _run_jobs(commands: list[list[str]], concurrent: bool) -> float:
    """Wall time of the jobs, one after the other or all at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    if concurrent:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise RuntimeError(f"fine-tuning job failed:\n{err.decode()[-2000:]}")
    else:
        for c in commands:
            subprocess.run(c, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def packing_rows(task_name: str, index_csv: Path, tmp: Path, epochs: int, repeats: int, tiny: bool) -> list[dict]:
    layouts = {"2 threads, one after the other": (2, False), "1 thread each, side by side": (1, True)}
    best = {name: float("inf") for name in layouts}
    outs = {}
    for rep in range(repeats):
        for name, (threads, concurrent) in layouts.items():
            outs[name] = [tmp / f"{task_name}-{threads}t-{rep}-{j}" for j in range(2)]
            commands = [_job_args(task_name, index_csv, out, threads, epochs, tiny) for out in outs[name]]
            best[name] = min(best[name], _run_jobs(commands, concurrent))
    sequential, packed = best.values()
    # the same job at 1 and 2 threads: do the trained weights agree?
    from safetensors.numpy import load_file

    a, b = (load_file(str(outs[name][0] / "model.safetensors")) for name in layouts)
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    return [row(SECTION, f"two {task_name} fine-tuning jobs (scratch/full, {epochs} epochs, real CLI incl. start-up) "
                         f"on {cores()} cores: 2 threads each, one after the other / 1 thread each, side by side "
                         f"(max |weight difference| 1 vs 2 threads after training: {diff:.1e})",
                f"sequential {fmt_time(sequential)}", f"packed {fmt_time(packed)}", sequential / packed, "-", None)]


def run(quick: bool = False) -> list[dict]:
    import logging

    from benchmarks.bench_loading import phantom_cache

    logging.getLogger("taskalign").setLevel(logging.WARNING)
    if cores() < 2:
        return [row(SECTION, "job packing", "-", "skipped: needs 2 cores", None)]
    with tempfile.TemporaryDirectory(prefix="taskalign-pack-") as tmpdir:
        tmp = Path(tmpdir)
        tiny = not (CACHE / "promis.csv").is_file()
        if tiny:
            index = {"zone_seg": phantom_cache(tmp / "phantom")}
        else:
            index = {"lesion_seg": CACHE / "promis.csv", "sector_cls": CACHE / "promis.csv"}
        rows = []
        for task_name, index_csv in index.items():
            if quick and rows:
                break
            rows += packing_rows(task_name, index_csv, tmp, epochs=2 if quick else 3, repeats=1 if quick else 2,
                                 tiny=tiny)
    return rows
