"""Features files (`results/features/**.npz`): case ids, patient ids and splits beside one n x d array per layer.

numpy and pandas only: the jobs that only read features (CKA, MMD) must not pay for importing torch and MONAI,
which extracting them needs (taskalign.analysis.features)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.runtime import atomic_path, read_arrays

log = logging.getLogger(__name__)

META_KEYS = ("case_id", "patient_id", "split")


def layer_names(layers: list[int]) -> list[str]:
    """The feature names a vit3d encoder writes for `analysis.layers` integers (block n), `final` added."""
    return [f"block{n}" if isinstance(n, int) else n for n in layers] + ["final"]


def write_features(path: Path, cases: pd.DataFrame, features: dict[str, np.ndarray]) -> None:
    meta = {key: cases[key].to_numpy(dtype=str) for key in META_KEYS}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **meta, **features)


def load_features(path: Path, splits: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(case table, {layer: n x d}) from a features file, optionally only some splits."""
    data = read_arrays(path)
    missing = [key for key in META_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: not a features file (no {', '.join(missing)})")
    cases = pd.DataFrame({key: data.pop(key) for key in META_KEYS})
    layers = data
    keep = cases["split"].isin(splits).to_numpy() if splits else np.ones(len(cases), bool)
    return cases[keep].reset_index(drop=True), {k: v[keep] for k, v in layers.items()}


def joined(a: Path, b: Path, splits: tuple[str, ...]) -> tuple[list[str], dict, dict]:
    """Features of two encoders on the same cases in the same order (joined by case id)."""
    cases_a, feats_a = load_features(a, splits)
    cases_b, feats_b = load_features(b, splits)
    common = sorted(set(cases_a["case_id"]) & set(cases_b["case_id"]))
    if len(common) < max(len(cases_a), len(cases_b)):
        log.warning("%s and %s share %d of %d/%d cases", a, b, len(common), len(cases_a), len(cases_b))
    pos_a = pd.Series(range(len(cases_a)), index=cases_a["case_id"])[common].to_numpy()
    pos_b = pd.Series(range(len(cases_b)), index=cases_b["case_id"])[common].to_numpy()
    return common, {k: v[pos_a] for k, v in feats_a.items()}, {k: v[pos_b] for k, v in feats_b.items()}
