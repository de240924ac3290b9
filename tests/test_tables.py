"""Paper tables against a hand-made results set whose means, best cells and paired-test outcomes are known."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from taskalign.analysis.stats import delong_test, wilcoxon_paired
from taskalign.report.tables import model as table_model
from taskalign.report.tables.ablation import OBJECTIVES, ablation_steps, ablation_table
from taskalign.report.tables.cka import cka_table
from taskalign.report.tables.cohorts import cohort_table
from taskalign.report.tables.compute import compute_table
from taskalign.report.tables.lens import lens_table
from taskalign.report.tables.model import Table, provenance, write_table
from taskalign.report.tables.performance import performance_table

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
    return performance_table(_metrics(), _cases(), ["lesion_seg", "volume_reg"], "pretrained:mae",
                             {"mse", "mae_ml"})


def test_performance_layout_and_cells(perf):
    assert list(perf.cells.columns) == [("lesion_seg", "dice"), ("volume_reg", "mse"), ("volume_reg", "mae_ml")]
    assert list(perf.cells.index) == ["random", "scratch", "specialist", "pretrained:mae (full)",
                                      "pretrained:mae (frozen)", "continual:mae"]
    dice = perf.cells[("lesion_seg", "dice")]
    assert dice["random"] == "0.220 ± 0.028 [0.170, 0.270]"
    assert dice["pretrained:mae (full)"] == "0.610 ± 0.014 [0.560, 0.660]"
    assert dice["specialist"] == "0.300 [0.250, 0.350]"  # one seed: no std
    assert perf.cells.loc["pretrained:mae (full)", ("volume_reg", "mse")] == "0.060 ± 0.014 [0.050, 0.070]"
    assert perf.cells.loc["random", ("volume_reg", "mae_ml")] == "10.000 ± 1.414 [9.000, 11.000]"


def test_performance_bold_is_best_per_column(perf):
    bold = perf.bold
    assert bold[("lesion_seg", "dice")].tolist() == [False, False, False, False, False, True]  # highest
    assert bold[("volume_reg", "mse")][lambda s: s].index.tolist() == ["pretrained:mae (full)"]  # lowest
    assert bold[("volume_reg", "mae_ml")][lambda s: s].index.tolist() == ["continual:mae"]


def test_performance_stars_follow_paired_tests(perf):
    dice = perf.stars[("lesion_seg", "dice")]
    assert dice.to_dict() == {"random": "**", "scratch": "***", "specialist": "", "pretrained:mae (full)": "",
                              "pretrained:mae (frozen)": "*", "continual:mae": ""}
    mse = perf.stars[("volume_reg", "mse")]
    assert mse["scratch"] == "***" and mse["continual:mae"] == "" and mse["pretrained:mae (full)"] == ""
    raw = perf.raw.set_index(["init", "protocol"])
    assert raw.loc[("scratch", "full"), "lesion_seg/dice/p_value"] == pytest.approx(2 / 4096)
    assert raw.loc[("pretrained:mae", "frozen"), "lesion_seg/dice/p_value"] == pytest.approx(2 / 64)
    assert np.isnan(raw.loc[BASE, "lesion_seg/dice/p_value"])
    # Pooled over both seeds, paired by case_id: the same p as a direct test on the hand-aligned values.
    cases = _cases()
    b = np.concatenate([cases[("lesion_seg", *BASE, s)]["dice"] for s in (0, 1)])
    a = np.concatenate([cases[("lesion_seg", "continual:mae", "full", s)]["dice"] for s in (0, 1)])
    assert raw.loc[("continual:mae", "full"), "lesion_seg/dice/p_value"] == pytest.approx(wilcoxon_paired(a, b))
    assert raw.loc[("continual:mae", "full"), "lesion_seg/dice/p_value"] > 0.05


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
    rows = []
    for init, base in (("pretrained:mae", True), ("scratch", False)):
        for metric, primary in (("auc", True), ("auc_ge3", False), ("spec_at_sens90", False)):
            value = 0.5 if metric == "spec_at_sens90" else 0.8 if base else 0.3
            rows.append({"task": "pirads_cls", "init": init, "protocol": "full", "seed": 0, "metric": metric,
                         "value": value, "ci_low": np.nan, "ci_high": np.nan, "primary": primary})
    cases = {("pirads_cls", "pretrained:mae", "full", 0): _pirads(good),
             ("pirads_cls", "scratch", "full", 0): _pirads(bad)}
    table = performance_table(pd.DataFrame(rows), cases, ["pirads_cls"], "pretrained:mae", set())
    raw = table.raw.set_index("init")
    a, b = _pirads(bad), _pirads(good)
    expected = delong_test(a["true"] >= 3, a["prob_3"] + a["prob_5"], b["prob_3"] + b["prob_5"])["p_value"]
    assert raw.loc["scratch", "pirads_cls/auc_ge3/p_value"] == pytest.approx(expected)
    assert table.stars.loc["scratch", ("pirads_cls", "auc_ge3")] == "***"
    idx = np.arange(12), a["true"].to_numpy() - 2
    p_true = [frame[["prob_2", "prob_3", "prob_4", "prob_5"]].to_numpy()[idx] for frame in (a, b)]
    assert raw.loc["scratch", "pirads_cls/auc/p_value"] == pytest.approx(wilcoxon_paired(*p_true))
    assert np.isnan(raw.loc["scratch", "pirads_cls/spec_at_sens90/p_value"])
    assert table.stars.loc["scratch", ("pirads_cls", "spec_at_sens90")] == ""
    assert table.cells.loc["scratch", ("pirads_cls", "auc")] == "0.300"  # no CI, one seed
    assert not table.bold[("pirads_cls", "spec_at_sens90")].any()  # all tied: no best
    assert table.bold.loc["pretrained:mae", ("pirads_cls", "auc")]


def test_write_table_three_formats(perf, tmp_path):
    perf.provenance = PROV
    paths = write_table(perf, tmp_path / "table2")
    assert sorted(p.name for p in paths) == ["table2.csv", "table2.md", "table2.provenance.json", "table2.tex"]
    md = (tmp_path / "table2.md").read_text(encoding="utf-8")
    assert "| **0.640 ± 0.014 [0.590, 0.690]** |" in md
    assert "| 0.420 ± 0.028 [0.370, 0.470] *** |" in md
    assert md.rstrip().splitlines()[-1].startswith("*provenance: config_hash=abc123def456; code_version=v0.1")
    assert md.rstrip().endswith("*")
    tex = (tmp_path / "table2.tex").read_text(encoding="utf-8")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}", r"lesion\_seg",
                  r"\textbf{0.640 $\pm$ 0.014 [0.590, 0.690]}", r"0.420 $\pm$ 0.028 [0.370, 0.470]$^{***}$",
                  r"95\% CI", r"\multicolumn{2}{c}{volume\_reg}"):
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
    assert csv.loc[csv["init"] == "scratch", "lesion_seg/dice/stars"].item() == "***"
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
    tasks = {"pirads_cls": {"cohort": "risk", "inputs": ["t2w", "dwi", "adc"]},
             "lesion_seg": {"cohort": "promis", "inputs": ["t2w", "dwi", "adc"]},
             "super_res": {"cohort": "promis", "inputs": ["t2w"], "factor": 4}}
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


def test_cka_table():
    pf, cf = "pretrained–finetuned", "continual–finetuned"
    rows = [("lesion_seg", pf, 5, 0.90, 0.40, 0.80), ("lesion_seg", pf, 3, 0.98, 0.42, 0.84),
            ("lesion_seg", cf, 3, 0.97, 0.30, 0.70), ("lesion_seg", cf, 5, 0.91, 0.2, 0.6)]
    cka = pd.DataFrame(rows, columns=["task", "pair", "layer", "linear", "debiased", "null_linear"])
    cka["ci_low"], cka["ci_high"] = cka["linear"] - 0.01, cka["linear"] + 0.01
    table = cka_table(cka)
    assert list(table.cells.index) == ["L3", "L5", "Avg."]
    assert table.cells.loc["L3", ("lesion_seg", pf)] == "0.980 (d 0.420, null 0.840)"
    assert table.cells.loc["Avg.", ("lesion_seg", pf)] == "0.940 (d 0.410, null 0.820)"
    assert table.cells.loc["L5", ("lesion_seg", cf)] == "0.910 (d 0.200, null 0.600)"


def test_ablation_steps_and_table():
    objective_sets = {"multitask": list(OBJECTIVES), "mae": ["reconstruction"],
                      "mt_meta": ["metadata", "reconstruction"], "odd": ["contrastive"]}
    steps = ablation_steps(objective_sets)
    assert [s[1] for s in steps] == ["pretrained:mae", "pretrained:mt_meta", "pretrained:multitask"]
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
