"""Linear CKA between two representations of the same cases: the paper's biased estimator (Kornblith et al. 2019,
000 eq. 7) and the debiased one built on the unbiased HSIC (Song et al. 2012), plus layer x layer matrices, a
shuffled-rows null (its 95th percentile and a permutation p) and subsampling intervals; two CKAs computed on the
same subsets give a paired interval of their difference.

Biased CKA of unrelated features is about d / (n + d), so at our n and d it is large even for noise; the null and
the debiased estimator put the paper's numbers in context. Everything is computed in float64 on column-centred
features (the unbiased HSIC cancels huge terms on uncentred float32 features).

Each CKA is a normalised similarity s(X, Y) / sqrt(s(X, X) s(Y, Y)). s is evaluated either in feature space
(||Y^T X||_F^2 and its debiased correction, cost ~ n (d1 d2 + d1^2 + d2^2)) or in Gram space (inner product of
double-centred or U-centred n x n Grams, cost ~ n^2 (d1 + d2) to build them); `space="auto"` takes the cheaper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as st

from taskalign.analysis.stats import percentile_interval

log = logging.getLogger(__name__)

Space = Literal["auto", "feature", "gram"]
Estimator = Callable[..., float]


def _centre(x) -> np.ndarray:
    """Column-centred float64 copy; the caller's array is never modified."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an n x d array, got shape {x.shape}")
    xc = x - x.mean(axis=0)
    # Constant columns become exact zeros, so a constant representation has self-similarity 0 (-> NaN), not noise.
    xc[:, np.ptp(x, axis=0) == 0] = 0.0
    return xc


def _pair(x, y, debiased: bool) -> tuple[np.ndarray, np.ndarray]:
    xc, yc = _centre(x), _centre(y)
    if len(xc) != len(yc):
        raise ValueError(f"x and y must hold the same cases: {len(xc)} vs {len(yc)} rows")
    _check_n(len(xc), debiased)
    return xc, yc


