"""Paper tables against a hand-made results set whose means, best cells and paired-test outcomes are known."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from taskalign.analysis.stats import (correlation, patient_bootstrap_weights, procedure_interval, procedure_test,
                                      weighted_macro_auc)
from taskalign.report.tables import model as table_model
from taskalign.report.tables.ablation import OBJECTIVES, ablation_table
from taskalign.report.tables.cka import cka_supplementary_table, cka_table
from taskalign.report.tables.cohorts import cohort_table
from taskalign.report.tables.compute import compute_table
from taskalign.report.tables.lens import lens_table
from taskalign.report.tables.model import Table, provenance, write_table
from taskalign.report.tables.performance import Resampling, performance_table

# the analysed variant's inits, as the plan gives them (report settings "inits")
MAE_INITS = {"pretrained": "pretrained:mae", "continual": "continual:mae"}

BASE = ("pretrained:mae", "full")
PROV = {"config_hash": "abc123def456", "code_version": "v0.1-3-gdeadbee", "packages": {"python": "3.11"},
        "device": "cpu"}

# (init, protocol) -> {metric: per-seed values}; CIs are value -/+ HALF_CI[metric].
VALUES = {
    ("random", "frozen"): {"dice": [0.20, 0.24], "mse": [0.30, 0.34], "mae_ml": [9.0, 11.0]},
    ("scratch", "full"): {"dice": [0.40, 0.44], "mse": [0.10, 0.12], "mae_ml": [5.0, 7.0]},
    ("specialist", "full"): {"dice": [0.30], "mse": [0.20], "mae_ml": [8.0]},
    ("pretrained:mae", "full"): {"dice": [0.60, 0.62], "mse": [0.05, 0.07], "mae_ml": [4.0, 6.0]},
    ("pretrained:mae", "frozen"): {"dice": [0.50, 0.52], "mse": [0.20, 0.22], "mae_ml": [6.0, 6.0]},
    ("continual:mae", "full"): {"dice": [0.63, 0.65], "mse": [0.07, 0.09], "mae_ml": [3.0, 5.0]},
}
HALF_CI = {"dice": 0.05, "mse": 0.01, "mae_ml": 1.0}
TASK_OF = {"dice": "lesion_seg", "mse": "volume_reg", "mae_ml": "volume_reg"}
PRIMARY = {"dice", "mse"}


def _metrics() -> pd.DataFrame:
    rows = []
    for (init, protocol), by_metric in VALUES.items():
        for metric in ("mae_ml", "dice", "mse"):  # mae_ml first: the primary must still lead its task
            for seed, value in enumerate(by_metric[metric]):
                rows.append({"task": TASK_OF[metric], "init": init, "protocol": protocol, "seed": seed,
                             "metric": metric, "value": value, "ci_low": value - HALF_CI[metric],
                             "ci_high": value + HALF_CI[metric], "n_cases": 6, "n_patients": 6,
                             "primary": metric in PRIMARY})
    return pd.DataFrame(rows)


def _m(seed: int, k: int) -> int:
    """Rank 1..12 of case k in seed s: the magnitude of its paired difference."""
    return 1 + k + 6 * seed


def _lesion(seed: int, delta) -> pd.DataFrame:
    """Per-case Dice: the baseline's minus delta(m) (m = 1..12 over the two seeds, all |differences| distinct)."""
    ids = [f"promis_{k:04d}" for k in range(6)]
    dice = [0.5 + 0.02 * k + 0.01 * seed - delta(_m(seed, k)) for k in range(6)]
    return pd.DataFrame({"case_id": ids, "patient_id": ids, "cohort": "promis", "dice": dice})


def _volume(seed: int, extra) -> pd.DataFrame:
    """Per-case regression rows: standardised error 0.1 + extra(m); 10 mL per standardised unit."""
    ids = [f"ucl_{k:04d}" for k in range(6)]
    true_norm = np.array([-1.0 + 0.4 * k for k in range(6)])
    pred_norm = true_norm + np.array([0.1 + extra(_m(seed, k)) for k in range(6)])
    return pd.DataFrame({"case_id": ids, "patient_id": ids, "cohort": "ucl", "true_norm": true_norm,
                         "pred_norm": pred_norm, "true": 40 + 10 * true_norm, "pred": 40 + 10 * pred_norm})


