"""Seeded, patient-grouped, label-stratified splits."""

import numpy as np
import pandas as pd
import pytest

from taskalign.data.labels import SPLITS
from taskalign.data.splits import assign_splits, check_patient_leakage

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def cohort(n_patients=300, seed=0, missing=0.0):
    """Patients with 1-3 cases each; PI-RADS 2-5 per patient (shared by its cases), some missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pirads = "" if rng.random() < missing else str(rng.choice([2, 3, 4, 5], p=[0.4, 0.3, 0.2, 0.1]))
        for c in range(rng.integers(1, 4)):
            rows.append({"case_id": f"c{p:04d}_{c}", "patient_id": f"P{p:04d}", "pirads": pirads})
    return pd.DataFrame(rows)


def test_patients_are_never_split_and_sizes_follow_fractions():
    df = cohort()
    split = assign_splits(df, FRACTIONS, seed=1)
    assert split.index.equals(df.index)
    assert set(split) == set(SPLITS)
    assert split.groupby(df["patient_id"]).nunique().max() == 1
    share = split.value_counts(normalize=True)
    for name, fraction in FRACTIONS.items():
        assert share[name] == pytest.approx(fraction, abs=0.02)
    assert check_patient_leakage(df.assign(split=split)) == []


def test_each_label_is_spread_like_the_whole():
    df = cohort(missing=0.1)
    split = assign_splits(df, FRACTIONS, seed=2)
    label = df["pirads"].replace("", "missing")
    for value, rows in split.groupby(label):
        share = rows.value_counts(normalize=True)
        for name, fraction in FRACTIONS.items():
            assert share.get(name, 0.0) == pytest.approx(fraction, abs=0.05), (value, name)


def test_stratifies_by_the_patients_maximum_label():
    # Each patient: one PI-RADS 2 case and one higher case; stratifying by the max keeps the high grades spread.
    rows = []
    for p in range(120):
        high = str(3 + p % 3)
        rows += [{"patient_id": f"P{p}", "pirads": "2"}, {"patient_id": f"P{p}", "pirads": high}]
    df = pd.DataFrame(rows)
    split = assign_splits(df, FRACTIONS, seed=0)
    patient_max = df.groupby("patient_id")["pirads"].max()
    patient_split = split.groupby(df["patient_id"]).first()
    for grade in ("3", "4", "5"):
        share = patient_split[patient_max == grade].value_counts(normalize=True)
        assert share["val"] == pytest.approx(0.2, abs=0.03) and share["test"] == pytest.approx(0.2, abs=0.03)


def test_deterministic_for_a_seed_and_independent_of_row_order():
    df = cohort()
    first = assign_splits(df, FRACTIONS, seed=7)
    assert first.equals(assign_splits(df, FRACTIONS, seed=7))
    shuffled = df.sample(frac=1.0, random_state=3)
    assert assign_splits(shuffled, FRACTIONS, seed=7).sort_index().equals(first)


def test_a_different_seed_gives_a_different_split():
    df = cohort()
    a, b = assign_splits(df, FRACTIONS, seed=0), assign_splits(df, FRACTIONS, seed=1)
    assert (a != b).mean() > 0.2


def test_small_strata_and_no_stratification_still_fill_every_split():
    df = cohort(n_patients=40)
    df.loc[df["patient_id"] == "P0000", "pirads"] = "5"  # make sure rare labels exist ...
    df.loc[df["patient_id"].isin(["P0001", "P0002"]), "pirads"] = "9"  # ... and a stratum of two patients
    for stratify_by in ("pirads", None):
        split = assign_splits(df, FRACTIONS, seed=0, stratify_by=stratify_by)
        assert split.notna().all() and set(split) == set(SPLITS)
        assert split.groupby(df["patient_id"]).nunique().max() == 1
        share = split.value_counts(normalize=True)
        assert share["train"] == pytest.approx(0.6, abs=0.08)


def test_a_zero_fraction_split_stays_empty():
    df = cohort(n_patients=30)
    split = assign_splits(df, {"train": 0.8, "test": 0.2}, seed=0)
    assert set(split) == {"train", "test"}


@pytest.mark.parametrize(
    "fractions", [{"train": 0.5, "val": 0.2}, {"train": 0.8, "dev": 0.2}, {"train": 1.2, "val": -0.2}]
)
def test_invalid_fractions_are_rejected(fractions):
    with pytest.raises(ValueError):
        assign_splits(cohort(n_patients=5), fractions, seed=0)


def test_check_patient_leakage_names_patient_splits_and_cases():
    df = pd.DataFrame({
        "case_id": ["a", "b", "c", "d", "e"],
        "patient_id": ["P1", "P1", "P2", "P2", "P3"],
        "split": ["test", "train", "val", "val", ""],
    })
    leaks = check_patient_leakage(df)
    assert len(leaks) == 1
    assert leaks[0].patient_id == "P1"
    assert leaks[0].splits == ("train", "test")
    assert set(leaks[0].case_ids) == {"a", "b"}
