"""The cache grid and resampling onto it (the geometry decisions are in `taskalign.data.preprocess`'s docstring)."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk



def lps_direction(image: sitk.Image) -> np.ndarray:
    """(3, 3) direction of `image` after DICOMOrient to LPS; column j is the physical direction of index axis j."""
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)  # orienting a 1-voxel image is enough to get the cosines
    probe.SetDirection(image.GetDirection())
    return np.array(sitk.DICOMOrient(probe, "LPS").GetDirection()).reshape(3, 3)


def mask_bbox_center(mask: sitk.Image) -> np.ndarray | None:
    """Physical centre (LPS, mm) of the bounding box of mask > 0, or None when the mask is empty."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr)
    if nz[0].size == 0:
        return None
    centre_zyx = [(idx.min() + idx.max()) / 2.0 for idx in nz]
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_zyx[::-1]]))


def image_center(image: sitk.Image) -> np.ndarray:
    """Physical centre (LPS, mm) of the image's voxel-centre grid."""
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


def output_grid(center, direction: np.ndarray, spacing_zyx, size_zyx) -> sitk.Image:
    """An empty float32 image of the cache grid: `size_zyx` voxels of `spacing_zyx` mm centred on `center`.

    ITK puts the origin at the centre of voxel 0, so origin = centre - direction @ ((N - 1) / 2 * spacing).
    """
    spacing = np.array(spacing_zyx[::-1], dtype=float)
    size = np.array(size_zyx[::-1], dtype=int)
    origin = np.asarray(center, dtype=float) - direction @ ((size - 1) / 2.0 * spacing)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def antialias(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """Gaussian pre-filter for the axes of `image` that `grid` samples more coarsely.

    Per axis sigma^2 = (s_out^2 - s_in^2) / (8 ln 2) mm^2: the blurred input PSF then has the output voxel as FWHM
    (Cardoso et al., MICCAI 2015). Each input axis is matched with the grid axis it is most parallel to.
    """
    d_in = np.array(image.GetDirection()).reshape(3, 3)
    d_out = np.array(grid.GetDirection()).reshape(3, 3)
    s_out = np.array(grid.GetSpacing())
    variance = []
    for j, s_in in enumerate(image.GetSpacing()):
        s = s_out[int(np.argmax(np.abs(d_out.T @ d_in[:, j])))]
        variance.append(max(s * s - s_in * s_in, 0.0) / (8.0 * math.log(2.0)))
    if max(variance) == 0.0:
        return image
    return sitk.DiscreteGaussian(image, variance=variance, maximumKernelWidth=64, useImageSpacing=True)


def resample(image: sitk.Image, grid: sitk.Image, interpolator, pixel_type) -> np.ndarray:
    """`image` sampled on `grid` in physical space (0 outside it), as a (D, H, W) array."""
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, pixel_type)
    return sitk.GetArrayFromImage(out)