def _cases() -> dict:
    none = lambda m: 0.0  # noqa: E731
    worse = lambda m: 0.01 * m  # noqa: E731  all 12 differences one way: exact two-sided p = 2/4096
    one_flip = lambda m: -0.01 * m if m == 4 else 0.01 * m  # noqa: E731  rank 4 flipped: p = 0.0034
    alternating = lambda m: 0.01 * m * (-1) ** m  # noqa: E731  W+ = 36, W- = 42: p = 0.85
    cases = {}
    for seed in (0, 1):
        cases[("lesion_seg", *BASE, seed)] = _lesion(seed, none)
        # Reversed row order: a positional instead of a case_id join would pair the wrong cases.
        cases[("lesion_seg", "scratch", "full", seed)] = _lesion(seed, worse).iloc[::-1]
        cases[("lesion_seg", "random", "frozen", seed)] = _lesion(seed, one_flip)
        cases[("lesion_seg", "continual:mae", "full", seed)] = _lesion(seed, alternating)
        cases[("volume_reg", *BASE, seed)] = _volume(seed, none)
        cases[("volume_reg", "scratch", "full", seed)] = _volume(seed, lambda m: 0.01 * m)
        cases[("volume_reg", "continual:mae", "full", seed)] = _volume(seed, lambda m: 0.001 * m * (-1) ** m)
    # Only seed 0 matched: 6 pairs all one way, p = 2/64 = 0.031.
    cases[("lesion_seg", "pretrained:mae", "frozen", 0)] = _lesion(0, worse)
    return cases


@pytest.fixture(scope="module")
def perf() -> Table:
    return performance_table(_metrics(), _cases(), ["lesion_seg", "volume_reg"], BASE,
                             {"mse", "mae_ml"}, resampling=Resampling(2000, 0))


def test_performance_layout_and_cells(perf):
    assert list(perf.cells.columns) == [("lesion_seg", "dice"), ("volume_reg", "mse"), ("volume_reg", "mae_ml")]
    assert list(perf.cells.index) == ["random", "scratch", "specialist", "pretrained:mae (full)",
                                      "pretrained:mae (frozen)", "continual:mae"]
    dice = perf.cells[("lesion_seg", "dice")]
    assert dice["random"].startswith("0.220 ± 0.028 [")
    assert dice["pretrained:mae (full)"].startswith("0.610 ± 0.014 [")
    assert dice["specialist"] == "0.300"  # one seed: no std; no cases: no interval
    assert perf.cells.loc["pretrained:mae (full)", ("volume_reg", "mse")].startswith("0.060 ± 0.014 [")
    assert perf.cells.loc["random", ("volume_reg", "mae_ml")] == "10.000 ± 1.414"  # no cases.csv for this run


