"""RPG, permutation correlation, DeLong, Wilcoxon and stars against hand-computed or brute-force answers."""

from __future__ import annotations

import math
import warnings
from itertools import permutations

import numpy as np
import pytest
from scipy import stats as st
from scipy.stats import pearsonr, spearmanr

from taskalign.analysis.stats import correlation, rpg, stars, wilcoxon_paired


def test_rpg_sign_conventions():
    assert rpg(0.8, 0.5) == pytest.approx(60.0)
    assert rpg(0.4, 0.5) == pytest.approx(-20.0)
    # MSE: lower is better, so halving the error is a +50 % gain and doubling it -100 %.
    assert rpg(0.1, 0.2, higher_is_better=False) == pytest.approx(50.0)
    assert rpg(0.4, 0.2, higher_is_better=False) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="P_ref"):
        rpg(0.5, 0.0)


def test_correlation_exact_permutation_p():
    result = correlation([1, 2, 3, 4, 5], [0.1, 0.5, 0.7, 2.0, 9.0])
    assert result["n"] == 5
    assert result["spearman_rho"] == pytest.approx(1.0, abs=1e-12)
    # Two of the 120 orderings reach |rho| = 1: the identity and the full reversal.
    assert result["spearman_p"] == pytest.approx(2 / 120, abs=1e-12)
    assert result["pearson_r"] == pytest.approx(pearsonr([1, 2, 3, 4, 5], [0.1, 0.5, 0.7, 2.0, 9.0])[0], abs=1e-12)


def test_correlation_exact_p_brute_force():
    x = np.array([0.3, 1.2, 0.7, 2.5, 1.9, 0.1])
    y = np.array([1.0, 2.1, 0.5, 3.3, 1.5, 0.9])
    result = correlation(x, y)
    r_obs = pearsonr(x, y)[0]
    count = sum(abs(pearsonr(x, y[list(p)])[0]) >= abs(r_obs) - 1e-12 for p in permutations(range(6)))
    assert result["pearson_p"] == pytest.approx(count / 720, abs=1e-12)
    assert result["spearman_rho"] == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def test_correlation_monte_carlo_for_larger_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    related = correlation(x, x + 0.3 * rng.normal(size=30))
    assert related["pearson_p"] == pytest.approx(1 / 10_001)
    unrelated = correlation(x, rng.normal(size=30), seed=1)
    assert unrelated["pearson_p"] > 0.05 and unrelated["spearman_p"] > 0.05
    assert correlation(x, x[::-1] ** 3, seed=2) == correlation(x, x[::-1] ** 3, seed=2)


@pytest.mark.parametrize("x, y, why", [([1, 2, 3, 4], [5, 5, 5, 5], "constant"), ([1, 2], [3, 4], "at least 3")])
def test_correlation_undefined(x, y, why):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = correlation(x, y)
    for key in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p"):
        assert math.isnan(result[key])
    assert why in result["note"]


def test_wilcoxon_paired():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert wilcoxon_paired(a, np.zeros(5)) == pytest.approx(0.0625)  # exact: 2 / 2^5
    assert wilcoxon_paired(np.zeros(5), a) == pytest.approx(0.0625)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wilcoxon_paired(a, a.copy()) == 1.0


@pytest.mark.parametrize("p, expected", [(0.0001, "***"), (0.001, "***"), (0.0011, "**"), (0.01, "**"), (0.02, "*"),
                                         (0.05, "*"), (0.0500001, ""), (0.5, ""), (float("nan"), "")])
def test_stars(p, expected):
    assert stars(p) == expected


def test_rpg_table_leaves_out_a_task_whose_reference_scores_zero(caplog):
    import pandas as pd

    from taskalign.analysis.distances import rpg_rows, rpg_table
    from taskalign.tasks.spec import Task

    model = "pretrained:mae/full"
    tasks = {t: Task.from_config(t, {"type": t, "cohort": "x", "inputs": ["t2w"], **({"factor": 2} if t == "super_res"
                                                                                     else {})})
             for t in ("zone_seg", "lesion_seg", "super_res")}
    metrics = pd.DataFrame([
        {"task": t, "metric": m, "init": i, "protocol": p, "seed": 0, "value": v, "ci_low": v - 0.01,
         "ci_high": v + 0.01, "primary": True}
        for t, m, scores in [("zone_seg", "dice", (0.3, 0.1, 0.2)), ("lesion_seg", "dice", (0.05, 0.02, 0.0)),
                             ("super_res", "ssim", (0.9, 0.8, 0.85))]
        for (i, p), v in zip([("pretrained:mae", "full"), ("random", "frozen"), ("specialist", "full")], scores)])
    distances = pd.DataFrame([{"model": model, "task": t, "seed": 0, "distance": d, "estimator": e,
                               "value": k + 0.1 * j, "se": 0.01}
                              for k, t in enumerate(["zone_seg", "lesion_seg", "super_res"])
                              for j, d in enumerate(["d2r", "d2p", "d2s"]) for e in ["biased", "unbiased"]])
    with caplog.at_level("WARNING"):
        table = rpg_table(rpg_rows(metrics, distances, [[model, "pretrained:mae", "full"]], tasks))
    assert set(table[table["reference"] == "random"]["task"]) == {"zone_seg", "lesion_seg", "super_res"}
    specialist = table[table["reference"] == "specialist"].set_index("task")
    assert set(specialist.index[np.isfinite(specialist["rpg"])]) == {"zone_seg", "super_res"}
    # the left-out task keeps a row that says why (Fig. 2 names it)
    assert np.isnan(specialist.loc["lesion_seg", "rpg"])
    assert specialist.loc["lesion_seg", "note"].startswith("left out: the specialist reference scores dice = 0")
    assert "lesion_seg: the specialist reference scores dice = 0" in caplog.text
    assert (table["d2r_se"] == 0.01).all()

def test_procedure_test_is_welch_without_patient_variance_and_counts_it_otherwise():
    from scipy.stats import ttest_ind

    from taskalign.analysis.stats import procedure_interval, procedure_test

    a, b = np.array([0.61, 0.64, 0.60, 0.66]), np.array([0.58, 0.57, 0.60])
    p, df = procedure_test(a, b, np.zeros(100), 50)
    welch = ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(welch.pvalue, rel=1e-10)
    draws = np.random.default_rng(0).normal(0.04, 0.02, 500)  # patient sampling adds variance: larger p
    assert procedure_test(a, b, draws, 50)[0] > p
    assert np.isnan(procedure_test(a[:1], b, draws, 50)[0])  # one training run: no test
    assert procedure_test(b, b, np.zeros(10), 50)[0] == pytest.approx(1.0)
    low, high = procedure_interval(a, np.full(100, a.mean()), 50)
    half = st.t.ppf(0.975, 3) * a.std(ddof=1) / 2  # no patient variance: the t interval of the seed values
    assert (low, high) == pytest.approx((a.mean() - half, a.mean() + half))
    assert np.isnan(procedure_interval(a[:1], draws, 50)[0])
