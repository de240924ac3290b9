"""Maximum mean discrepancy between two feature sets (001 eq. 1, D2R/D2P/D2S) with the Gaussian kernel
k(u, v) = exp(-||u - v||^2 / sigma^2) (sigma^2, not 2 sigma^2), a saturation diagnostic and a permutation test.

With the paper's sigma = 1 on raw 768-d embeddings every off-diagonal kernel value underflows to 0 and the biased
MMD^2 is 2/N for any pair of models, so features are normalised first and saturation is reported and logged.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Normalisation = Literal["l2", "zscore", "none"]
MMDEstimator = Literal["biased", "unbiased"]

# Median off-diagonal kernel value below this (or above 1 minus this) means the kernel carries ~no information.
SATURATION_TOL = 1e-6
_PERM_CHUNK_ENTRIES = 2**23


def _as_2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an n x d array, got shape {x.shape}")
    return x


def normalise(features, how: Normalisation = "l2") -> np.ndarray:
    """"l2": each row scaled to unit norm (squared distances in [0, 4]); "zscore": each column to mean 0, sd 1,
    then / sqrt(d) (expected squared distance ~2); "none": float64 copy. Zero rows and constant columns stay 0."""
    x = _as_2d(features)
    if how == "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    if how == "zscore":
        sd = x.std(axis=0)
        z = np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 0)
        return z / np.sqrt(x.shape[1])
    if how == "none":
        return x.copy()
    raise ValueError(f"normalisation must be 'l2', 'zscore' or 'none', got {how!r}")


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


def gaussian_kernel(a, b, sigma: float) -> np.ndarray:
    """k(a_i, b_j) = exp(-||a_i - b_j||^2 / sigma^2)."""
    return np.exp(-squared_distances(a, b) / sigma**2)


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


def _permuted_mmd2(k: np.ndarray, masks: np.ndarray, n: int, estimator: MMDEstimator) -> np.ndarray:
    """MMD^2 for each column of `masks` (1 = row assigned to X), via one matrix product per batch of columns."""
    other = 1.0 - masks
    kx = k @ masks
    ky = k.sum(axis=1)[:, None] - kx
    diag = np.diag(k)
    sxx, sxy, syy = (np.einsum("ij,ij->j", masks, kx), np.einsum("ij,ij->j", other, kx),
                     np.einsum("ij,ij->j", other, ky))
    return _combine(sxx, syy, sxy, diag @ masks, diag @ other, n, len(k) - n, estimator)


def mmd_test(x, y, sigma: float, estimator: MMDEstimator = "biased", n_perm: int = 999, seed: int = 0,
             logger: logging.Logger | None = None) -> dict:
    """MMD^2 with a permutation p-value (1 + #{T_b >= T}) / (B + 1) over random re-splits of the pooled rows, plus
    the saturation diagnostic (a warning is logged when the kernel is saturated)."""
    d2, n, m = _pooled(x, y, estimator)
    k = np.exp(-d2 / sigma**2)
    ratio = _offdiag_median(d2) / sigma**2
    saturated = is_saturated(ratio)
    if saturated:
        (logger or log).warning("MMD kernel saturated: median d^2/sigma^2 = %.4g (sigma %.4g, %d + %d rows); the "
                                "statistic carries little information, normalise the features or change sigma",
                                ratio, sigma, n, m)
    total = n + m
    identity = np.zeros((total, 1))
    identity[:n] = 1.0
    # The observed value goes through the same batched arithmetic as the permutations so that ties compare exactly.
    observed = float(_permuted_mmd2(k, identity, n, estimator)[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = max(1, _PERM_CHUNK_ENTRIES // total)
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        order = rng.permuted(np.tile(np.arange(total)[:, None], (1, b)), axis=0)
        masks = np.zeros((total, b))
        masks[order[:n], np.arange(b)] = 1.0
        exceed += int(np.sum(_permuted_mmd2(k, masks, n, estimator) >= observed))
    return {"value": _block_mmd2(k, n, estimator), "p_value": (1 + exceed) / (n_perm + 1), "saturated": saturated,
            "median_d2_over_sigma2": ratio}
