"""Integrity check: a clean tiny cohort passes; each class of bad input is reported with case, file and problem."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import write_checked
from taskalign.cli.check_manifest import main as cli_main
from taskalign.data.integrity import ManifestError, Problem, check_manifest
from taskalign.data.labels import MANIFEST_COLUMNS, SPLITS

SPACING = (0.5, 0.5, 3.0)  # x, y, z in mm
SHAPE = (4, 8, 8)  # numpy (z, y, x)
PROSTATE = (slice(1, 3), slice(2, 5), slice(2, 4))  # 2 x 3 x 2 = 12 voxels
PROSTATE_ML = 12 * 0.5 * 0.5 * 3.0 / 1000.0
SPLIT = {"split_fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_seed": 0}


def write_image(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def write_manifest(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def mask(value=1, dtype=np.uint8):
    array = np.zeros(SHAPE, dtype)
    array[PROSTATE] = value
    return array


@pytest.fixture
def cohort(tmp_path):
    """Four cases of three patients; adc on a coarser grid over the same space; manifest paths relative."""
    rng = np.random.default_rng(0)
    cases = tmp_path / "cases"
    cases.mkdir()
    rows = []
    for k in range(4):
        cid = f"risk_{k:04d}"

        def put(name, array, **kw):
            write_image(cases / f"{cid}_{name}.nii.gz", array, **kw)
            return f"cases/{cid}_{name}.nii.gz"

        zones = np.zeros(SHAPE, np.uint8)
        zones[1:3, 2:5, 2:3], zones[1:3, 2:5, 3:4] = 1, 2
        lesion = np.zeros(SHAPE, np.uint8)  # all-zero lesion mask = no lesion, valid
        if k % 2:
            lesion[1, 3, 3] = 1
        rectum = np.zeros(SHAPE, np.uint8)
        rectum[0:2, 6:8, 3:5] = 1
        rows.append({
            "case_id": cid, "patient_id": f"P{min(k, 2)}", "cohort": "risk", "split": "",
            "t2w": put("t2w", rng.normal(100, 10, SHAPE).astype(np.float32)),
            "adc": put("adc", rng.normal(1500, 100, (4, 4, 4)).astype(np.float32), spacing=(1.0, 1.0, 3.0)),
            "dwi": put("dwi", rng.integers(0, 500, SHAPE).astype(np.int16)),
            "prostate": put("prostate", mask()), "zones": put("zones", zones),
            "lesion": put("lesion", lesion), "rectum": put("rectum", rectum),
            "pirads": str(2 + k % 4), "sector": str(5 + k) if k % 2 else "", "volume_ml": "",
            "tr": "3000", "te": "100", "flip_angle": "90", "field_strength": "3", "vendor": "Siemens",
        })
    rows[3]["volume_ml"] = "42.5"  # a given volume is kept
    return write_manifest(tmp_path / "manifest.csv", rows), rows


def case_file(manifest, rows, index, column):
    return (manifest.parent / rows[index][column]).resolve()


def only_problem(manifest, **kw) -> Problem:
    problems = check_manifest(manifest, **kw)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def assert_names(problem, case, file, *words):
    text = str(problem)
    assert f"case {case}" in text
    if file is not None:
        assert str(file) in text
    for word in words:
        assert word in text, text


# --- a clean cohort -------------------------------------------------------------------------------------------

def test_clean_cohort_passes_and_writes_checked_manifest(cohort, tmp_path):
    manifest, rows = cohort
    assert check_manifest(manifest) == []
    out = tmp_path / "results" / "manifests" / "risk.csv"
    returned = write_checked(manifest, out, **SPLIT)
    checked = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(checked.columns) == MANIFEST_COLUMNS
    assert list(returned.columns) == MANIFEST_COLUMNS
    for column in ("t2w", "adc", "dwi", "prostate", "zones", "lesion", "rectum"):
        for value in checked[column]:
            assert Path(value).is_absolute() and Path(value).is_file()
    assert set(checked["split"]) <= set(SPLITS) and (checked["split"] != "").all()
    assert checked.groupby("patient_id")["split"].nunique().max() == 1
    volumes = checked["volume_ml"].astype(float).tolist()
    assert volumes[:3] == pytest.approx([PROSTATE_ML] * 3, rel=1e-9)
    assert volumes[3] == 42.5
    assert not list(out.parent.glob(".*tmp"))  # no temp file left behind


def test_given_splits_are_kept_and_a_case_without_prostate_keeps_empty_volume(cohort, tmp_path):
    manifest, rows = cohort
    for row, split in zip(rows, ["test", "val", "train", "train"]):
        row["split"] = split
    rows[0]["prostate"] = ""
    write_manifest(manifest, rows)
    checked = write_checked(manifest, tmp_path / "out.csv", **SPLIT)
    assert checked["split"].tolist() == ["test", "val", "train", "train"]
    assert checked.at[0, "volume_ml"] == ""


def test_absolute_paths_in_the_manifest_are_accepted(cohort):
    manifest, rows = cohort
    for i, row in enumerate(rows):
        row["t2w"] = str(case_file(manifest, rows, i, "t2w"))
    write_manifest(manifest, rows)
    assert check_manifest(manifest) == []


# --- one test per class of bad input ---------------------------------------------------------------------------

def test_missing_file(cohort):
    manifest, rows = cohort
    path = case_file(manifest, rows, 1, "adc")
    path.unlink()
    assert_names(only_problem(manifest), "risk_0001", path, "column adc", "file not found")


def test_unreadable_file(cohort):
    manifest, rows = cohort
    path = case_file(manifest, rows, 2, "t2w")
    path.write_bytes(b"this is not an image \x00\x01\x02" * 20)
    assert_names(only_problem(manifest), "risk_0002", path, "column t2w", "unreadable")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"array": np.ones((4, 8, 9), np.uint8)}, ["size 9x8x4 vs 8x8x4"]),
        ({"spacing": (2.0, 2.0, 3.0)}, ["spacing 2.0x2.0x3.0 vs 0.5x0.5x3.0 mm"]),
        ({"origin": (0.0, 5.0, 0.0)}, ["origin (0.0, 5.0, 0.0) vs (0.0, 0.0, 0.0) mm"]),
        ({"direction": (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, ["direction"]),
    ],
    ids=["size", "spacing", "origin", "direction"],
)
def test_mask_geometry_mismatch(cohort, change, words):
    manifest, rows = cohort
    path = case_file(manifest, rows, 0, "prostate")
    write_image(path, change.pop("array", mask()), **change)
    assert_names(only_problem(manifest), "risk_0000", path, "column prostate", "geometry differs from t2w", *words)


def test_geometry_within_tolerance_passes(cohort):
    manifest, rows = cohort
    write_image(case_file(manifest, rows, 0, "prostate"), mask(), spacing=(0.50001, 0.5, 3.0), origin=(1e-5, 0, 0))
    assert check_manifest(manifest) == []


def test_channel_without_physical_overlap(cohort):
    manifest, rows = cohort
    path = case_file(manifest, rows, 3, "adc")
    write_image(path, np.ones((4, 4, 4), np.float32), spacing=(1.0, 1.0, 3.0), origin=(500.0, 0.0, 0.0))
    assert_names(only_problem(manifest), "risk_0003", path, "column adc", "does not overlap t2w")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])  # ITK 5 reads NIfTI NaN/Inf as 0: raw bytes are checked
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (-np.inf, "Inf")])
def test_non_finite_image(cohort, bad, word, suffix):
    manifest, rows = cohort
    path = case_file(manifest, rows, 1, "t2w").with_name("bad" + suffix)
    rows[1]["t2w"] = str(path)
    write_manifest(manifest, rows)
    array = np.ones(SHAPE, np.float32)
    array[2, 3, 4] = bad
    write_image(path, array)
    assert_names(only_problem(manifest), "risk_0001", path, "column t2w", f"contains {word} (1 voxel)")


@pytest.mark.parametrize("column", ["prostate", "zones"])
def test_empty_mask(cohort, column):
    manifest, rows = cohort
    path = case_file(manifest, rows, 2, column)
    write_image(path, np.zeros(SHAPE, np.uint8))
    assert_names(only_problem(manifest), "risk_0002", path, f"column {column}", "empty mask")


def test_non_binary_mask(cohort):
    manifest, rows = cohort
    path = case_file(manifest, rows, 1, "lesion")
    array = mask()
    array[1, 2, 2] = 2
    write_image(path, array)
    assert_names(only_problem(manifest), "risk_0001", path, "column lesion", "non-binary", "values outside {0, 1}: 2")


def test_zones_label_out_of_range(cohort):
    manifest, rows = cohort
    path = case_file(manifest, rows, 0, "zones")
    write_image(path, mask(9))
    assert_names(only_problem(manifest), "risk_0000", path, "column zones", "zone labels outside 0-8: 9")


@pytest.mark.parametrize(
    "column, value, words",
    [
        ("pirads", "7", ["pirads 7 out of range 2-5"]),
        ("pirads", "high", ["not an integer"]),
        ("sector", "20", ["sector 20 out of range 0-19"]),
        ("volume_ml", "0", ["volume_ml 0", "> 0"]),
        ("tr", "long", ["tr 'long' is not a number"]),
    ],
    ids=["pirads", "pirads-text", "sector", "volume", "tr"],
)
def test_label_out_of_range(cohort, column, value, words):
    manifest, rows = cohort
    rows[3][column] = value
    write_manifest(manifest, rows)
    assert_names(only_problem(manifest), "risk_0003", None, f"column {column}", *words)


def test_duplicate_case_id(cohort):
    manifest, rows = cohort
    rows[2]["case_id"] = "risk_0001"
    write_manifest(manifest, rows)
    assert_names(only_problem(manifest), "risk_0001", None, "duplicate case_id", "lines 3, 4")


def test_patient_in_two_splits(cohort):
    manifest, rows = cohort
    for row, split in zip(rows, ["train", "train", "train", "test"]):
        row["split"] = split
    rows[3]["patient_id"] = "P1"
    write_manifest(manifest, rows)
    text = str(only_problem(manifest))
    assert "patient P1 is in 2 splits" in text
    assert "risk_0001 in train" in text and "risk_0003 in test" in text


def test_invalid_and_partly_empty_split(cohort):
    manifest, rows = cohort
    rows[0]["split"] = "training"
    write_manifest(manifest, rows)
    problems = [str(p) for p in check_manifest(manifest)]
    assert any("case risk_0000" in p and "invalid split 'training'" in p for p in problems)
    assert sum("split is empty while other rows have one" in p for p in problems) == 3


@pytest.mark.parametrize("column", ["pirads", "case_id"])
def test_missing_required_column(cohort, column):
    manifest, rows = cohort
    for row in rows:
        del row[column]
    write_manifest(manifest, rows)
    problem = only_problem(manifest)  # reported once for the file, not again for every row
    assert problem.column == column and problem.file == str(manifest)
    assert f"missing required column '{column}'" in str(problem)


def test_unknown_column(cohort):
    manifest, rows = cohort
    for row in rows:
        row["gleason"] = "7"
    write_manifest(manifest, rows)
    problem = only_problem(manifest)
    assert "unknown column 'gleason'" in str(problem) and str(manifest) in str(problem)


def test_required_value_empty(cohort):
    manifest, rows = cohort
    rows[1]["t2w"] = ""
    rows[2]["dwi"] = ""
    write_manifest(manifest, rows)
    assert_names(only_problem(manifest), "risk_0001", None, "column t2w", "required value is empty")
    problems = [str(p) for p in check_manifest(manifest, require={"dwi": True, "t2w": False})]
    assert len(problems) == 2 and "case risk_0002, column dwi" in problems[1]


# --- all at once, nothing written ------------------------------------------------------------------------------

def test_problems_of_several_cases_are_reported_at_once_and_nothing_is_written(cohort, tmp_path):
    manifest, rows = cohort
    missing = case_file(manifest, rows, 0, "dwi")
    missing.unlink()
    nan_image = case_file(manifest, rows, 3, "adc")
    write_image(nan_image, np.full((4, 4, 4), np.nan, np.float32), spacing=(1.0, 1.0, 3.0))
    rows[3]["sector"] = "-1"
    write_manifest(manifest, rows)
    out = tmp_path / "results" / "risk.csv"
    with pytest.raises(ManifestError) as raised:
        write_checked(manifest, out, **SPLIT)
    problems = raised.value.problems
    assert len(problems) == 3
    message = str(raised.value)
    assert message.startswith(f"3 problems in manifest {manifest}:")
    assert f"case risk_0000, column dwi, file {missing}: file not found" in message
    assert f"case risk_0003, column adc, file {nan_image}: contains NaN (64 voxels)" in message
    assert "case risk_0003, column sector: sector -1 out of range 0-19" in message
    assert not out.exists() and not out.parent.exists()


def test_problem_string():
    message = "geometry differs from t2w (spacing 2.0x2.0x3.0 vs 0.5x0.5x3.0 mm)"
    problem = Problem("risk_0003", "adc", "/x/y.nii.gz", message)
    assert str(problem) == f"case risk_0003, column adc, file /x/y.nii.gz: {message}"
    assert str(Problem(None, None, None, "no cases")) == "no cases"


# --- command line ----------------------------------------------------------------------------------------------

def params(**extra):
    return json.dumps({**SPLIT, "stratify_by": "pirads", "require": {"t2w": True}, **extra})


def test_cli_writes_checked_manifest(cohort, tmp_path, caplog):
    manifest, _ = cohort
    out = tmp_path / "checked.csv"
    caplog.set_level(logging.INFO, logger="taskalign")
    assert cli_main(["--manifest", str(manifest), "--out", str(out), "--params", params()]) == 0
    assert len(pd.read_csv(out)) == 4
    assert "4 cases checked" in caplog.text and "train " in caplog.text


def test_cli_exits_1_and_prints_every_problem(cohort, tmp_path):
    manifest, rows = cohort
    case_file(manifest, rows, 1, "t2w").unlink()
    rows[2]["pirads"] = "9"
    write_manifest(manifest, rows)
    out = tmp_path / "checked.csv"
    run = subprocess.run(
        [sys.executable, "-m", "taskalign.cli.check_manifest", "--manifest", str(manifest), "--out", str(out),
         "--params", params()],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1
    assert "2 problems" in run.stderr
    assert "case risk_0001, column t2w" in run.stderr and "file not found" in run.stderr
    assert "case risk_0002, column pirads: pirads 9 out of range 2-5" in run.stderr
    assert not out.exists()


def test_cli_rejects_unknown_params_key(cohort, tmp_path, capsys):
    manifest, _ = cohort
    code = cli_main(["--manifest", str(manifest), "--out", str(tmp_path / "o.csv"), "--params", params(colour="red")])
    assert code == 2
    assert "colour" in capsys.readouterr().err