def _scratch_dice_draws(bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed Dice of scratch on all cases (2,) and on each patient resample (2, B), by hand."""
    cases = _cases()
    frames = [cases[("lesion_seg", "scratch", "full", s)].set_index("case_id").sort_index() for s in (0, 1)]
    weights = patient_bootstrap_weights(frames[0]["patient_id"].to_numpy(), bootstrap, seed=seed)
    return (np.array([f["dice"].mean() for f in frames]),
            np.array([[np.average(f["dice"], weights=w) for w in weights] for f in frames]))


def test_performance_interval_is_the_procedure_mean_over_seeds_and_patients():
    """The interval of the training procedure's mean: seed mean ± sqrt(t_{S-1}^2 s^2/S + t_{n-1}^2 Var(patient-
    resampled seed mean)); not the mean of per-seed CI bounds (metrics.csv's ci_low/ci_high)."""
    table = performance_table(_metrics(), _cases(), ["lesion_seg"], BASE, set(), resampling=Resampling(200, 3))
    seeds, draws = _scratch_dice_draws(200, 3)
    v_seed, v_patient = seeds.var(ddof=1) / 2, draws.mean(axis=0).var(ddof=1)
    half = np.sqrt(st.t.ppf(0.975, 1) ** 2 * v_seed + st.t.ppf(0.975, 5) ** 2 * v_patient)
    raw = table.raw.set_index(["init", "protocol"]).loc[("scratch", "full")]
    assert (raw["lesion_seg/dice/ci_low"], raw["lesion_seg/dice/ci_high"]) == pytest.approx(
        (seeds.mean() - half, seeds.mean() + half))
    assert (raw["lesion_seg/dice/ci_low"], raw["lesion_seg/dice/ci_high"]) == pytest.approx(
        procedure_interval(seeds, draws.mean(axis=0), 6))
    assert raw["lesion_seg/dice/ci_low"] != pytest.approx(0.42 - HALF_CI["dice"])
    # one seed (specialist) or one seed with cases (pretrained frozen): no interval
    raw = table.raw.set_index(["init", "protocol"])
    assert np.isnan(raw.loc[("specialist", "full"), "lesion_seg/dice/ci_low"])
    assert np.isnan(raw.loc[("pretrained:mae", "frozen"), "lesion_seg/dice/ci_low"])


def test_performance_bold_is_best_per_column(perf):
    bold = perf.bold
    assert bold[("lesion_seg", "dice")].tolist() == [False, False, False, False, False, True]  # highest
    assert bold[("volume_reg", "mse")][lambda s: s].index.tolist() == ["pretrained:mae (full)"]  # lowest
    assert bold[("volume_reg", "mae_ml")][lambda s: s].index.tolist() == ["continual:mae"]


def test_performance_marks_test_procedures_over_seeds_and_patients(perf):
    """The mark's p is procedure_test of the per-seed values with the paired patient-bootstrap difference; runs
    with one seed (with cases) get none, and the caption names them and says why."""
    cases = _cases()
    frames = {run: [cases[("lesion_seg", *run, s)].set_index("case_id").sort_index() for s in (0, 1)]
              for run in (("scratch", "full"), BASE)}
    weights = patient_bootstrap_weights(frames[BASE][0]["patient_id"].to_numpy(), 2000, seed=0)
    per_seed = {run: np.array([f["dice"].mean() for f in fs]) for run, fs in frames.items()}
    mean_draws = {run: np.mean([[np.average(f["dice"], weights=w) for w in weights] for f in fs], axis=0)
                  for run, fs in frames.items()}
    expected, _ = procedure_test(per_seed[("scratch", "full")], per_seed[BASE],
                                 mean_draws[("scratch", "full")] - mean_draws[BASE], 6)
    raw = perf.raw.set_index(["init", "protocol"])
    assert raw.loc[("scratch", "full"), "lesion_seg/dice/p_value"] == pytest.approx(expected)
    assert raw.loc[("scratch", "full"), "lesion_seg/dice/test"].startswith("Welch-Satterthwaite t")
    for run in (BASE, ("specialist", "full"), ("pretrained:mae", "frozen")):
        assert np.isnan(raw.loc[run, "lesion_seg/dice/p_value"])
    assert "pretrained:mae (frozen), specialist: fewer than 2 training runs" in perf.caption
    assert "Unit of inference: the training procedure" in perf.caption


def test_procedure_mark_with_more_seeds():
    """Five seeds each, the other procedure better by 0.1 Dice on every patient with a seed spread of 0.01: marked
    ***; the same seeds with the difference removed: no mark."""
    rng = np.random.default_rng(4)
    ids = [f"c{k:02d}" for k in range(30)]
    base = rng.uniform(0.4, 0.8, 30)
    for gain, expected in ((0.1, "***"), (0.0, "")):
        cases, rows = {}, []
        for init, shift in (("pretrained:mae", 0.0), ("continual:mae", gain)):
            for seed in range(5):
                dice = base + shift + rng.normal(0, 0.01) + rng.normal(0, 0.005, 30)
                cases[("lesion_seg", init, "full", seed)] = pd.DataFrame({"case_id": ids, "patient_id": ids,
                                                                          "dice": dice})
                rows.append({"task": "lesion_seg", "init": init, "protocol": "full", "seed": seed, "metric": "dice",
                             "value": dice.mean(), "primary": True})
        table = performance_table(pd.DataFrame(rows), cases, ["lesion_seg"], BASE, set(), resampling=Resampling(300, 0))
        assert table.stars.loc["continual:mae", ("lesion_seg", "dice")] == expected


def _pirads(scores_ge3: np.ndarray) -> pd.DataFrame:
    """PI-RADS rows whose P(>=3) is split unevenly over classes 3 and 5, so the binarised score needs the sum."""
    true = np.array([2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5])
    s = np.asarray(scores_ge3, dtype=float)
    w = np.arange(len(true)) % 3 / 2
    ids = [f"risk_{k:04d}" for k in range(len(true))]
    return pd.DataFrame({"case_id": ids, "patient_id": ids, "cohort": "risk", "true": true, "pred": 3,
                         "prob_2": 1 - s, "prob_3": s * w, "prob_4": 0.0, "prob_5": s * (1 - w)})


def test_pirads_auc_routing():
    good = np.array([0.1, 0.3, 0.2, 0.6, 0.7, 0.8, 0.5, 0.9, 0.75, 0.85, 0.95, 0.65])
    bad = np.array([0.8, 0.7, 0.9, 0.6, 0.3, 0.2, 0.5, 0.1, 0.35, 0.25, 0.15, 0.4])
    cases = {("pirads_cls", "pretrained:mae", "full", 0): _pirads(good),
             ("pirads_cls", "scratch", "full", 0): _pirads(bad)}
    rows = []
    for (_, init, protocol, seed), frame in cases.items():
        score = frame["prob_3"] + frame["prob_5"]
        values = {"auc": weighted_macro_auc(frame["true"] - 2, frame[["prob_2", "prob_3", "prob_4", "prob_5"]],
                                            np.ones(12))[0],
                  "auc_ge3": roc_auc_score(frame["true"] >= 3, score), "spec_at_sens90": 0.5}
        for metric, value in values.items():
            rows.append({"task": "pirads_cls", "init": init, "protocol": protocol, "seed": seed, "metric": metric,
                         "value": value, "primary": metric == "auc"})
    table = performance_table(pd.DataFrame(rows), cases, ["pirads_cls"], BASE, set(), resampling=Resampling(500, 0))
    raw = table.raw.set_index("init")
    # one seed each: no mark and no interval, whatever the difference
    assert raw.loc["scratch", [f"pirads_cls/{m}/p_value" for m in ("auc", "auc_ge3", "spec_at_sens90")]].isna().all()
    assert table.cells.loc["scratch", ("pirads_cls", "auc_ge3")] == f"{100 * rows[4]['value']:.2f}"
    assert not table.bold[("pirads_cls", "spec_at_sens90")].any()  # all tied: no best
    assert table.bold.loc["pretrained:mae", ("pirads_cls", "auc")]
    # the ROC metrics recomputed on resamples: the good model's AUC >= 3 on the full sample
    from taskalign.report.tables.performance import metric_draws

    good_frame = cases[("pirads_cls", "pretrained:mae", "full", 0)]
    assert metric_draws("auc_ge3", good_frame, np.ones((1, 12)))[0] == pytest.approx(rows[1]["value"])
    # specificity at sensitivity 0.9 only from the per-case column at the validation threshold
    assert metric_draws("spec_at_sens90", good_frame, np.ones((1, 12))) is None
    spec = np.where(good_frame["true"] >= 3, np.nan, [1.0, 0.0, 1.0, 1.0] + [np.nan] * 8)
    assert metric_draws("spec_at_sens90", good_frame.assign(spec_at_sens90=spec), np.ones((1, 12)))[0] == 0.75


def test_write_table_three_formats(perf, tmp_path):
    perf = Table(perf.cells, perf.raw.copy(), perf.caption, perf.bold, perf.stars.copy(), PROV)
    perf.stars.loc["scratch", ("lesion_seg", "dice")] = "*"
    perf.raw.loc[perf.raw["init"] == "scratch", "lesion_seg/dice/stars"] = "*"
    paths = write_table(perf, tmp_path / "table2")
    assert sorted(p.name for p in paths) == ["table2.csv", "table2.md", "table2.provenance.json", "table2.tex"]
    md = (tmp_path / "table2.md").read_text(encoding="utf-8")
    best, scratch = (perf.cells.loc[row, ("lesion_seg", "dice")] for row in ("continual:mae", "scratch"))
    assert best.startswith("0.640 ± 0.014 [") and scratch.startswith("0.420 ± 0.028 [")
    assert f"| **{best}** |" in md
    assert f"| {scratch} * |" in md
    assert md.rstrip().splitlines()[-1].startswith("*provenance: config_hash=abc123def456; code_version=v0.1")
    assert md.rstrip().endswith("*")
    tex = (tmp_path / "table2.tex").read_text(encoding="utf-8")
    tex_best, tex_scratch = (cell.replace("±", r"$\pm$") for cell in (best, scratch))
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}", r"lesion\_seg",
                  rf"\textbf{{{tex_best}}}", rf"{tex_scratch}$^{{*}}$",
                  r"95\% interval", r"\multicolumn{2}{c}{volume\_reg}"):
        assert token in tex, token
    assert "lesion_seg" not in tex.replace(r"lesion\_seg", "")
    assert tex.rstrip().splitlines()[-1].startswith("% provenance: config_hash=abc123def456")
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert len(body) == 6 and all(line.count("&") == 3 and line.endswith(r"\\") for line in body)
    assert json.loads((tmp_path / "table2.provenance.json").read_text()) == PROV
    csv = pd.read_csv(tmp_path / "table2.csv")
    assert len(csv) == len(perf.cells)
    assert csv.loc[csv["init"] == "scratch", "lesion_seg/dice/mean"].item() == pytest.approx(0.42)
    assert csv.loc[csv["init"] == "scratch", "lesion_seg/dice/stars"].item() == "*"
    assert pd.api.types.is_float_dtype(csv["volume_reg/mse/std"])


