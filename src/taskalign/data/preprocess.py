"""Preprocessed cache: resample, crop/pad, normalise and write one case folder (docs/data-contract.md, section 3).

Decisions:
- The output grid lives in the T2W's frame after `DICOMOrient(..., "LPS")` (an exact axis permutation/flip), so
  arrays are (D, H, W) = inferior->superior, anterior->posterior, right->left, and an oblique acquisition keeps its
  own slice direction instead of being rotated onto the scanner axes (which would interpolate across 3 mm slices).
- Crop/pad and resampling are one step: the output grid (spacing, size, direction, origin) is built around the
  crop centre and every input (T2W, ADC, DWI, masks) is resampled from its own native grid straight onto it, so
  nothing is interpolated twice. Sampling ADC/DWI "onto the T2W grid, then to the cache grid" gives the same
  geometry; what the two-step version adds (zero outside the T2W field of view) is applied with a FOV mask.
- ITK convention: the origin is the centre of voxel 0, so the grid centre (index (N-1)/2) sits exactly on the
  crop centre and the grid covers N * spacing mm around it.
- Images: linear interpolation after a Gaussian anti-aliasing filter on axes that get coarser (sigma matching the
  output voxel, Cardoso et al. 2015). Linear cannot overshoot (B-spline/sinc ring at the sharp zero edge of the
  field of view and would give negative ADC), and with the pre-filter it does not alias fine T2W texture.
- Masks: nearest neighbour, as the contract says (labels stay labels; no invented classes).
- Normalisation, per channel: percentiles and moments are taken over the foreground (voxels with signal, != 0,
  inside the T2W field of view); the map z = (clip(x, low, high) - centre) / scale is then applied to every
  voxel, so padding, out-of-view and signal-free voxels (raw 0) all get one value, `background` in meta.json:
  what no signal maps to (dark, like air), not the foreground mean (a mid-grey slab where there is no data).
  An absent channel is all zeros (the contract), listed in `channels_present` without it.
- `rectum_distance.npy` (when `cfg["fields"]` asks for it: the cohorts of a distortion task): the distance in mm
  from the rectum mask, made once here for the distortion task, whose
  training otherwise ran scipy's distance transform per sample and epoch (its random part is only a scale).

meta.json geometry: `origin` and `crop_center` are LPS points (x, y, z) in mm, `origin` the centre of voxel
[0, 0, 0]; `direction` is 3 x 3 with column j the physical direction of array axis W, H, D for j = 0, 1, 2 (ITK's
flattened direction, row-major); `spacing_mm` and `shape` are (z, y, x) = (D, H, W) like the arrays. A voxel
(d, h, w) sits at origin + direction @ ([w, h, d] * spacing_mm[::-1]).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from taskalign.data.cache_grid import antialias, image_center, lps_direction, mask_bbox_center, output_grid, resample
from taskalign.data.grid import Grid
from taskalign.data.labels import BINARY_MASK_COLUMNS, IMAGE_COLUMNS, MANIFEST_COLUMNS, MASK_COLUMNS
from taskalign.data.sanity import SanityConfig, cache_findings, native_findings, sanity_config
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)

# The config's preprocess section; its defaults are written once, in the schema, which fills them in.
KEYS = ("spacing_mm", "size", "channels", "clip_percentiles", "qc_cases", "cache_dtype")
FIELDS = ("rectum_distance",)
# image.npy's dtype on disk; the dataset reads it back as float32 either way (schema: why float16 is safe)
CACHE_DTYPES = ("float32", "float16")
INT_FIELDS = ("pirads", "sector")
FLOAT_FIELDS = ("volume_ml", "tr", "te", "flip_angle", "field_strength")
CUT_WARNING_FRACTION = 0.05  # relative volume change between native and cache that meta.json warns about


class PreprocessError(RuntimeError):
    """A case could not be preprocessed; the message names the case, the file and the problem."""


def resolve_config(cfg: dict | None) -> dict:
    """The preprocess config slice checked; `fields` (the per-case arrays the cohort's tasks need, from the plan)
    defaults to none. A missing, unknown or bad value is an error."""
    out = {"fields": [], **(cfg or {})}
    unknown = sorted(set(out) - {*KEYS, "fields"})
    if unknown:
        raise ValueError(f"unknown preprocess config key(s): {', '.join(unknown)} (known: {', '.join(KEYS)})")
    missing = [key for key in KEYS if key not in out]
    if missing:
        raise ValueError(f"preprocess config lacks {', '.join(missing)} (the schema's defaults fill them in)")
    if len(out["spacing_mm"]) != 3 or min(out["spacing_mm"]) <= 0:
        raise ValueError(f"preprocess.spacing_mm must be 3 positive numbers [z, y, x], got {out['spacing_mm']}")
    if len(out["size"]) != 3 or min(out["size"]) < 1:
        raise ValueError(f"preprocess.size must be 3 positive integers [D, H, W], got {out['size']}")
    bad = [c for c in out["channels"] if c not in IMAGE_COLUMNS]
    if bad or not out["channels"] or len(set(out["channels"])) != len(out["channels"]):
        raise ValueError(f"preprocess.channels must be distinct names from {IMAGE_COLUMNS}, got {out['channels']}")
    low, high = out["clip_percentiles"]
    if not 0 <= low < high <= 100:
        raise ValueError(f"preprocess.clip_percentiles must be 0 <= low < high <= 100, got {out['clip_percentiles']}")
    if set(out["fields"]) - set(FIELDS):
        raise ValueError(f"preprocess fields must be among {FIELDS}, got {out['fields']}")
    if out["cache_dtype"] not in CACHE_DTYPES:
        raise ValueError(f"preprocess.cache_dtype must be one of {CACHE_DTYPES}, got {out['cache_dtype']!r}")
    out["spacing_mm"] = [float(s) for s in out["spacing_mm"]]
    out["size"] = [int(s) for s in out["size"]]
    return out


# ----------------------------------------------------------------------------------------------------- reading


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def read_volume(path, case_id: str, column: str, pixel_type=sitk.sitkFloat32) -> sitk.Image:
    """Read one 3D file as `pixel_type`; any problem becomes a PreprocessError naming case, column and file."""
    path = Path(path)
    where = f"case {case_id}: {column} file {path}"
    if not path.exists():
        raise PreprocessError(f"{where}: file does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise PreprocessError(f"{where}: SimpleITK cannot read it ({reason})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PreprocessError(
            f"{where}: expected a scalar 3D image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    image = sitk.Cast(image, pixel_type)
    if pixel_type == sitk.sitkFloat32 and not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise PreprocessError(f"{where}: contains NaN or Inf")
    return image


# ----------------------------------------------------------------------------------------------- normalisation


def normalise(raw: np.ndarray, foreground: np.ndarray, clip_percentiles) -> tuple[np.ndarray, dict]:
    """Robust z-score of one channel: (clip(raw, low, high) - centre) / scale on every voxel, float32.

    raw: (D, H, W) resampled intensities; foreground: (D, H, W) bool, the voxels with signal. low/high are the
    `clip_percentiles` of raw[foreground]; centre/scale are the mean/std of the clipped foreground, so the
    foreground has mean 0 and std 1. `background` is what raw 0 (no signal, padding) maps to.
    """
    values = raw[foreground].astype(np.float64)
    if values.size == 0:
        low = high = centre = 0.0
        scale = 1.0
    else:
        low, high = (float(v) for v in np.percentile(values, clip_percentiles))
        clipped = np.clip(values, low, high)
        centre, scale = float(clipped.mean()), float(clipped.std())
        if scale <= 0.0:  # a constant channel: centre it, do not blow it up
            scale = 1.0
    out = ((np.clip(raw.astype(np.float64), low, high) - centre) / scale).astype(np.float32)
    stats = {
        "clip_low": low,
        "clip_high": high,
        "centre": centre,
        "scale": scale,
        "background": (min(max(0.0, low), high) - centre) / scale,
        "foreground_voxels": int(values.size),
    }
    return out, stats


# ------------------------------------------------------------------------------------------------------- cases


def _manifest_fields(row: dict) -> dict:
    """The manifest's labels and metadata for meta.json, typed (empty -> None)."""
    out = {}
    for key in MANIFEST_COLUMNS:
        if key in IMAGE_COLUMNS or key in MASK_COLUMNS:
            continue
        value = row.get(key)
        if _blank(value):
            out[key] = None if key not in ("case_id", "cohort", "split") else ""
        elif key in INT_FIELDS:
            out[key] = int(float(value))
        elif key in FLOAT_FIELDS:
            out[key] = float(value)
        else:
            out[key] = str(value)
    return out


def rectum_distance(rectum: np.ndarray, spacing_mm) -> np.ndarray | None:
    """(D, H, W) float32: the Euclidean distance in mm from each voxel to the nearest rectum voxel (0 inside);
    None for an empty mask, which has no distance to give."""
    if not rectum.any():
        return None
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(rectum == 0, sampling=spacing_mm).astype(np.float32)


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished case folder into place; an older version is swapped out first, then deleted."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _sanity_warnings(case_id, paths, masks, mask_arrays, grid, row, sanity: SanityConfig) -> list[str]:
    """The anatomical checks (`taskalign.data.sanity`) on the native masks and the cache: warnings as text for
    meta.json (the QC montage marks them); a failed check at level error is a PreprocessError."""
    if not masks:
        return []
    grid_of = {name: Grid.of(mask) for name, mask in masks.items()}
    native = {name: sitk.GetArrayViewFromImage(mask) for name, mask in masks.items()}
    findings = native_findings(row, native, grid_of, sanity)
    if "lesion" in masks:
        lesion_native = int(np.count_nonzero(sitk.GetArrayViewFromImage(masks["lesion"]))) * grid_of["lesion"].voxel_ml
        lesion_cache = int(np.count_nonzero(mask_arrays["lesion"])) * _voxel_ml(grid)
        findings += cache_findings(lesion_native, lesion_cache, sanity)
    for finding in findings:
        if finding.level == "error":
            file = paths.get(finding.column, paths.get("lesion"))
            raise PreprocessError(f"case {case_id}: {finding.column} file {file}: {finding.message}")
    return [f"{finding.message} [check {finding.check}]" for finding in findings]


def preprocess_case(row: dict, cfg: dict, out_dir: Path, sanity: SanityConfig | None = None) -> dict:
    """Preprocess one manifest row into `out_dir/<case_id>/` (image.npy, masks, meta.json); returns the meta.
    image.npy is computed in float32 and stored as `cfg["cache_dtype"]`.

    row: manifest row (absolute paths; empty string or NaN for absent files). cfg: the preprocess config slice.
    sanity: the anatomical checks (default levels and limits); their warnings go into meta.json.
    Written atomically: into a hidden temporary folder next to the final one, renamed at the end.
    """
    cfg = resolve_config(cfg)
    case_id = str(row["case_id"])
    start = time.perf_counter()
    paths = {k: Path(str(row[k])) for k in IMAGE_COLUMNS + MASK_COLUMNS if not _blank(row.get(k))}

    # The T2W is the reference frame; a case without one falls back to its first image (recorded in meta).
    reference = next((k for k in IMAGE_COLUMNS if k in paths), None)
    if reference is None:
        raise PreprocessError(f"case {case_id}: no image at all (t2w, adc and dwi are empty)")
    channels = cfg["channels"]
    wanted = [k for k in IMAGE_COLUMNS if k in paths and (k in channels or k == reference)]
    images = {k: read_volume(paths[k], case_id, k) for k in wanted}
    masks = {k: read_volume(paths[k], case_id, k, sitk.sitkUInt8) for k in MASK_COLUMNS if k in paths}
    ref = images[reference]

    warnings: list[str] = []
    centre = None
    if "prostate" in masks:
        centre = mask_bbox_center(masks["prostate"])
        if centre is None:
            warnings.append("prostate mask is empty: crop centred on the image")
    if centre is None:
        centre = image_center(ref)
    grid = output_grid(centre, lps_direction(ref), cfg["spacing_mm"], cfg["size"])

    # Zero outside the reference's field of view: what resampling onto the T2W grid first would have done.
    ones = sitk.Image(ref.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(ref)
    fov = resample(ones, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8).astype(bool)

    image = np.zeros((len(channels), *cfg["size"]), dtype=np.float32)
    norm = {}
    for c, name in enumerate(channels):
        if name not in images:
            continue
        raw = resample(antialias(images[name], grid), grid, sitk.sitkLinear, sitk.sitkFloat32)
        raw[~fov] = 0.0
        image[c], norm[name] = normalise(raw, raw != 0, cfg["clip_percentiles"])

    mask_arrays = {}
    for name, mask in masks.items():
        arr = resample(mask, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
        mask_arrays[name] = (arr > 0).astype(np.uint8) if name in BINARY_MASK_COLUMNS else arr

    volume_native = volume_cache = None
    if "prostate" in masks:
        volume_native = int(np.count_nonzero(sitk.GetArrayViewFromImage(masks["prostate"]))) * _voxel_ml(
            masks["prostate"]
        )
        gland = mask_arrays["prostate"]
        volume_cache = int(np.count_nonzero(gland)) * _voxel_ml(grid)
        faces = [gland[0], gland[-1], gland[:, 0], gland[:, -1], gland[:, :, 0], gland[:, :, -1]]
        if any(f.any() for f in faces):
            warnings.append("prostate touches the crop border: the gland is probably cut by the crop")
        if volume_native > 0 and abs(volume_cache - volume_native) > CUT_WARNING_FRACTION * volume_native:
            warnings.append(f"prostate volume {volume_cache:.2f} mL in the cache vs {volume_native:.2f} mL native")

    warnings += _sanity_warnings(case_id, paths, masks, mask_arrays, grid, row, sanity or sanity_config())

    meta = {
        **_manifest_fields(row),
        "case_id": case_id,
        "channels": list(channels),
        "channels_present": [c for c in channels if c in images],
        "masks_present": [m for m in MASK_COLUMNS if m in masks],
        "reference": reference,
        "spacing_mm": list(cfg["spacing_mm"]),
        "shape": list(cfg["size"]),
        "origin": list(grid.GetOrigin()),
        "direction": np.array(grid.GetDirection()).reshape(3, 3).tolist(),
        "crop_center": [float(v) for v in centre],
        "normalisation": norm,
        "volume_ml_native": volume_native,
        "volume_ml_cache": volume_cache,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - start, 3),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / case_id
    tmp = out_dir / f".{case_id}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", image.astype(cfg["cache_dtype"], copy=False))
        for name, arr in mask_arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        # only for cohorts a distortion task reads (the plan says which): 4 bytes a voxel, as much as the image
        wanted = "rectum_distance" in cfg["fields"] and "rectum" in mask_arrays
        distance = rectum_distance(mask_arrays["rectum"], cfg["spacing_mm"]) if wanted else None
        if distance is not None:
            np.save(tmp / "rectum_distance.npy", distance)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta


def _preprocess_job(row: dict, cfg: dict, out_dir: Path, sanity: SanityConfig | None) -> dict:
    """preprocess_case with every failure turned into a message that names the case (files are named inside)."""
    try:
        return preprocess_case(row, cfg, out_dir, sanity)
    except PreprocessError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with the case named
        raise PreprocessError(f"case {row.get('case_id')}: {type(err).__name__}: {err}") from None


def _init_worker() -> None:
    # One ITK thread per process: the pool provides the parallelism, threads would oversubscribe the cores.
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


# ------------------------------------------------------------------------------------------------------ cohort


def select_qc_cases(manifest: pd.DataFrame, n: int) -> list[str]:
    """The first `n` case ids in manifest order, but the first case of each split before any second one."""
    firsts = manifest.drop_duplicates("split")["case_id"].tolist()[:n]
    rest = [c for c in manifest["case_id"] if c not in firsts]
    chosen = set(firsts + rest[: max(0, n - len(firsts))])
    return [c for c in manifest["case_id"] if c in chosen]


def _absolute(value: str, base: Path) -> str:
    if _blank(value):
        return ""
    path = Path(value)
    return str(path if path.is_absolute() else (base / path).resolve())


def preprocess_cohort(
    checked_manifest: Path,
    cfg: dict,
    cache_dir: Path,
    index_csv: Path,
    qc_dir: Path,
    workers: int = 1,
    sanity: SanityConfig | None = None,
) -> pd.DataFrame:
    """Preprocess every case of a checked manifest into `cache_dir`, index it in `index_csv`, montage a few.

    The index (the manifest's columns plus `cache_dir`, the absolute case folder) is written atomically and
    only when every case succeeded; the first failure stops the run with a PreprocessError naming case and file.
    """
    checked_manifest, cache_dir, index_csv = Path(checked_manifest), Path(cache_dir), Path(index_csv)
    index_csv.unlink(missing_ok=True)  # a failed run must not leave an index of an older cache behind
    cfg = resolve_config(cfg)
    manifest = pd.read_csv(checked_manifest, dtype=str, keep_default_na=False)
    base = checked_manifest.resolve().parent
    rows = []
    for row in manifest.to_dict("records"):
        rows.append({**row, **{k: _absolute(row.get(k, ""), base) for k in IMAGE_COLUMNS + MASK_COLUMNS}})
    cache_dir.mkdir(parents=True, exist_ok=True)
    Path(qc_dir).mkdir(parents=True, exist_ok=True)  # a rule output even when qc_cases is 0
    n = len(rows)
    log.info("preprocessing %d case(s) of %s into %s with %d worker(s)", n, checked_manifest, cache_dir, workers)

    metas: dict[str, dict] = {}

    def done(meta: dict) -> None:
        metas[meta["case_id"]] = meta
        log.info("[%d/%d] %s: %.1f s", len(metas), n, meta["case_id"], meta["seconds"])
        for warning in meta["warnings"]:
            log.warning("case %s: %s", meta["case_id"], warning)

    if workers <= 1:
        for row in rows:
            done(_preprocess_job(row, cfg, cache_dir, sanity))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
            pending = {pool.submit(_preprocess_job, row, cfg, cache_dir, sanity) for row in rows}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    done(future.result())

    index = manifest.copy()
    index["cache_dir"] = [str((cache_dir / r["case_id"]).resolve()) for r in rows]
    with atomic_path(index_csv) as tmp:
        index.to_csv(tmp, index=False)
    log.info("wrote %s", index_csv)

    if cfg["qc_cases"] > 0 and n:
        from taskalign.data.qc import montage_case

        for case_id in select_qc_cases(manifest, cfg["qc_cases"]):
            png = Path(qc_dir) / f"{case_id}.png"
            montage_case(cache_dir / case_id, png)
            log.info("QC montage %s", png)
    return index
