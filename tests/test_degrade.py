"""Synthetic degradations as batched torch ops: the rectal-air shift decays away from the rectum, the distance
transform, smoothing and warp give scipy's values, depth resampling is exact where it should be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, distance_transform_edt, gaussian_filter, map_coordinates

from taskalign.tasks.degrade import (distance_to_mask, downsample_depth, gaussian_smooth, rectal_air_shift,
                                     upsample_depth, warp_along_h)

SPACING = (2.0, 1.5, 1.5)
AMPLITUDE_MM, DECAY_MM = 4.0, 3.0


@pytest.fixture
def rectum() -> torch.Tensor:
    """A posterior box (high h) in a (D, H, W) = (12, 64, 12) volume."""
    mask = torch.zeros((12, 64, 12), dtype=torch.bool)
    mask[3:9, 40:50, 3:9] = True
    return mask


def shift_for(rectum: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """The shift of one case with the distance from its cache file (scipy's, as preprocessing writes it)."""
    distance = torch.from_numpy(distance_transform_edt(~rectum.numpy(), sampling=SPACING).astype(np.float32))
    shift = rectal_air_shift(rectum[None], distance[None], torch.tensor([SPACING]), AMPLITUDE_MM, DECAY_MM,
                             torch.tensor([scale], dtype=torch.float64))
    return shift[0].numpy()


def test_shift_units_and_direction(rectum):
    shift = shift_for(rectum)
    assert shift.shape == tuple(rectum.shape) and shift.dtype == np.float32
    # mm -> voxels along H (1.5 mm); smoothing only lowers the peak
    assert 0.5 * AMPLITUDE_MM / SPACING[1] < np.abs(shift).max() <= AMPLITUDE_MM / SPACING[1] + 1e-6
    assert shift[6, 38, 6] < 0 < shift[6, 52, 6]  # pointing away from the rectum on both sides
    np.testing.assert_allclose(shift_for(rectum, 0.5), 0.5 * shift, rtol=1e-6, atol=1e-7)  # the random part


def test_shift_is_largest_at_the_rectum_and_vanishes_far_away(rectum):
    magnitude = np.abs(shift_for(rectum))
    peak = np.unravel_index(magnitude.argmax(), magnitude.shape)
    assert binary_dilation(rectum.numpy(), iterations=1)[peak]
    # h <= 19 is > 20 voxels (30 mm = 10 decay lengths) anterior of the rectum.
    assert magnitude[:, :20].max() < 1e-3


def test_shift_decreases_monotonically_going_anterior(rectum):
    line = np.abs(shift_for(rectum)[6, :40, 6])[::-1]  # from the rectum's anterior wall outwards
    assert line[0] > 0.1
    assert np.all(np.diff(line) <= 1e-7)
    assert line[-1] < 1e-3 * line[0]


def test_empty_rectum_gives_zero_shift():
    empty = torch.zeros((1, 8, 16, 16), dtype=torch.bool)
    shift = rectal_air_shift(empty, distance_to_mask(empty, torch.tensor([SPACING])), torch.tensor([SPACING]),
                             AMPLITUDE_MM, DECAY_MM, torch.tensor([1.0], dtype=torch.float64))
    assert shift.shape == (1, 8, 16, 16) and not shift.any()


def test_distance_to_mask_is_scipys_exact_transform_per_item():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 19, 11)) > 0.97
    spacing = np.array([SPACING, (4.0, 3.0, 3.0), (1.0, 0.5, 0.7)])
    distance = distance_to_mask(torch.from_numpy(masks), torch.from_numpy(spacing))
    for mask, step, ours in zip(masks, spacing, distance.numpy()):
        np.testing.assert_allclose(ours, distance_transform_edt(~mask, sampling=step), rtol=1e-6, atol=1e-5)


def test_gaussian_smooth_is_scipys_filter_with_reflected_edges():
    volume = np.random.default_rng(0).random((2, 5, 9, 13))
    ours = gaussian_smooth(torch.from_numpy(volume)).numpy()
    for v, o in zip(volume, ours):
        np.testing.assert_allclose(o, gaussian_filter(v, sigma=1.0), rtol=1e-12, atol=1e-12)


def test_warp_along_h_is_map_coordinates_with_nearest_edges():
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 4, 9, 5), dtype=np.float32)
    shift = (rng.random((2, 4, 9, 5), dtype=np.float32) - 0.5) * 6  # reaching past both edges
    ours = warp_along_h(torch.from_numpy(image), torch.from_numpy(shift)).numpy()
    for i in range(2):
        grid = np.indices(image.shape[2:], dtype=np.float32)
        grid[1] += shift[i]
        np.testing.assert_allclose(ours[i, 0], map_coordinates(image[i, 0], grid, order=1, mode="nearest"),
                                   atol=1e-6)
    assert torch.equal(warp_along_h(torch.from_numpy(image), torch.zeros(2, 4, 9, 5)), torch.from_numpy(image))


def test_downsample_depth_averages_blocks_of_slices():
    image = torch.rand(2, 1, 16, 5, 6)
    low = downsample_depth(image, 4)
    assert low.shape == (2, 1, 4, 5, 6)
    for k in range(4):
        torch.testing.assert_close(low[:, :, k], image[:, :, 4 * k : 4 * k + 4].mean(dim=2))


def test_downsample_depth_rejects_indivisible_depth():
    with pytest.raises(ValueError, match="10.*4"):
        downsample_depth(torch.zeros(1, 1, 10, 4, 4), 4)


def test_upsample_restores_shape_and_keeps_depth_constant_volumes():
    image = torch.rand(2, 1, 16, 5, 6)
    assert upsample_depth(downsample_depth(image, 4), 4).shape == image.shape
    constant = image[:, :, :1].expand(-1, -1, 16, -1, -1)
    torch.testing.assert_close(upsample_depth(downsample_depth(constant, 4), 4), constant, atol=1e-6, rtol=0)


def test_upsample_places_thick_slices_at_their_block_centres():
    # Thick slices 0 and 4 sit at thin depths 0.5 and 2.5; the ends are held (align_corners=False), not stretched.
    low = torch.tensor([0.0, 4.0]).reshape(1, 1, 2, 1, 1)
    torch.testing.assert_close(upsample_depth(low, 2).flatten(), torch.tensor([0.0, 1.0, 3.0, 4.0]))
