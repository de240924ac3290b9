"""MMD against closed forms, the kernel convention against scikit-learn, the saturation diagnostic and the
permutation test."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.metrics.pairwise import rbf_kernel

from taskalign.analysis.mmd import (gaussian_kernel, is_saturated, median_sigma, mmd2, mmd_test, normalise,
                                    saturation)

SQUARE_X = [[0.0, 0.0], [1.0, 0.0]]
SQUARE_Y = [[0.0, 1.0], [1.0, 1.0]]


def test_two_single_points():
    assert mmd2([[0.0]], [[1.0]], sigma=1.0) == pytest.approx(2 - 2 * math.exp(-1), abs=1e-12)
    assert mmd2([[0.0]], [[1.0]], sigma=1.0) == pytest.approx(1.264241, abs=1e-6)


def test_unit_square_closed_forms():
    assert mmd2(SQUARE_X, SQUARE_Y, 1.0, "biased") == pytest.approx(0.864665, abs=1e-6)
    assert mmd2(SQUARE_X, SQUARE_Y, 1.0, "unbiased") == pytest.approx(0.232544, abs=1e-6)
    assert mmd2(SQUARE_X, SQUARE_Y, 1.0, "unbiased") == pytest.approx(math.exp(-1) - math.exp(-2), abs=1e-12)


def test_identical_sets():
    grid = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
    assert mmd2(grid, grid.copy(), 1.5) == 0.0
    x = np.random.default_rng(0).normal(size=(40, 16))
    assert abs(mmd2(x, x.copy(), 3.0)) < 1e-12
    # The two-sample U-statistic is not 0 for identical sets: -(2/n)(1 - mean off-diagonal k).
    k = gaussian_kernel(x, x, 3.0)
    off = (k.sum() - len(x)) / (len(x) * (len(x) - 1))
    assert mmd2(x, x, 3.0, "unbiased") == pytest.approx(-2 / len(x) * (1 - off), abs=1e-12)


def test_kernel_convention_matches_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    for sigma in (0.7, 1.0, 3.0):
        np.testing.assert_allclose(gaussian_kernel(a, b, sigma), rbf_kernel(a, b, gamma=1 / sigma**2), atol=1e-12)
    # sklearn's doc example (gamma = 1/3 <-> sigma = sqrt(3)).
    k = gaussian_kernel([[0, 0, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 0]], math.sqrt(3))
    np.testing.assert_allclose(k, [[0.71653131, 0.51341712], [0.51341712, 0.71653131]], atol=1e-8)


def test_normalise():
    x = np.random.default_rng(2).normal(size=(30, 8)) * 4 + 1
    x[0] = 0.0
    l2 = normalise(x)
    np.testing.assert_allclose(np.linalg.norm(l2[1:], axis=1), 1.0)
    assert np.all(l2[0] == 0)
    z = normalise(x, "zscore")
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1 / np.sqrt(8))
    raw = normalise(x, "none")
    np.testing.assert_array_equal(raw, x)
    assert raw is not x
    with pytest.raises(ValueError):
        normalise(x, "l1")


def test_saturation_on_raw_embeddings(caplog):
    n, d = 148, 768
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
    ratio = saturation(x, y, 1.0)
    assert ratio > 1000 and is_saturated(ratio)
    # Every off-diagonal kernel value underflows: the biased MMD^2 is 1/N + 1/N whatever the shift.
    assert mmd2(x, y, 1.0) == pytest.approx(2 / n, rel=1e-12)
    logger = logging.getLogger("test_mmd.saturation")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        result = mmd_test(x, y, 1.0, "biased", n_perm=20, seed=0, logger=logger)
    assert result["saturated"] and result["median_d2_over_sigma2"] == pytest.approx(ratio)
    assert any("saturated" in r.getMessage() and r.name == logger.name for r in caplog.records)
    caplog.clear()
    xn, yn = normalise(x), normalise(y)
    assert not is_saturated(saturation(xn, yn, 1.0))
    with caplog.at_level(logging.WARNING):
        assert not mmd_test(xn, yn, 1.0, "biased", n_perm=20, seed=0)["saturated"]
    assert not any("saturated" in r.getMessage() for r in caplog.records)
    assert is_saturated(saturation(xn, yn, 1e4))  # sigma far too wide: every kernel value ~1


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_permutation_test(estimator):
    rng = np.random.default_rng(4)
    n_perm = 199
    x, same, shifted = rng.normal(size=(60, 10)), rng.normal(size=(50, 10)), rng.normal(size=(50, 10)) + 0.8
    sigma = median_sigma(x, same)
    clear = mmd_test(x, shifted, sigma, estimator, n_perm, seed=0)
    null = mmd_test(x, same, sigma, estimator, n_perm, seed=0)
    for result in (clear, null):
        assert 1 / (n_perm + 1) <= result["p_value"] <= 1
    assert clear["value"] == pytest.approx(mmd2(x, shifted, sigma, estimator), abs=1e-12)
    assert clear["p_value"] < 0.05
    assert null["p_value"] > 0.05
    assert mmd_test(x, same, sigma, estimator, n_perm, seed=0) == null


def test_permutation_p_value_counts_ties():
    # Two points: the only other split swaps them, which gives the same MMD, so every permutation ties.
    result = mmd_test([[0.0]], [[1.0]], 1.0, "biased", n_perm=9, seed=0)
    assert result["p_value"] == 1.0


def test_median_sigma_known_set():
    # Pairwise squared distances of 0, 1, 3 on a line: 1, 9, 4 -> median 4 -> sigma 2.
    assert median_sigma([[0.0], [1.0]], [[3.0]]) == pytest.approx(2.0)
    # Unit square corners: four sides (1) and two diagonals (2) -> median 1.
    assert median_sigma(SQUARE_X, SQUARE_Y) == pytest.approx(1.0)
