"""The image grid: where an image's voxels lie in patient space, as ITK describes it (one type for the phantom, the
importers and the integrity check)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# Grids that differ by less than this (mm, and direction cosines) are the same grid: NIfTI stores geometry in
# float32, so a mask written from the very same grid comes back a few 1e-5 mm off.
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Grid:
    """size (nx, ny, nz), spacing (mm), origin (mm, LPS, centre of voxel 0) and direction (row-major 3x3, column j
    the world direction of index axis j). Arrays on the grid are (nz, ny, nx)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, as sitk.Image.SetDirection takes it

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Grid:
        """The grid of an image, or of a reader after ReadImageInformation (no voxels read)."""
        return cls(
            tuple(int(n) for n in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def of_file(cls, path: Path) -> Grid:
        """The grid in a file's header; raises RuntimeError (SimpleITK's) when the header cannot be read."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return cls.of(reader)

    @classmethod
    def centred(cls, size, spacing, centre, rot: np.ndarray) -> Grid:
        """Grid of `size` (nx, ny, nz) whose extent is centred on `centre` (3,) mm."""
        size, spacing = tuple(int(n) for n in size), tuple(float(s) for s in spacing)
        half = (np.array(size) - 1) / 2.0 * np.array(spacing)
        origin = np.asarray(centre, float) - rot @ half
        return cls(size, spacing, tuple(origin.tolist()), tuple(np.asarray(rot, float).ravel().tolist()))

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

    def matches(self, other: Grid, tolerance: float = GRID_TOLERANCE) -> bool:
        """Same size, and spacing, origin and direction equal within `tolerance` (mm, cosines)."""
        return (
            tuple(self.size) == tuple(other.size)
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def voxel_centres(self, index_zyx: np.ndarray) -> np.ndarray:
        """World coordinates (N, 3) mm of voxels given as (N, 3) array indices (z, y, x)."""
        ijk = np.asarray(index_zyx, float)[:, ::-1]
        return ijk @ self.matrix.T + np.asarray(self.origin, float)

    def nearest_voxels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Array indices (N, 3) (z, y, x) of the voxels holding world `points` (N, 3) mm, and a bool (N,) that
        is False for points outside the grid (their indices are clipped)."""
        ijk = np.rint((np.asarray(points, float) - np.asarray(self.origin, float)) @ np.linalg.inv(self.matrix).T)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(self.size)), axis=1)
        ijk = np.clip(ijk, 0, np.asarray(self.size) - 1).astype(np.int64)
        return ijk[:, ::-1], inside

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box (mm) of the voxels' outer edges: (low corner, high corner)."""
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.size], indexing="ij")).reshape(3, -1)
        points = np.asarray(self.origin, float)[:, None] + self.rot @ (corners * np.asarray(self.spacing)[:, None])
        return points.min(axis=1), points.max(axis=1)

    def with_inplane(self, nx: int, ny: int) -> Grid:
        """Same physical extent, slices and pose with an (nx, ny) in-plane matrix (e.g. the DWI grid)."""
        fov = np.array(self.size[:2]) * np.array(self.spacing[:2])
        spacing = (fov[0] / nx, fov[1] / ny, self.spacing[2])
        corner = np.asarray(self.origin) - self.rot @ (np.array(self.spacing) / 2.0)
        origin = corner + self.rot @ (np.array(spacing) / 2.0)
        return Grid((nx, ny, self.size[2]), tuple(float(s) for s in spacing), tuple(origin.tolist()), self.direction)

    def supersampled(self, factors: tuple[int, int, int]) -> Grid:
        """Grid with each voxel split into factors (fx, fy, fz) sub-voxels (the phantom's `block_mean` undoes it)."""
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
        """`array` (nz, ny, nx) as a SimpleITK image on this grid."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img
