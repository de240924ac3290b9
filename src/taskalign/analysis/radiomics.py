"""pyradiomics features per case from the preprocessed cache (inside the prostate mask, per MR channel).

The cache is already on one grid and intensity-normalised, so the arrays go to pyradiomics as they are, with the
cache spacing; the parameter file (config/radiomics.yaml) holds every extraction choice. Feature names are prefixed
with the channel: `t2w_original_glcm_Contrast`. Used by the radiomic lens (seed 003).
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from taskalign.runtime import read_array, read_yaml_mapping

if TYPE_CHECKING:
    from radiomics.featureextractor import RadiomicsFeatureExtractor

log = logging.getLogger(__name__)

META_COLUMNS = ("case_id", "patient_id", "split")
# pyradiomics feature class -> the paper's three groups
CLASS_GROUPS = {"firstorder": "intensity", "shape": "shape", "shape2D": "shape", "glcm": "texture",
                "glrlm": "texture", "glszm": "texture", "gldm": "texture", "ngtdm": "texture"}

# One extractor per worker process, built once by the pool initializer.
_EXTRACTOR: RadiomicsFeatureExtractor | None = None
_CHANNELS: tuple[str, ...] = ()


def load_params(path: str | Path) -> dict:
    """The pyradiomics parameter file as a dict (imageType, featureClass, setting)."""
    return read_yaml_mapping(path, "pyradiomics parameter file (imageType, featureClass, setting)")


def make_extractor(params: dict) -> RadiomicsFeatureExtractor:
    """A RadiomicsFeatureExtractor configured (and schema-validated by pyradiomics) from `params`."""
    quiet_radiomics()
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    # pyradiomics keeps references into the dict it is given; a copy keeps the caller's dict unchanged
    return RadiomicsFeatureExtractor(copy.deepcopy(params))


def quiet_radiomics() -> None:
    """pyradiomics logs every case at INFO; keep warnings and errors only."""
    logging.getLogger("radiomics").setLevel(logging.WARNING)


def feature_groups(name: str) -> dict[str, str]:
    """Parse `<image>_<imageType>_<class>_<Feature>`: image (channel), filter, class and group.

    filter: the image type without its parameters (`log-sigma-2-0-mm-3D` -> log, `wavelet-LLH` -> wavelet);
    group: intensity (firstorder), shape (shape, shape2D) or texture (glcm, glrlm, glszm, gldm, ngtdm).
    """
    parts = name.split("_")
    if len(parts) < 4 or parts[2] not in CLASS_GROUPS:
        raise ValueError(f"radiomic feature name {name!r} is not <image>_<imageType>_<class>_<Feature> with class "
                         f"one of {sorted(CLASS_GROUPS)}")
    image, image_type, cls = parts[:3]
    return {"image": image, "filter": image_type.split("-")[0].lower(), "class": cls, "group": CLASS_GROUPS[cls]}


def _sitk_image(array: np.ndarray, spacing_zyx: Sequence[float]):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    # numpy is (z, y, x); SimpleITK spacing is (x, y, z)
    image.SetSpacing([float(s) for s in reversed(spacing_zyx)])
    return image


def case_features(cache_dir: str | Path, channels_wanted: Iterable[str] = ("t2w", "adc"), params: dict | None = None,
                  *, extractor: RadiomicsFeatureExtractor | None = None) -> dict[str, float]:
    """Features of one cached case within its prostate mask, for each wanted channel, `<channel>_` prefixed.

    Give `params` (a parameter dict) or a ready `extractor` (reused across cases). Errors name the case, the file
    and the problem: missing or empty prostate mask, mask and image of different shapes, channel not present.
    """
    if extractor is None:
        if params is None:
            raise ValueError("case_features needs params or an extractor")
        extractor = make_extractor(params)
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"case {cache_dir.name}: {meta_path} not found")
    meta = json.loads(meta_path.read_text())
    case = meta.get("case_id", cache_dir.name)
    mask_path = cache_dir / "prostate.npy"
    if "prostate" not in meta.get("masks_present", []) or not mask_path.is_file():
        raise FileNotFoundError(f"case {case}: {mask_path}: no prostate mask (meta.json masks_present "
                                f"{meta.get('masks_present', [])}); radiomics are extracted within the prostate")
    mask = read_array(mask_path)
    if not mask.any():
        raise ValueError(f"case {case}: {mask_path}: prostate mask is empty")
    image_path = cache_dir / "image.npy"
    if not image_path.is_file():
        raise FileNotFoundError(f"case {case}: {image_path} not found")
    image = read_array(image_path, mmap_mode="r")
    if image.shape[1:] != mask.shape:
        raise ValueError(f"case {case}: {mask_path}: mask shape {mask.shape} != image {image_path} shape "
                         f"{image.shape[1:]}")
    label = int(extractor.settings.get("label", 1))
    spacing = meta["spacing_mm"]
    mask_image = _sitk_image((mask > 0).astype(np.uint8) * label, spacing)
    out: dict[str, float] = {}
    for channel in channels_wanted:
        if channel not in meta.get("channels_present", []):
            raise ValueError(f"case {case}: {meta_path}: channel {channel!r} not present (channels_present "
                             f"{meta.get('channels_present', [])})")
        array = np.ascontiguousarray(image[meta["channels"].index(channel)], dtype=np.float32)
        try:
            result = extractor.execute(_sitk_image(array, spacing), mask_image, label=label)
        except Exception as err:
            raise ValueError(f"case {case}: {image_path} channel {channel}: pyradiomics failed: {err}") from err
        out.update({f"{channel}_{key}": float(value) for key, value in result.items()
                    if not key.startswith("diagnostics_")})
    return out


def _init_worker(params: dict, channels: tuple[str, ...]) -> None:
    import SimpleITK as sitk

    global _EXTRACTOR, _CHANNELS
    # one case per process: SimpleITK's own threads would oversubscribe the cores
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    _EXTRACTOR = make_extractor(params)
    _CHANNELS = channels


def _worker(cache_dir: str) -> dict[str, float]:
    return case_features(cache_dir, _CHANNELS, extractor=_EXTRACTOR)


def cohort_features(index_csv: str | Path, params_path: str | Path, channels: Sequence[str] = ("t2w", "adc"),
                    processes: int = 1, log_every: int = 10) -> pd.DataFrame:
    """One row per case of a cache index: case_id, patient_id, split, then the features in sorted name order.

    processes > 1 extracts cases in a spawn pool (one extractor per worker); the table is the same either way.
    """
    index = pd.read_csv(index_csv, dtype={"case_id": str, "patient_id": str})
    missing = [c for c in (*META_COLUMNS, "cache_dir") if c not in index.columns]
    if missing:
        raise ValueError(f"{index_csv}: missing columns {missing}")
    if index.empty:
        raise ValueError(f"{index_csv}: no cases")
    params, channels = load_params(params_path), tuple(channels)
    dirs = index["cache_dir"].astype(str).tolist()
    rows: list[dict[str, float]] = []

    def collect(results: Iterable[dict[str, float]]) -> None:
        for row in results:
            rows.append(row)
            if len(rows) % log_every == 0 or len(rows) == len(dirs):
                log.info("radiomics: %d/%d cases", len(rows), len(dirs))

    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes, _init_worker, (params, channels)) as pool:
            collect(pool.imap(_worker, dirs))
    else:
        # the same set-up in this process (SimpleITK on one thread), so both paths compute alike
        _init_worker(params, channels)
        collect(map(_worker, dirs))
    names = sorted(set().union(*rows))
    features = pd.DataFrame(rows, columns=names)
    return pd.concat([index[list(META_COLUMNS)].reset_index(drop=True), features], axis=1)