def test_write_table_needs_provenance(tmp_path):
    table = Table(pd.DataFrame({"a": ["1"]}), pd.DataFrame({"a": [1]}), "caption")
    with pytest.raises(ValueError, match="provenance"):
        write_table(table, tmp_path / "t")
    assert not list(tmp_path.iterdir())


def test_provenance(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(table_model.subprocess, "run", no_git)
    config = {"seed": 0, "tasks": {"a": 1}}
    prov = provenance(config)
    assert prov["config_hash"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    assert provenance({"tasks": {"a": 1}, "seed": 0})["config_hash"] == prov["config_hash"]
    assert provenance({"seed": 1, "tasks": {"a": 1}})["config_hash"] != prov["config_hash"]
    assert prov["code_version"] == "unknown"
    assert prov["packages"]["numpy"] == np.__version__ and "python" in prov["packages"]
    assert isinstance(prov["device"], str) and prov["device"]


def test_provenance_uses_git_describe(monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, stdout="v1.2-3-gabc-dirty\n", stderr="")

    monkeypatch.setattr(table_model.subprocess, "run", fake_run)
    assert provenance({})["code_version"] == "v1.2-3-gabc-dirty"
    assert seen["cmd"] == ["git", "describe", "--always", "--dirty"]


def _manifest(cohort: str, train: int, val: int, test: int) -> pd.DataFrame:
    splits = ["train"] * train + ["val"] * val + ["test"] * test
    ids = [f"{cohort}_{k:04d}" for k in range(len(splits))]
    return pd.DataFrame({"case_id": ids, "patient_id": ids, "cohort": cohort, "split": splits})


def test_cohort_table():
    manifests = {"risk": _manifest("risk", 3, 1, 2), "promis": _manifest("promis", 2, 1, 1),
                 "corpus": _manifest("corpus", 4, 0, 0)}
    tasks = {"pirads_cls": {"type": "pirads_cls", "cohort": "risk", "inputs": ["t2w", "dwi", "adc"]},
             "lesion_seg": {"type": "lesion_seg", "cohort": "promis", "inputs": ["t2w", "dwi", "adc"]},
             "super_res": {"type": "super_res", "cohort": "promis", "inputs": ["t2w"], "factor": 4}}
    table = cohort_table(manifests, tasks)
    raw = table.raw.set_index("cohort")
    assert raw.loc["risk", ["train", "val", "test"]].tolist() == [3, 1, 2]
    assert raw.loc["promis", ["train", "val", "test"]].tolist() == [2, 1, 1]
    assert table.cells.loc["promis", "tasks"] == "lesion_seg, super_res"
    assert table.cells.loc["promis", "inputs"] == "T2W, DWI, ADC"
    assert table.cells.loc["promis", "outputs"] == "lesion mask, T2W image"
    assert table.cells.loc["risk", "outputs"] == "pirads class"
    assert table.cells.loc["corpus", "tasks"] == "–"


def test_compute_table_ratio_and_basis():
    rows = [("lesion_seg", "pretrained:mae", "frozen", 0, 3600, 0.0),
            ("lesion_seg", "pretrained:mae", "frozen", 1, 5400, 0.0),
            ("lesion_seg", "pretrained:mae", "full", 0, 99999, 0.0),  # another protocol: not this model's FT
            ("lesion_seg", "scratch", "full", 0, 7200, 0.0), ("lesion_seg", "scratch", "full", 1, 9000, 0.0),
            ("lesion_seg", "random", "frozen", 0, 60, 0.0),
            ("volume_reg", "pretrained:mae", "frozen", 0, 100, 0.5), ("volume_reg", "scratch", "full", 0, 100, 2.0),
            ("volume_reg", "pretrained:multitask", "partial:2", 0, 100, 1.0)]
    timings = pd.DataFrame(rows, columns=["task", "init", "protocol", "seed", "wall_seconds", "device_hours"])
    table = compute_table(timings, ["pretrained:mae/frozen", "pretrained:multitask/partial:2"])
    cells = table.cells
    assert list(cells.columns[1:4]) == [("pretrained:mae/frozen", q) for q in ("FT", "Scratch", "FT/Scratch")]
    assert cells.loc["lesion_seg", ("pretrained:mae/frozen", "FT")] == "1.25"
    assert cells.loc["lesion_seg", ("pretrained:mae/frozen", "Scratch")] == "2.25"
    assert cells.loc["lesion_seg", ("pretrained:mae/frozen", "FT/Scratch")] == "0.56"
    assert cells.loc["lesion_seg", ("", "basis")] == "wall-clock hours"
    assert cells.loc["lesion_seg", ("pretrained:multitask/partial:2", "FT")] == "–"
    assert cells.loc["volume_reg", ("pretrained:mae/frozen", "FT/Scratch")] == "0.25"
    assert cells.loc["volume_reg", ("pretrained:multitask/partial:2", "FT/Scratch")] == "0.50"
    assert cells.loc["volume_reg", ("", "basis")] == "GPU hours"
    assert table.raw.set_index("task").loc["volume_reg", "pretrained:mae/frozen/ft_over_scratch"] == pytest.approx(0.25)


# task -> (Delta at L11 for seed mean, performance gain of FT from continual)
CKA_TASKS = {"lesion_seg": (0.004, 0.005), "zone_seg": (0.001, 0.001), "pirads_cls": (-0.003, -0.004),
             "volume_reg": (0.002, 0.002), "ssim_sr": (-0.001, -0.003)}


def _cka_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """cka.csv, deltas.csv and metrics.csv rows for five tasks, two FT seeds, layers 3 and 11 (+ final)."""
    cka, deltas, metrics = [], [], []
    for k, (task, (delta, gain)) in enumerate(CKA_TASKS.items()):
        for layer in ("block3", "block11", "final"):
            base = 0.9 - 0.1 * k - (0.3 if layer == "block11" else 0.0)
            entries = [("pretrained-continual", "", "", "cont.npz", 0.99)]
            for seed in ("0", "1"):
                entries += [("pretrained-finetuned", "full", seed, f"{task}/ft{seed}.npz", base + 0.01 * int(seed)),
                            ("continual-finetuned", "full", seed, f"{task}/ft{seed}.npz",
                             base + 0.01 * int(seed) + delta)]
            for pair, protocol, seed, file_b, value in entries:
                cka.append({"task": task, "pair": pair, "protocol": protocol, "seed": seed, "file_b": file_b,
                            "layer_a": layer, "layer_b": layer, "linear": value, "debiased": value - 0.1,
                            "null_linear_p95": 0.5, "null_linear_p": 0.01, "null_debiased_p95": 0.15,
                            "null_debiased_p": 0.01})
            for estimator in ("linear", "debiased"):
                deltas.append({"task": task, "protocol": "full", "seed": "mean", "layer": layer,
                               "estimator": estimator, "delta": delta, "ci_low": delta - 0.01,
                               "ci_high": delta + 0.01, "seed_std": 0.001, "n_seeds": 2})
        metric, lower = ("mse", True) if task == "volume_reg" else ("dice", False)
        for init, value in (("pretrained:mae", 0.5), ("continual:mae", 0.5 + (-gain if lower else gain))):
            metrics.append({"task": task, "init": init, "protocol": "full", "seed": 0, "metric": metric,
                            "value": value, "primary": True})
        metrics.append({"task": task, "init": "continual:mae", "protocol": "frozen", "seed": 0, "metric": metric,
                        "value": 0.0, "primary": True})  # another protocol: not part of the gain
    return pd.DataFrame(cka), pd.DataFrame(deltas), pd.DataFrame(metrics)


def test_cka_table_layout_threshold_and_correlation():
    cka, deltas, metrics = _cka_frames()
    table = cka_table(cka, deltas, metrics, inits=MAE_INITS, threshold=0.002, lower_is_better={"mse"})
    kept = ["lesion_seg", "pirads_cls", "volume_reg", "ssim_sr"]  # zone_seg's gain 0.001 < 0.002
    assert list(table.cells.index) == [f"{t}: {row}" for t in kept for row in
                                       ("Pretrained–Continual", "Pretrained–Finetuned", "Continual–Finetuned",
                                        "Δ (Continual − Pretrained, same FT)")] + [
        "Correlation across tasks: Δ L11 vs performance gain"]
    linear, debiased = "linear CKA (000 eq. 7)", "debiased CKA"
    assert [c for g, c in table.cells.columns if g == linear] == ["L3", "L11", "Avg."]
    assert table.cells.loc["lesion_seg: Pretrained–Finetuned", (linear, "L3")] == "0.905 ± 0.007"
    assert table.cells.loc["lesion_seg: Continual–Finetuned", (linear, "L11")] == "0.609 ± 0.007"
    assert table.cells.loc["lesion_seg: Pretrained–Continual", (linear, "Avg.")] == "0.990"
    assert table.cells.loc["lesion_seg: Δ (Continual − Pretrained, same FT)", (linear, "L11")] == \
        "+0.004 ± 0.001 [-0.006, +0.014]"
    assert table.cells.loc["volume_reg: Δ (Continual − Pretrained, same FT)", ("", "performance gain")] == \
        "+0.002 (mse)"  # lower MSE from continual: a positive gain
    # debiased values below the null's 95th percentile get the dagger
    assert table.stars.loc["ssim_sr: Pretrained–Finetuned", (debiased, "L11")] == "†"
    assert table.stars.loc["lesion_seg: Pretrained–Finetuned", (linear, "L3")] == ""
    expected = correlation([CKA_TASKS[t][0] for t in kept], [CKA_TASKS[t][1] for t in kept])
    corr = table.raw.set_index("row").loc["correlation"]
    assert corr["linear/pearson_p"] == pytest.approx(expected["pearson_p"])
    assert "all 24 orderings" in corr["linear/note"]
    assert "docs/deviations.md" in table.caption
    supplementary = cka_supplementary_table(cka, deltas, metrics, inits=MAE_INITS, lower_is_better={"mse"})
    assert "zone_seg: Δ (Continual − Pretrained, same FT)" in supplementary.cells.index
    # an explicit task list (000's selection) replaces the threshold, in its order, and the caption says which
    # of them fall short of it
    chosen = cka_table(cka, deltas, metrics, inits=MAE_INITS, threshold=0.002, lower_is_better={"mse"},
                       tasks=["zone_seg", "lesion_seg"])
    assert [r.split(":")[0] for r in chosen.cells.index[:-1:4]] == ["zone_seg", "lesion_seg"]
    assert "zone_seg differ by less than 0.002" in chosen.caption
    with pytest.raises(ValueError, match=r"analysis.cka.tasks: no Table 6 CKA results for \['translation'\]"):
        cka_table(cka, deltas, metrics, inits=MAE_INITS, tasks=["translation"])


def test_ablation_table():
    steps = [("reconstruction (mae)", "pretrained:mae", ["reconstruction"]),
             ("+metadata (mt_meta)", "pretrained:mt_meta", ["reconstruction", "metadata"]),
             ("+contrastive (multitask)", "pretrained:multitask", list(OBJECTIVES))]
    runs = {("scratch", "full"): (0.40, [0.30]), ("pretrained:mae", "frozen"): (0.60, [0.05]),
            ("pretrained:mae", "full"): (0.95, [0.01]),  # another protocol: must not enter the mae row
            ("pretrained:mt_meta", "frozen"): (0.62, [0.08]),
            ("pretrained:multitask", "frozen"): (0.65, [0.07, 0.09])}
    rows = []
    for (init, protocol), (dice, mses) in runs.items():
        for seed, mse in enumerate(mses):
            rows += [{"task": "lesion_seg", "init": init, "protocol": protocol, "seed": seed, "metric": "dice",
                      "value": dice + 0.02 * seed, "primary": True},
                     {"task": "volume_reg", "init": init, "protocol": protocol, "seed": seed, "metric": "mse",
                      "value": mse, "primary": True},
                     {"task": "volume_reg", "init": init, "protocol": protocol, "seed": seed, "metric": "mae_ml",
                      "value": 0.0, "primary": False}]
    # the baseline's run of a task the sweep did not fine-tune: no column of this table
    rows.append({"task": "pirads_cls", "init": "scratch", "protocol": "full", "seed": 0, "metric": "auc",
                 "value": 0.5, "primary": True})
    table = ablation_table(pd.DataFrame(rows), steps, protocol="frozen", lower_is_better={"mse"},
                           baseline=("scratch", "scratch", "full"))
    cells = table.cells
    assert list(cells.index) == ["scratch", "reconstruction (mae)", "+metadata (mt_meta)", "+contrastive (multitask)"]
    assert cells["objectives"].loc["+metadata (mt_meta)"].tolist() == ["✓", "✓", "", ""]
    assert list(cells.columns[4:]) == [("lesion_seg (dice)", "mean ± std"), ("lesion_seg (dice)", "Δ prev."),
                                       ("volume_reg (mse)", "mean ± std"), ("volume_reg (mse)", "Δ prev.")]
    dice = cells["lesion_seg (dice)"]
    assert dice["mean ± std"].tolist() == ["0.400", "0.600", "0.620", "0.660 ± 0.014"]
    assert dice["Δ prev."].tolist() == ["–", "↑0.200", "↑0.020", "↑0.040"]
    assert cells.loc["+metadata (mt_meta)", ("volume_reg (mse)", "Δ prev.")] == "↑0.030"
    assert table.bold[("lesion_seg (dice)", "mean ± std")][lambda s: s].index.tolist() == ["+contrastive (multitask)"]
    assert table.bold[("volume_reg (mse)", "mean ± std")][lambda s: s].index.tolist() == ["reconstruction (mae)"]
    raw = table.raw.set_index("row")
    assert raw.loc["+metadata (mt_meta)", "lesion_seg/dice/change"] == pytest.approx(0.02)


def test_lens_table():
    summary = pd.DataFrame({"task": ["lesion_seg", "pirads_cls"], "r2_pre": [0.5, 0.4], "r2_ft": [0.7, 0.41],
                            "total_change": [1.25, 0.1], "perm_p": [0.0004, 0.2], "n_significant": [3, 0],
                            "stability_spearman": [0.9, 0.3], "finetune_stability_spearman": [0.8, float("nan")],
                            "top_features": ["glcm_contrast; shape_volume", "firstorder_mean"],
                            "intensity": [0.2, 0.05], "shape": [0.6, 0.01], "texture": [0.45, 0.04]})
    table = lens_table(summary)
    assert list(table.cells.index) == ["lesion_seg", "pirads_cls"]
    assert table.cells.loc["lesion_seg", "perm. p"] == "<0.001"
    assert table.stars.loc["lesion_seg", "perm. p"] == "***"
    assert table.stars.loc["pirads_cls", "perm. p"] == ""
    assert table.cells.loc["pirads_cls", "perm. p"] == "0.200"
    assert table.cells.loc["lesion_seg", "shape"] == "0.600"
    assert table.cells.loc["lesion_seg", "top features"] == "glcm_contrast; shape_volume"
    assert list(table.cells.columns).index("texture") < list(table.cells.columns).index("top features")
    assert table.cells.loc["lesion_seg", "features p_FWER ≤ 0.05"] == "3"
    assert table.cells.loc["pirads_cls", "stability ρ (FT seeds)"] == "–"
    assert "n_significant" not in [c for c in table.cells.columns]


def test_lens_table_shows_only_r2_and_why_below_the_floor():
    summary = pd.DataFrame({"task": ["lesion_seg", "pirads_cls"], "r2_pre": [0.5, -0.3], "r2_ft": [0.7, -0.2],
                            "total_change": [1.25, 0.9], "perm_p": [0.0004, 0.001], "n_significant": [3, 5],
                            "stability_spearman": [0.9, 0.3], "finetune_stability_spearman": [0.8, 0.2],
                            "top_features": ["glcm_contrast", "firstorder_mean"], "interpretable": [True, False],
                            "note": ["", "held-out R² -0.300 below the floor 0.1: ..."],
                            "intensity": [0.2, 0.05], "shape": [0.6, 0.01], "texture": [0.45, 0.04]})
    table = lens_table(summary)
    row = table.cells.loc["pirads_cls"]
    assert row["R² pre"] == "-0.300" and row["R² FT"] == "-0.200"
    assert (row[["total change", "perm. p", "features p_FWER ≤ 0.05", "shape", "top features"]] == "–").all()
    assert row["why not shown"].startswith("held-out R² -0.300 below the floor")
    assert table.stars.loc["pirads_cls", "perm. p"] == "" and table.stars.loc["lesion_seg", "perm. p"] == "***"
    assert table.cells.loc["lesion_seg", "top features"] == "glcm_contrast"
    assert "reaches the configured floor" in table.caption
