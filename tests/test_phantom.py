"""The built-in phantom: determinism, manifest contract, and physics that a model could learn from."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from taskalign.data import phantom as P
from taskalign.data.labels import MANIFEST_COLUMNS, MASK_COLUMNS, N_SECTORS, ZONE_LABELS

TINY = {"matrix": [32, 32], "dwi_matrix": [16, 16], "slices": [6, 8], "slice_thickness_mm": [5.0, 6.0]}
SPLITS = {"train": 2, "val": 1, "test": 1}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """risk cohort written four ways: seed 0 twice, seed 1, seed 0 with two workers; plus one case alone."""
    root = tmp_path_factory.mktemp("phantom")
    runs = {"a": (0, 1, SPLITS), "b": (0, 1, SPLITS), "seed1": (1, 1, SPLITS), "workers2": (0, 2, SPLITS),
            "one": (0, 1, {"train": 1})}
    for name, (seed, workers, splits) in runs.items():
        manifest = P.write_cohort("risk", splits, TINY, seed, root / name, workers=workers)
        assert manifest == root / name / "manifest.csv"
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def rendered() -> list[tuple[P.CasePlan, P.CaseImages]]:
    """A few cases at the default matrix, in memory (physics checks)."""
    return [(plan, P.render_case(plan)) for plan in (P.plan_case("risk", i, "train", 0, {}) for i in range(6))]


# --- determinism -------------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(cohorts):
    a, b = files(cohorts["a"]), files(cohorts["b"])
    assert set(a) == set(b) and len(a) == 2 + 4 * 7
    assert [name for name in a if a[name] != b[name]] == []


def test_different_seed_gives_different_files(cohorts):
    a, c = files(cohorts["a"]), files(cohorts["seed1"])
    assert set(a) == set(c)
    assert all(a[name] != c[name] for name in a if name.endswith(("t2w.nii.gz", "adc.nii.gz", "dwi.nii.gz")))
    assert a["manifest.csv"] != c["manifest.csv"]


def test_workers_do_not_change_output(cohorts):
    assert files(cohorts["a"]) == files(cohorts["workers2"])


def test_a_case_does_not_depend_on_cohort_size(cohorts):
    one, full = files(cohorts["one"]), files(cohorts["a"])
    cases = [name for name in one if name.startswith("cases/")]
    assert len(cases) == 7 and all(one[name] == full[name] for name in cases)


def test_gzip_has_no_timestamp(cohorts):
    data = (cohorts["a"] / "cases" / "risk_0000_t2w.nii.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # mtime field


# --- manifest contract -------------------------------------------------------------------------------------------
def test_manifest_follows_the_contract(cohorts):
    out = cohorts["a"]
    with open(out / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == MANIFEST_COLUMNS
    rows, truth = read_csv(out / "manifest.csv"), read_csv(out / "truth.csv")
    assert [r["case_id"] for r in rows] == [f"risk_{i:04d}" for i in range(4)]
    assert [r["patient_id"] for r in rows] == [f"risk_p{i:04d}" for i in range(4)]
    assert [r["split"] for r in rows] == ["train", "train", "val", "test"]
    assert [t["case_id"] for t in truth] == [r["case_id"] for r in rows]
    for row, t in zip(rows, truth):
        assert row["cohort"] == "risk" and row["volume_ml"] == ""
        for col in ("t2w", "adc", "dwi", *MASK_COLUMNS):
            assert not Path(row[col]).is_absolute() and (out / row[col]).is_file()
        assert 2 <= int(row["pirads"]) <= 5
        assert (row["sector"] == "") == (int(t["n_lesions"]) == 0)
        if row["sector"]:
            assert 0 <= int(row["sector"]) < N_SECTORS
        assert 3000 <= float(row["tr"]) <= 6500 and 90 <= float(row["te"]) <= 120
        assert 120 <= float(row["flip_angle"]) <= 160
        assert float(row["field_strength"]) in (1.5, 3.0) and row["vendor"] in P.VENDORS


def test_unlabelled_cohort_has_images_and_metadata_only(tmp_path):
    # any name: `labelled` in config says it, not the name "corpus"
    P.write_cohort("pool", {"train": 2, "val": 0, "test": 0}, TINY, 0, tmp_path, labelled=False)
    rows = read_csv(tmp_path / "manifest.csv")
    assert len(rows) == 2
    for row in rows:
        assert all(row[col] == "" for col in (*MASK_COLUMNS, "pirads", "sector", "volume_ml"))
        assert all(row[col] for col in ("t2w", "adc", "dwi", "tr", "te", "flip_angle", "field_strength", "vendor"))
    assert sorted(p.name.split("_", 2)[2] for p in (tmp_path / "cases").iterdir()) == \
        sorted(["t2w.nii.gz", "adc.nii.gz", "dwi.nii.gz"] * 2)


def test_cohort_cli_passes_labelled(tmp_path):
    from taskalign.cli.cohort import main

    params = {"phantom": {**TINY, "seed": 0}, "splits": {"train": 1, "val": 0, "test": 0}, "labelled": False}
    assert main(["--cohort", "corpus", "--manifest", str(tmp_path / "manifest.csv"), "--params",
                 json.dumps(params)]) == 0
    assert read_csv(tmp_path / "manifest.csv")[0]["prostate"] == ""
    del params["labelled"]  # default: labelled, whatever the name
    assert main(["--cohort", "corpus", "--manifest", str(tmp_path / "manifest.csv"), "--params",
                 json.dumps(params)]) == 0
    assert read_csv(tmp_path / "manifest.csv")[0]["prostate"] != ""


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        P.write_cohort("risk", {"train": 1}, {"seed": 0}, 0, tmp_path)
    with pytest.raises(ValueError, match="split"):
        P.write_cohort("risk", {"training": 1}, TINY, 0, tmp_path)


# --- geometry ----------------------------------------------------------------------------------------------------
def test_prostate_mask_volume_matches_analytic_ellipsoid(tmp_path):
    fine = {"matrix": [100, 100], "fov_mm": [100, 100], "slices": [4, 4], "slice_thickness_mm": [1.0, 1.0],
            "dwi_matrix": [20, 20], "gland_volume_ml": [20, 50]}
    P.write_cohort("ucl", {"test": 2}, fine, 3, tmp_path)
    for row, t in zip(read_csv(tmp_path / "manifest.csv"), read_csv(tmp_path / "truth.csv")):
        mask = sitk.ReadImage(str(tmp_path / row["prostate"]))
        volume = sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing()) / 1000.0
        assert volume == pytest.approx(float(t["gland_volume_ml"]), rel=0.02)


def test_pose_is_in_the_header_and_anatomy_is_in_world_space(cohorts):
    """Different cases have different poses, yet the prostate mask sits at the analytic gland centre."""
    out = cohorts["a"]
    directions = []
    for row, t in zip(read_csv(out / "manifest.csv"), read_csv(out / "truth.csv")):
        t2w, mask = sitk.ReadImage(str(out / row["t2w"])), sitk.ReadImage(str(out / row["prostate"]))
        adc = sitk.ReadImage(str(out / row["adc"]))
        assert mask.GetSize() == t2w.GetSize() and np.allclose(mask.GetOrigin(), t2w.GetOrigin(), atol=1e-3)
        assert np.allclose(adc.GetDirection(), t2w.GetDirection(), atol=1e-5)
        assert np.allclose(np.array(adc.GetSize()[:2]) * adc.GetSpacing()[:2],
                           np.array(t2w.GetSize()[:2]) * t2w.GetSpacing()[:2])
        directions.append(np.array(t2w.GetDirection()))
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].mean(axis=0)  # (i, j, k)
        centroid = mask.TransformContinuousIndexToPhysicalPoint(idx.tolist())
        expected = [float(x) for x in t["gland_centre_mm"].split(";")]
        assert np.allclose(centroid, expected, atol=2.5)  # voxels are 4.4 x 4.4 x 5-6 mm here
    assert not np.allclose(directions[0], np.eye(3).ravel(), atol=1e-3)
    assert not np.allclose(directions[0], directions[1], atol=1e-3)


def test_all_eight_zone_labels_present(rendered):
    plan, img = rendered[0]
    assert set(np.unique(img.zones)) == {0, *ZONE_LABELS.values()}
    assert np.array_equal(img.prostate, np.isin(img.zones, [ZONE_LABELS["tz"], ZONE_LABELS["pz"]]))
    assert np.array_equal(img.rectum, img.zones == ZONE_LABELS["rectum"])
    assert not (img.lesion & ~img.prostate).any()


# --- labels ------------------------------------------------------------------------------------------------------
def test_labels_over_many_cases():
    plans = [P.plan_case("risk", i, "train", 7, {}) for i in range(300)]
    true = np.array([p.truth["pirads_true"] for p in plans])
    noisy = np.array([p.pirads for p in plans])
    n_lesions = np.array([p.truth["n_lesions"] for p in plans])
    assert set(true) == {2, 3, 4, 5} and set(noisy) <= {2, 3, 4, 5}
    assert np.array_equal(true == 2, n_lesions == 0)
    assert np.all(np.abs(noisy - true) <= 1) and 0.05 <= np.mean(noisy != true) <= 0.16
    sectors = [p.sector for p in plans]
    assert all((s is None) == (n == 0) for s, n in zip(sectors, n_lesions))
    assert all(0 <= s < N_SECTORS for s in sectors if s is not None)
    assert len({s for s in sectors if s is not None}) >= 15
    clean = [P.plan_case("risk", i, "train", 7, {"label_noise": 0.0}) for i in range(50)]
    assert all(p.pirads == p.truth["pirads_true"] for p in clean)


def test_lesion_score_rules():
    assert P.lesion_score(20.0, 0.5) == 5
    assert P.lesion_score(12.0, 0.5) == 4
    assert P.lesion_score(6.0, 0.5) == 3  # small
    assert P.lesion_score(20.0, 0.1) == 3  # faint


# --- physics -----------------------------------------------------------------------------------------------------
def test_spin_echo_contrast_follows_the_equation():
    pd, t1, t2 = np.array([0.85, 0.8]), np.array([1700.0, 1600.0]), np.array([140.0, 90.0])  # PZ, TZ
    s = P.spin_echo_signal(pd, t1, t2, tr_ms=4000, te_ms=100, refocusing_deg=150)
    expected = pd * (1 - np.exp(-4000 / t1)) * np.exp(-100 / t2) * math.sin(math.radians(75)) ** 2
    assert np.allclose(s, expected)
    # longer TE: PZ/TZ ratio grows by exactly exp(-dTE (1/T2_pz - 1/T2_tz))
    s2 = P.spin_echo_signal(pd, t1, t2, tr_ms=4000, te_ms=120, refocusing_deg=150)
    assert (s2[0] / s2[1]) / (s[0] / s[1]) == pytest.approx(math.exp(-20 * (1 / 140 - 1 / 90)))
    assert s2[0] / s2[1] > s[0] / s[1]
    # longer TR: long-T1 urine gains on short-T1 fat
    urine_fat = lambda tr: np.divide(*P.spin_echo_signal([1.0, 0.9], [3500.0, 380.0], [1500.0, 130.0], tr, 100))
    assert urine_fat(6500) > urine_fat(3000)
    assert P.spin_echo_signal(1.0, 1000.0, 100.0, 4000, 100, 120) < P.spin_echo_signal(1.0, 1000.0, 100.0, 4000, 100)


def test_adc_fit_recovers_known_values():
    b = [50, 400, 800]
    adc = np.array([0.7e-3, 1.7e-3, 3.0e-3])
    signals = np.stack([P.diffusion_signal(np.array([2.0, 1.0, 0.5]), adc, bb) for bb in b])
    s0, fit = P.fit_adc(signals, b)
    assert np.allclose(fit, adc) and np.allclose(s0, [2.0, 1.0, 0.5])


def test_lesions_are_dark_on_adc(rendered):
    checked = 0
    for plan, img in rendered:
        if plan.truth["n_lesions"] == 0:
            continue
        adc = sitk.Resample(plan.dwi_grid.image(img.adc), plan.t2w_grid.image(img.t2w), sitk.Transform(),
                            sitk.sitkNearestNeighbor)
        adc = sitk.GetArrayFromImage(adc).astype(float)
        pz = (img.zones == ZONE_LABELS["pz"]) & ~img.lesion
        assert adc[img.lesion].mean() < adc[pz].mean()
        assert plan.truth["adc_index_lesion_true"] < plan.truth[f"adc_{plan.truth['index_lesion_zone']}_true"]
        checked += 1
    assert checked >= 2


def test_t2w_contrasts(rendered):
    for plan, img in rendered:
        t2w = img.t2w.astype(float)
        mean = lambda name: t2w[img.anatomy == P.C[name]].mean()
        assert mean("urine") > 2 * mean("obturator")  # bladder bright, muscle dark
        zone_mean = lambda name: t2w[img.zones == ZONE_LABELS[name]].mean()
        assert zone_mean("bladder") > zone_mean("obturator_internus")
        assert mean("pz") > mean("tz")
        if (img.anatomy == P.C["rectal_air"]).sum() >= 5:
            air = t2w[img.anatomy == P.C["rectal_air"]]
            for other in ("rectal_wall", "rectal_content"):
                tissue = t2w[img.anatomy == P.C[other]]
                assert air.mean() < 0.5 * tissue.mean() and np.median(air) < np.percentile(tissue, 10)


def test_default_case_is_fast(rendered):
    import time
    plan = P.plan_case("risk", 0, "train", 0, {})
    start = time.perf_counter()
    P.render_case(plan)
    assert time.perf_counter() - start < 1.0
