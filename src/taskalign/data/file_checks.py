"""Checks of one case's files: readable, 3-D, one value per voxel, geometry against the T2W, NaN/Inf, mask
labels. Headers are read cheaply (`ReadImageInformation`); voxels once per file."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from taskalign.data.grid import Grid
from taskalign.data.image_io import unreadable_message
from taskalign.data.labels import BINARY_MASK_COLUMNS, ZONE_LABELS
from taskalign.data.manifest_table import REFERENCE_IMAGE
from taskalign.data.problems import Problem, dims_text, number_text, value_text, values_text

ZONE_RANGE = (0, max(ZONE_LABELS.values()))
_FLOAT_PIXEL_IDS = {
    getattr(sitk, name)
    for name in (
        "sitkFloat32", "sitkFloat64", "sitkVectorFloat32", "sitkVectorFloat64",
        "sitkComplexFloat32", "sitkComplexFloat64",
    )
    if hasattr(sitk, name)
}
# NIfTI datatype code -> (bytes per voxel, numpy type of float components or None). ITK up to 5.4 reads a truncated
# .nii.gz without a word (zeros where the data ended), so the check counts the bytes itself, for every type.
_NIFTI_TYPES = {
    2: (1, None), 4: (2, None), 8: (4, None), 16: (4, "f4"), 32: (8, "f4"), 64: (8, "f8"), 128: (3, None),
    256: (1, None), 512: (2, None), 768: (4, None), 1024: (8, None), 1280: (8, None), 1536: (16, None),
    1792: (16, "f8"), 2048: (32, None), 2304: (4, None),
}
_CHUNK_BYTES = 1 << 24
# Voxel spacing a prostate MRI can have (mm): outside it the header is in other units (metres, micrometres).
SPACING_RANGE_MM = (0.1, 10.0)
# Median ADC of the gland (or of the ADC's positive voxels without a gland mask) in 1e-6 mm^2/s: normal and
# cancerous prostate lie at about 600-2000; 0.001 (mm^2/s) or 1e9 are other units.
ADC_MEDIAN_RANGE = (100.0, 5000.0)
# An ADC fit gives a few negative voxels in noise (a documented warning); more than this fraction of its nonzero
# voxels negative is a sign or offset error.
ADC_NEGATIVE_FRACTION = 0.01


def geometry_differences(mask: Grid, image: Grid, tolerance: float) -> list[str]:
    """Spacing is compared relatively, direction cosines absolutely, origins to `tolerance` voxels."""
    if mask.size != image.size:
        return [f"size {dims_text(mask.size)} vs {dims_text(image.size)}"]
    out = []
    if not np.allclose(mask.spacing, image.spacing, rtol=tolerance, atol=0.0):
        out.append(f"spacing {dims_text(mask.spacing)} vs {dims_text(image.spacing)} mm")
    voxel = max(max(mask.spacing), max(image.spacing))
    if not np.allclose(mask.origin, image.origin, rtol=0.0, atol=tolerance * voxel):
        fmt = lambda o: "(" + ", ".join(number_text(v) for v in o) + ")"  # noqa: E731
        out.append(f"origin {fmt(mask.origin)} vs {fmt(image.origin)} mm")
    if not np.allclose(mask.direction, image.direction, rtol=0.0, atol=tolerance):
        delta = np.abs(np.subtract(mask.direction, image.direction)).max()
        out.append(f"direction cosines differ by up to {number_text(delta)}")
    return out


def _no_overlap(image: Grid, reference: Grid) -> str | None:
    lo_a, hi_a = image.bounds()
    lo_b, hi_b = reference.bounds()
    if np.all(np.minimum(hi_a, hi_b) > np.maximum(lo_a, lo_b)):
        return None
    box = lambda lo, hi: " x ".join(f"[{number_text(a)}, {number_text(b)}]" for a, b in zip(lo, hi))  # noqa: E731
    return (
        f"does not overlap {REFERENCE_IMAGE} physically "
        f"(bounding box {box(lo_a, hi_a)} vs {box(lo_b, hi_b)} mm)"
    )


def nifti_voxel_scan(path: Path) -> tuple[int, int] | None:
    """(NaN count, Inf count) of a NIfTI-1/2 file's raw voxels, reading every voxel byte ((0, 0) for integer
    types); None when the file is not NIfTI or has a datatype this scan does not know.

    ITK up to 5.4 (SimpleITK 2.x) replaces NaN and Inf with 0 when it reads NIfTI (fixed in ITK 6,
    InsightSoftwareConsortium/ITK#6683), so the voxels SimpleITK returns cannot show them.
    Raises EOFError for a truncated file, OSError, struct.error or zlib.error for a corrupt one.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
        header = f.read(540)
        for endian in "<>":
            size = struct.unpack(endian + "i", header[:4])[0]
            if size in (348, 540):
                break
        else:
            return None
        if size == 348:
            dim = struct.unpack(endian + "8h", header[40:56])
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
        else:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
        if datatype not in _NIFTI_TYPES:
            return None
        voxel_bytes, float_type = _NIFTI_TYPES[datatype]
        dtype = np.dtype(endian + float_type) if float_type else np.dtype("u1")
        remaining = int(np.prod(dim[1 : dim[0] + 1])) * voxel_bytes
        f.seek(offset)
        n_nan = n_inf = 0
        while remaining > 0:
            wanted = min(remaining, _CHUNK_BYTES - _CHUNK_BYTES % dtype.itemsize)
            chunk = f.read(wanted)
            if len(chunk) < wanted:
                raise EOFError(f"the voxel data ends {remaining - len(chunk)} bytes early")
            if float_type:
                values = np.frombuffer(chunk, dtype)
                n_nan += int(np.isnan(values).sum())
                n_inf += int(np.isinf(values).sum())
            remaining -= len(chunk)
    return n_nan, n_inf


def _mask_values(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct voxel values and their counts; bincount for integer masks (linear time, no sort)."""
    flat = array.ravel()
    if flat.size == 0:
        return np.array([]), np.array([], dtype=np.int64)
    if array.dtype.kind in "biu":
        lo, hi = int(flat.min()), int(flat.max())
        if hi - lo < 1 << 16:
            counts = np.bincount((flat.astype(np.int64) - lo) if lo else flat.astype(np.int64, copy=False))
            present = np.flatnonzero(counts)
            return present + lo, counts[present]
    return np.unique(flat, return_counts=True)


class CaseChecker:
    """Checks the files of one manifest row; collects problems, the prostate volume and the masks that passed
    (with their grids) for the anatomical sanity checks."""

    def __init__(self, case: str, base: Path, tolerance: float, mask_grid: dict[str, str], problems: list[Problem]):
        self.case = case
        self.base = base
        self.tolerance = tolerance
        self.mask_grid = mask_grid
        self.problems = problems
        self.geometry: dict[str, Grid] = {}
        self.volume_ml: float | None = None
        self.masks: dict[str, np.ndarray] = {}
        self.mask_grids: dict[str, Grid] = {}
        self.warnings: list[Problem] = []
        self.adc: tuple[Path, np.ndarray, Grid] | None = None

    def warn(self, column: str, path: Path, message: str) -> None:
        self.warnings.append(Problem(self.case, column, str(path), message))

    def report(self, column: str, path: Path | None, message: str) -> None:
        self.problems.append(Problem(self.case, column, None if path is None else str(path), message))

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.base / path))

    def open(self, column: str, path: Path) -> tuple[sitk.ImageFileReader, Grid] | None:
        if not path.exists():
            self.report(column, path, "file not found")
            return None
        if path.is_dir():
            self.report(column, path, "is a directory, not an image file (import DICOM series to MHA first)")
            return None
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            self.report(column, path, unreadable_message(path, "header", error))
            return None
        if reader.GetDimension() != 3:
            self.report(column, path, f"expected a 3-D image, got {reader.GetDimension()}-D")
            return None
        if reader.GetNumberOfComponents() != 1:
            self.report(column, path, f"expected one value per voxel, got {reader.GetNumberOfComponents()}")
            return None
        grid = Grid.of(reader)
        lo, hi = SPACING_RANGE_MM
        if not all(lo <= s <= hi for s in grid.spacing):
            self.report(column, path, f"voxel spacing {dims_text(grid.spacing)} mm outside {number_text(lo)}-"
                                      f"{number_text(hi)} mm: the header is in other units (metres?)")
        return reader, grid

    def voxels(self, column: str, path: Path, reader: sitk.ImageFileReader) -> np.ndarray | None:
        """Every voxel of the file (whatever the pixel type: a truncated file must fail here, not in
        preprocessing), with NaN/Inf reported; None when the voxels cannot be read."""
        try:
            counts = nifti_voxel_scan(path)
        except (OSError, EOFError, struct.error, zlib.error) as error:
            self.report(column, path, f"voxel data unreadable: the file is truncated or corrupt ({error})")
            return None
        try:
            array = sitk.GetArrayFromImage(reader.Execute())
        except RuntimeError as error:
            self.report(column, path, unreadable_message(path, "voxel data", error))
            return None
        if counts is None and reader.GetPixelID() in _FLOAT_PIXEL_IDS and not np.isfinite(array).all():
            counts = (int(np.isnan(array).sum()), int(np.isinf(array).sum()))
        for count, word in zip(counts or (0, 0), ("NaN", "Inf")):
            if count:
                self.report(column, path, f"contains {word} ({count} voxel{'s' if count != 1 else ''})")
        return array

    def check_image(self, column: str, path: Path) -> None:
        opened = self.open(column, path)
        if opened is None:
            return
        reader, geometry = opened
        n_problems = len(self.problems)
        array = self.voxels(column, path, reader)
        if array is None:
            return
        self.geometry[column] = geometry
        reference = self.geometry.get(REFERENCE_IMAGE)
        if column != REFERENCE_IMAGE and reference is not None:
            # Other channels are resampled onto the reference grid, so they need only share physical space.
            message = _no_overlap(geometry, reference)
            if message:
                self.report(column, path, message)
        if len(self.problems) > n_problems:
            return  # NaN read as 0, or no overlap: the values say nothing more
        if column == REFERENCE_IMAGE:
            self._check_not_constant(column, path, array)
        elif column == "adc":
            self._check_adc_sign(column, path, array)
            self.adc = (path, array, geometry)

    def _check_not_constant(self, column: str, path: Path, array: np.ndarray) -> None:
        """A T2W whose 1st and 99th percentiles coincide shows nothing (an all-zero or blank export)."""
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        if finite.size == 0:
            return
        lo, hi = np.percentile(finite, (1, 99))
        if hi - lo <= 1e-6 * max(abs(float(hi)), 1.0):
            what = "constant" if finite.min() == finite.max() else "near-constant (98% of its voxels)"
            self.report(column, path, f"image is {what}: every voxel is {value_text(lo)}; the file holds no image")

    def _check_adc_sign(self, column: str, path: Path, array: np.ndarray) -> None:
        negative = int(np.count_nonzero(array < 0))
        if not negative:
            return
        fraction = negative / max(int(np.count_nonzero(array)), 1)
        text = (f"{negative} negative ADC voxel{'s' if negative != 1 else ''} ({fraction:.1%} of the nonzero ones, "
                f"minimum {value_text(np.nanmin(array))})")
        if fraction > ADC_NEGATIVE_FRACTION:
            self.report(column, path, f"{text}: a diffusion coefficient cannot be negative (a signed or offset "
                                      f"export?); up to {ADC_NEGATIVE_FRACTION:.0%} is accepted as fit noise")
        else:
            self.warn(column, path, f"{text}: accepted as fit noise")

    def check_adc_units(self) -> None:
        """The ADC's median in the gland (mapped through patient space; without a gland mask, of its positive
        voxels) must be plausible in 1e-6 mm^2/s. Runs after the masks."""
        if self.adc is None:
            return
        path, array, grid = self.adc
        gland = next(((self.masks[m], self.mask_grids[m]) for m in ("prostate", "zones") if m in self.masks), None)
        values, where = array[array > 0], "positive voxels"
        if gland is not None:
            index = np.argwhere(gland[0] > 0)
            voxels, inside = grid.nearest_voxels(gland[1].voxel_centres(index))
            if inside.any():
                values, where = array[tuple(voxels[inside].T)], "gland"
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        median = float(np.median(values))
        lo, hi = ADC_MEDIAN_RANGE
        if not lo <= median <= hi:
            self.report("adc", path, f"median ADC of the {where} {number_text(median)} is outside {value_text(lo)}-"
                                     f"{value_text(hi)} (1e-6 mm^2/s, the contract's unit): wrong units (mm^2/s "
                                     "or m^2/s?) or not an ADC map")

    def check_mask(self, column: str, path: Path, grid_value: str) -> None:
        opened = self.open(column, path)
        if opened is None:
            return
        reader, geometry = opened
        grid = self.mask_grid.get(column, REFERENCE_IMAGE)
        if not grid_value:
            if grid != REFERENCE_IMAGE:  # an empty t2w is already reported as a missing required value
                self.report(column, path, f"mask lies on the {grid} grid but the case has no {grid} image")
        elif grid in self.geometry:
            differences = geometry_differences(geometry, self.geometry[grid], self.tolerance)
            if differences:
                self.report(column, path, f"geometry differs from {grid} ({'; '.join(differences)})")
        array = self.voxels(column, path, reader)
        if array is None:
            return
        values, counts = _mask_values(array)
        finite = np.isfinite(values)  # NaN/Inf are reported above, not again as labels
        values, counts = values[finite], counts[finite]
        n_nonzero = int(counts[values != 0].sum())
        n_problems = len(self.problems)
        if column in BINARY_MASK_COLUMNS:
            bad = values[~np.isin(values, (0, 1))]
            if bad.size:
                self.report(column, path, f"non-binary mask: values outside {{0, 1}}: {values_text(bad)}")
            elif column == "prostate":
                if n_nonzero == 0:
                    self.report(column, path, "empty mask (every voxel is 0)")
                else:
                    self.volume_ml = n_nonzero * float(np.prod(geometry.spacing)) / 1000.0
        elif column == "zones":
            lo, hi = ZONE_RANGE
            integral = np.isfinite(values) & (np.round(values) == values)
            bad = values[~integral | (values < lo) | (values > hi)]
            if bad.size:
                self.report(column, path, f"zone labels outside {lo}-{hi}: {values_text(bad)}")
            if n_nonzero == 0:
                self.report(column, path, "empty mask (every voxel is 0)")
        if len(self.problems) == n_problems:
            self.masks[column], self.mask_grids[column] = array, geometry
