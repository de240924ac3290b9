"""Seeded train/val/test splits grouped by patient and stratified by a label (docs/data-contract.md)."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import pandas as pd

from taskalign.data.labels import SPLITS

MISSING_STRATUM = "missing"
POOLED_STRATUM = "pooled"


class PatientLeak(NamedTuple):
    """A patient whose cases sit in more than one split."""

    patient_id: str
    splits: tuple[str, ...]
    case_ids: tuple[str, ...]


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected a subset of {list(SPLITS)}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(not math.isfinite(f) or f < 0 for f in out.values()):
        raise ValueError(f"split fractions must be finite and >= 0, got {fractions}")
    if not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {sum(out.values()):g})")
    return out


def _patient_strata(df: pd.DataFrame, stratify_by: str | None) -> pd.Series:
    """Stratum name per patient: the patient's maximum label, 'missing' when the patient has none."""
    patients = df["patient_id"].astype(str)
    if stratify_by is None:
        return pd.Series("all", index=pd.Index(patients.unique(), name="patient_id"))
    if stratify_by not in df.columns:
        raise ValueError(f"cannot stratify by {stratify_by!r}: no such column")
    raw = df[stratify_by].map(lambda v: None if _is_empty(v) else v)
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().sum() == raw.notna().sum():
        label = numeric.groupby(patients.to_numpy(), sort=False).max()
        return label.map(lambda v: MISSING_STRATUM if pd.isna(v) else f"{v:g}")
    # A non-numeric label (e.g. vendor): the lexicographic maximum keeps the choice deterministic.
    text = raw.map(lambda v: None if v is None else str(v))
    label = text.groupby(patients.to_numpy(), sort=False).agg(lambda s: max(s.dropna(), default=None))
    return label.map(lambda v: MISSING_STRATUM if v is None else v)


def assign_splits(
    df: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    stratify_by: str | None = "pirads",
) -> pd.Series:
    """Split name ('train', 'val', 'test') per row of `df`, on `df`'s index.

    All cases of a patient (`patient_id`) land in one split. Patients are stratified by their maximum
    `stratify_by` label (a missing label is its own stratum); within each stratum, patients are shuffled with
    `seed` and placed, largest first, in the split furthest below its target number of cases. Strata with too
    few patients to reach every split (fewer than 1 / smallest non-zero fraction) are pooled and placed last,
    where they fill whatever the overall split sizes still lack. The result depends only on the seed and on
    the rows' content, not on their order.
    """
    fracs = _check_fractions(fractions)
    if "patient_id" not in df.columns:
        raise ValueError("cannot split: no patient_id column")
    if df["patient_id"].map(_is_empty).any():
        raise ValueError("cannot split: some rows have an empty patient_id")
    if df.empty:
        return pd.Series([], index=df.index, dtype=object, name="split")

    patients = df["patient_id"].astype(str)
    n_cases = patients.value_counts()
    stratum = _patient_strata(df, stratify_by)

    active = [s for s in SPLITS if fracs[s] > 0]
    min_patients = math.ceil(1.0 / min(fracs[s] for s in active) - 1e-9)
    members: dict[str, list[str]] = {}
    for pid, name in sorted(stratum.items()):
        members.setdefault(name, []).append(pid)
    pooled = [p for name, pids in members.items() if len(pids) < min_patients for p in pids]
    groups = [(pids, False) for name, pids in sorted(members.items()) if len(pids) >= min_patients]
    if pooled:
        groups.append((sorted(pooled), True))

    rng = np.random.default_rng(seed)
    total = len(df)
    global_count = dict.fromkeys(active, 0)
    assignment: dict[str, str] = {}
    for pids, is_pool in groups:
        order = [pids[i] for i in rng.permutation(len(pids))]
        order.sort(key=lambda p: -n_cases[p])  # stable: ties stay in the shuffled order
        size = sum(n_cases[p] for p in pids)
        count = dict.fromkeys(active, 0)
        for pid in order:
            def deficit(s: str) -> tuple[float, ...]:
                overall = fracs[s] * total - global_count[s]
                if is_pool:
                    return (overall,)
                return (fracs[s] * size - count[s], overall)

            best = max(active, key=deficit)  # ties go to the earlier split in SPLITS order
            assignment[pid] = best
            count[best] += n_cases[pid]
            global_count[best] += n_cases[pid]
    return pd.Series(patients.map(assignment).to_numpy(), index=df.index, dtype=object, name="split")


def check_patient_leakage(df: pd.DataFrame) -> list[PatientLeak]:
    """Patients whose cases are in more than one split (rows with an empty split are ignored)."""
    if "patient_id" not in df.columns or "split" not in df.columns:
        return []
    case_ids = df["case_id"] if "case_id" in df.columns else pd.Series(df.index.astype(str), index=df.index)
    rows = df[~df["split"].map(_is_empty) & ~df["patient_id"].map(_is_empty)]
    leaks = []
    for pid, group in rows.groupby(rows["patient_id"].astype(str), sort=True):
        splits = group["split"].astype(str).str.strip()
        if splits.nunique() > 1:
            order = sorted(splits.unique(), key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
            leaks.append(PatientLeak(pid, tuple(order), tuple(case_ids.loc[group.index].astype(str))))
    return leaks


def manifest_split_sizes(path, split: dict) -> dict[str, int] | None:
    """Cases per split of a source manifest as the integrity check leaves them: its split column, else the seeded
    split `assign_splits` makes with `split` (the config's data.split: fractions, seed, stratify_by). None when the
    manifest cannot say yet (no file, no split or patient_id column: the check reports those)."""
    if not os.path.isfile(path):
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"manifest {path} unreadable: {' '.join(str(error).split())}") from None
    if "split" not in table.columns or "patient_id" not in table.columns:
        return None
    splits = table["split"].str.strip()
    if (splits == "").all():
        try:
            splits = assign_splits(table, split["fractions"], split["seed"], split["stratify_by"])
        except ValueError:
            return None  # an empty patient_id or a missing label column: the check names them
    return {s: int((splits == s).sum()) for s in SPLITS}
