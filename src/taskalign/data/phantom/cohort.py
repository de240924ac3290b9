"""Cohort IO: plan, render and write every case of a cohort as NIfTI files, manifest.csv and truth.csv."""

from __future__ import annotations

import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from taskalign.data.image_io import write_image
from taskalign.data.labels import MANIFEST_COLUMNS, SPLITS
from taskalign.data.phantom.config import phantom_config
from taskalign.data.phantom.planning import plan_case
from taskalign.data.phantom.render import render_case
from taskalign.runtime import atomic_path


def _fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _write_case(job: tuple) -> tuple[dict, dict]:
    """Plan, render and write one case; returns (manifest row, truth row). Top-level for the process pool."""
    cohort, index, split, seed, cfg, out_dir, labelled = job
    plan = plan_case(cohort, index, split, seed, cfg)
    img = render_case(plan)
    kinds = {"t2w": (img.t2w, plan.t2w_grid), "adc": (img.adc, plan.dwi_grid), "dwi": (img.dwi, plan.dwi_grid)}
    if labelled:
        kinds |= {name: (getattr(img, name).astype(np.uint8), plan.t2w_grid)
                  for name in ("prostate", "zones", "lesion", "rectum")}
    row = {col: "" for col in MANIFEST_COLUMNS}
    for name, (array, grid) in kinds.items():
        rel = f"cases/{plan.case_id}_{name}.nii.gz"
        write_image(grid.image(array), Path(out_dir) / rel)  # gzip header mtime is 0: reproducible
        row[name] = rel
    row |= {"case_id": plan.case_id, "patient_id": plan.patient_id, "cohort": cohort, "split": split,
            "tr": plan.acq["tr"], "te": plan.acq["te"], "flip_angle": plan.acq["flip_angle"],
            "field_strength": plan.acq["field_strength"], "vendor": plan.acq["vendor"]}
    if labelled:
        row |= {"pirads": plan.pirads, "sector": plan.sector}
    truth = {"case_id": plan.case_id, "cohort": cohort, "split": split, **plan.truth,
             "gland_volume_ml_mask": float(img.prostate.sum()) * plan.t2w_grid.voxel_ml}
    return {k: _fmt(v) for k, v in row.items()}, {k: _fmt(v) for k, v in truth.items()}


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_cohort(cohort: str, split_sizes: dict[str, int], cfg: dict, seed: int, out_dir: Path,
                 workers: int = 1, labelled: bool = True) -> Path:
    """Generate cohort `cohort` with `split_sizes` (e.g. {"train": 16, "val": 4, "test": 8}, cases numbered in
    that order) into `out_dir`: out_dir/cases/<case_id>_<t2w|adc|dwi|prostate|zones|lesion|rectum>.nii.gz,
    out_dir/manifest.csv (labels.MANIFEST_COLUMNS, paths relative to out_dir; `volume_ml` left empty for the
    integrity check; an unlabelled cohort, `labelled=False`, has images and metadata only) and out_dir/truth.csv (phantom ground truth per
    case: analytic gland volume (mL), lesions, index lesion volume/zone/ADC, true PZ/TZ ADC (1e-6 mm^2/s),
    acquisition). Each case has its own generator, so neither the cohort size nor `workers` changes a case;
    the same seed gives byte-identical files. Returns the manifest path."""
    cfg = phantom_config(cfg)
    out_dir = Path(out_dir)
    if not cohort or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
                         for ch in cohort):
        raise ValueError(f"cohort name {cohort!r} must match [A-Za-z0-9_.-]+ (it is used in file names)")
    splits = []
    for split, n in split_sizes.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if int(n) < 0:
            raise ValueError(f"split size for {split} must be >= 0, got {n}")
        splits += [split] * int(n)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    jobs = [(cohort, i, split, seed, cfg, out_dir, labelled) for i, split in enumerate(splits)]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child can inherit ITK's thread pool in a locked state
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_case, jobs))
    else:
        results = [_write_case(job) for job in jobs]
    truth_columns = list(results[0][1]) if results else ["case_id", "cohort", "split"]
    _write_csv(out_dir / "truth.csv", truth_columns, [t for _, t in results])
    manifest = out_dir / "manifest.csv"
    _write_csv(manifest, MANIFEST_COLUMNS, [m for m, _ in results])
    return manifest
