"""Statistics for the reports: relative performance gain (001), correlation with permutation p-values for a handful
of tasks and the paired Wilcoxon test (002 section 4.6), a paired patient bootstrap
(resampling weights, weighted means and AUCs), the test and interval of a training procedure over its training
runs and the test patients, and significance stars.

Bootstrap resamples are weight matrices: weights[b, i] = how often case i's patient was drawn in resample b. A
metric computed with these weights equals the metric of the resampled rows (duplicates counted), in one vectorised
pass instead of B data frames; and the same matrix serves every model and seed, which is what pairs them."""

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


# --- paired patient bootstrap -------------------------------------------------------------------------------------

def patient_bootstrap_weights(patients, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) case weights: each resample draws as many patients as there are, with replacement, and every
    case of a drawn patient gets the number of times its patient was drawn (a patient's cases stay together)."""
    _, codes = np.unique(np.asarray(patients), return_inverse=True)
    n_patients = codes.max() + 1
    draws = np.random.default_rng(seed).integers(0, n_patients, (n_boot, n_patients))
    # one bincount over all resamples: resample b's draws are offset by b * n_patients
    counts = np.bincount((draws + n_patients * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n_patients)
    return counts.reshape(n_boot, n_patients)[:, codes].astype(np.float64)


def _class_weight_by_score(score: np.ndarray, positive: np.ndarray, weights: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(B, G) total weight of positives and of negatives at each distinct score value (ascending). Sorted sums
    (reduceat), not a product with a one-hot matrix: BLAS threads on these small products are slower than the
    arithmetic, badly so on a shared machine."""
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    w = weights[:, order]
    return (np.add.reduceat(w * positive[order], starts, axis=1),
            np.add.reduceat(w * ~positive[order], starts, axis=1))


def weighted_auc(positive, score, weights) -> np.ndarray:
    """AUC (Mann-Whitney, ties 1/2) of `score` for binary `positive` under each row of (B, n) `weights`, shape (B,):
    sklearn's roc_auc_score of the resampled rows. NaN where the weights leave one class empty; cases with a NaN
    score are left out."""
    positive, score = np.asarray(positive, dtype=bool), np.asarray(score, dtype=np.float64)
    scored = np.isfinite(score)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64)) * scored
    pos_w, neg_w = _class_weight_by_score(np.where(scored, score, 0.0), positive, weights)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1) / total
    return np.where(total > 0, auc, np.nan)


def weighted_macro_auc(true_index, prob, weights) -> np.ndarray:
    """Macro one-vs-rest AUC (the classes with positives and negatives in the resample) under each row of (B, n)
    `weights`, shape (B,); prob (n, k), true_index 0..k-1 (taskalign.evaluate.metrics.multiclass_auc's estimator)."""
    true_index, prob = np.asarray(true_index), np.asarray(prob, dtype=np.float64)
    per_class = np.stack([weighted_auc(true_index == c, prob[:, c], weights) for c in range(prob.shape[1])])
    finite = np.isfinite(per_class)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(axis=0), np.nansum(per_class, axis=0) / finite.sum(axis=0), np.nan)


def weighted_mean(values, weights) -> np.ndarray:
    """Mean of per-case `values` under each row of (B, n) `weights`, NaN values left out (a lesion Dice of a
    lesion-free case), shape (B,)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    total = np.einsum("bi,i->b", weights, finite.astype(np.float64))  # einsum: no BLAS threads (see above)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.einsum("bi,i->b", weights, np.where(finite, values, 0.0)) / total, np.nan)


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """Central percentile interval of resampled values, NaN draws left out ((nan, nan) when none is finite)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


# --- training procedures: seeds and patients ----------------------------------------------------------------------

MIN_SEEDS = 2  # one training run gives no estimate of how much training runs differ


def _satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates [(variance, its df), ...]."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if df > 0)
    return float(total * total / denominator) if denominator > 0 else math.inf


def _procedure_parts(seed_values, mean_draws, n_patients: int) -> list[tuple[float, float]]:
    """[(s^2 / S, S - 1), (Var of the patient-bootstrap draws, n_patients - 1)] of one procedure's seed mean."""
    seed_values = np.asarray(seed_values, dtype=np.float64)
    draws = np.asarray(mean_draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    return [(float(np.var(seed_values, ddof=1)) / len(seed_values), len(seed_values) - 1.0),
            (float(np.var(draws, ddof=1)) if len(draws) > 1 else 0.0, max(n_patients - 1.0, 1.0))]


def procedure_test(seeds_a, seeds_b, difference_draws, n_patients: int) -> tuple[float, float]:
    """Two-sided p and degrees of freedom of "training procedures a and b are equally good", with both sources of
    variance: the spread between training runs and the sampling of test patients.

    seeds_a (S_a,), seeds_b (S_b,): each training run's metric on the shared test cases; difference_draws (B,):
    the seed-mean difference a - b on paired patient resamples (the same resamples for both, every seed rescored).
    t = (mean_a - mean_b) / sqrt(s_a^2/S_a + s_b^2/S_b + Var(draws)), Welch-Satterthwaite df (the seed terms
    have S - 1 df, the patient term n_patients - 1). The seed variance also holds each run's own patient noise,
    which the bootstrap term counts again: the test errs on the conservative side. NaN with fewer than MIN_SEEDS
    runs on either side; p = 1 when both means and all variances are 0 (identical procedures)."""
    a, b = np.asarray(seeds_a, dtype=np.float64), np.asarray(seeds_b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(len(a), len(b)) < MIN_SEEDS:
        return float("nan"), float("nan")
    draws = np.asarray(difference_draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    parts = [(float(np.var(a, ddof=1)) / len(a), len(a) - 1.0), (float(np.var(b, ddof=1)) / len(b), len(b) - 1.0),
             (float(np.var(draws, ddof=1)) if len(draws) > 1 else 0.0, max(n_patients - 1.0, 1.0))]
    variance = sum(v for v, _ in parts)
    diff = float(a.mean() - b.mean())
    if variance <= 0:
        return (1.0 if diff == 0 else 0.0), math.inf
    df = _satterthwaite(parts)
    return float(2.0 * st.t.sf(abs(diff) / math.sqrt(variance), df)), df


def procedure_interval(seed_values, mean_draws, n_patients: int, level: float = 0.95) -> tuple[float, float]:
    """`level` interval of a training procedure's mean metric (over training runs and patients): seed mean
    ± sqrt(t_{S-1}^2 s^2/S + t_{n_patients-1}^2 Var(patient-bootstrap draws of the seed mean)), each variance
    component with its own quantile. (nan, nan) with fewer than MIN_SEEDS finite runs (the spread between runs is
    then unknown).

    A single Welch-Satterthwaite t (as procedure_test uses) covered the procedure's mean only ~0.90 in simulation
    when the seed spread is estimated from 3 runs (benchmarks/results.md, "Calibration"); this combination is
    exact when either component is 0 and conservative in between."""
    values = np.asarray(seed_values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < MIN_SEEDS:
        return float("nan"), float("nan")
    (v_seed, df_seed), (v_patient, df_patient) = _procedure_parts(values, mean_draws, n_patients)
    tail = 0.5 + level / 2.0
    half = math.sqrt(st.t.ppf(tail, df_seed) ** 2 * v_seed + st.t.ppf(tail, df_patient) ** 2 * v_patient)
    return float(values.mean() - half), float(values.mean() + half)