def _check_n(n: int, debiased: bool) -> None:
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 cases (the unbiased HSIC divides by n - 3), got {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 cases, got {n}")


def _resolve(space: Space, n: int, d1: int, d2: int) -> Literal["feature", "gram"]:
    if space == "auto":
        # Multiply-adds of the two routes: d x d products of the features vs building two n x n Grams.
        return "feature" if d1 * d2 + d1 * d1 + d2 * d2 < n * (d1 + d2) else "gram"
    if space not in ("feature", "gram"):
        raise ValueError(f"space must be 'auto', 'feature' or 'gram', got {space!r}")
    return space


def _centre_gram(k: np.ndarray, debiased: bool) -> np.ndarray:
    """Double-centred Gram (biased HSIC) or U-centred Gram (unbiased HSIC, Szekely & Rizzo 2014); k is not
    modified. Both remove additive row and column effects, so the Gram of any shift of the features works."""
    if not debiased:
        means = k.mean(axis=0)
        centred = k - means[:, None]
        centred -= means[None, :] - means.mean()
        return centred
    n = len(k)
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    means = k.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    k -= means[:, None]
    k -= means[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def _feature_similarity(xc: np.ndarray, yc: np.ndarray, debiased: bool) -> float:
    """<XX^T, YY^T> = ||Y^T X||_F^2 for centred X, Y; debiased: the same U-statistic as the U-centred Grams
    (Kornblith's feature-space form), up to a factor common to all terms of one CKA."""
    sim = float(np.sum((yc.T @ xc) ** 2))
    if debiased:
        n = len(xc)
        rx, ry = np.einsum("ij,ij->i", xc, xc), np.einsum("ij,ij->i", yc, yc)
        sim += -n / (n - 2) * float(rx @ ry) + float(rx.sum() * ry.sum()) / ((n - 1) * (n - 2))
    return sim


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    # Flattened BLAS dot: an order of magnitude faster than np.vdot on n x n matrices.
    return float(a.ravel() @ b.ravel())


def _ratio(sxy: float, sxx: float, syy: float) -> float:
    # No epsilon in the denominator: it would break scale invariance; an undefined CKA is NaN.
    if sxx <= 0 or syy <= 0:
        log.warning("CKA undefined: self-similarity <= 0 (constant features or too few cases); returning NaN")
        return float("nan")
    return float(sxy / (np.sqrt(sxx) * np.sqrt(syy)))


def _feature_gram(xc: np.ndarray, debiased: bool) -> np.ndarray:
    """The centred (biased) or U-centred (debiased) Gram of column-centred features. The Gram of centred features
    is already double-centred, so the biased route skips a pass over n x n."""
    k = xc @ xc.T  # numpy runs X X^T as a symmetric rank-k update: half a general product
    return k if not debiased else _centre_gram(k, True)


def _gram_cka(kx: np.ndarray, ky: np.ndarray, debiased: bool) -> float:
    gx, gy = _centre_gram(kx, debiased), _centre_gram(ky, debiased)
    return _centred_gram_cka(gx, gy)


def _centred_gram_cka(gx: np.ndarray, gy: np.ndarray) -> float:
    return _ratio(_inner(gx, gy), _inner(gx, gx), _inner(gy, gy))


def _cka(xc: np.ndarray, yc: np.ndarray, debiased: bool, space: Space) -> float:
    if _resolve(space, len(xc), xc.shape[1], yc.shape[1]) == "gram":
        return _centred_gram_cka(_feature_gram(xc, debiased), _feature_gram(yc, debiased))
    return _ratio(_feature_similarity(xc, yc, debiased), _feature_similarity(xc, xc, debiased),
                  _feature_similarity(yc, yc, debiased))


def linear_cka(x, y, space: Space = "auto") -> float:
    """Biased linear CKA (Kornblith et al. 2019) of n x d1 `x` and n x d2 `y` (rows = the same cases)."""
    return _cka(*_pair(x, y, False), False, space)


def debiased_cka(x, y, space: Space = "auto") -> float:
    """Linear CKA from the unbiased HSIC (Song et al. 2012); needs n >= 4, can be negative, NaN when a
    self-HSIC <= 0."""
    return _cka(*_pair(x, y, True), True, space)


def _is_debiased(estimator: Estimator) -> bool:
    if estimator is linear_cka:
        return False
    if estimator is debiased_cka:
        return True
    raise ValueError(f"estimator must be linear_cka or debiased_cka, got {estimator!r}")


def cka_matrix(feats_a: Mapping[str, np.ndarray], feats_b: Mapping[str, np.ndarray], estimator: Estimator,
               space: Space = "auto") -> pd.DataFrame:
    """CKA of every layer of a (index) with every layer of b (columns). Each layer is centred (and its Gram built)
    once; the pairs are then inner products."""
    debiased = _is_debiased(estimator)
    a = {name: _centre(x) for name, x in feats_a.items()}
    b = {name: _centre(x) for name, x in feats_b.items()}
    sizes = {len(x) for x in (*a.values(), *b.values())}
    if len(sizes) != 1:
        raise ValueError(f"all layers must hold the same cases, got row counts {sorted(sizes)}")
    n = sizes.pop()
    _check_n(n, debiased)
    route = _resolve(space, n, max(x.shape[1] for x in a.values()), max(x.shape[1] for x in b.values()))
    if route == "gram":
        ga = np.stack([_feature_gram(x, debiased).ravel() for x in a.values()])
        gb = np.stack([_feature_gram(x, debiased).ravel() for x in b.values()])
        cross = ga @ gb.T
        self_a, self_b = np.einsum("ij,ij->i", ga, ga), np.einsum("ij,ij->i", gb, gb)
    else:
        cross = np.array([[_feature_similarity(x, y, debiased) for y in b.values()] for x in a.values()])
        self_a = np.array([_feature_similarity(x, x, debiased) for x in a.values()])
        self_b = np.array([_feature_similarity(y, y, debiased) for y in b.values()])
    values = [[_ratio(cross[i, j], self_a[i], self_b[j]) for j in range(len(b))] for i in range(len(a))]
    return pd.DataFrame(values, index=list(a), columns=list(b))


def shuffled_null(x, y, estimator: Estimator, n_perm: int, seed: int) -> np.ndarray:
    """CKA with the rows of y randomly permuted, `n_perm` times: the value two unrelated representations of these
    shapes reach. Permuting rows permutes the centred (or U-centred) Gram, so each permutation costs O(n^2)."""
    debiased = _is_debiased(estimator)
    xc, yc = _pair(x, y, debiased)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(xc)) for _ in range(n_perm)]
    if _resolve("auto", len(xc), xc.shape[1], yc.shape[1]) == "gram":
        gx, gy = _feature_gram(xc, debiased), _feature_gram(yc, debiased)
        sxx, syy = _inner(gx, gx), _inner(gy, gy)
        return np.array([_ratio(_inner(gx, gy[np.ix_(p, p)]), sxx, syy) for p in perms])
    sxx, syy = _feature_similarity(xc, xc, debiased), _feature_similarity(yc, yc, debiased)
    return np.array([_ratio(_feature_similarity(xc, yc[p], debiased), sxx, syy) for p in perms])


