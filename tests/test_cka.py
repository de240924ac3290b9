"""CKA against published known answers (Kornblith's demo), its invariances, and its small-n/high-d bias."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group, pearsonr

from taskalign.analysis.cka import cka_matrix, debiased_cka, linear_cka, shuffled_null, subsample_ci

ESTIMATORS = [linear_cka, debiased_cka]


@pytest.fixture
def demo() -> tuple[np.ndarray, np.ndarray]:
    # Kornblith et al.'s Demo.ipynb data (legacy RandomState stream, stable across NumPy versions).
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def _related(n: int = 64, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, x + rng.normal(size=(n, d))


@pytest.mark.parametrize("space", ["auto", "feature", "gram"])
def test_kornblith_demo(demo, space):
    x, y = demo
    assert linear_cka(x, y, space=space) == pytest.approx(0.55761, abs=1e-5)
    assert debiased_cka(x, y, space=space) == pytest.approx(0.51346, abs=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_self_similarity_and_symmetry(demo, estimator):
    x, y = demo
    assert estimator(x, x) == pytest.approx(1.0, abs=1e-12)
    assert estimator(x, y) == pytest.approx(estimator(y, x), abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_invariances(demo, estimator):
    x, y = demo
    base = estimator(x, y)
    q = ortho_group.rvs(10, random_state=0)
    assert estimator(x @ q, y) == pytest.approx(base, abs=1e-12)
    assert estimator(7.5 * x, y) == pytest.approx(base, abs=1e-12)
    assert estimator(x + np.arange(10.0) * 3.0, y) == pytest.approx(base, abs=1e-12)
    general = np.random.default_rng(1).normal(size=(10, 10))
    assert abs(estimator(x @ general, y) - base) > 0.01


def test_one_feature_is_squared_pearson():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 1))
    y = 0.6 * x + rng.normal(size=(50, 1))
    assert linear_cka(x, y) == pytest.approx(pearsonr(x[:, 0], y[:, 0])[0] ** 2, abs=1e-12)


def test_unrelated_features_bias():
    # Independent Gaussians, n=64, d=256: biased CKA sits near d/(n+d) = 0.8, the debiased one near 0.
    n, d = 64, 256
    biased, debiased = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        biased.append(linear_cka(x, y))
        debiased.append(debiased_cka(x, y))
    assert np.mean(biased) == pytest.approx(d / (n + d), abs=0.05)
    assert abs(np.mean(debiased)) < 0.05


@pytest.mark.parametrize("shape", [(20, 5, 300), (100, 50, 50), (40, 3, 7)])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gram_and_feature_space_agree(shape, estimator):
    n, d1, d2 = shape
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d1)) + 5.0
    y = rng.normal(size=(n, d2))
    k = min(d1, d2)
    y[:, :k] += 2.0 * x[:, :k]  # related, so the value is not ~0
    assert estimator(x, y, space="gram") == pytest.approx(estimator(x, y, space="feature"), abs=1e-10)


@pytest.mark.parametrize("space", ["feature", "gram"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cka_matrix_matches_pairwise_calls(estimator, space):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(30, 6))
    feats_a = {"block3": base @ rng.normal(size=(6, 8)), "final": rng.normal(size=(30, 4)) + base[:, :4]}
    feats_b = {"block3": base @ rng.normal(size=(6, 5)) + rng.normal(size=(30, 5)), "block5": rng.normal(size=(30, 9)),
               "final": base[:, :4] * 2.0}
    matrix = cka_matrix(feats_a, feats_b, estimator, space=space)
    assert list(matrix.index) == ["block3", "final"]
    assert list(matrix.columns) == ["block3", "block5", "final"]
    for a, x in feats_a.items():
        for b, y in feats_b.items():
            assert matrix.loc[a, b] == pytest.approx(estimator(x, y), abs=1e-10)


def test_cka_matrix_rejects_misaligned_layers():
    with pytest.raises(ValueError, match="same cases"):
        cka_matrix({"a": np.ones((10, 2))}, {"b": np.ones((9, 2))}, linear_cka)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_shuffled_null_near_unrelated_value(estimator):
    n, d = 64, 32
    x, y = _related(n, d)
    null = shuffled_null(x, y, estimator, n_perm=50, seed=0)
    assert null.shape == (50,)
    assert estimator(x, y) > null.max()
    unrelated = np.mean([estimator(np.random.default_rng(s).normal(size=(n, d)),
                                   np.random.default_rng(s + 100).normal(size=(n, d))) for s in range(10)])
    assert np.mean(null) == pytest.approx(unrelated, abs=0.05)
    np.testing.assert_array_equal(null, shuffled_null(x, y, estimator, n_perm=50, seed=0))


@pytest.mark.parametrize("n, d", [(30, 40), (200, 3)])  # Gram-space and feature-space routes
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_null_and_subsets_equal_direct_recomputation(estimator, n, d):
    x, y = _related(n, d)
    rng = np.random.default_rng(9)
    perms = [rng.permutation(n) for _ in range(5)]
    expected = [estimator(x, y[p]) for p in perms]
    np.testing.assert_allclose(shuffled_null(x, y, estimator, 5, seed=9), expected, atol=1e-10)
    rng = np.random.default_rng(9)
    subsets = [rng.choice(n, size=n // 2, replace=False) for _ in range(7)]
    values = [estimator(x[s], y[s]) for s in subsets]
    np.testing.assert_allclose(subsample_ci(x, y, estimator, 7, 0.5, seed=9, level=0.5),
                               np.percentile(values, [25, 75]), atol=1e-10)


def test_shuffled_null_feature_space_path():
    # n >> d takes the feature-space route; the null of unrelated rows is still near d/(n+d) and 0.
    x, y = _related(n=400, d=4)
    assert np.mean(shuffled_null(x, y, linear_cka, 30, seed=1)) == pytest.approx(4 / 404, abs=0.02)
    assert abs(np.mean(shuffled_null(x, y, debiased_cka, 30, seed=1))) < 0.02


# Biased CKA of half the cases carries a larger d/(n+d)-type bias, so its interval only covers the full-sample value
# when d << n; the debiased interval covers it at n=64, d=32 too.
@pytest.mark.parametrize("estimator, n, d", [(linear_cka, 400, 4), (debiased_cka, 400, 4), (debiased_cka, 64, 32)])
def test_subsample_ci_contains_full_value(estimator, n, d):
    x, y = _related(n, d)
    low, high = subsample_ci(x, y, estimator, n_sub=100, fraction=0.5, seed=0)
    assert low < estimator(x, y) < high
    assert high - low < 0.5
    assert (low, high) == subsample_ci(x, y, estimator, n_sub=100, fraction=0.5, seed=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_inputs_not_mutated(estimator):
    x32 = (np.random.default_rng(5).normal(size=(30, 6)) + 50).astype(np.float32)
    y = np.random.default_rng(6).normal(size=(30, 40))
    x_copy, y_copy = x32.copy(), y.copy()
    estimator(x32, y)
    shuffled_null(x32, y, estimator, 3, 0)
    subsample_ci(x32, y, estimator, 3, seed=0)
    cka_matrix({"x": x32}, {"y": y}, estimator)
    np.testing.assert_array_equal(x32, x_copy)
    np.testing.assert_array_equal(y, y_copy)


def test_float32_offset_features_are_computed_in_float64():
    # Uncentred float32 features with a large offset broke float32 unbiased HSIC; float64 on centred data does not.
    x, y = _related(100, 20)
    expected = debiased_cka(x, y)
    assert debiased_cka((x + 50).astype(np.float32), y) == pytest.approx(expected, abs=1e-5)


def test_debiased_needs_four_cases():
    x = np.random.default_rng(7).normal(size=(3, 2))
    with pytest.raises(ValueError, match="at least 4"):
        debiased_cka(x, x)
    assert linear_cka(x, x) == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_features_give_nan(estimator):
    x = np.full((10, 3), 0.1)
    y = np.random.default_rng(8).normal(size=(10, 3))
    assert np.isnan(estimator(x, y))


@pytest.mark.parametrize("estimator", [linear_cka, debiased_cka])
def test_jackknife_values_match_leaving_each_case_out(estimator):
    from taskalign.analysis.cka import jackknife_interval, jackknife_values

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 12))
    y = x @ rng.normal(size=(12, 9)) + rng.normal(size=(30, 9)) + 4.0
    loop = [estimator(np.delete(x, i, axis=0), np.delete(y, i, axis=0)) for i in range(30)]
    values = jackknife_values(x, y, estimator)
    np.testing.assert_allclose(values, loop, rtol=0, atol=1e-12)
    full = estimator(x, y)
    low, high = jackknife_interval(full, values)
    se = np.sqrt(29 / 30 * np.sum((values - values.mean()) ** 2))
    assert (low, high) == pytest.approx((full - 1.959964 * se, full + 1.959964 * se), rel=1e-6)
