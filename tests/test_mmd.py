"""MMD against closed forms, the kernel convention against scikit-learn, the saturation diagnostic, the paired
estimators (jackknife, sign-flip test) and the all-models distance job with the RPG correlations."""

from __future__ import annotations

import itertools
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import rbf_kernel

from taskalign.tasks.spec import Task
from taskalign.analysis.distances import (CORRELATION_COLUMNS, all_distances, rpg_correlations, rpg_rows,
                                          rpg_table)
from taskalign.analysis.feature_files import write_features
from taskalign.analysis.mmd import (is_saturated, jackknife_se, median_sigma, mmd2, normalise,
                                    paired_gram, paired_mmd2, paired_mmd_test, saturation)

SQUARE_X = [[0.0, 0.0], [1.0, 0.0]]
SQUARE_Y = [[0.0, 1.0], [1.0, 1.0]]


def test_two_single_points():
    assert mmd2([[0.0]], [[1.0]], sigma=1.0) == pytest.approx(2 - 2 * math.exp(-1), abs=1e-12)
    assert mmd2([[0.0]], [[1.0]], sigma=1.0) == pytest.approx(1.264241, abs=1e-6)


def test_unit_square_closed_forms():
    assert mmd2(SQUARE_X, SQUARE_Y, 1.0, "biased") == pytest.approx(0.864665, abs=1e-6)
    assert mmd2(SQUARE_X, SQUARE_Y, 1.0, "unbiased") == pytest.approx(math.exp(-1) - math.exp(-2), abs=1e-12)


def test_identical_sets():
    grid = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
    assert mmd2(grid, grid.copy(), 1.5) == 0.0
    x = np.random.default_rng(0).normal(size=(40, 16))
    # The two-sample U-statistic is not 0 for identical sets: -(2/n)(1 - mean off-diagonal k).
    k = rbf_kernel(x, x, gamma=1 / 3.0**2)
    off = (k.sum() - len(x)) / (len(x) * (len(x) - 1))
    assert mmd2(x, x, 3.0, "unbiased") == pytest.approx(-2 / len(x) * (1 - off), abs=1e-12)
    # The paired forms are exactly 0: every case's two encodings coincide.
    result = paired_mmd_test(x, x.copy(), 3.0, n_perm=50)
    assert result["unbiased"] == pytest.approx(0, abs=1e-12) and result["biased"] == pytest.approx(0, abs=1e-12)
    assert result["p_value"] == 1.0


