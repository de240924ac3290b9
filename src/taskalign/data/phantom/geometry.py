"""Phantom geometry: analytic solids in patient space and painting them onto an image grid."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from taskalign.data.grid import Grid
from taskalign.data.phantom.tissues import GLAND_CLASSES, LESION0


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
