"""Deterministic digital phantom of the male pelvis: analytic anatomy, MR signal equations, a NIfTI cohort.

The phantom is physics, not noise: every structure is an analytic solid in patient space (LPS, mm: +x patient
left, +y posterior, +z superior) carrying T1/T2/PD/ADC values sampled per case within the ranges of
shared/docs/phantom-physics.md. Images are *sampled through* a posed acquisition grid (the written direction
cosines and origin encode the pose), so one world-space anatomy is consistent across T2W, DWI/ADC and the masks.

Pipeline per case (pure functions, IO only in `write_cohort`):
  plan_case   -> CasePlan: anatomy (paint program of Shapes), tissue table, lesions, labels, acquisition, grids
  render_case -> CaseImages: T2W (spin echo + coil bias + Rician noise, partial volume across the slice),
                 DWI at each b (S0 * exp(-b ADC), fat suppressed, rectal-air distortion, lower SNR),
                 ADC = log-linear fit, computed high-b image, and masks on the T2W grid (by voxel centre).

Configuration (`cfg`, the `data.phantom` slice without `seed`; defaults in `DEFAULTS`):
  matrix [rows, cols] int            T2W in-plane matrix                                  [128, 128]
  fov_mm [rows, cols] float           in-plane field of view, mm (rows = A-P, cols = R-L)  [140, 140]
  slices [min, max] int               slice count; raised per case when needed to cover gland + seminal vesicles
                                                                                           [20, 28]
  slice_thickness_mm [min, max]       slice thickness, mm (also DWI)                       [3.0, 3.6]
  dwi_matrix [rows, cols] int         DWI/ADC in-plane matrix (same FOV, slices and pose)  [64, 64]
  b_values list[float]                acquired b-values, s/mm^2                            [50, 400, 800]
  computed_b float                    b of the computed high-b image written as `dwi`      1400
  label_noise float                   probability a PI-RADS label is shifted by +-1 in 2-5 0.1
  snr_t2w [min, max]                  T2W SNR (PZ signal / noise sd); 1.5 T draws from the lower half  [15, 40]
  snr_dwi [min, max]                  DWI SNR at the highest acquired b (PZ); likewise     [5, 15]
  gland_volume_ml [min, max]          prostate volume, log-normal with the geometric mean as median  [20, 80]
  max_lesions int                     0..max_lesions lesions per case (uniform)            3
  rotation_deg float                  max pose rotation about each axis, degrees           10
  shift_mm float                      max pose translation along each axis, mm             5
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from taskalign.data.labels import MANIFEST_COLUMNS, SPLITS, ZONE_LABELS, sector_index

DEFAULTS: dict = {
    "matrix": [128, 128],
    "fov_mm": [140.0, 140.0],
    "slices": [20, 28],
    "slice_thickness_mm": [3.0, 3.6],
    "dwi_matrix": [64, 64],
    "b_values": [50, 400, 800],
    "computed_b": 1400,
    "label_noise": 0.1,
    "snr_t2w": [15, 40],
    "snr_dwi": [5, 15],
    "gland_volume_ml": [20, 80],
    "max_lesions": 3,
    "rotation_deg": 10,
    "shift_mm": 5,
}

UNLABELLED_COHORTS = ("corpus",)
VENDORS = {
    # scale: stored-intensity units; bias_gain: coil-bias strength; noise_corr: in-plane noise correlation (voxels)
    "SIEMENS": {"scale": 1000.0, "bias_gain": 1.0, "noise_corr": 0.0},
    "Philips": {"scale": 2500.0, "bias_gain": 0.7, "noise_corr": 0.7},
    "GE": {"scale": 1600.0, "bias_gain": 1.3, "noise_corr": 0.4},
}
T2W_SUPERSAMPLE = (1, 1, 3)  # (x, y, z) sub-voxels: partial volume across the thick slice; odd so the centre is one
DWI_SUPERSAMPLE = (2, 2, 3)
ADC_MAX = 4000  # 1e-6 mm^2/s, clip of the stored ADC map

# ---------------------------------------------------------------------------------------------------------------
# Tissues. Ranges at 3 T: T1 (ms), T2 (ms), PD (relative), ADC (1e-3 mm^2/s). None = signal void.
# ---------------------------------------------------------------------------------------------------------------
TISSUES = (
    ("air", None),
    ("fat", ((350, 420), (120, 140), 0.90, (0.1, 0.3))),
    ("muscle", ((1300, 1500), (40, 50), 0.75, (1.3, 1.6))),  # gluteal muscle, unlabelled
    ("obturator", ((1300, 1500), (40, 50), 0.75, (1.3, 1.6))),
    ("marrow", ((500, 600), (90, 110), 0.70, (0.3, 0.6))),
    ("cortex", None),
    ("bladder_wall", ((1300, 1500), (45, 60), 0.75, (1.3, 1.6))),  # detrusor muscle
    ("urine", ((3000, 4000), (1000, 2000), 1.00, (2.8, 3.2))),
    ("seminal_vesicles", ((2000, 2500), (250, 500), 0.95, (1.8, 2.5))),
    ("rectal_wall", ((1200, 1400), (60, 80), 0.80, (1.2, 1.6))),
    ("rectal_content", ((1000, 1500), (50, 120), 0.50, (0.8, 1.6))),  # stool/mucus: assumed, not in the table
    ("rectal_air", None),
    ("nvb", ((1200, 1500), (80, 120), 0.80, (1.4, 1.8))),
    ("pz", ((1600, 1800), (120, 160), 0.85, (1.5, 1.9))),
    ("tz", ((1500, 1700), (80, 110), 0.80, (1.1, 1.5))),
    ("afms", ((1300, 1500), (45, 60), 0.75, (1.2, 1.5))),  # anterior fibromuscular stroma, labelled TZ
)
C = {name: k for k, (name, _) in enumerate(TISSUES)}
MAX_NODULES = 6
NODULE0 = len(TISSUES)  # BPH nodules: classes NODULE0 .. NODULE0 + MAX_NODULES - 1, TZ-derived values
LESION0 = NODULE0 + MAX_NODULES  # lesion l has class LESION0 + l
GLAND_CLASSES = (C["pz"], C["tz"], C["afms"], *range(NODULE0, LESION0))
FAT_SUPPRESSED = {C["fat"]: (0.03, 0.10), C["marrow"]: (0.2, 0.4)}  # residual DWI signal fraction

_zone_of_class = np.zeros(LESION0, np.uint8)
for _name, _zone in [("obturator", "obturator_internus"), ("marrow", "bone"), ("cortex", "bone"),
                     ("bladder_wall", "bladder"), ("urine", "bladder"), ("seminal_vesicles", "seminal_vesicles"),
                     ("rectal_wall", "rectum"), ("rectal_content", "rectum"), ("rectal_air", "rectum"),
                     ("nvb", "nvb"), ("pz", "pz"), ("tz", "tz"), ("afms", "tz")]:
    _zone_of_class[C[_name]] = ZONE_LABELS[_zone]
_zone_of_class[NODULE0:LESION0] = ZONE_LABELS["tz"]
ZONE_OF_CLASS = _zone_of_class  # anatomy class -> zones-mask label (docs/data-contract.md)

# Lesion grades: (probability, T2 ms or factor of host zone, ADC 1e-3 mm^2/s or factor of host zone)
LESION_GRADES = {
    "faint": (0.25, ("rel", 0.80, 0.92), ("rel", 0.78, 0.92)),
    "isup1-2": (0.40, ("abs", 80, 100), ("abs", 0.9, 1.2)),
    "isup3+": (0.35, ("abs", 60, 85), ("abs", 0.6, 0.9)),
}
CLEAR_ADC_CONTRAST = 0.3  # 1 - ADC_lesion / ADC_zone at or above this is "clearly low ADC"
SMALL_DIAMETER_MM = 8.0
LARGE_DIAMETER_MM = 15.0


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------
def rotation(deg_x: float, deg_y: float, deg_z: float) -> np.ndarray:
    """(3, 3) rotation Rz @ Ry @ Rx for angles in degrees; columns are the rotated x, y, z axes."""
    ax, ay, az = np.deg2rad([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Shape:
    """A solid in patient space. Local coordinates q = A @ p + b (p in mm); inside is |q| <= 1 ("ellipsoid") or
    q0^2 + q1^2 <= 1 and |q2| <= 1 ("cylinder", an elliptic tube of half-length 1 along local z)."""

    kind: str
    A: np.ndarray  # (3, 3) 1/mm
    b: np.ndarray  # (3,)

    @classmethod
    def make(cls, kind: str, centre, semi_axes, rot: np.ndarray | None = None) -> Shape:
        """`semi_axes` (3,) mm along the columns of `rot` (default: world axes), centred at `centre` (3,) mm."""
        rot = np.eye(3) if rot is None else np.asarray(rot, float)
        A = np.diag(1.0 / np.asarray(semi_axes, float)) @ rot.T
        return cls(kind, A, -A @ np.asarray(centre, float))

    def local(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) mm -> (N, 3) local coordinates."""
        return np.asarray(points, float) @ self.A.T + self.b

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) mm -> (N,) bool."""
        return _inside(self.kind, *self.local(np.atleast_2d(points)).T)

    @property
    def centre(self) -> np.ndarray:
        return np.linalg.solve(self.A, -self.b)

    @property
    def volume_ml(self) -> float:
        unit = 4.0 / 3.0 * math.pi if self.kind == "ellipsoid" else 2.0 * math.pi
        return unit / abs(np.linalg.det(self.A)) / 1000.0


def _inside(kind: str, q0, q1, q2):
    if kind == "ellipsoid":
        r = q0 * q0
        r += q1 * q1
        r += q2 * q2
        return r <= 1.0
    r = q0 * q0
    r += q1 * q1
    return (r <= 1.0) & (np.abs(q2) <= 1.0)


@dataclass(frozen=True)
class Grid:
    """An image grid as ITK sees it: size (nx, ny, nz), spacing (mm), origin (mm, centre of voxel 0) and
    direction (3, 3, columns = world directions of the index axes i, j, k). Arrays are (nz, ny, nx)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, as sitk.Image.SetDirection takes it

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    @property
    def rot(self) -> np.ndarray:
        return np.asarray(self.direction, float).reshape(3, 3)

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) mm per index step: world = matrix @ (i, j, k) + origin."""
        return self.rot @ np.diag(self.spacing)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @classmethod
    def centred(cls, size, spacing, centre, rot: np.ndarray) -> Grid:
        """Grid of `size` (nx, ny, nz) whose extent is centred on `centre` (3,) mm."""
        size, spacing = tuple(int(n) for n in size), tuple(float(s) for s in spacing)
        half = (np.array(size) - 1) / 2.0 * np.array(spacing)
        origin = np.asarray(centre, float) - rot @ half
        return cls(size, spacing, tuple(origin.tolist()), tuple(np.asarray(rot, float).ravel().tolist()))

    def with_inplane(self, nx: int, ny: int) -> Grid:
        """Same physical extent, slices and pose with an (nx, ny) in-plane matrix (e.g. the DWI grid)."""
        fov = np.array(self.size[:2]) * np.array(self.spacing[:2])
        spacing = (fov[0] / nx, fov[1] / ny, self.spacing[2])
        corner = np.asarray(self.origin) - self.rot @ (np.array(self.spacing) / 2.0)
        origin = corner + self.rot @ (np.array(spacing) / 2.0)
        return Grid((nx, ny, self.size[2]), tuple(float(s) for s in spacing), tuple(origin.tolist()), self.direction)

    def supersampled(self, factors: tuple[int, int, int]) -> Grid:
        """Grid with each voxel split into factors (fx, fy, fz) sub-voxels; `block_mean` undoes it."""
        f = np.asarray(factors)
        spacing = np.asarray(self.spacing) / f
        origin = np.asarray(self.origin) + self.rot @ (np.asarray(self.spacing) * (1.0 / f - 1.0) / 2.0)
        return Grid(tuple(int(n) for n in np.array(self.size) * f), tuple(spacing.tolist()),
                    tuple(origin.tolist()), self.direction)

    def world(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (X, Y, Z) of the voxel centres, each (nz, ny, nx) float32 mm."""
        m, o = self.matrix, np.asarray(self.origin)
        i, j, k = (np.arange(n, dtype=np.float32) for n in self.size)
        return tuple(
            (float(o[a]) + float(m[a, 2]) * k)[:, None, None]
            + (float(m[a, 1]) * j)[None, :, None]
            + (float(m[a, 0]) * i)[None, None, :]
            for a in range(3)
        )

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average (nz*fz, ny*fy, nx*fx) sub-voxels back to (nz, ny, nx); factors in (x, y, z) order."""
    fx, fy, fz = factors
    nz, ny, nx = array.shape[0] // fz, array.shape[1] // fy, array.shape[2] // fx
    return array.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))


def shape_block(grid: Grid, shape: Shape) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Voxel centres of `grid` inside `shape`: (array slices of the shape's bounding box, bool mask there), or None
    when the shape misses the grid. Local coordinates are affine in the index, so only the box is evaluated."""
    L = shape.A @ grid.matrix
    t = shape.A @ np.asarray(grid.origin) + shape.b
    corners = np.array(list(itertools.product((-1.0, 1.0), repeat=3))).T  # the unit cube bounds both kinds
    idx = np.linalg.solve(L, corners - t[:, None])
    lo = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=1)).astype(int), np.array(grid.size) - 1)
    if np.any(lo > hi):
        return None
    i, j, k = (np.arange(lo[a], hi[a] + 1, dtype=np.float32) for a in range(3))
    q = [
        (float(t[a]) + float(L[a, 2]) * k)[:, None, None]
        + (float(L[a, 1]) * j)[None, :, None]
        + (float(L[a, 0]) * i)[None, None, :]
        for a in range(3)
    ]
    slices = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
    return slices, _inside(shape.kind, *q)


