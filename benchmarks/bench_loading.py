"""Section 2: data loading. The preprocessed cache (CacheDataset) against decoding the manifest's NIfTI files and
transforming them with MONAI every time, and the loader's share of a real fine-tuning step.

A "volume" is one case: the three image channels and the prostate mask, at the cache geometry. Both sides run
after one untimed pass, so the files are in the page cache for both: the ratio is decode + resample cost, not disk.

Decode baseline: SimpleITK reads t2w, dwi, adc, prostate (.nii.gz), each becomes a MONAI MetaTensor with its
affine, then Spacingd (cache spacing, bilinear / nearest for the mask), ResizeWithPadOrCropd (cache shape, centred)
and ScaleIntensityRangePercentilesd (the cache's clip percentiles, per channel), stacked as (3, D, H, W) like the
cache. This is lighter than taskalign.data.preprocess (no anti-aliasing filter, no FOV mask, no bounding-box
centring), so it is a lower bound on what decoding each epoch would cost.

Fine-tuning share: taskalign.train.finetune.run_finetune on the real cache, with `make_loader` and
`train_one_epoch` wrapped (monkeypatched for this process only): loader time = time in iter()/next() of the
training loader, step time = the whole training epoch (loading + forward + backward + optimiser); validation,
checkpointing and plotting are outside both. Measured twice on the same batches: loading in the main process
(workers=0) and in one persistent worker process that prepares the next batch while the current step runs; the
library (`taskalign.tasks.loader.loader_workers`) uses the worker on CPU only with a core to spare beyond torch's
threads. Augmentation runs with MONAI's metadata tracking off (`taskalign.data.dataset.untracked`).
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

from benchmarks.common import REPO, fmt_time, row
from benchmarks.common import seconds as _seconds
from taskalign.data.preprocess import DEFAULTS
from taskalign.runtime import available_cores
from taskalign.tasks.loader import loader_workers

SECTION = "2 loading"
CACHE_INDEX = REPO / "results" / "cache" / "promis.csv"
IMAGE_KEYS = ("t2w", "dwi", "adc")  # the cache's channel order
MASK_KEY = "prostate"

# The tests' tiny phantom cohort (tests/conftest.py `tiny_cache`), used when the pipeline's cache is absent.
TINY_PREPROCESS = {"spacing_mm": [4.0, 3.0, 3.0], "size": [16, 32, 32], "channels": ["t2w", "dwi", "adc"],
                   "clip_percentiles": [0.5, 99.5], "qc_cases": 0, "cache_dtype": "float32"}
TINY_PHANTOM = {"matrix": [64, 64], "fov_mm": [140, 140], "slices": [12, 16], "slice_thickness_mm": [4.0, 5.0],
                "dwi_matrix": [32, 32]}


def phantom_cache(root: Path, cohort: str = "anatomy", splits: dict | None = None) -> Path:
    """A small phantom cohort through the real check and preprocessing (as tests/conftest.py does); its index."""
    from taskalign.data.integrity import checked_table, write_table
    from taskalign.data.phantom import write_cohort
    from taskalign.data.preprocess import preprocess_cohort

    splits = splits or {"train": 8, "val": 4, "test": 4}
    manifest = write_cohort(cohort, splits, TINY_PHANTOM, 0, root / "cohorts" / cohort)
    checked = root / "manifests" / f"{cohort}.csv"
    write_table(checked_table(manifest, split_fractions={"train": 0.7, "val": 0.1, "test": 0.2}, split_seed=0), checked)
    index = root / "cache" / f"{cohort}.csv"
    preprocess_cohort(checked, TINY_PREPROCESS, root / "cache" / cohort, index, root / "qc" / cohort)
    return index


def _read_meta(path: str) -> "MetaTensor":  # noqa: F821
    import SimpleITK as sitk
    from monai.data import MetaTensor

    image = sitk.ReadImage(path)
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))[None].astype(np.float32)  # (1, x, y, z)
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(affine))


def decode_pipeline(spacing_zyx, shape_zyx, clip_percentiles):
    """MONAI transforms from decoded volumes to the cache geometry; returns a function row -> (image, mask)."""
    from monai.transforms import Compose, ResizeWithPadOrCropd, ScaleIntensityRangePercentilesd, Spacingd

    keys = [*IMAGE_KEYS, MASK_KEY]
    low, high = clip_percentiles
    transform = Compose([
        Spacingd(keys, pixdim=tuple(spacing_zyx[::-1]), mode=["bilinear"] * len(IMAGE_KEYS) + ["nearest"]),
        ResizeWithPadOrCropd(keys, spatial_size=tuple(shape_zyx[::-1])),
        ScaleIntensityRangePercentilesd(list(IMAGE_KEYS), lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True),
    ])

    def load(row: dict) -> tuple[torch.Tensor, torch.Tensor]:
        data = transform({k: _read_meta(row[k]) for k in keys})
        image = torch.cat([torch.as_tensor(data[k]) for k in IMAGE_KEYS]).permute(0, 3, 2, 1).contiguous()
        return image, torch.as_tensor(data[MASK_KEY]).permute(0, 3, 2, 1).contiguous()

    return load


def decode_only(row: dict) -> list[np.ndarray]:
    import SimpleITK as sitk

    return [sitk.GetArrayFromImage(sitk.ReadImage(row[k])) for k in (*IMAGE_KEYS, MASK_KEY)]


def _rate(fn, items: list, passes: int) -> float:
    """Best items/s over `passes` passes of fn over items (one untimed item first)."""
    fn(items[0])
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def loading_rows(index_csv: Path, n_cases: int, passes: int, note: str) -> list[dict]:
    from taskalign.data.dataset import CacheDataset, read_index

    index = read_index([index_csv]).head(n_cases)
    index = index[index[list(IMAGE_KEYS) + [MASK_KEY]].notna().all(axis=1)].reset_index(drop=True)
    meta = json.loads((Path(index.cache_dir[0]) / "meta.json").read_text())
    clip = DEFAULTS["clip_percentiles"]  # meta.json does not record them; the pipeline default
    dataset = CacheDataset(index, masks=(MASK_KEY,))
    rows = index.to_dict("records")
    load = decode_pipeline(meta["spacing_mm"], meta["shape"], clip)
    image, mask = load(rows[0])
    cached = dataset[0]
    if tuple(image.shape) != tuple(cached["image"].shape) or tuple(mask.shape) != tuple(cached[MASK_KEY].shape):
        raise RuntimeError(f"decode baseline shape {tuple(image.shape)} != cache {tuple(cached['image'].shape)}")
    for _ in range(passes):  # page cache warm for both sides
        [decode_only(r) for r in rows]
    cache_rate = _rate(lambda i: dataset[i], list(range(len(dataset))), passes + 2)
    decode_rate = _rate(load, rows, passes)
    raw_rate = _rate(decode_only, rows, passes)
    geometry = "x".join(map(str, meta["shape"]))
    what = f"{len(rows)} cases of {note}, 3 ch + prostate mask at {geometry}"
    return [
        row(SECTION, f"volumes/s: CacheDataset / SimpleITK decode + MONAI Spacingd, ResizeWithPadOrCropd, "
                     f"ScaleIntensityRangePercentilesd ({what})",
            f"decode+MONAI {decode_rate:.1f} vol/s", f"cache {cache_rate:.0f} vol/s", cache_rate / decode_rate,
            ">= 10x", cache_rate / decode_rate >= 10),
        row(SECTION, "volumes/s: CacheDataset / SimpleITK decode alone (no transforms; the floor of any decode path)",
            f"decode {raw_rate:.1f} vol/s", f"cache {cache_rate:.0f} vol/s", cache_rate / raw_rate, "-", None),
    ]


def finetune_setup(index_csv: Path, task_name: str, tiny: bool, epochs: int, encoder_path: Path):
    """A scratch fine-tuning run of the default config on `index_csv` (the tests' geometry and head on the tiny
    cohort): its Task and params, with a seeded random encoder written to `encoder_path`."""
    from taskalign.models.checkpoint_io import save_encoder
    from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry
    from taskalign.tasks.spec import Task

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    ft = cfg["finetune"]
    if tiny:  # the tests' geometry and head (tests/test_finetune.py)
        geometry = EncoderGeometry(3, (16, 32, 32), (4, 8, 8), 32, 64, 4, 2)
        head = {"mlp_hidden": 16, "decoder_channels": 8, "layers": [0, 1, 2, 3]}
    else:  # the default config's encoder and head, on the default cache
        geometry = EncoderGeometry.from_config(cfg)
        head = ft["head"]
    task_cfg = dict(cfg["tasks"][task_name])
    task_cfg["cohort"] = pd.read_csv(index_csv, nrows=1)["cohort"].iloc[0]
    task = Task.from_config(task_name, task_cfg)
    torch.manual_seed(0)
    save_encoder(Encoder(geometry), encoder_path)
    params = {"channels": cfg["preprocess"]["channels"], "seed": 0, "epochs": epochs, "lr": ft["lr"],
              "warmup_epochs": 0, "weight_decay": ft["weight_decay"], "augment": ft["augment"],
              "batch_size": ft["batch_size"][task.kind.group], "head": head, "specialist": ft["specialist"],
              "task": task_cfg}
    return task, geometry, params


def finetune_share(index_csv: Path, task_name: str, tiny: bool, epochs: int, tmp: Path,
                   workers: int | None = None, threads: int | None = None) -> dict:
    """Loader seconds and training-epoch seconds of a real run_finetune (scratch init, full protocol); `workers`
    for the training loader (None: the library's default, `taskalign.tasks.loader.loader_workers`), `threads` the
    job's torch threads (the rule's `threads`)."""
    from taskalign.train import finetune

    encoder_path = tmp / "encoder.safetensors"
    task, geometry, params = finetune_setup(index_csv, task_name, tiny, epochs, encoder_path)

    clock = {"load": 0.0, "epoch": 0.0, "batches": 0, "step_load": [], "step_total": []}

    class TimedLoader:
        """Times iter() and every next() of the wrapped loader; per step: load_i (the next() that produced
        batch i) and load_i + compute_i (until the loop asks for the next batch)."""

        def __init__(self, loader):
            self.loader = loader
            self.dataset = loader.dataset

        def __len__(self):
            return len(self.loader)

        def begin_epoch(self, epoch):
            self.loader.begin_epoch(epoch)

        def start_epoch(self, epoch):  # the next epoch's iterator, made during validation: its cost is loader time
            start = time.perf_counter()
            self.loader.start_epoch(epoch)
            clock["load"] += time.perf_counter() - start

        def start_first_epoch(self):  # made while the model is built: loader time too
            start = time.perf_counter()
            self.loader.start_first_epoch()
            clock["load"] += time.perf_counter() - start

        def __iter__(self):
            start = time.perf_counter()
            it = iter(self.loader)
            clock["load"] += time.perf_counter() - start
            while True:
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    clock["load"] += time.perf_counter() - start
                    return
                loaded = time.perf_counter()
                clock["load"] += loaded - start
                clock["batches"] += 1
                yield batch
                clock["step_load"].append(loaded - start)
                clock["step_total"].append(time.perf_counter() - start)

    original_loader, original_epoch = finetune.make_loader, finetune.train_one_epoch

    def make_loader(dataset, batch_size, *, shuffle, **kwargs):
        if not shuffle:
            return original_loader(dataset, batch_size, shuffle=shuffle, **kwargs)
        # the shuffling one is the training loader
        return TimedLoader(original_loader(dataset, batch_size, shuffle=shuffle, **kwargs, workers=workers))

    def train_one_epoch(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original_epoch(*args, **kwargs)
        finally:
            clock["epoch"] += time.perf_counter() - start

    finetune.make_loader, finetune.train_one_epoch = make_loader, train_one_epoch
    try:
        out = tmp / "run"
        finetune.run_finetune(finetune.FinetuneJob(task=task, init="scratch", protocol="full",
                                                   encoder_path=encoder_path, indexes=[index_csv], params=params,
                                                   model_out=out / "model.safetensors", history_csv=out / "history.csv",
                                                   curve_png=out / "curve.png", timing_json=out / "timing.json",
                                                   resume_dir=tmp / "resume", threads=threads))
    finally:
        finetune.make_loader, finetune.train_one_epoch = original_loader, original_epoch
    clock["geometry"] = geometry
    clock["batch"] = params["batch_size"]
    return clock


def augmentation_rows(index_csv: Path, task_name: str, passes: int) -> tuple[dict, dict]:
    """Per-sample time of the training TaskDataset with the config's augmentation against without it, and of the
    augmentation with MONAI's metadata tracking on against the library's (off)."""
    from taskalign.data.dataset import read_index
    from taskalign.tasks.samples import TaskDataset, usable_rows
    from taskalign.tasks.spec import Task

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    task_cfg = dict(cfg["tasks"][task_name])
    task = Task.from_config(task_name, task_cfg)
    rows = usable_rows(read_index([index_csv], ["train"]), task)
    channels = cfg["preprocess"]["channels"]
    augment = cfg["finetune"]["augment"]
    torch.manual_seed(0)
    plain = TaskDataset(rows, task, channels, train=True, seed=0, augment=None)
    augmented = TaskDataset(rows, task, channels, train=True, seed=0, augment=augment)
    t_plain = 1.0 / _rate(lambda i: plain[i], list(range(len(plain))), passes)
    t_aug = 1.0 / _rate(lambda i: augmented[i], list(range(len(augmented))), passes)
    # the same augmentation with MONAI's metadata tracking on (MONAI's default; the library turns it off)
    raw = augmented.cache.__class__(augmented.cache.index, masks=augmented.cache.masks)

    def tracked(i):
        augmented.transform.set_random_state(seed=i)  # the seed CacheDataset gives a plain index
        return augmented.transform(raw[i])

    items = list(range(len(augmented)))
    same = all(torch.equal(tracked(i)["image"].as_tensor(), augmented.cache[i]["image"]) for i in items)
    t_tracked = 1.0 / _rate(tracked, items, passes)
    t_untracked = 1.0 / _rate(lambda i: augmented.cache[i], items, passes)
    tracking = row(SECTION, f"augmentation per sample ({task_name}, the config's augmentation): MONAI metadata "
                            f"tracking on / off (taskalign.data.dataset.untracked); identical arrays: {same}",
                   f"tracked {fmt_time(t_tracked)}", f"untracked {fmt_time(t_untracked)}", t_tracked / t_untracked)
    # each transform alone at probability 1 on one cached item (best of 5)
    item = raw[0]
    parts = []
    for transform in augmented.transform.transforms:
        if hasattr(transform, "prob"):
            transform.prob = 1.0
        best = min(_seconds(lambda: transform(dict(item))) for _ in range(5))
        parts.append(f"{type(transform).__name__} {fmt_time(best)}")
    per_sample = row(SECTION, f"loader per sample ({task_name} train TaskDataset, {len(rows)} cases): with the "
                              f"config's augmentation {augment} / without; each transform at prob 1: "
                              f"{', '.join(parts)}",
                     f"no augmentation {fmt_time(t_plain)}", f"augmented {fmt_time(t_aug)}", t_aug / t_plain, "-", None)
    return per_sample, tracking


def run(quick: bool = False) -> list[dict]:
    import logging

    logging.getLogger("taskalign").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskalign-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if CACHE_INDEX.is_file():
            index_csv, note, tiny = CACHE_INDEX, f"{CACHE_INDEX.relative_to(REPO)}", False
        else:
            index_csv, note, tiny = phantom_cache(tmp / "phantom"), "a tiny phantom cohort (no results/cache)", True
        rows += loading_rows(index_csv, n_cases=8 if quick else 26, passes=1 if quick else 2, note=note)

        tasks = ["lesion_seg"] if quick else ["lesion_seg", "sector_cls"]
        if tiny:
            tasks = ["zone_seg"]
        if not quick:
            rows += augmentation_rows(index_csv, tasks[0], passes=3)
        # threads as the default config's fine-tuning jobs get them (rule `threads`, bounded by the cores)
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        threads = available_cores(config["finetune"]["threads"])
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        chosen = loader_workers(torch.device("cpu"), shuffle=True)
        torch.set_num_threads(previous)
        # a whole default fine-tuning run: the first epoch's first batch, which nothing can prefetch, is
        # one-off, so the share depends on the number of epochs
        epochs = 2 if quick else config["finetune"]["epochs"]
        for name in tasks:
            clocks = {workers: finetune_share(index_csv, name, tiny, epochs=epochs, threads=threads,
                                              tmp=tmp / f"{name}-{workers}", workers=workers) for workers in (0, 1)}
            for workers, clock in clocks.items():
                share = clock["load"] / clock["epoch"]
                median_share = float(np.median(clock["step_load"]) / np.median(clock["step_total"]))
                n = max(clock["batches"], 1)
                g = clock["geometry"]
                where = "in the main process (workers=0)" if workers == 0 else "in 1 persistent worker process"
                default = workers == chosen
                rows.append(row(SECTION, f"fine-tuning loader share: {name} scratch/full, batch {clock['batch']}, "
                                         f"encoder hidden {g.hidden_size} x {g.num_layers} blocks, augmentation on, "
                                         f"loading {where}{' (the library default here)' if default else ''}, "
                                         f"{clock['batches']} steps: loader time / whole training time "
                                         f"(median step: {median_share:.1%})",
                                f"step {fmt_time(clock['epoch'] / n)}", f"loader {fmt_time(clock['load'] / n)}",
                                share, "< 5%" if default else "-", share < 0.05 if default else None, "{:.1%}"))
            plain, worker = (clocks[w]["epoch"] / max(clocks[w]["batches"], 1) for w in (0, 1))
            rows.append(row(SECTION, f"fine-tuning step time incl. waiting for data: {name}, main-process loading / "
                                     f"1 worker (same batches; the library uses the worker only with a core to spare "
                                     f"beyond torch's {threads} thread(s), the default config's: here "
                                     f"{'yes' if chosen else 'no'})", f"workers=0 {fmt_time(plain)}",
                            f"1 worker {fmt_time(worker)}", plain / worker, "-", None, "{:.2f}x"))
    return rows
