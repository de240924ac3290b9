"""Maximum mean discrepancy between two feature sets (001 eq. 1, D2R/D2P/D2S) with the Gaussian kernel
k(u, v) = exp(-||u - v||^2 / sigma^2) (sigma^2, not 2 sigma^2), a saturation diagnostic and, for paired sets (the
same cases through two encoders), a sign-flip test, jackknife standard errors and both estimators.

With the paper's sigma = 1 on raw 768-d embeddings every off-diagonal kernel value underflows to 0 and the biased
MMD^2 is 2/N for any pair of models, so features are L2-normalised first and saturation is reported and logged.
The paper's biased estimator is not 0 for two samples of one distribution: for two independent samples its bias is
about 2/N (1 - E k(x, x')) (0.015 at N = 113 for normalised 768-d features), for the paired D2x (the same cases
through two encoders) 2/N (1 - mean_i k(x_i, y_i)), smaller the closer each case's two encodings are; either is as
large as the smallest distances 001 reports, so the unbiased U-statistic is the primary estimate.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

# No per-set z-score: standardising each set with its own statistics erases the location and scale shifts that
# MMD is meant to detect.
Normalisation = Literal["l2", "none"]
MMDEstimator = Literal["biased", "unbiased"]

# Median off-diagonal kernel value below this (or above 1 minus this) means the kernel carries ~no information.
SATURATION_TOL = 1e-6
_PERM_CHUNK_ENTRIES = 2**23
_TIE_TOL = 1e-12


def _as_2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an n x d array, got shape {x.shape}")
    return x


def normalise(features, how: Normalisation = "l2") -> np.ndarray:
    """"l2": each row scaled to unit norm (squared distances in [0, 4]; zero rows stay 0); "none": float64 copy."""
    x = _as_2d(features)
    if how == "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    if how == "none":
        return x.copy()
    raise ValueError(f"normalisation must be 'l2' or 'none', got {how!r}")


def squared_distances(a, b=None) -> np.ndarray:
    """Pairwise squared Euclidean distances ||a||^2 + ||b||^2 - 2 a b^T, clipped at 0 (rounding); of a with itself
    (exact zero diagonal) when b is None."""
    a = _as_2d(a)
    same = b is None
    b = a if same else _as_2d(b)
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    if same:
        np.fill_diagonal(d2, 0.0)
    return d2


def _offdiag_median(d2: np.ndarray) -> float:
    return float(np.median(d2[np.triu_indices(len(d2), k=1)]))


def median_sigma(*feature_sets) -> float:
    """Median heuristic: sqrt of the median squared distance over distinct pairs of the pooled rows."""
    pooled = np.vstack([_as_2d(x) for x in feature_sets])
    if len(pooled) < 2:
        raise ValueError("the median heuristic needs at least 2 rows")
    return float(np.sqrt(_offdiag_median(squared_distances(pooled))))


def saturation(x, y, sigma: float) -> float:
    """Median of d^2 / sigma^2 over distinct pairs of the pooled rows; the median kernel value is exp(-this)."""
    return _offdiag_median(squared_distances(np.vstack([_as_2d(x), _as_2d(y)]))) / sigma**2


def is_saturated(median_d2_over_sigma2: float) -> bool:
    """True when the median off-diagonal kernel value exp(-median d^2/sigma^2) is ~0 or ~1 (see SATURATION_TOL)."""
    k = np.exp(-median_d2_over_sigma2)
    return bool(k < SATURATION_TOL or k > 1.0 - SATURATION_TOL)


def _combine(sxx, syy, sxy, tx, ty, n: int, m: int, estimator: MMDEstimator):
    """MMD^2 from the kernel sums over the X block, the Y block and the cross block, and the X and Y traces."""
    if estimator == "biased":
        return sxx / n**2 + syy / m**2 - 2.0 * sxy / (n * m)
    if estimator == "unbiased":
        return (sxx - tx) / (n * (n - 1)) + (syy - ty) / (m * (m - 1)) - 2.0 * sxy / (n * m)
    raise ValueError(f"estimator must be 'biased' or 'unbiased', got {estimator!r}")


def _pooled(x, y, estimator: MMDEstimator) -> tuple[np.ndarray, int, int]:
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < (2 if estimator == "unbiased" else 1):
        raise ValueError(f"too few rows for the {estimator} MMD: {len(x)} and {len(y)}")
    return squared_distances(np.vstack([x, y])), len(x), len(y)


def _block_mmd2(k: np.ndarray, n: int, estimator: MMDEstimator) -> float:
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(_combine(kxx.sum(), kyy.sum(), kxy.sum(), np.trace(kxx), np.trace(kyy), n, len(k) - n, estimator))


def mmd2(x, y, sigma: float, estimator: MMDEstimator = "biased") -> float:
    """MMD^2 of n x d `x` and m x d `y`: "biased" V-statistic over all n^2, m^2, nm terms (001 eq. 1, >= 0, exactly 0
    for identical sets) or the two-sample U-statistic (within-set diagonals left out; can be negative)."""
    d2, n, _ = _pooled(x, y, estimator)
    return _block_mmd2(np.exp(-d2 / sigma**2), n, estimator)


def paired_gram(x, y, sigma: float) -> np.ndarray:
    """(N, N) g_ij = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j) for paired rows (row i of x and of y
    are one case): the inner product of the feature-space differences phi(x_i) - phi(y_i) and phi(x_j) - phi(y_j)."""
    x, y = _as_2d(x), _as_2d(y)
    if x.shape != y.shape:
        raise ValueError(f"paired feature sets need the same shape, got {x.shape} and {y.shape}")
    if np.array_equal(x, y):  # e.g. D2P of a frozen encoder: exactly 0, not the 1e-18 rounding of the expansion
        return np.zeros((len(x), len(x)))
    k = np.exp(-squared_distances(np.vstack([x, y])) / sigma**2)
    n = len(x)
    kxy = k[:n, n:]
    return k[:n, :n] + k[n:, n:] - kxy - kxy.T


def paired_mmd2(g: np.ndarray, estimator: MMDEstimator) -> float:
    """MMD^2 from a paired Gram matrix: "biased" sum over all N^2 pairs / N^2 (001 eq. 1, equal to mmd2's biased
    value), "unbiased" the mean over distinct cases i != j. The unbiased form leaves out the cross terms
    k(x_i, y_i) of a case with itself too: they are not independent pairs, so the two-sample U-statistic would be
    biased low for paired sets."""
    n = len(g)
    if estimator == "biased":
        return float(g.sum() / n**2)
    if estimator == "unbiased":
        return float((g.sum() - np.trace(g)) / (n * (n - 1)))
    raise ValueError(f"estimator must be 'biased' or 'unbiased', got {estimator!r}")


def jackknife_se(g: np.ndarray, estimator: MMDEstimator) -> float:
    """Leave-one-case-out jackknife standard error of paired_mmd2, from row sums (no refit): sqrt((N-1)/N
    sum_i (T_-i - mean T_-i)^2). NaN below 3 cases."""
    n = len(g)
    if n < 3:
        return float("nan")
    rows = g.sum(axis=1)
    diag = np.diag(g)
    if estimator == "biased":
        left_out = (g.sum() - 2.0 * rows + diag) / (n - 1) ** 2
    elif estimator == "unbiased":
        off_rows = rows - diag
        left_out = (g.sum() - np.trace(g) - 2.0 * off_rows) / ((n - 1) * (n - 2))
    else:
        raise ValueError(f"estimator must be 'biased' or 'unbiased', got {estimator!r}")
    return float(np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2)))


def sign_flip_p(g: np.ndarray, n_perm: int, seed: int) -> float:
    """p = (1 + #{T_b >= T}) / (B + 1) of the paired MMD^2 when each case's two feature vectors are swapped at
    random: a swap flips the sign of that case's difference, so T_b = e^T G_off e with e_i = +-1 (the diagonal
    does not change, so the biased and the unbiased estimator give the same p). The null is that a case's two
    encodings are exchangeable; unlike a re-split of the pooled rows it keeps each case's pair together."""
    off = g - np.diag(np.diag(g))
    observed = float(off.sum())
    rng = np.random.default_rng(seed)
    chunk = max(1, _PERM_CHUNK_ENTRIES // len(g))
    exceed = 0
    for start in range(0, n_perm, chunk):
        signs = rng.choice([-1.0, 1.0], size=(len(g), min(chunk, n_perm - start)))
        null = np.einsum("ib,ib->b", signs, off @ signs)
        exceed += int(np.sum(null >= observed - _TIE_TOL * max(1.0, abs(observed))))
    return (1 + exceed) / (n_perm + 1)


def paired_mmd_test(x, y, sigma: float, n_perm: int = 999, seed: int = 0,
                    logger: logging.Logger | None = None) -> dict:
    """Both estimators of MMD^2 for paired rows, their jackknife standard errors over cases, the sign-flip p and
    the saturation diagnostic (a warning is logged when the kernel is saturated).

    Returns unbiased, biased, se_unbiased, se_biased, p_value, saturated, median_d2_over_sigma2, n."""
    x, y = _as_2d(x), _as_2d(y)
    if len(x) < 3:
        raise ValueError(f"the paired MMD needs at least 3 cases, got {len(x)}")
    ratio = saturation(x, y, sigma)
    saturated = is_saturated(ratio)
    if saturated:
        (logger or log).warning("MMD kernel saturated: median d^2/sigma^2 = %.4g (sigma %.4g, %d cases); the "
                                "statistic carries little information, normalise the features or change sigma",
                                ratio, sigma, len(x))
    g = paired_gram(x, y, sigma)
    result = {estimator: paired_mmd2(g, estimator) for estimator in ("unbiased", "biased")}
    result.update({f"se_{estimator}": jackknife_se(g, estimator) for estimator in ("unbiased", "biased")})
    return {**result, "p_value": sign_flip_p(g, n_perm, seed) if n_perm > 0 else float("nan"),
            "saturated": saturated, "median_d2_over_sigma2": ratio, "n": len(x)}