def _lut(classes) -> np.ndarray:
    lut = np.zeros(256, bool)
    lut[list(classes)] = True
    return lut


@dataclass(frozen=True)
class PaintOp:
    """Set voxels inside `shape` to tissue class `value`, only over the classes `over` (None: over anything)."""

    shape: Shape
    value: int
    over: tuple[int, ...] | None = None


def label_grid(grid: Grid, program: list[PaintOp], lesions: list[Shape]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes at the voxel centres of `grid` by painting `program` in order (later wins), and the lesion
    map (0 none, l + 1 for lesions[l], later wins) clipped to the gland. Both (nz, ny, nx) uint8."""
    classes = np.zeros(grid.shape, np.uint8)
    for op in program:
        hit = shape_block(grid, op.shape)
        if hit is None:
            continue
        sl, inside = hit
        view = classes[sl]
        if op.over is not None:
            inside &= _lut(op.over)[view]
        view[inside] = op.value
    lesion = np.zeros(grid.shape, np.uint8)
    gland = _lut(GLAND_CLASSES)
    for n, shape in enumerate(lesions):
        hit = shape_block(grid, shape)
        if hit is not None:
            sl, inside = hit
            inside &= gland[classes[sl]]
            lesion[sl][inside] = n + 1
    return classes, lesion


def tissue_classes(anatomy: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Per-voxel class with lesions overriding the anatomy: lesion l becomes class LESION0 + l."""
    return np.where(lesion > 0, lesion.astype(np.int32) + (LESION0 - 1), anatomy).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Signal equations (pure, arrays in, arrays out)
# ---------------------------------------------------------------------------------------------------------------
def spin_echo_signal(pd, t1_ms, t2_ms, tr_ms: float, te_ms: float, refocusing_deg: float = 180.0):
    """Turbo-spin-echo magnitude PD * (1 - exp(-TR/T1)) * exp(-TE/T2) * sin^2(FA/2), arbitrary units.
    Voids (PD 0) stay 0; T1, T2 must be > 0."""
    pd, t1, t2 = (np.asarray(x, float) for x in (pd, t1_ms, t2_ms))
    return pd * (1.0 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2) * math.sin(math.radians(refocusing_deg) / 2) ** 2


def diffusion_signal(s0, adc_mm2_s, b_s_mm2: float):
    """Mono-exponential DWI S0 * exp(-b * ADC); ADC in mm^2/s, b in s/mm^2."""
    return np.asarray(s0) * np.exp(-b_s_mm2 * np.asarray(adc_mm2_s))


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator, correlation_vox: float = 0.0) -> np.ndarray:
    """Magnitude of signal + complex Gaussian noise of sd `sigma` per channel; `correlation_vox` > 0 smooths the
    noise in-plane (vendor reconstruction filters) at the same sd. (nz, ny, nx) float in, float32 out."""
    noise = rng.standard_normal((2, *signal.shape)).astype(np.float32)
    if correlation_vox > 0:
        noise = ndimage.gaussian_filter(noise, (0, 0, correlation_vox, correlation_vox))
        noise /= noise.std()
    noise *= sigma
    return np.hypot(signal + noise[0], noise[1]).astype(np.float32)


