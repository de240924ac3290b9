"""Synthetic degradations: the rectal-air field decays away from the rectum, warping and depth resampling are exact
where they should be."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from taskalign.tasks.degrade import downsample_depth, rectal_air_field, upsample_depth, warp

SPACING = (2.0, 1.5, 1.5)
AMPLITUDE_MM, DECAY_MM = 4.0, 3.0


@pytest.fixture
def rectum() -> np.ndarray:
    """A posterior box (high h) in a (D, H, W) = (12, 64, 12) volume."""
    mask = np.zeros((12, 64, 12), dtype=np.uint8)
    mask[3:9, 40:50, 3:9] = 1
    return mask


def field_for(rectum: np.ndarray, seed: int = 0) -> np.ndarray:
    return rectal_air_field(rectum, SPACING, AMPLITUDE_MM, DECAY_MM, np.random.default_rng(seed))


def test_field_shape_units_and_direction(rectum):
    field = field_for(rectum)
    assert field.shape == (3, *rectum.shape) and field.dtype == np.float32
    ap = np.abs(field[1]).max()
    # mm -> voxels along H (1.5 mm), scaled by s in [0.5, 1]; smoothing only lowers the peak.
    assert 0.25 * AMPLITUDE_MM / SPACING[1] < ap <= AMPLITUDE_MM / SPACING[1] + 1e-6
    assert np.abs(field[[0, 2]]).max() < 0.1 * ap  # predominantly anterior-posterior
    assert field[1, 6, 38, 6] < 0 < field[1, 6, 52, 6]  # pointing away from the rectum on both sides


def test_field_is_largest_at_the_rectum_and_vanishes_far_away(rectum):
    magnitude = np.linalg.norm(field_for(rectum), axis=0)
    peak = np.unravel_index(magnitude.argmax(), magnitude.shape)
    assert binary_dilation(rectum, iterations=1)[peak]
    # h <= 19 is > 20 voxels (30 mm = 10 decay lengths) anterior of the rectum.
    assert magnitude[:, :20].max() < 1e-3


def test_field_decreases_monotonically_going_anterior(rectum):
    line = np.abs(field_for(rectum)[1, 6, :40, 6])[::-1]  # from the rectum's anterior wall outwards
    assert line[0] > 0.1
    assert np.all(np.diff(line) <= 1e-7)
    assert line[-1] < 1e-3 * line[0]


def test_empty_rectum_gives_zero_field():
    field = rectal_air_field(np.zeros((8, 16, 16), np.uint8), SPACING, AMPLITUDE_MM, DECAY_MM,
                             np.random.default_rng(0))
    assert field.shape == (3, 8, 16, 16) and not field.any()


def test_field_is_deterministic_per_seed(rectum):
    np.testing.assert_array_equal(field_for(rectum, seed=7), field_for(rectum, seed=7))
    assert not np.allclose(field_for(rectum, seed=7), field_for(rectum, seed=8))  # the per-case scale is drawn


def test_warp_with_zero_field_is_identity():
    image = np.random.default_rng(0).random((3, 6, 7, 8), dtype=np.float32)
    out = warp(image, np.zeros((3, 6, 7, 8), np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_warp_pulls_back_a_unit_shift_along_w():
    image = np.random.default_rng(0).random((2, 5, 6, 9), dtype=np.float32)
    field = np.zeros((3, 5, 6, 9), np.float32)
    field[2] = 1.0
    out = warp(image, field)  # out(x) = in(x + 1 along W)
    np.testing.assert_allclose(out[..., :-1], np.roll(image, -1, axis=-1)[..., :-1], atol=1e-6)
    np.testing.assert_allclose(out[..., -1], image[..., -1], atol=1e-6)  # mode="nearest" at the edge


def test_downsample_depth_averages_blocks_of_slices():
    image = np.random.default_rng(0).random((2, 16, 5, 6), dtype=np.float32)
    low = downsample_depth(image, 4)
    assert low.shape == (2, 4, 5, 6) and low.dtype == np.float32
    for k in range(4):
        np.testing.assert_allclose(low[:, k], image[:, 4 * k : 4 * k + 4].mean(axis=1), rtol=1e-6)


def test_downsample_depth_rejects_indivisible_depth():
    with pytest.raises(ValueError, match="10.*4"):
        downsample_depth(np.zeros((1, 10, 4, 4), np.float32), 4)


def test_upsample_restores_shape_and_keeps_depth_constant_volumes():
    image = np.random.default_rng(0).random((2, 16, 5, 6), dtype=np.float32)
    assert upsample_depth(downsample_depth(image, 4), 4).shape == image.shape
    constant = np.repeat(image[:, :1], 16, axis=1)
    up = upsample_depth(downsample_depth(constant, 4), 4)
    assert up.dtype == np.float32
    np.testing.assert_allclose(up, constant, atol=1e-6)


def test_upsample_places_thick_slices_at_their_block_centres():
    # Thick slices 0 and 4 sit at thin depths 0.5 and 2.5; the ends are held (align_corners=False), not stretched.
    low = np.array([0.0, 4.0], np.float32).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(upsample_depth(low, 2).ravel(), [0.0, 1.0, 3.0, 4.0], atol=1e-6)
