"""Statistics for the reports: relative performance gain (001), correlation with permutation p-values for a handful
of tasks, DeLong's paired AUC test and the paired Wilcoxon test (002 section 4.6), and significance stars."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
from scipy import stats as st

EXACT_MAX_N = 8  # 8! = 40320 orderings; above this a Monte Carlo permutation test
MC_PERMUTATIONS = 10_000
_TIE_TOL = 1e-12


def rpg(p_ft: float, p_ref: float, higher_is_better: bool = True) -> float:
    """Relative performance gain (P_ft - P_ref) / P_ref x 100 (001), sign flipped for lower-is-better metrics (MSE)
    so that positive always means the fine-tuned model is better. Assumes P_ref > 0, as for all the task metrics."""
    if p_ref == 0:
        raise ValueError("RPG is undefined for a reference performance of 0 (division by P_ref)")
    gain = (p_ft - p_ref) / p_ref * 100.0
    return float(gain if higher_is_better else -gain)


def _standardise(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def _perm_p(zx: np.ndarray, zy: np.ndarray, orderings: np.ndarray, exact: bool) -> tuple[float, float]:
    """Correlation of standardised zx, zy and its two-sided p over `orderings` of zy (rows of indices)."""
    observed = float(np.clip(zx @ zy / len(zx), -1.0, 1.0))
    null = zy[orderings] @ zx / len(zx)
    count = int(np.sum(np.abs(null) >= abs(observed) - _TIE_TOL))
    # The exact list contains the identity ordering; the Monte Carlo p adds the observed statistic itself.
    p = count / len(orderings) if exact else (1 + count) / (len(orderings) + 1)
    return observed, float(p)


def correlation(x, y, seed: int = 0) -> dict:
    """Pearson r and Spearman rho with permutation p-values: exact over all n! orderings for n <= 8 (where t-based
    p-values are fragile), else Monte Carlo with 10000 permutations. NaN statistics and a `note` when undefined."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    n = len(x)
    undefined = {"pearson_r": np.nan, "pearson_p": np.nan, "spearman_rho": np.nan, "spearman_p": np.nan, "n": n}
    if n < 3:
        return {**undefined, "note": f"correlation needs at least 3 points, got {n}"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**undefined, "note": "constant input: the correlation is undefined"}
    exact = n <= EXACT_MAX_N
    if exact:
        orderings = np.array(list(permutations(range(n))))
        note = f"exact permutation p over all {len(orderings)} orderings"
    else:
        rng = np.random.default_rng(seed)
        orderings = rng.permuted(np.tile(np.arange(n), (MC_PERMUTATIONS, 1)), axis=1)
        note = f"Monte Carlo permutation p over {MC_PERMUTATIONS} orderings"
    r, r_p = _perm_p(_standardise(x), _standardise(y), orderings, exact)
    rho, rho_p = _perm_p(_standardise(st.rankdata(x)), _standardise(st.rankdata(y)), orderings, exact)
    return {"pearson_r": r, "pearson_p": r_p, "spearman_rho": rho, "spearman_p": rho_p, "n": n, "note": note}


def _placements(score: np.ndarray, positive: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the DeLong placement values of positives (V10) and negatives (V01), from midranks (Sun & Xu 2014)."""
    pos, neg = score[positive], score[~positive]
    m, n = len(pos), len(neg)
    rank_all = st.rankdata(np.concatenate([pos, neg]))
    rank_pos, rank_neg = st.rankdata(pos), st.rankdata(neg)
    v10 = (rank_all[:m] - rank_pos) / n  # share of negatives below each positive, ties 1/2
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m  # share of positives above each negative, ties 1/2
    return float(v10.mean()), v10, v01


def delong_test(y_true, score_a, score_b) -> dict:
    """DeLong's test for two correlated AUCs on the same cases (binary y_true, 1/True = positive). Two-sided p from
    z = (AUC_a - AUC_b) / sd. NaN everywhere when a class has fewer than 2 cases (the variance is undefined)."""
    positive = np.asarray(y_true).astype(bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    if not len(positive) == len(a) == len(b):
        raise ValueError(f"y_true, score_a, score_b differ in length: {len(positive)}, {len(a)}, {len(b)}")
    m = int(positive.sum())
    if min(m, len(positive) - m) < 2:
        return {"auc_a": np.nan, "auc_b": np.nan, "z": np.nan, "p_value": np.nan}
    auc_a, v10_a, v01_a = _placements(a, positive)
    auc_b, v10_b, v01_b = _placements(b, positive)
    # Var(AUC_a - AUC_b) = Var(V10_a - V10_b)/m + Var(V01_a - V01_b)/n, the contrast form of S10/m + S01/n.
    var = np.var(v10_a - v10_b, ddof=1) / m + np.var(v01_a - v01_b, ddof=1) / (len(positive) - m)
    diff = auc_a - auc_b
    if var > 0:
        z = diff / math.sqrt(var)
    else:  # identical placements: no difference (z = 0, p = 1), or a difference with no variance
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return {"auc_a": auc_a, "auc_b": auc_b, "z": float(z), "p_value": float(2.0 * st.norm.sf(abs(z)))}


def wilcoxon_paired(a, b) -> float:
    """Two-sided p of the Wilcoxon signed-rank test on per-case paired values a_i - b_i."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.all(diff == 0):
        # No non-zero difference: no evidence of a difference (scipy would warn and return NaN).
        return 1.0
    return float(st.wilcoxon(diff, alternative="two-sided").pvalue)


def stars(p: float) -> str:
    """Significance stars: *** p <= 0.001, ** <= 0.01, * <= 0.05, "" otherwise or NaN."""
    if not p <= 0.05:  # also catches NaN
        return ""
    return "***" if p <= 0.001 else "**" if p <= 0.01 else "*"