def null_summary(observed: float, null: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The null's `level` percentile and the one-sided permutation p = (1 + #{null >= observed}) / (B + 1): how
    often rows matched at random reach the observed CKA (the +1 counts the observed ordering, so p is never 0).
    NaN null draws (undefined CKA) are left out."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not len(null) or not np.isfinite(observed):
        return float("nan"), float("nan")
    return float(np.percentile(null, 100.0 * level)), float((1 + np.sum(null >= observed)) / (len(null) + 1))


def subsample_size(n: int, fraction: float, debiased: bool) -> int:
    """round(fraction * n) cases, raised to 4 for the debiased estimator (the unbiased HSIC divides by n - 3)."""
    m = int(round(fraction * n))
    return max(m, 4) if debiased else m


def subsample_values(x, y, estimator: Estimator, n_sub: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """CKA on `n_sub` random subsets of subsample_size(n) cases, shape (n_sub,). The subsets depend on (n, size,
    seed) only, so two calls with the same seed on the same cases use the same subsets: a paired difference.

    Subsets are drawn WITHOUT replacement: a bootstrap with replacement duplicates rows, and duplicated cases look
    like perfectly matched pairs, inflating CKA (debiased 0.21 -> 0.87 on the notes' example). Biased CKA of a
    subset carries the larger bias of the smaller n, so its values sit above the full-sample value unless d << n."""
    debiased = _is_debiased(estimator)
    xc, yc = _pair(x, y, debiased)
    m = subsample_size(len(xc), fraction, debiased)
    _check_n(m, debiased)
    if m > len(xc):
        raise ValueError(f"a subsample of {m} cases needs at least {m} cases, got {len(xc)}")
    rng = np.random.default_rng(seed)
    subsets = [rng.choice(len(xc), size=m, replace=False) for _ in range(n_sub)]
    if _resolve("auto", m, xc.shape[1], yc.shape[1]) == "gram":
        # Sub-blocks of the full Grams, re-centred per subset: O(m^2) each instead of new products.
        kx, ky = xc @ xc.T, yc @ yc.T
        return np.array([_gram_cka(kx[np.ix_(s, s)], ky[np.ix_(s, s)], debiased) for s in subsets])
    return np.array([_cka(_centre(xc[s]), _centre(yc[s]), debiased, "feature") for s in subsets])


def _leave_one_out_hsic(a: np.ndarray, b: np.ndarray, debiased: bool) -> np.ndarray:
    """(n,) HSIC of symmetric Grams a, b with case i's row and column left out, up to a factor common to all terms
    of one CKA, in O(n^2) for all i together. Over a sub-Gram pair (m = n - 1 cases), with T1 = tr(AB),
    T2 = 1'AB1, Sa = 1'A1, Sb = 1'B1: biased tr(AHBH) = T1 - 2 T2 / m + Sa Sb / m^2; debiased (zero-diagonal
    Grams, Song et al. 2012) T1 + Sa Sb / ((m - 1)(m - 2)) - 2 T2 / (m - 2)."""
    if debiased:
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
    m = len(a) - 1
    ra, rb, da, db = a.sum(axis=1), b.sum(axis=1), np.diag(a), np.diag(b)
    cross = np.einsum("ij,ij->i", a, b)
    t1 = float(np.sum(a * b)) - 2.0 * cross + da * db
    # sum over l != i of the row sums without case i: (ra_l - a_li)(rb_l - b_li)
    t2 = float(ra @ rb) - a @ rb - b @ ra + cross - (ra - da) * (rb - db)
    sa, sb = a.sum() - 2.0 * ra + da, b.sum() - 2.0 * rb + db
    if debiased:
        return t1 + sa * sb / ((m - 1) * (m - 2)) - 2.0 * t2 / (m - 2)
    return t1 - 2.0 * t2 / m + sa * sb / (m * m)


def jackknife_values(x, y, estimator: Estimator) -> np.ndarray:
    """CKA with each case left out in turn, shape (n,), from the full Grams in closed form (the same values as
    re-centring each (n-1) x (n-1) sub-Gram). Two calls on the same cases leave out the same case at each position
    (paired)."""
    debiased = _is_debiased(estimator)
    xc, yc = _pair(x, y, debiased)
    _check_n(len(xc) - 1, debiased)
    kx, ky = xc @ xc.T, yc @ yc.T
    sxy, sxx, syy = (_leave_one_out_hsic(a, b, debiased) for a, b in ((kx, ky), (kx, kx), (ky, ky)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((sxx > 0) & (syy > 0), sxy / np.sqrt(np.abs(sxx * syy)), np.nan)


def jackknife_interval(full: float, leave_one_out, level: float = 0.95) -> tuple[float, float]:
    """full ± z sqrt((n - 1)/n sum_i (theta_(i) - mean)^2): the normal interval with the delete-1 jackknife standard
    error, centred on the full-sample value (so a small-sample bias of subsets cannot shift it)."""
    values = np.asarray(leave_one_out, dtype=np.float64)
    if len(values) < 2 or not np.isfinite(values).all() or not np.isfinite(full):
        return float("nan"), float("nan")
    n = len(values)
    se = np.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2))
    half = float(st.norm.ppf(0.5 + level / 2.0) * se)
    return float(full - half), float(full + half)


def subsample_ci(x, y, estimator: Estimator, n_sub: int, fraction: float = 0.5, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of CKA over `n_sub` random subsets (see subsample_values)."""
    return percentile_interval(subsample_values(x, y, estimator, n_sub, fraction, seed), level)
