"""Section "datapath": what a loader worker does per training volume at paper geometry (3x64x256x256), for every
task: the per-sample path (MONAI augmentation and numpy/scipy degradations in the worker,
`benchmarks/baseline_datapath.py`) against the worker side of `taskalign.tasks.samples.TaskDataset` (read the cached
arrays, draw the item's parameters, collate); the batched device side (`TaskDataset.on_device`) is timed separately,
here on the CPU, with this process's torch threads.

Cases: synthetic, in the cache layout (docs/data-contract.md, section 3) in a temporary folder: random images,
box masks (zones 0-8, a lesion, a rectum with its `rectum_distance.npy`), spacing and augmentation of
config/paper.yaml. Items are keyed (index, seed) as a shuffling loader keys them; page cache warm for both sides.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import default_collate

from benchmarks.baseline_datapath import PerSampleTaskDataset
from benchmarks.common import REPO, fmt_time, row
from taskalign.data.preprocess import rectum_distance
from taskalign.tasks.samples import TaskDataset, target_norm, usable_rows
from taskalign.tasks.spec import TASK_TYPES, Task

SECTION = "datapath"
GOAL = 60.0  # volumes/s per worker: two workers keep up with the step at batch 4 (issue 25)


def synthetic_cache(root: Path, n_cases: int, shape: tuple[int, int, int], spacing: list[float]) -> pd.DataFrame:
    """`n_cases` case folders with every channel, mask and label; their index rows."""
    rng = np.random.default_rng(0)
    d, h, w = shape
    rows = []
    for n in range(n_cases):
        case = root / f"case{n}"
        case.mkdir(parents=True)
        np.save(case / "image.npy", rng.standard_normal((3, *shape), dtype=np.float32))
        zones = np.zeros(shape, np.uint8)
        zones[d // 4 : 3 * d // 4, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1 + n % 8
        rectum = np.zeros(shape, np.uint8)
        rectum[d // 4 : 3 * d // 4, 3 * h // 4 : 7 * h // 8, 3 * w // 8 : 5 * w // 8] = 1
        lesion = np.zeros(shape, np.uint8)
        lesion[d // 2 : d // 2 + 4, h // 2 : h // 2 + 8, w // 2 : w // 2 + 8] = 1
        for name, mask in {"zones": zones, "rectum": rectum, "lesion": lesion, "prostate": zones > 0}.items():
            np.save(case / f"{name}.npy", mask.astype(np.uint8))
        np.save(case / "rectum_distance.npy", rectum_distance(rectum, spacing))
        (case / "meta.json").write_text(json.dumps({"channels": ["t2w", "dwi", "adc"], "spacing_mm": spacing,
                                                    "channels_present": ["t2w", "dwi", "adc"]}))
        rows.append({"case_id": f"case{n}", "patient_id": f"p{n}", "split": "train", "cache_dir": str(case),
                     "pirads": 2 + n % 4, "sector": n % 20, "volume_ml": 30.0 + n, "t2w": "x", "dwi": "x",
                     "adc": "x", "zones": "x", "rectum": "x", "lesion": "x"})
    return pd.DataFrame(rows)


def _per_volume(fn, keys: list, batch: int, passes: int) -> float:
    """Best seconds per volume of fn(batch of keys) over `passes` passes of all keys."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for i in range(0, len(keys), batch):
            fn(keys[i : i + batch])
        best = min(best, (time.perf_counter() - start) / len(keys))
    return best


def task_rows(name: str, index: pd.DataFrame, augment: dict, n_items: int, passes: int) -> list[dict]:
    channels = ["t2w", "dwi", "adc"]
    options = {"super_res": {"factor": 4}, "distortion": {"amplitude_mm": 8, "decay_mm": 10}}.get(name, {})
    inputs = ["t2w"] if TASK_TYPES[name].kind.group == "restoration" else channels
    task = Task.from_config(name, {"type": name, "cohort": "synthetic", "inputs": inputs, **options})
    rows = usable_rows(index, task)
    kwargs = {"train": True, "seed": 0, "augment": augment, "norm": target_norm(rows, task)}
    today, new = PerSampleTaskDataset(rows, task, channels, **kwargs), TaskDataset(rows, task, channels, **kwargs)
    keys = [(i % len(rows), 7919 * i + 1) for i in range(n_items)]
    today[keys[0]], new[keys[0]]  # page cache warm for both sides
    old_s = _per_volume(lambda part: default_collate([today[k] for k in part]), keys, 4, passes)
    worker_s = _per_volume(lambda part: default_collate([new[k] for k in part]), keys, 4, passes)
    batches = [default_collate([new[k] for k in keys[i : i + 4]]) for i in range(0, len(keys), 4)]
    device_s = min(_per_volume(lambda part: new.on_device(batches[part[0] // 4]), list(range(len(keys))), 4, 1)
                   for _ in range(passes))
    old_rate, new_rate = 1 / old_s, 1 / worker_s
    return [
        row(SECTION, f"{name}: volumes/s per loader worker, 3x64x256x256, paper augmentation: per-sample path "
                     f"(MONAI + numpy in the worker) / worker side now (read + draws + collate)",
            f"{old_rate:.1f} vol/s", f"{new_rate:.0f} vol/s", new_rate / old_rate, f">= {GOAL:.0f} vol/s",
            new_rate >= GOAL),
        row(SECTION, f"{name}: device side (TaskDataset.on_device, batched, batch 4) measured on the CPU, "
                     f"{torch.get_num_threads()} threads: per volume", "-", fmt_time(device_s), None),
    ]


def run(quick: bool = False) -> list[dict]:
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    shape, spacing = tuple(paper["preprocess"]["size"]), paper["preprocess"]["spacing_mm"]
    augment = paper["finetune"]["augment"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskalign-datapath-") as tmp:
        index = synthetic_cache(Path(tmp), 4, shape, spacing)
        for name in TASK_TYPES:
            rows += task_rows(name, index, augment, n_items=4 if quick else 8, passes=1 if quick else 2)
    return rows
