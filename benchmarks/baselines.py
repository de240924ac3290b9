"""Plain numpy reference implementations of the analysis formulas: the textbook way, nothing fused.

They are the baselines of section 3 of benchmarks/run.py and the references of tests/test_benchmarks.py.

- Linear CKA (Kornblith et al. 2019): explicit n x n Grams K = X X^T, L = Y Y^T, centring matrix
  H = I - 1 1^T / n and HSIC(K, L) = tr(K H L H) / (n - 1)^2, every product an n x n matrix product.
- Debiased CKA: the unbiased HSIC of Song et al. (2012) on the Grams with zeroed diagonals,
  [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2 / (n-2) 1^T K~ L~ 1] / (n (n-3)).
- Both CKAs either with the Grams as matrix products (`gram=matrix_gram`) or built pairwise, K_ij = x_i . x_j by a
  double loop over rows vectorised over the feature dimension (`gram=loop_gram`, like the MMD kernel sums).
- Patient bootstrap of the evaluation CIs: one metric at a time, each resample built by concatenating per-patient
  frames (the first implementation of taskalign.evaluate.metrics.bootstrap_ci).
- PI-RADS metrics the first way: every AUC a roc_auc_score call, the specificity from its own roc_curve.
- MMD^2 with k(u, v) = exp(-||u - v||^2 / sigma^2): kernel sums over every pair of rows by a double loop in
  Python, vectorised over the feature dimension only; biased (V-statistic) or unbiased (U-statistic) combination.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _f64(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an n x d array, got shape {x.shape}")
    return x


def _centring(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """tr(K H L H) / (n - 1)^2 with the explicit centring matrix."""
    n = len(k)
    h = _centring(n)
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC estimator (needs n >= 4)."""
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    kl = kt @ lt
    value = np.trace(kl) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ kl @ one)
    return float(value) / (n * (n - 3))


def matrix_gram(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def loop_gram(x: np.ndarray, rows: int | None = None) -> np.ndarray:
    """K_ij = x_i . x_j by a double loop over rows, vectorised over features only. `rows` fills only the first
    `rows` rows (for timing a subsample; the rest stays zero)."""
    n = len(x)
    k = np.zeros((n, n))
    for i in range(n if rows is None else min(rows, n)):
        xi = x[i]
        for j in range(n):
            k[i, j] = float(xi @ x[j])
    return k


def cka_from_grams(k: np.ndarray, l: np.ndarray, hsic) -> float:
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _cka(x, y, hsic, gram) -> float:
    x, y = _f64(x), _f64(y)
    return cka_from_grams(gram(x), gram(y), hsic)


def plain_linear_cka(x, y, gram=matrix_gram) -> float:
    """Biased linear CKA from explicit Grams and HKH products."""
    return _cka(x, y, hsic_biased, gram)


def plain_debiased_cka(x, y, gram=matrix_gram) -> float:
    """Linear CKA from the unbiased HSIC."""
    return _cka(x, y, hsic_unbiased, gram)


def kernel_sums(a, b, sigma: float, rows: int | None = None) -> tuple[float, float]:
    """(sum_ij k(a_i, b_j), sum_i k(a_i, b_i)) by a double loop over rows, vectorised over features only.

    `rows` limits the outer loop to the first `rows` rows of `a` (for timing a subsample; the sums are then
    partial)."""
    a, b = _f64(a), _f64(b)
    s2 = sigma * sigma
    total, diagonal = 0.0, 0.0
    for i in range(len(a) if rows is None else min(rows, len(a))):
        ai = a[i]
        for j in range(len(b)):
            d = ai - b[j]
            value = math.exp(-float(np.sum(d * d)) / s2)
            total += value
            if i == j:
                diagonal += value
    return total, diagonal


def combine(sxx: float, syy: float, sxy: float, tx: float, ty: float, n: int, m: int, estimator: str) -> float:
    if estimator == "biased":
        return sxx / n**2 + syy / m**2 - 2.0 * sxy / (n * m)
    if estimator == "unbiased":
        return (sxx - tx) / (n * (n - 1)) + (syy - ty) / (m * (m - 1)) - 2.0 * sxy / (n * m)
    raise ValueError(f"estimator must be 'biased' or 'unbiased', got {estimator!r}")


def plain_mmd_sums(x, y, sigma: float) -> dict:
    """The three kernel-block sums and the two traces, each by the double loop."""
    x, y = _f64(x), _f64(y)
    sxx, tx = kernel_sums(x, x, sigma)
    syy, ty = kernel_sums(y, y, sigma)
    sxy, _ = kernel_sums(x, y, sigma)
    return {"sxx": sxx, "syy": syy, "sxy": sxy, "tx": tx, "ty": ty, "n": len(x), "m": len(y)}


def plain_mmd2(x, y, sigma: float, estimator: str = "biased", sums: dict | None = None) -> float:
    """MMD^2 (biased V- or unbiased U-statistic) from the double-loop kernel sums (pass `sums` to reuse them)."""
    s = sums if sums is not None else plain_mmd_sums(x, y, sigma)
    return combine(s["sxx"], s["syy"], s["sxy"], s["tx"], s["ty"], s["n"], s["m"], estimator)


def plain_bootstrap_ci(frame: pd.DataFrame, metric_fn, n_boot: int, seed: int,
                       group_col: str = "patient_id") -> tuple[float, float]:
    """95% percentile CI of one metric over resamples of whole patients, each resample a pd.concat of frames."""
    rng = np.random.default_rng(seed)
    groups = [g for _, g in frame.groupby(group_col, sort=True)]
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(groups), len(groups))
        value = metric_fn(pd.concat([groups[i] for i in picked], ignore_index=True))
        if np.isfinite(value):
            draws.append(value)
    if len(draws) < 10:
        return float("nan"), float("nan")
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def plain_pirads_metrics(y_true, prob, threshold: float = float("nan")) -> dict[str, float]:
    """taskalign.evaluate.metrics.pirads_metrics as first written: roc_auc_score per AUC (label checks and
    binarisation on every call); the specificity counted directly at the (validation) threshold."""
    from sklearn.metrics import roc_auc_score

    def auc(y, score):
        return float(roc_auc_score(y, score)) if 0 < np.sum(y) < len(y) else float("nan")

    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    ge3, ge4 = prob[:, 1:].sum(axis=1), prob[:, 2:].sum(axis=1)
    per_class = [a for a in (auc(y_true == c, prob[:, c - 2]) for c in (2, 3, 4, 5)) if np.isfinite(a)]
    negatives = ge3[y_true < 3]
    spec = float(np.mean(negatives < threshold)) if len(negatives) and np.isfinite(threshold) else float("nan")
    return {"auc": float(np.mean(per_class)) if per_class else float("nan"), "auc_ge3": auc(y_true >= 3, ge3),
            "auc_ge4": auc(y_true >= 4, ge4), "spec_at_sens90": spec}
