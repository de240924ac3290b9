"""Synthetic degradations for the restoration tasks, as batched torch ops on (B, 1, D, H, W) target images: the
same code on CPU and GPU, run where the model trains.

Distortion: rectal air shifts the local field, and prostate EPI/TSE images are displaced along the phase-encoding
direction (anterior-posterior) by an amount that is largest at the rectum and decays with distance from it
(001, "smooth deformation fields derived from rectal masks"). Super-resolution: a thick-slice acquisition is
the average of consecutive thin slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The smoothing of the distortion field: scipy.ndimage.gaussian_filter's sigma 1 voxel, truncated at 4 sigma.
SMOOTH_SIGMA, SMOOTH_TRUNCATE = 1.0, 4.0
# Elements of one chunk of the distance transform's (lines, n, n) candidates: ~130 MB of float32.
DISTANCE_CHUNK = 2**25


def _min_plus_along(squared: torch.Tensor, dim: int, step_mm: torch.Tensor) -> torch.Tensor:
    """min_j squared[..., j, ...] + ((i - j) * step)^2 along `dim`: one pass of the separable exact distance
    transform (Felzenszwalb and Huttenlocher 2012), by brute force over j, in chunks of lines."""
    lines = squared.movedim(dim, -1)
    b, n = lines.shape[0], lines.shape[-1]
    flat = lines.reshape(b, -1, n)
    offsets = torch.arange(n, device=squared.device, dtype=squared.dtype)
    cost = (offsets[:, None] - offsets[None, :]).square()[None] * step_mm.to(squared.dtype).square().view(b, 1, 1)
    out = torch.empty_like(flat)
    chunk = max(1, DISTANCE_CHUNK // (b * n * n))
    for start in range(0, flat.shape[1], chunk):
        part = flat[:, start : start + chunk]
        out[:, start : start + chunk] = (part[:, :, None, :] + cost[:, None]).amin(dim=-1)
    return out.reshape(lines.shape).movedim(-1, dim)


def distance_to_mask(mask: torch.Tensor, spacing_mm: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) bool -> exact Euclidean distance in mm from each voxel to the nearest mask voxel, (B, D, H, W)
    float32 (scipy's `distance_transform_edt(~mask, sampling=spacing)`); inf where a mask is empty. spacing_mm
    (B, 3) for (D, H, W)."""
    squared = torch.where(mask, 0.0, float("inf")).float()
    for axis in range(3):
        squared = _min_plus_along(squared, axis + 1, spacing_mm[:, axis])
    return squared.sqrt()


def _reflect_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of positions -radius .. n - 1 + radius under scipy's 'reflect' extension (d c b a | a b c d)."""
    position = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(position < n, position, 2 * n - 1 - position)


def gaussian_smooth(volume: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter(x, sigma) of each (D, H, W) volume of (B, D, H, W), mode 'reflect', as
    shifted sums (no convolution: TF32 convolutions on a GPU would round to 1e-3)."""
    radius = int(SMOOTH_TRUNCATE * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * taps.square() / sigma**2)
    weights = (weights / weights.sum()).tolist()
    for dim in (1, 2, 3):
        n = volume.shape[dim]
        padded = volume.index_select(dim, _reflect_index(n, radius, volume.device))
        volume = sum(w * padded.narrow(dim, k, n) for k, w in enumerate(weights))
    return volume


def rectal_air_shift(rectum: torch.Tensor, distance_mm: torch.Tensor, spacing_mm: torch.Tensor,
                     amplitude_mm: float, decay_mm: float, scale: torch.Tensor) -> torch.Tensor:
    """Displacement (B, D, H, W) float32 in voxels along H (anterior-posterior), away from the rectum: magnitude
    amplitude * scale * exp(-distance / decay), smoothed with a 1-voxel gaussian; zero where a case has no rectum.

    rectum (B, D, H, W) bool; distance_mm from it (`distance_to_mask`, or the cache's `rectum_distance`);
    spacing_mm (B, 3); scale (B,), the random part, U(0.5, 1) per item."""
    b, _, n_h, _ = rectum.shape
    count = rectum.sum(dim=(1, 2, 3))
    rows = torch.arange(n_h, device=rectum.device)
    # The centroid row as numpy's mean of integer rows gives it: an exact sum, one division in float64.
    centre_h = (rectum.sum(dim=(1, 3)) * rows).sum(dim=1).double() / count.clamp(min=1).double()
    offset = rows.double()[None] - centre_h[:, None]
    # Away from the rectum along AP; the centroid row itself (sign 0) goes posterior.
    direction = (torch.sign(offset) + (offset == 0)).view(b, 1, n_h, 1)
    # float64 as scipy computes it: the shift is rounded to float32 once, where the warp's coordinates are
    magnitude = (amplitude_mm * scale).view(b, 1, 1, 1) * torch.exp(-distance_mm.double() / decay_mm)
    shift = gaussian_smooth(magnitude * direction) / spacing_mm[:, 1].double().view(b, 1, 1, 1)
    return torch.where((count > 0).view(b, 1, 1, 1), shift, 0.0).float()


def warp_along_h(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Pull-back warp of (B, C, D, H, W) along H: out(h) = in(h + shift(h)), linear, edges repeat (scipy's
    map_coordinates, order 1, mode 'nearest'). shift (B, D, H, W) in voxels."""
    n_h = image.shape[3]
    rows = torch.arange(n_h, device=image.device, dtype=torch.float32).view(1, 1, n_h, 1)
    coordinate = (rows + shift).clamp(0, n_h - 1)[:, None].expand_as(image)
    below = coordinate.floor()
    weight = coordinate - below
    below = below.long()
    above = (below + 1).clamp(max=n_h - 1)
    return (1 - weight) * image.gather(3, below) + weight * image.gather(3, above)


def downsample_depth(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C, D / factor, H, W): each thick slice the mean of `factor` thin ones."""
    b, c, d, h, w = image.shape
    if d % factor:
        raise ValueError(f"depth {d} is not divisible by the super-resolution factor {factor}")
    return image.reshape(b, c, d // factor, factor, h, w).mean(dim=3)


def upsample_depth(image: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, d, H, W) -> (B, C, d * factor, H, W), linear along depth: what a fixed-size encoder is fed."""
    size = (image.shape[2] * factor, *image.shape[3:])
    return F.interpolate(image, size=size, mode="trilinear", align_corners=False)