def fit_adc(signals: np.ndarray, b_values) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel log-linear least squares of ln S = ln S0 - b ADC, as scanners do.
    signals (B, ...) > 0 (clipped at 1e-6); b_values (B,) s/mm^2 -> (S0 (...), ADC (...) mm^2/s)."""
    b = np.asarray(b_values, float)
    y = np.log(np.maximum(signals, 1e-6))
    bc = b - b.mean()
    adc = -np.tensordot(bc, y - y.mean(axis=0), axes=1) / np.sum(bc * bc)
    s0 = np.exp(y.mean(axis=0) + adc * b.mean())
    return s0, adc


def susceptibility_displacement(X, Y, Z, centre, radius_mm: float, amplitude_mm: float) -> np.ndarray:
    """EPI displacement (mm, along phase encoding) from the field of an air sphere in tissue: a dipole
    amplitude * (r/rho)^3 * (3 cos^2(theta) - 1) / 2 with theta to B0 (z); rho clipped to r inside the sphere.
    X, Y, Z world mm (any shape) -> same shape."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    rho2 = np.maximum(dx * dx + dy * dy + dz * dz, radius_mm**2)
    cos2 = dz * dz / rho2
    return (amplitude_mm * (radius_mm**2 / rho2) ** 1.5 * (3.0 * cos2 - 1.0) / 2.0).astype(np.float32)


