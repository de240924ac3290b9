"""Synthetic degradations for the restoration tasks, applied to cached (C, D, H, W) arrays.

Distortion: rectal air shifts the local field, and prostate EPI/TSE images are displaced along the phase-encoding
direction (anterior-posterior) by an amount that is largest at the rectum and decays with distance from it
(001, "smooth deformation fields derived from rectal masks"). Super-resolution: a thick-slice acquisition is
the average of consecutive thin slices.

scipy.ndimage is imported inside the distortion functions: every features, fine-tuning and evaluation job imports
this module, and only the distortion task's jobs need scipy (0.3 s of start-up).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def rectal_air_field(rectum: np.ndarray, spacing_mm: Sequence[float], amplitude_mm: float, decay_mm: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Displacement (3, D, H, W) float32 in voxels, components (d, h, w): along H (anterior-posterior), away from
    the rectum, magnitude amplitude * s * exp(-distance / decay) with distance in mm from the mask and
    s ~ U(0.5, 1) per case, smoothed with a 1-voxel gaussian; all zero when the rectum mask is empty."""
    # Drawn before the empty check so every case advances the generator alike.
    scale = rng.uniform(0.5, 1.0)
    rectum = np.asarray(rectum) > 0
    field = np.zeros((3, *rectum.shape), dtype=np.float32)
    if not rectum.any():
        return field
    from scipy.ndimage import distance_transform_edt, gaussian_filter  # see the module docstring

    distance = distance_transform_edt(~rectum, sampling=spacing_mm)
    magnitude = amplitude_mm * scale * np.exp(-distance / decay_mm)
    centre_h = np.argwhere(rectum)[:, 1].mean()
    h = np.arange(rectum.shape[1], dtype=np.float64)[None, :, None]
    # Away from the rectum along AP; the centroid row itself (sign 0) goes posterior.
    direction = np.sign(h - centre_h) + (h == centre_h)
    field[1] = gaussian_filter(magnitude * direction, sigma=1.0) / spacing_mm[1]
    return field


def warp(image: np.ndarray, field: np.ndarray, order: int = 1) -> np.ndarray:
    """Pull-back warp of every channel: out(x) = in(x + field(x)); edges repeat."""
    from scipy.ndimage import map_coordinates

    grid = np.indices(image.shape[1:], dtype=np.float32) + field
    return np.stack([map_coordinates(c, grid, order=order, mode="nearest") for c in image]).astype(np.float32)


def downsample_depth(image: np.ndarray, factor: int) -> np.ndarray:
    """(C, D, H, W) -> (C, D / factor, H, W): each thick slice the mean of `factor` thin ones."""
    c, d, h, w = image.shape
    if d % factor:
        raise ValueError(f"depth {d} is not divisible by the super-resolution factor {factor}")
    return image.reshape(c, d // factor, factor, h, w).mean(axis=2).astype(np.float32)


def upsample_depth(image: np.ndarray, factor: int) -> np.ndarray:
    """(C, d, H, W) -> (C, d * factor, H, W), linear along depth: what a fixed-size encoder is fed."""
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    size = (image.shape[1] * factor, *image.shape[2:])
    return F.interpolate(volume, size=size, mode="trilinear", align_corners=False)[0].numpy()