def test_kernel_convention_matches_sklearn():
    """mmd2's kernel is k = exp(-||a - b||^2 / sigma^2): the biased MMD^2 from sklearn's RBF kernel matrices."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    for sigma in (0.7, 1.0, 3.0):
        k = lambda u, v: rbf_kernel(u, v, gamma=1 / sigma**2)
        expected = k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()
        assert mmd2(a, b, sigma) == pytest.approx(expected, abs=1e-12)


def test_normalise():
    x = np.random.default_rng(2).normal(size=(30, 8)) * 4 + 1
    x[0] = 0.0
    l2 = normalise(x)
    np.testing.assert_allclose(np.linalg.norm(l2[1:], axis=1), 1.0)
    assert np.all(l2[0] == 0)
    raw = normalise(x, "none")
    np.testing.assert_array_equal(raw, x)
    assert raw is not x
    for gone in ("zscore", "l1"):  # a per-set z-score erased the shifts MMD should see
        with pytest.raises(ValueError):
            normalise(x, gone)


def test_paired_estimators_by_brute_force():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 4)) + 0.3
    g = paired_gram(x, y, 2.0)
    assert paired_mmd2(g, "biased") == pytest.approx(mmd2(x, y, 2.0, "biased"), abs=1e-12)
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / 4.0)  # noqa: E731
    pairs = [(i, j) for i, j in itertools.product(range(9), repeat=2) if i != j]
    brute = np.mean([k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i]) for i, j in pairs])
    assert paired_mmd2(g, "unbiased") == pytest.approx(brute, abs=1e-12)
    for estimator in ("biased", "unbiased"):
        left_out = np.array([paired_mmd2(paired_gram(np.delete(x, i, 0), np.delete(y, i, 0), 2.0), estimator)
                             for i in range(9)])
        expected = math.sqrt(8 / 9 * np.sum((left_out - left_out.mean()) ** 2))
        assert jackknife_se(g, estimator) == pytest.approx(expected, rel=1e-10)


def test_biased_bias_and_unbiased_centre_at_n113():
    """001's biased MMD^2 of two samples of one distribution sits near 2/N (1 - E k) = 0.015 (normalised 768-d
    features, sigma 1); the unbiased one is within 3 jackknife standard errors of 0."""
    rng = np.random.default_rng(6)
    biased, unbiased = [], []
    for _ in range(20):
        x, y = normalise(rng.normal(size=(113, 768))), normalise(rng.normal(size=(113, 768)))
        result = paired_mmd_test(x, y, 1.0, n_perm=0)
        assert abs(result["unbiased"]) < 3 * result["se_unbiased"]
        biased.append(result["biased"])
        unbiased.append(result["unbiased"])
    assert np.mean(biased) == pytest.approx(2 / 113 * (1 - math.exp(-2)), rel=0.05)
    assert np.mean(biased) > 0.014 and abs(np.mean(unbiased)) < 3 * np.std(unbiased) / math.sqrt(20)


def test_saturation_on_raw_embeddings(caplog):
    n, d = 148, 768
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
    ratio = saturation(x, y, 1.0)
    assert ratio > 1000 and is_saturated(ratio)
    assert mmd2(x, y, 1.0) == pytest.approx(2 / n, rel=1e-12)
    logger = logging.getLogger("test_mmd.saturation")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        result = paired_mmd_test(x, y, 1.0, n_perm=20, seed=0, logger=logger)
    assert result["saturated"] and result["median_d2_over_sigma2"] == pytest.approx(ratio)
    assert any("saturated" in r.getMessage() and r.name == logger.name for r in caplog.records)
    xn, yn = normalise(x), normalise(y)
    assert not is_saturated(saturation(xn, yn, 1.0))
    assert is_saturated(saturation(xn, yn, 1e4))  # sigma far too wide: every kernel value ~1


def test_sign_flip_test_respects_pairing():
    rng = np.random.default_rng(4)
    case = rng.normal(size=(60, 10))
    # each case's two encodings share the case's own component: dependent pairs, one distribution
    x, same = case + 0.3 * rng.normal(size=(60, 10)), case + 0.3 * rng.normal(size=(60, 10))
    null_same = rng.normal(size=(60, 10))
    shifted = case + 0.3 * rng.normal(size=(60, 10)) + 0.3  # a small shift the pairing makes visible
    sigma = median_sigma(x, shifted)
    assert paired_mmd_test(x, shifted, sigma, 199)["p_value"] < 0.05
    for y in (same, null_same):
        assert paired_mmd_test(x, y, sigma, 199)["p_value"] > 0.05
    assert paired_mmd_test(x, shifted, sigma, 199, seed=1) == paired_mmd_test(x, shifted, sigma, 199, seed=1)


def test_median_sigma_known_set():
    assert median_sigma([[0.0], [1.0]], [[3.0]]) == pytest.approx(2.0)
    assert median_sigma(SQUARE_X, SQUARE_Y) == pytest.approx(1.0)


# --- the all-models job and RPG --------------------------------------------------------------------------------

TASKS = {"pirads_cls": 0.1, "lesion_seg": 0.4, "zone_seg": 0.8}  # how far fine-tuning moves the features
SEEDS = [0, 1]


def _write(path, values, n_extra=0):
    ids = [f"c{i:03d}" for i in range(len(values))]
    cases = pd.DataFrame({"case_id": ids, "patient_id": ids, "split": ["test"] * len(values)})
    # reversed rows: the job must pair by case id, not by position
    write_features(path, cases.iloc[::-1], {"final": values[::-1], "block3": values[::-1]})
    return str(path)


@pytest.fixture(scope="module")
def distances_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("feats")
    rng = np.random.default_rng(0)
    n, d = 30, 16
    random = _write(root / "random.npz", rng.normal(size=(n, d)))
    inputs = {}
    for model in ("pretrained:mae/frozen", "pretrained:multitask/partial:2"):
        inputs[model] = {}
        for task, move in TASKS.items():
            pre = rng.normal(size=(n, d)) + 2.0
            pre_path = _write(root / f"{model[11:14]}_{task}_pre.npz", pre)
            ft = [pre_path if model.endswith("frozen") else
                  _write(root / f"{model[11:14]}_{task}_ft{s}.npz", pre + move * rng.normal(size=(n, d)) + move)
                  for s in SEEDS]
            scratch = [_write(root / f"{model[11:14]}_{task}_sc{s}.npz", rng.normal(size=(n, d))) for s in SEEDS]
            inputs[model][task] = {"random": random, "pretrained": pre_path, "finetuned": ft, "scratch": scratch,
                                   "seeds": SEEDS}
    return inputs


SETTINGS = {"splits": ["test"], "layer": "final", "normalise": "l2", "sigma": "median", "permutations": 99,
            "seed": 0}


def test_all_distances_one_sigma_and_frozen_d2p(distances_inputs):
    table = all_distances(distances_inputs, SETTINGS)
    assert table["sigma"].nunique() == 1
    assert set(table["model"]) == set(distances_inputs) and set(table["estimator"]) == {"unbiased", "biased"}
    assert len(table) == 2 * 3 * 2 * 3 * 2 and (table["n_cases"] == 30).all()
    frozen_d2p = table[(table["model"] == "pretrained:mae/frozen") & (table["distance"] == "d2p")]
    assert np.allclose(frozen_d2p["value"], 0, atol=1e-12) and (frozen_d2p["p_value"] == 1).all()
    moved = table[(table["model"] != "pretrained:mae/frozen") & (table["distance"] == "d2p")
                  & (table["estimator"] == "unbiased")].groupby("task")["value"].mean()
    assert moved["pirads_cls"] < moved["lesion_seg"] < moved["zone_seg"]


def compared(labels) -> list[list[str]]:
    """The compared models as the plan gives them: [label, init, protocol] (labels here are <init>/<protocol>)."""
    return [[label, *label.rsplit("/", 1)] for label in labels]


def _metrics(models) -> pd.DataFrame:
    rows = []
    for task, move in TASKS.items():
        metric = "spec_at_sens90" if task == "pirads_cls" else "dice"
        for init, protocol, score in [("random", "frozen", 0.3), ("specialist", "full", 0.5)] + [
                (init, protocol, 0.6 - 0.2 * move) for _, init, protocol in models]:
            for seed in SEEDS:
                value = score + 0.01 * seed
                rows.append({"task": task, "init": init, "protocol": protocol, "seed": seed, "metric": metric,
                             "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05,
                             "primary": task != "pirads_cls"})
                if task == "pirads_cls":  # the primary AUC must not enter RPG
                    rows.append({**rows[-1], "metric": "auc", "value": 0.99, "primary": True})
    return pd.DataFrame(rows)


def test_rpg_per_model_with_bootstrap(distances_inputs):
    distances = all_distances(distances_inputs, SETTINGS)
    models = compared(distances_inputs)
    tasks = {t: Task.from_config(t, {"type": t, "cohort": "x", "inputs": ["t2w"]}) for t in TASKS}
    entries = rpg_rows(_metrics(models), distances, models, tasks)
    table = rpg_table(entries)
    assert len(table) == 2 * 3 * 2
    pirads = table[(table["task"] == "pirads_cls") & (table["reference"] == "random")].iloc[0]
    assert pirads["metric"] == "spec_at_sens90" and pirads["p_finetuned"] == pytest.approx(0.585)
    assert pirads["rpg"] == pytest.approx((0.585 - 0.305) / 0.305 * 100)
    assert {"d2p", "d2p_biased"} <= set(table.columns)
    corr = rpg_correlations(entries, n_boot=50, seed=0)
    assert list(corr.columns) == CORRELATION_COLUMNS and len(corr) == 2 * 2 * 3 * 2
    row = corr[(corr["model"] == "pretrained:multitask/partial:2") & (corr["reference"] == "random")
               & (corr["distance"] == "d2p") & (corr["estimator"] == "unbiased")].iloc[0]
    assert row["pearson_r"] < -0.9 and row["pearson_ci_low"] <= row["pearson_ci_high"]
    frozen = corr[(corr["model"] == "pretrained:mae/frozen") & (corr["distance"] == "d2p")]
    assert frozen["pearson_r"].isna().all()  # D2P is 0 for every task of a frozen encoder


def test_mmd_and_rpg_cli(distances_inputs, tmp_path):
    import json

    from taskalign.cli import mmd as mmd_cli
    from taskalign.cli import rpg as rpg_cli

    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(distances_inputs))
    out = tmp_path / "mmd.csv"
    assert mmd_cli.main(["--inputs", str(inputs), "--settings", json.dumps(SETTINGS), "--out", str(out)]) == 0
    distances = pd.read_csv(out)
    assert list(distances.columns[:8]) == ["model", "task", "seed", "distance", "reference", "estimator", "value", "se"]
    metrics = tmp_path / "metrics.csv"
    _metrics(compared(distances_inputs)).to_csv(metrics, index=False)
    tasks = json.dumps({t: {"type": t, "cohort": "x", "inputs": ["t2w"]} for t in TASKS})
    args = ["--metrics", str(metrics), "--distances", str(out), "--models", json.dumps(compared(distances_inputs)),
            "--tasks", tasks,
            "--bootstrap", "20",
            "--rpg", str(tmp_path / "rpg.csv"), "--correlations", str(tmp_path / "corr.csv")]
    assert rpg_cli.main(args) == 0
    assert list(pd.read_csv(tmp_path / "corr.csv").columns) == CORRELATION_COLUMNS
    assert set(pd.read_csv(tmp_path / "rpg.csv")["model"]) == set(distances_inputs)


def test_a_model_of_another_family_has_d2p_and_no_cross_family_distances(distances_inputs, tmp_path):
    """A compared model of another encoder family (features of another width than the vit3d random-weight and
    scratch references): D2R and D2S are NaN, D2P is measured, and RPG, its correlations and Fig. 2 still come out."""
    from taskalign.report import figures

    rng = np.random.default_rng(1)
    inputs = {"pretrained:mae/frozen": distances_inputs["pretrained:mae/frozen"], "pretrained:convnext/full": {}}
    for task, move in TASKS.items():
        pre = rng.normal(size=(30, 8)) + 1.0
        ft = [_write(tmp_path / f"cnx_{task}_ft{s}.npz", pre + move * rng.normal(size=(30, 8))) for s in SEEDS]
        inputs["pretrained:convnext/full"][task] = {**distances_inputs["pretrained:mae/frozen"][task], "finetuned": ft,
                                                    "pretrained": _write(tmp_path / f"cnx_{task}_pre.npz", pre)}
    with pytest.raises(ValueError, match=r"sigma median pools every feature set, but their widths differ \(\[8, 16\]"):
        all_distances(inputs, SETTINGS)
    distances = all_distances(inputs, {**SETTINGS, "sigma": 1.0})
    other = distances[distances["model"] == "pretrained:convnext/full"]
    assert other.loc[other["distance"] != "d2p", "value"].isna().all()
    assert np.isfinite(other.loc[other["distance"] == "d2p", "value"]).all()
    models = compared(inputs)
    tasks = {t: Task.from_config(t, {"type": t, "cohort": "x", "inputs": ["t2w"]}) for t in TASKS}
    entries = rpg_rows(_metrics(models), distances, models, tasks)
    table = rpg_table(entries)
    assert np.isfinite(table.loc[table["model"] == "pretrained:convnext/full", "rpg"]).all()
    corr = rpg_correlations(entries, n_boot=20, seed=0)
    cnx = corr[corr["model"] == "pretrained:convnext/full"]
    assert cnx.loc[cnx["distance"] != "d2p", "pearson_r"].isna().all()
    assert np.isfinite(cnx.loc[cnx["distance"] == "d2p", "pearson_r"]).all()
    figures.rpg_vs_distance(table, corr[corr["estimator"] == "unbiased"], tmp_path / "fig2", "footer")
    assert (tmp_path / "fig2.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_of_another_architecture_at_the_same_width_has_no_d2r_or_d2s(distances_inputs, tmp_path):
    """ProFound's ConvNeXt V2 and a ViT-B both end in 768-d features: equal widths must not make a distance between
    two architectures' spaces. The plan marks such a model (own_references false): D2R and D2S are NaN, D2P is
    measured; the same features marked as the references' architecture get all three."""
    rng = np.random.default_rng(2)
    base = distances_inputs["pretrained:mae/frozen"]
    width = np.load(base[next(iter(TASKS))]["random"])["final"].shape[1]
    inputs = {"pretrained:cnx/full": {}}
    for task, move in TASKS.items():
        pre = rng.normal(size=(30, width)) + 1.0
        ft = [_write(tmp_path / f"same_{task}_ft{s}.npz", pre + move * rng.normal(size=(30, width))) for s in SEEDS]
        inputs["pretrained:cnx/full"][task] = {**base[task], "finetuned": ft, "own_references": False,
                                               "pretrained": _write(tmp_path / f"same_{task}_pre.npz", pre)}
    other = all_distances(inputs, {**SETTINGS, "sigma": 1.0})
    assert other.loc[other["distance"] != "d2p", "value"].isna().all()
    assert np.isfinite(other.loc[other["distance"] == "d2p", "value"]).all()
    for files in inputs["pretrained:cnx/full"].values():
        files["own_references"] = True
    assert np.isfinite(all_distances(inputs, {**SETTINGS, "sigma": 1.0})["value"]).all()