def plane_wave_texture(X, Y, Z, waves: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Smooth tissue texture: sum of cos(k . p + phase) / 2 over waves (W, 3) 1/mm; roughly unit-sd. -> like X."""
    out = np.zeros(np.shape(X), np.float32)
    for k, ph in zip(waves, phases):
        out += np.cos(float(k[0]) * X + float(k[1]) * Y + float(k[2]) * Z + float(ph))
    return out / 2.0


def coil_bias(X, Y, Z, centre, coil, width_mm: float, gain: float, gradient) -> np.ndarray:
    """Smooth receive-coil bias, 1 at the gland centre: exp(gain * exp(-|p - coil|^2 / 2w^2) + gradient . (p - c)),
    brighter near the coil (posterior, by the rectum). gradient (3,) 1/mm. -> like X, float32."""
    def log_bias(x, y, z):
        d2 = (x - coil[0]) ** 2 + (y - coil[1]) ** 2 + (z - coil[2]) ** 2
        lin = gradient[0] * (x - centre[0]) + gradient[1] * (y - centre[1]) + gradient[2] * (z - centre[2])
        return gain * np.exp(-d2 / (2.0 * width_mm**2)) + lin
    return np.exp(log_bias(X, Y, Z) - log_bias(*centre)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Case planning: anatomy, lesions, labels, acquisition (all random draws happen here)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CasePlan:
    """Everything that defines a case before noise: ids, grids, anatomy, tissue table, labels, acquisition."""

    case_id: str
    patient_id: str
    cohort: str
    split: str
    noise_seed: list[int]
    t2w_grid: Grid
    dwi_grid: Grid
    program: list[PaintOp]
    lesions: list[Shape]
    t1: np.ndarray  # (n_classes,) ms
    t2: np.ndarray  # (n_classes,) ms
    pd: np.ndarray  # (n_classes,) relative
    adc: np.ndarray  # (n_classes,) mm^2/s
    dwi_pd_factor: np.ndarray  # (n_classes,) fat suppression on DWI
    acq: dict
    bias: dict
    texture: dict
    rectal_air: dict | None  # centre, radius_mm, amplitude_mm of the susceptibility dipole
    pirads: int | None
    sector: int | None
    truth: dict = field(default_factory=dict)


def case_seed(seed: int, cohort: str, index: int, stream: int) -> list[int]:
    """Entropy of one case's generator, independent of every other case (stream 0: plan, 1: noise), so adding
    cases or changing workers never changes a case."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [seed, zlib.crc32(cohort.encode()), index, stream]


def _ball_point(rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 1:
            return p


def _sample_tissues(rng: np.random.Generator, field_t: float, n_classes: int):
    """Per-class T1 (ms), T2 (ms), PD, ADC (mm^2/s) tables (n_classes,) from TISSUES, and the 1.5 T T1 factor.
    Classes beyond the named tissues (nodules, lesions) are filled by the caller."""
    t1, t2, pd, adc = (np.ones(n_classes), np.ones(n_classes), np.zeros(n_classes), np.zeros(n_classes))
    t1_factor = rng.uniform(0.75, 0.85) if field_t < 2 else 1.0  # T1 shortens at lower field
    t2_factor = 1.05 if field_t < 2 else 1.0  # and T2 lengthens slightly
    for k, (_, spec) in enumerate(TISSUES):
        if spec is None:
            continue
        (t1lo, t1hi), (t2lo, t2hi), p, (alo, ahi) = spec
        t1[k] = rng.uniform(t1lo, t1hi) * t1_factor
        t2[k] = rng.uniform(t2lo, t2hi) * t2_factor
        pd[k] = p * rng.uniform(0.97, 1.03)
        adc[k] = rng.uniform(alo, ahi) * 1e-3
    return t1, t2, pd, adc, t1_factor


def _gland_volume(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-normal with median sqrt(lo*hi), truncated to [lo, hi] by redrawing."""
    mu, sd = 0.5 * (math.log(lo) + math.log(hi)), max((math.log(hi) - math.log(lo)) / 4.0, 1e-9)
    for _ in range(1000):
        v = math.exp(rng.normal(mu, sd))
        if lo <= v <= hi:
            return v
    return math.exp(mu)


def _anatomy(rng: np.random.Generator, volume_ml: float) -> tuple[list[PaintOp], dict]:
    """Paint program of the pelvis around a prostate of `volume_ml`, plus the named solids the labels need."""
    u = rng.uniform
    c = u(-20, 20, 3)  # gland centre in the scanner frame
    ratios = np.array([1.0, u(0.62, 0.75), u(0.75, 0.9)])  # wider than deep, taller than deep
    k = (volume_ml * 1000.0 / (4.0 / 3.0 * math.pi * ratios.prod())) ** (1.0 / 3.0)
    ax, ay, az = axes = k * ratios
    gland = Shape.make("ellipsoid", c, axes)

    # TZ grows with volume (BPH); shifted anterior and superior so the PZ is a posterior-lateral crescent,
    # thickest at the apex.
    tz_frac = float(np.clip(0.2 + 0.4 * np.clip(math.log(volume_ml / 20.0) / math.log(4.0), 0, 1)
                            + rng.normal(0, 0.05), 0.15, 0.65))
    tz_ratio = np.array([1.0, 0.85, 0.9])
    tz_axes = np.minimum((tz_frac / tz_ratio.prod()) ** (1 / 3) * tz_ratio, 0.92) * axes
    tz_c = c + np.array([0.0, -(ay - tz_axes[1]) * u(0.7, 1.0), (az - tz_axes[2]) * u(0.3, 0.6)])
    tz = Shape.make("ellipsoid", tz_c, tz_axes)
    afms = Shape.make("ellipsoid", c + [0, -ay, az * u(0, 0.3)], axes * [u(0.4, 0.55), u(0.25, 0.35), u(0.7, 0.9)])

    ops: list[PaintOp] = []

    def paint(shape: Shape, tissue: str | int, over=None) -> None:
        ops.append(PaintOp(shape, C[tissue] if isinstance(tissue, str) else tissue,
                           None if over is None else tuple(over)))

    body_c = c + [0, u(10, 25), 0]
    paint(Shape.make("cylinder", body_c, [u(150, 190), u(75, 115), 1000]), "fat")
    for s in (-1, 1):  # gluteal muscles, posterolateral, mostly outside the FOV
        paint(Shape.make("ellipsoid", c + [s * u(55, 70), u(55, 70), u(0, 20)], [u(30, 40), u(25, 35), 80]),
              "muscle")
    for s in (-1, 1):  # femoral heads: marrow in a cortical shell
        r, t = u(22, 26), u(1.5, 2.5)
        fc = c + [s * u(85, 95), u(0, 10), u(15, 30)]
        paint(Shape.make("ellipsoid", fc, [r, r, r]), "cortex")
        paint(Shape.make("ellipsoid", fc, [r - t] * 3), "marrow", [C["cortex"]])
    for s in (-1, 1):  # pubic bones meeting at the symphysis, anterior to the gland
        pa, t = np.array([u(10, 14), u(7, 10), u(15, 22)]), u(1.5, 2.5)
        pc = c + [s * u(12, 16), -ay - u(22, 30), u(-5, 8)]
        rot = rotation(0, 0, -s * u(20, 35))
        paint(Shape.make("ellipsoid", pc, pa, rot), "cortex")
        paint(Shape.make("ellipsoid", pc, pa - t, rot), "marrow", [C["cortex"]])
    for s in (-1, 1):  # obturator internus on the pelvic side walls
        ox = u(7, 11)
        paint(Shape.make("ellipsoid", c + [s * (ax + u(12, 20) + ox), u(-5, 10), u(0, 15)],
                         [ox, u(25, 35), u(30, 45)], rotation(0, 0, s * u(5, 15))), "obturator")
    # bladder: wall then urine, sitting on the base
    ba = np.array([u(30, 50), u(22, 40), u(18, 35)])
    bc = c + [u(-5, 5), -ay * u(0, 0.4), az + ba[2] * u(0.6, 0.85)]
    wall = u(2, 4)
    paint(Shape.make("ellipsoid", bc, ba), "bladder_wall")
    paint(Shape.make("ellipsoid", bc, ba - wall), "urine", [C["bladder_wall"]])
    for s in (-1, 1):  # seminal vesicles, posterior-superior, fanning out laterally and upwards
        paint(Shape.make("ellipsoid", c + [s * u(10, 16), ay * u(0.7, 0.9) + u(2, 6), az * u(0.7, 0.9) + u(4, 8)],
                         [u(12, 20), u(4, 7), u(5, 8)], rotation(0, -s * u(10, 30), s * u(10, 25))),
              "seminal_vesicles")
    nvb = []
    for s in (-1, 1):  # neurovascular bundles just outside the posterolateral capsule
        th, r = math.radians(u(35, 60)), u(2.0, 3.5)
        n = np.array([math.cos(th) / ax, math.sin(th) / ay])
        n /= np.linalg.norm(n)
        xy = np.array([ax * math.cos(th), ay * math.sin(th)]) + n * (r + 1.0)
        nvb.append(Shape.make("cylinder", c + [s * xy[0], xy[1], 0], [r, r, 0.9 * az]))
        paint(nvb[-1], "nvb")
    # rectum: tube posterior to the gland, tilting posteriorly as it rises; wall, content, anterior gas bubble
    rx, ry, w = u(15, 22), u(12, 18), u(3, 5)
    slope = u(0.05, 0.25)
    rrot = rotation(-math.degrees(math.atan(slope)), 0, 0)
    rc = c + [u(-5, 5), ay + u(1, 4) + ry + slope * 20.0, 20.0]
    paint(Shape.make("cylinder", rc, [rx, ry, 80], rrot), "rectal_wall")
    paint(Shape.make("cylinder", rc, [rx - w, ry - w, 80], rrot), "rectal_content", [C["rectal_wall"]])
    gas = None
    if u() > 0.15:
        g = np.array([u(0.3, 1.0) * (rx - w), u(0.2, 0.9) * (ry - w), u(8, 35)])
        gas_c = rc + rrot @ np.array([0.0, -(ry - w) + g[1], u(-35, 0)])  # non-dependent (anterior) when supine
        gas = Shape.make("ellipsoid", gas_c, g, rrot)
        paint(gas, "rectal_air", [C["rectal_content"]])
    # the gland overrides its neighbours, so its mask is the analytic ellipsoid
    paint(gland, "pz")
    paint(tz, "tz", [C["pz"]])
    paint(afms, "afms", [C["pz"], C["tz"]])
    nodules = []
    for n in range(int(rng.integers(0, 1 + round(MAX_NODULES * tz_frac / 0.65)))):
        centre = tz.centre + (tz_axes * 0.8) * _ball_point(rng)
        nodules.append(Shape.make("ellipsoid", centre, u(3, 9) * u(0.8, 1.25, 3),
                                  rotation(*u(-90, 90, 3))))
        paint(nodules[-1], NODULE0 + n, [C["tz"]] + list(range(NODULE0, NODULE0 + n)))
    solids = {"centre": c, "axes": axes, "gland": gland, "tz": tz, "afms": afms, "tz_fraction": tz_frac,
              "nodules": nodules, "gas": gas, "rectum_axes": (rx, ry, w)}
    return ops, solids


def zone_at(point: np.ndarray, solids: dict) -> str | None:
    """Zone ("tz" or "pz") of the gland at a world point (3,) mm, None outside the gland (analytic)."""
    if not solids["gland"].contains(point)[0]:
        return None
    return "tz" if (solids["tz"].contains(point)[0] or solids["afms"].contains(point)[0]) else "pz"


def lesion_score(diameter_mm: float, adc_contrast: float) -> int:
    """PI-RADS-like score of one lesion: 3 small or faint; 4 < 15 mm with clearly low ADC; 5 >= 15 mm with
    clearly low ADC. adc_contrast = 1 - ADC_lesion / ADC_host_zone."""
    if adc_contrast < CLEAR_ADC_CONTRAST or diameter_mm < SMALL_DIAMETER_MM:
        return 3
    return 5 if diameter_mm >= LARGE_DIAMETER_MM else 4


def lesion_sector(centre: np.ndarray, solids: dict) -> int:
    """Sector (labels.sector_index) of a point in the gland: level by cranio-caudal thirds, side by x (+x is
    patient left), zone at the point, anterior/posterior by y, all relative to the gland centre."""
    c, az = solids["centre"], solids["axes"][2]
    dz = centre[2] - c[2]
    level = "base" if dz > az / 3 else ("apex" if dz < -az / 3 else "mid")
    side = "left" if centre[0] > c[0] else "right"
    ap = "anterior" if centre[1] < c[1] else "posterior"
    return sector_index(level, side, zone_at(centre, solids) or "pz", None if level == "apex" else ap)


def _sample_lesions(rng, solids, n_lesions, t1, t2, pd, adc, t1_factor):
    """Lesions (0.1-3 mL ellipsoids, ~70% PZ) with grade-dependent T2/ADC written into the class tables."""
    u = rng.uniform
    gland = solids["gland"]
    lesions, info = [], []
    names, probs = list(LESION_GRADES), np.array([g[0] for g in LESION_GRADES.values()])
    for n in range(n_lesions):
        want = "pz" if u() < 0.7 else "tz"
        for _ in range(200):  # uniform in the gland away from the capsule, rejected until in the wanted zone
            centre = gland.centre + 0.85 * solids["axes"] * _ball_point(rng)
            if zone_at(centre, solids) == want:
                break
        zone = zone_at(centre, solids)
        vol = math.exp(u(math.log(0.1), math.log(3.0)))
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        e = u(0.75, 1.33, 3)
        semi = r * e / np.prod(e) ** (1 / 3)
        shape = Shape.make("ellipsoid", centre, semi, rotation(*u(-90, 90, 3)))
        grade = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        host = C[zone]
        _, t2spec, adcspec = LESION_GRADES[grade]
        k = LESION0 + n
        t1[k] = u(1500, 1700) * t1_factor
        pd[k] = 0.8 * u(0.97, 1.03)
        t2[k] = t2[host] * u(*t2spec[1:]) if t2spec[0] == "rel" else u(*t2spec[1:])
        adc[k] = adc[host] * u(*adcspec[1:]) if adcspec[0] == "rel" else u(*adcspec[1:]) * 1e-3
        contrast = 1.0 - adc[k] / adc[host]
        diameter = 2.0 * float(semi.max())
        lesions.append(shape)
        info.append({"centre": centre, "zone": zone, "volume_ml": shape.volume_ml, "diameter_mm": diameter,
                     "grade": grade, "adc": adc[k], "t2": t2[k], "contrast": contrast,
                     "score": lesion_score(diameter, contrast)})
    return lesions, info


def _noisy_label(rng: np.random.Generator, label: int, p: float) -> int:
    """With probability p shift by +-1, reflected into 2-5."""
    flip, step = rng.uniform() < p, (1 if rng.uniform() < 0.5 else -1)
    if not flip:
        return label
    shifted = label + step
    return shifted if 2 <= shifted <= 5 else label - step


def plan_case(cohort: str, index: int, split: str, seed: int, cfg: dict) -> CasePlan:
    """Draw one case (anatomy, lesions, labels, acquisition, pose) from its own generator. `cfg` as resolved by
    `phantom_config`. Pure: no IO, no noise yet."""
    cfg = phantom_config(cfg)
    rng = np.random.default_rng(case_seed(seed, cohort, index, 0))
    u = rng.uniform
    field_t = 3.0 if u() < 0.65 else 1.5
    vendor = list(VENDORS)[int(rng.integers(len(VENDORS)))]
    n_classes = LESION0 + cfg["max_lesions"]
    t1, t2, pd, adc, t1_factor = _sample_tissues(rng, field_t, n_classes)

    volume = _gland_volume(rng, *cfg["gland_volume_ml"])
    program, solids = _anatomy(rng, volume)
    for n in range(len(solids["nodules"])):  # BPH nodules: stromal (dark, lower ADC) to glandular (bright)
        f = u(-1, 1)
        k = NODULE0 + n
        t1[k], pd[k] = t1[C["tz"]], pd[C["tz"]]
        t2[k], adc[k] = t2[C["tz"]] * (1 + 0.35 * f), adc[C["tz"]] * (1 + 0.12 * f)
    n_lesions = int(rng.integers(0, cfg["max_lesions"] + 1))
    lesions, info = _sample_lesions(rng, solids, n_lesions, t1, t2, pd, adc, t1_factor)
    dwi_pd = np.ones(n_classes)
    for k, (lo, hi) in FAT_SUPPRESSED.items():
        dwi_pd[k] = u(lo, hi)

    pirads_true = max((d["score"] for d in info), default=2)
    index_lesion = max(range(n_lesions), key=lambda n: info[n]["volume_ml"]) if n_lesions else None
    sector = lesion_sector(info[index_lesion]["centre"], solids) if n_lesions else None
    pirads = _noisy_label(rng, pirads_true, cfg["label_noise"])

    # acquisition (rounded as a scanner header would store them; the physics uses the stored values)
    tr, te, fa = round(u(3000, 6500), 1), round(u(90, 120), 1), round(u(120, 160), 1)
    tr_dwi, te_dwi = round(u(3000, 6000), 1), round(u(55, 85), 1)
    snr_hi = 1.0 if field_t > 2 else 0.5  # lower SNR at 1.5 T: lower half of the configured range
    snr_t2w = float(np.interp(u(0, snr_hi), [0, 1], cfg["snr_t2w"]))
    snr_dwi = float(np.interp(u(0, snr_hi), [0, 1], cfg["snr_dwi"]))
    thickness = round(u(*cfg["slice_thickness_mm"]), 1)
    n_slices = int(rng.integers(cfg["slices"][0], cfg["slices"][1] + 1))

    # pose: the grid is rotated and shifted about the gland (+5 mm superior to include the seminal vesicles)
    rot_max, shift_max = cfg["rotation_deg"], cfg["shift_mm"]
    angles = u(-rot_max, rot_max, 3) if rot_max > 0 else np.zeros(3)
    shift = u(-shift_max, shift_max, 3) if shift_max > 0 else np.zeros(3)
    rot = rotation(*angles)
    centre = solids["centre"] + [0, 0, 5.0] + shift
    kaxis = rot[:, 2]
    half_extent = float(np.linalg.norm(solids["axes"] * kaxis))  # gland half-extent along the slice axis
    need = 2.0 * (half_extent + 15.0 + abs(float(np.dot(centre - solids["centre"], kaxis))))
    n_slices = max(n_slices, math.ceil(need / thickness))
    rows, cols = cfg["matrix"]
    fov_r, fov_c = cfg["fov_mm"]
    t2w_grid = Grid.centred((cols, rows, n_slices), (fov_c / cols, fov_r / rows, thickness), centre, rot)
    dwi_grid = t2w_grid.with_inplane(cfg["dwi_matrix"][1], cfg["dwi_matrix"][0])

    vend = VENDORS[vendor]
    c = solids["centre"]
    bias = {"centre": c, "coil": c + [u(-10, 10), solids["axes"][1] + u(25, 40), u(-25, 0)],
            "width_mm": u(40, 70), "gain": u(0.4, 0.9) * vend["bias_gain"],
            "gradient": rng.normal(0, 0.0015, 3) * vend["bias_gain"]}
    directions = rng.normal(size=(4, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    texture = {"waves": directions * (2 * math.pi / u(15, 50, (4, 1))), "phases": u(0, 2 * math.pi, 4),
               "amp_t2w": u(0.03, 0.08), "amp_adc": u(0.02, 0.05)}
    gas = solids["gas"]
    rectal_air = None
    if gas is not None:
        rectal_air = {"centre": gas.centre, "radius_mm": (gas.volume_ml * 1000 * 3 / (4 * math.pi)) ** (1 / 3),
                      "amplitude_mm": u(2, 6) * field_t / 3.0}

    acq = {"tr": tr, "te": te, "flip_angle": fa, "tr_dwi": tr_dwi, "te_dwi": te_dwi, "field_strength": field_t,
           "vendor": vendor, "b_values": [float(b) for b in cfg["b_values"]], "computed_b": float(cfg["computed_b"]),
           "snr_t2w": snr_t2w, "snr_dwi": snr_dwi}
    il = info[index_lesion] if n_lesions else None
    truth = {
        "field_strength": field_t, "vendor": vendor, "tr": tr, "te": te, "flip_angle": fa,
        "tr_dwi": tr_dwi, "te_dwi": te_dwi, "b_values": ";".join(f"{b:g}" for b in acq["b_values"]),
        "computed_b": acq["computed_b"], "snr_t2w": snr_t2w, "snr_dwi": snr_dwi, "t1_field_factor": t1_factor,
        "slice_thickness_mm": thickness, "n_slices": n_slices, "pixel_mm": f"{fov_c / cols:.4f};{fov_r / rows:.4f}",
        "pose_deg": ";".join(f"{a:.3f}" for a in angles), "shift_mm": ";".join(f"{s:.3f}" for s in shift),
        "gland_volume_ml": solids["gland"].volume_ml,  # exact: the painted gland is this ellipsoid
        "gland_centre_mm": ";".join(f"{x:.3f}" for x in solids["centre"]),
        "gland_semi_axes_mm": ";".join(f"{a:.3f}" for a in solids["axes"]),
        "tz_volume_fraction": solids["tz_fraction"], "n_nodules": len(solids["nodules"]),
        "n_lesions": n_lesions, "pirads_true": pirads_true, "pirads": pirads,
        "sector": "" if sector is None else sector,
        "index_lesion_volume_ml": il["volume_ml"] if il else "",
        "index_lesion_diameter_mm": il["diameter_mm"] if il else "",
        "index_lesion_zone": il["zone"] if il else "", "index_lesion_grade": il["grade"] if il else "",
        "index_lesion_adc_contrast": il["contrast"] if il else "",
        "adc_index_lesion_true": il["adc"] * 1e6 if il else "",
        "adc_lesions_true": ";".join(f"{d['adc'] * 1e6:.1f}" for d in info),
        "lesion_scores": ";".join(str(d["score"]) for d in info),
        "adc_pz_true": adc[C["pz"]] * 1e6, "adc_tz_true": adc[C["tz"]] * 1e6,
        "t2_pz_ms": t2[C["pz"]], "t2_tz_ms": t2[C["tz"]], "t2_index_lesion_ms": il["t2"] if il else "",
        "rectal_gas_ellipsoid_ml": gas.volume_ml if gas is not None else 0.0,  # before clipping to the lumen
        "dwi_distortion_mm": rectal_air["amplitude_mm"] if rectal_air else 0.0,
    }
    case_id, patient_id = f"{cohort}_{index:04d}", f"{cohort}_p{index:04d}"
    return CasePlan(case_id, patient_id, cohort, split, case_seed(seed, cohort, index, 1),
                    t2w_grid, dwi_grid, program, lesions, t1, t2, pd, adc, dwi_pd, acq, bias, texture,
                    rectal_air, pirads, sector, truth)


# ---------------------------------------------------------------------------------------------------------------
# Rendering (noise from the case's second generator)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CaseImages:
    """Rendered arrays, (nz, ny, nx). Images int16 (T2W, DWI in vendor units; ADC in 1e-6 mm^2/s);
    masks uint8 on the T2W grid; `anatomy`/`lesion_id` the class and lesion maps at T2W voxel centres."""

    t2w: np.ndarray
    adc: np.ndarray
    dwi: np.ndarray
    prostate: np.ndarray
    zones: np.ndarray
    lesion: np.ndarray
    rectum: np.ndarray
    anatomy: np.ndarray
    lesion_id: np.ndarray
    t2w_grid: Grid
    dwi_grid: Grid


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def render_case(plan: CasePlan) -> CaseImages:
    """Images and masks of a planned case (deterministic given the plan)."""
    rng = np.random.default_rng(plan.noise_seed)
    acq, vend = plan.acq, VENDORS[plan.acq["vendor"]]
    pz = C["pz"]

    # T2W: spin echo per class, partial volume across the slice, bias, texture, Rician noise
    fine = plan.t2w_grid.supersampled(T2W_SUPERSAMPLE)
    anat_f, les_f = label_grid(fine, plan.program, plan.lesions)
    table = spin_echo_signal(plan.pd, plan.t1, plan.t2, acq["tr"], acq["te"], acq["flip_angle"]).astype(np.float32)
    t2w = block_mean(table[tissue_classes(anat_f, les_f)], T2W_SUPERSAMPLE)
    X, Y, Z = plan.t2w_grid.world()
    tex = plane_wave_texture(X, Y, Z, plan.texture["waves"], plan.texture["phases"])
    t2w *= coil_bias(X, Y, Z, **plan.bias) * (1.0 + plan.texture["amp_t2w"] * tex)
    t2w = rician(t2w, float(table[pz]) / acq["snr_t2w"], rng, vend["noise_corr"])
    centre = T2W_SUPERSAMPLE[2] // 2
    anatomy, lesion_id = anat_f[centre::T2W_SUPERSAMPLE[2]], les_f[centre::T2W_SUPERSAMPLE[2]]
    zones = ZONE_OF_CLASS[anatomy]

    # DWI: S0 (fat suppressed, T2-weighted at TE_dwi) * exp(-b ADC) with ADC texture, on the coarser grid
    fine = plan.dwi_grid.supersampled(DWI_SUPERSAMPLE)
    cls = tissue_classes(*label_grid(fine, plan.program, plan.lesions))
    s0_table = spin_echo_signal(plan.pd * plan.dwi_pd_factor, plan.t1, plan.t2, acq["tr_dwi"], acq["te_dwi"])
    s0_f, adc_f = s0_table.astype(np.float32)[cls], plan.adc.astype(np.float32)[cls]
    Xd, Yd, Zd = plan.dwi_grid.world()
    tex_d = 1.0 + plan.texture["amp_adc"] * plane_wave_texture(Xd, Yd, Zd, plan.texture["waves"],
                                                               plan.texture["phases"])
    fx, fy, fz = DWI_SUPERSAMPLE
    nz, ny, nx = plan.dwi_grid.shape
    adc_f = (adc_f.reshape(nz, fz, ny, fy, nx, fx) * tex_d[:, None, :, None, :, None]).reshape(adc_f.shape)
    bias_d = coil_bias(Xd, Yd, Zd, **{**plan.bias, "gain": 0.8 * plan.bias["gain"]})
    shift_vox = None
    if plan.rectal_air is not None:  # EPI distortion along phase encoding (grid j: anterior-posterior)
        shift_vox = susceptibility_displacement(Xd, Yd, Zd, **plan.rectal_air) / plan.dwi_grid.spacing[1]
        jacobian = np.clip(1.0 - np.gradient(shift_vox, axis=1), 0.2, 3.0)
        kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (nz, ny, nx)), indexing="ij")
    b_max = max(acq["b_values"])
    sigma = float(diffusion_signal(s0_table[pz], plan.adc[pz], b_max)) / acq["snr_dwi"]
    signals = []
    for b in acq["b_values"]:
        s = block_mean(diffusion_signal(s0_f, adc_f, b), DWI_SUPERSAMPLE).astype(np.float32)
        if shift_vox is not None:
            s = ndimage.map_coordinates(s, [kk, jj - shift_vox, ii], order=1, mode="nearest") * jacobian
        signals.append(rician(s * bias_d, sigma, rng, vend["noise_corr"]))
    signals = np.stack(signals)
    s0_fit, adc_fit = fit_adc(signals, acq["b_values"])
    adc_fit = np.clip(adc_fit, 0.0, ADC_MAX * 1e-6)
    dwi = diffusion_signal(s0_fit, adc_fit, acq["computed_b"])
    adc_fit[signals[int(np.argmin(acq["b_values"]))] < 3.0 * sigma] = 0.0  # scanners blank the noise floor

    return CaseImages(
        t2w=_to_int16(t2w * vend["scale"]), adc=_to_int16(adc_fit * 1e6), dwi=_to_int16(dwi * vend["scale"]),
        prostate=(zones == ZONE_LABELS["tz"]) | (zones == ZONE_LABELS["pz"]),
        zones=zones, lesion=lesion_id > 0, rectum=zones == ZONE_LABELS["rectum"],
        anatomy=anatomy, lesion_id=lesion_id, t2w_grid=plan.t2w_grid, dwi_grid=plan.dwi_grid,
    )


# ---------------------------------------------------------------------------------------------------------------
# Cohort IO
# ---------------------------------------------------------------------------------------------------------------
def phantom_config(cfg: dict | None) -> dict:
    """DEFAULTS updated with `cfg`; unknown keys (including `seed`, which is an argument) are an error."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown phantom config key(s) {unknown}; known: {sorted(DEFAULTS)}"
                         + (" (pass the seed as the `seed` argument)" if "seed" in unknown else ""))
    out = {**DEFAULTS, **cfg}
    for key in ("matrix", "fov_mm", "slices", "slice_thickness_mm", "dwi_matrix", "snr_t2w", "snr_dwi",
                "gland_volume_ml"):
        if len(out[key]) != 2 or min(out[key]) <= 0:
            raise ValueError(f"phantom config {key} must be two positive numbers, got {out[key]}")
        if key not in ("matrix", "fov_mm", "dwi_matrix") and out[key][0] > out[key][1]:
            raise ValueError(f"phantom config {key} must be [min, max], got {out[key]}")
    if len(out["b_values"]) < 2 or len(set(out["b_values"])) < 2:
        raise ValueError(f"phantom config b_values needs two distinct b-values, got {out['b_values']}")
    if not 0 <= out["label_noise"] <= 1:
        raise ValueError(f"phantom config label_noise must be in [0, 1], got {out['label_noise']}")
    if not 0 <= int(out["max_lesions"]) <= 255 - LESION0:
        raise ValueError(f"phantom config max_lesions must be in 0-{255 - LESION0}, got {out['max_lesions']}")
    out["max_lesions"] = int(out["max_lesions"])
    return out


def _fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _write_case(job: tuple) -> tuple[dict, dict]:
    """Plan, render and write one case; returns (manifest row, truth row). Top-level for the process pool."""
    cohort, index, split, seed, cfg, out_dir = job
    plan = plan_case(cohort, index, split, seed, cfg)
    img = render_case(plan)
    labelled = cohort not in UNLABELLED_COHORTS
    kinds = {"t2w": (img.t2w, plan.t2w_grid), "adc": (img.adc, plan.dwi_grid), "dwi": (img.dwi, plan.dwi_grid)}
    if labelled:
        kinds |= {name: (getattr(img, name).astype(np.uint8), plan.t2w_grid)
                  for name in ("prostate", "zones", "lesion", "rectum")}
    row = {col: "" for col in MANIFEST_COLUMNS}
    for name, (array, grid) in kinds.items():
        rel = f"cases/{plan.case_id}_{name}.nii.gz"
        sitk.WriteImage(grid.image(array), str(Path(out_dir) / rel), True)  # gzip header mtime is 0: reproducible
        row[name] = rel
    row |= {"case_id": plan.case_id, "patient_id": plan.patient_id, "cohort": cohort, "split": split,
            "tr": plan.acq["tr"], "te": plan.acq["te"], "flip_angle": plan.acq["flip_angle"],
            "field_strength": plan.acq["field_strength"], "vendor": plan.acq["vendor"]}
    if labelled:
        row |= {"pirads": plan.pirads, "sector": plan.sector}
    truth = {"case_id": plan.case_id, "cohort": cohort, "split": split, **plan.truth,
             "gland_volume_ml_mask": float(img.prostate.sum()) * plan.t2w_grid.voxel_ml}
    return {k: _fmt(v) for k, v in row.items()}, {k: _fmt(v) for k, v in truth.items()}


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_cohort(cohort: str, split_sizes: dict[str, int], cfg: dict, seed: int, out_dir: Path,
                 workers: int = 1) -> Path:
    """Generate cohort `cohort` with `split_sizes` (e.g. {"train": 16, "val": 4, "test": 8}, cases numbered in
    that order) into `out_dir`: out_dir/cases/<case_id>_<t2w|adc|dwi|prostate|zones|lesion|rectum>.nii.gz,
    out_dir/manifest.csv (labels.MANIFEST_COLUMNS, paths relative to out_dir; `volume_ml` left empty for the
    integrity check; cohort `corpus` has images and metadata only) and out_dir/truth.csv (phantom ground truth per
    case: analytic gland volume (mL), lesions, index lesion volume/zone/ADC, true PZ/TZ ADC (1e-6 mm^2/s),
    acquisition). Each case has its own generator, so neither the cohort size nor `workers` changes a case;
    the same seed gives byte-identical files. Returns the manifest path."""
    cfg = phantom_config(cfg)
    out_dir = Path(out_dir)
    if not cohort or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
                         for ch in cohort):
        raise ValueError(f"cohort name {cohort!r} must match [A-Za-z0-9_.-]+ (it is used in file names)")
    splits = []
    for split, n in split_sizes.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if int(n) < 0:
            raise ValueError(f"split size for {split} must be >= 0, got {n}")
        splits += [split] * int(n)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    jobs = [(cohort, i, split, seed, cfg, out_dir) for i, split in enumerate(splits)]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child can inherit ITK's thread pool in a locked state
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_write_case, jobs))
    else:
        results = [_write_case(job) for job in jobs]
    truth_columns = list(results[0][1]) if results else ["case_id", "cohort", "split"]
    _write_csv(out_dir / "truth.csv", truth_columns, [t for _, t in results])
    manifest = out_dir / "manifest.csv"
    _write_csv(manifest, MANIFEST_COLUMNS, [m for m, _ in results])
    return manifest
