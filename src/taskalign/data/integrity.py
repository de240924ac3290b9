"""Integrity check of a cohort manifest and the checked manifest it yields (docs/data-contract.md, sections 1-2).

Every problem is collected before anything is reported, so a user fixes a cohort in one round: the check names
the case, the column, the file and what is wrong. Headers are read cheaply (`ReadImageInformation`); voxels are
read only where a value check needs them (float images for NaN/Inf, masks for their labels), once per file.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from taskalign.data.labels import (
    BINARY_MASK_COLUMNS,
    IMAGE_COLUMNS,
    MANIFEST_COLUMNS,
    MASK_COLUMNS,
    N_SECTORS,
    PIRADS_CLASSES,
    SPLITS,
    ZONE_LABELS,
)
from taskalign.data.splits import assign_splits, check_patient_leakage

REFERENCE_IMAGE = "t2w"
REQUIRED_VALUES = ("case_id", "patient_id", "cohort", REFERENCE_IMAGE)
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
PIRADS_RANGE = (min(PIRADS_CLASSES), max(PIRADS_CLASSES))
SECTOR_RANGE = (0, N_SECTORS - 1)
ZONE_RANGE = (0, max(ZONE_LABELS.values()))
POSITIVE_FLOAT_COLUMNS = {"volume_ml": "mL", "tr": "ms", "te": "ms", "flip_angle": "deg", "field_strength": "T"}
_FLOAT_PIXEL_IDS = {
    getattr(sitk, name)
    for name in (
        "sitkFloat32", "sitkFloat64", "sitkVectorFloat32", "sitkVectorFloat64",
        "sitkComplexFloat32", "sitkComplexFloat64",
    )
    if hasattr(sitk, name)
}
# NIfTI datatype code -> numpy type of the stored components (complex types checked per component).
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
_CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest; any of case_id, column, file may be None when it does not apply."""

    case_id: str | None
    column: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = [
            f"{label} {value}"
            for label, value in (("case", self.case_id), ("column", self.column), ("file", self.file))
            if value is not None
        ]
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ManifestError(Exception):
    """A manifest failed the integrity check; `problems` holds every problem found."""

    def __init__(self, problems: list[Problem], manifest_path: str | os.PathLike | None = None):
        self.problems = list(problems)
        self.manifest_path = None if manifest_path is None else str(manifest_path)
        where = f" in manifest {self.manifest_path}" if self.manifest_path else ""
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''}{where}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Geometry:
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box (mm) of the voxels' outer edges: (low corner, high corner)."""
        dim = len(self.size)
        direction = np.asarray(self.direction, float).reshape(dim, dim)
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.size], indexing="ij")).reshape(dim, -1)
        points = np.asarray(self.origin, float)[:, None] + direction @ (corners * np.asarray(self.spacing)[:, None])
        return points.min(axis=1), points.max(axis=1)


@dataclass
class _Inspection:
    """What the check found: the manifest as strings (empty cells ''), resolved paths, prostate volumes."""

    table: pd.DataFrame
    problems: list[Problem]
    paths: dict[tuple[object, str], Path] = field(default_factory=dict)
    volumes_ml: dict[object, float] = field(default_factory=dict)


def _num(value: float) -> str:
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return repr(round(value, 4) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _value(value: float) -> str:
    """A voxel value as a user would write it: '2' for 2.0, '0.5', 'nan'."""
    value = float(value)
    return str(int(value)) if value.is_integer() else _num(value)


def _listed(values, limit: int = 10) -> str:
    values = list(values)
    shown = ", ".join(_value(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def _x(values) -> str:
    return "x".join(str(v) if isinstance(v, int) else _num(v) for v in values)


def _sitk_reason(error: Exception) -> str:
    text = str(error)
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1]
    text = " ".join(text.split())
    return text[:300]


def _geometry_differences(mask: _Geometry, image: _Geometry, tolerance: float) -> list[str]:
    """Spacing is compared relatively, direction cosines absolutely, origins to `tolerance` voxels."""
    if mask.size != image.size:
        return [f"size {_x(mask.size)} vs {_x(image.size)}"]
    out = []
    if not np.allclose(mask.spacing, image.spacing, rtol=tolerance, atol=0.0):
        out.append(f"spacing {_x(mask.spacing)} vs {_x(image.spacing)} mm")
    voxel = max(max(mask.spacing), max(image.spacing))
    if not np.allclose(mask.origin, image.origin, rtol=0.0, atol=tolerance * voxel):
        fmt = lambda o: "(" + ", ".join(_num(v) for v in o) + ")"  # noqa: E731
        out.append(f"origin {fmt(mask.origin)} vs {fmt(image.origin)} mm")
    if not np.allclose(mask.direction, image.direction, rtol=0.0, atol=tolerance):
        delta = np.abs(np.subtract(mask.direction, image.direction)).max()
        out.append(f"direction cosines differ by up to {_num(delta)}")
    return out


def _no_overlap(image: _Geometry, reference: _Geometry) -> str | None:
    lo_a, hi_a = image.bounds()
    lo_b, hi_b = reference.bounds()
    if np.all(np.minimum(hi_a, hi_b) > np.maximum(lo_a, lo_b)):
        return None
    box = lambda lo, hi: " x ".join(f"[{_num(a)}, {_num(b)}]" for a, b in zip(lo, hi))  # noqa: E731
    return (
        f"does not overlap {REFERENCE_IMAGE} physically "
        f"(bounding box {box(lo_a, hi_a)} vs {box(lo_b, hi_b)} mm)"
    )


def _nifti_non_finite(path: Path) -> tuple[int, int] | None:
    """(NaN count, Inf count) of a float NIfTI-1/2 file's raw voxels; None when the file is not one.

    ITK up to 5.4 (SimpleITK 2.x) replaces NaN and Inf with 0 when it reads NIfTI (fixed in ITK 6,
    InsightSoftwareConsortium/ITK#6683), so the voxels SimpleITK returns cannot show them.
    Raises OSError, EOFError, struct.error or zlib.error for a truncated or corrupt file.
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
        if datatype not in _NIFTI_FLOAT_TYPES:
            return None
        dtype = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype])
        remaining = int(np.prod(dim[1 : dim[0] + 1])) * (2 if datatype in (32, 1792) else 1) * dtype.itemsize
        f.seek(offset)
        n_nan = n_inf = 0
        while remaining > 0:
            wanted = min(remaining, _CHUNK_BYTES - _CHUNK_BYTES % dtype.itemsize)
            chunk = f.read(wanted)
            if len(chunk) < wanted:
                raise EOFError(f"voxel data ends {remaining - len(chunk)} bytes early")
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


class _CaseChecker:
    """Checks the files of one manifest row; collects problems and the prostate volume."""

    def __init__(self, case: str, base: Path, tolerance: float, mask_grid: dict[str, str], problems: list[Problem]):
        self.case = case
        self.base = base
        self.tolerance = tolerance
        self.mask_grid = mask_grid
        self.problems = problems
        self.geometry: dict[str, _Geometry] = {}
        self.volume_ml: float | None = None

    def report(self, column: str, path: Path | None, message: str) -> None:
        self.problems.append(Problem(self.case, column, None if path is None else str(path), message))

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.base / path))

    def open(self, column: str, path: Path) -> tuple[sitk.ImageFileReader, _Geometry] | None:
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
            self.report(column, path, f"unreadable by SimpleITK ({_sitk_reason(error)})")
            return None
        if reader.GetDimension() != 3:
            self.report(column, path, f"expected a 3-D image, got {reader.GetDimension()}-D")
            return None
        if reader.GetNumberOfComponents() != 1:
            self.report(column, path, f"expected one value per voxel, got {reader.GetNumberOfComponents()}")
            return None
        geometry = _Geometry(
            tuple(int(n) for n in reader.GetSize()),
            tuple(float(v) for v in reader.GetSpacing()),
            tuple(float(v) for v in reader.GetOrigin()),
            tuple(float(v) for v in reader.GetDirection()),
        )
        return reader, geometry

    def voxels(self, column: str, path: Path, reader: sitk.ImageFileReader) -> np.ndarray | None:
        try:
            image = reader.Execute()
        except RuntimeError as error:
            self.report(column, path, f"unreadable by SimpleITK ({_sitk_reason(error)})")
            return None
        return sitk.GetArrayFromImage(image)

    def non_finite(self, column: str, path: Path, reader: sitk.ImageFileReader, array: np.ndarray | None) -> bool:
        """Report NaN/Inf voxels of a float image; False when the voxels could not be read."""
        if reader.GetPixelID() not in _FLOAT_PIXEL_IDS:
            return True  # integer images cannot hold NaN/Inf
        try:
            counts = _nifti_non_finite(path)
        except (OSError, EOFError, struct.error, zlib.error) as error:
            self.report(column, path, f"unreadable voxel data ({error})")
            return False
        if counts is None:
            if array is None:
                array = self.voxels(column, path, reader)
                if array is None:
                    return False
            counts = (0, 0) if np.isfinite(array).all() else (int(np.isnan(array).sum()), int(np.isinf(array).sum()))
        for count, word in zip(counts, ("NaN", "Inf")):
            if count:
                self.report(column, path, f"contains {word} ({count} voxel{'s' if count != 1 else ''})")
        return True

    def check_image(self, column: str, path: Path) -> None:
        opened = self.open(column, path)
        if opened is None:
            return
        reader, geometry = opened
        if not self.non_finite(column, path, reader, None):
            return
        self.geometry[column] = geometry
        reference = self.geometry.get(REFERENCE_IMAGE)
        if column != REFERENCE_IMAGE and reference is not None:
            # Other channels are resampled onto the reference grid, so they need only share physical space.
            message = _no_overlap(geometry, reference)
            if message:
                self.report(column, path, message)

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
            differences = _geometry_differences(geometry, self.geometry[grid], self.tolerance)
            if differences:
                self.report(column, path, f"geometry differs from {grid} ({'; '.join(differences)})")
        array = self.voxels(column, path, reader)
        if array is None or not self.non_finite(column, path, reader, array):
            return
        values, counts = _mask_values(array)
        finite = np.isfinite(values)  # NaN/Inf are reported above, not again as labels
        values, counts = values[finite], counts[finite]
        n_nonzero = int(counts[values != 0].sum())
        if column in BINARY_MASK_COLUMNS:
            bad = values[~np.isin(values, (0, 1))]
            if bad.size:
                self.report(column, path, f"non-binary mask: values outside {{0, 1}}: {_listed(bad)}")
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
                self.report(column, path, f"zone labels outside {lo}-{hi}: {_listed(bad)}")
            if n_nonzero == 0:
                self.report(column, path, "empty mask (every voxel is 0)")


def _read_table(manifest_path: Path, problems: list[Problem]) -> tuple[pd.DataFrame, set[str]] | None:
    """The manifest as strings ('' for empty) with every known column plus `_line` (the manifest line), and the
    set of columns the file really has; header and line-length problems are reported."""
    where = str(manifest_path)
    if not manifest_path.is_file():
        problems.append(Problem(None, None, where, "manifest not found"))
        return None
    try:
        with open(manifest_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports
            lines = [(reader.line_num, row) for reader in [csv.reader(f)] for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(Problem(None, None, where, f"cannot parse manifest: {' '.join(str(error).split())}"))
        return None
    lines = [(n, row) for n, row in lines if any(cell.strip() for cell in row)]
    if not lines:
        problems.append(Problem(None, None, where, "manifest is empty (no header)"))
        return None
    header = [name.strip() for name in lines[0][1]]
    records = []
    for n, row in lines[1:]:
        if len(row) != len(header):
            problems.append(Problem(None, None, where, f"line {n} has {len(row)} fields, the header has {len(header)}"))
        records.append((row + [""] * len(header))[: len(header)])
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen:
            problems.append(Problem(None, name, where, f"duplicate column {name!r}"))
        else:
            seen[name] = i
    for name in MANIFEST_COLUMNS:
        if name not in seen:
            problems.append(Problem(None, name, where, f"missing required column {name!r}"))
    for name in seen:
        if name not in MANIFEST_COLUMNS:
            problems.append(
                Problem(None, name, where, f"unknown column {name!r} (known: {', '.join(MANIFEST_COLUMNS)})")
            )
    table = pd.DataFrame(
        {name: [row[seen[name]].strip() if name in seen else "" for row in records] for name in MANIFEST_COLUMNS},
        index=pd.RangeIndex(len(records)),
        dtype=object,
    )
    table["_line"] = [n for n, _ in lines[1:]]  # manifest line of each case, dropped before writing
    if table.empty:
        problems.append(Problem(None, None, where, "manifest has no cases"))
    return table, set(seen)


def _label_problem(column: str, value: str) -> str | None:
    if column in ("pirads", "sector"):
        lo, hi = PIRADS_RANGE if column == "pirads" else SECTOR_RANGE
        try:
            number = float(value)
        except ValueError:
            return f"{column} {value!r} is not an integer"
        if not (math.isfinite(number) and number.is_integer()):
            return f"{column} {value!r} is not an integer"
        if not lo <= number <= hi:
            return f"{column} {_value(number)} out of range {lo}-{hi}"
        return None
    unit = POSITIVE_FLOAT_COLUMNS[column]
    try:
        number = float(value)
    except ValueError:
        return f"{column} {value!r} is not a number"
    if not math.isfinite(number) or number <= 0:
        return f"{column} {value} must be a finite number > 0 {unit}"
    return None


def _check_rows(
    table: pd.DataFrame, case: pd.Series, present: set[str], require: dict[str, bool], problems: list[Problem]
) -> None:
    """Values, ids and splits (no files); a column missing from the file is reported once, not per row."""
    required = [c for c in MANIFEST_COLUMNS if c in present and (c in REQUIRED_VALUES or require.get(c, False))]
    for i, row in table.iterrows():
        for column in required:
            if not row[column]:
                problems.append(Problem(case[i], column, None, "required value is empty"))
        if row["case_id"] and not CASE_ID_PATTERN.fullmatch(row["case_id"]):
            problems.append(Problem(case[i], "case_id", None, "case_id may only contain A-Z a-z 0-9 _ . -"))
        if row["split"] and row["split"] not in SPLITS:
            problems.append(
                Problem(case[i], "split", None,
                        f"invalid split {row['split']!r} (expected {', '.join(SPLITS)} or empty)")
            )
        for column in ("pirads", "sector", *POSITIVE_FLOAT_COLUMNS):
            if row[column]:
                message = _label_problem(column, row[column])
                if message:
                    problems.append(Problem(case[i], column, None, message))

    ids = table["case_id"][table["case_id"] != ""]
    for case_id, rows in ids.groupby(ids, sort=False).groups.items():
        if len(rows) > 1:
            lines = ", ".join(str(table.at[r, "_line"]) for r in rows)
            problems.append(Problem(case_id, "case_id", None, f"duplicate case_id (manifest lines {lines})"))

    empty = table["split"] == ""
    if empty.any() and not empty.all():
        for i in table.index[empty]:
            problems.append(
                Problem(case[i], "split", None, "split is empty while other rows have one (fill every row or none)")
            )
    for leak in check_patient_leakage(table):
        rows = table[(table["patient_id"] == leak.patient_id) & (table["split"] != "")]
        where = ", ".join(f"{case[i]} in {rows.at[i, 'split']}" for i in rows.index)
        problems.append(
            Problem(", ".join(case[i] for i in rows.index), "split",
                    None, f"patient {leak.patient_id} is in {len(leak.splits)} splits ({where})")
        )


def _inspect(
    manifest_path: Path,
    require: dict[str, bool] | None,
    geometry_tolerance: float,
    mask_grid: dict[str, str] | None,
) -> _Inspection:
    require = dict(require or {})
    unknown = sorted(set(require) - set(MANIFEST_COLUMNS))
    if unknown:
        raise ValueError(f"'require' names unknown column(s) {unknown}; known: {MANIFEST_COLUMNS}")
    mask_grid = dict(mask_grid or {})
    bad_grid = {m: g for m, g in mask_grid.items() if m not in MASK_COLUMNS or g not in IMAGE_COLUMNS}
    if bad_grid:
        raise ValueError(
            f"'mask_grid' must map mask columns {MASK_COLUMNS} to image columns {IMAGE_COLUMNS}, got {bad_grid}"
        )

    manifest_path = Path(manifest_path)
    problems: list[Problem] = []
    read = _read_table(manifest_path, problems)
    if read is None:
        return _Inspection(pd.DataFrame(columns=MANIFEST_COLUMNS), problems)
    table, present = read
    # A case without an id is named by its manifest line so the user can still find it.
    case = pd.Series(
        [cid or f"<line {n}>" for cid, n in zip(table["case_id"], table["_line"])], index=table.index, dtype=object
    )
    _check_rows(table, case, present, require, problems)

    inspection = _Inspection(table, problems)
    base = manifest_path.parent.absolute()
    for i, row in table.iterrows():
        checker = _CaseChecker(case[i], base, geometry_tolerance, mask_grid, problems)
        for column in IMAGE_COLUMNS:  # t2w first: the others are compared with it
            if row[column]:
                path = inspection.paths[(i, column)] = checker.resolve(row[column])
                checker.check_image(column, path)
        for column in MASK_COLUMNS:
            if row[column]:
                path = inspection.paths[(i, column)] = checker.resolve(row[column])
                checker.check_mask(column, path, row[mask_grid.get(column, REFERENCE_IMAGE)])
        if checker.volume_ml is not None:
            inspection.volumes_ml[i] = checker.volume_ml
    return inspection


def check_manifest(
    manifest_path: str | os.PathLike,
    *,
    require: dict[str, bool] | None = None,
    geometry_tolerance: float = 1e-3,
    mask_grid: dict[str, str] | None = None,
) -> list[Problem]:
    """Every problem of a source manifest and its files, in manifest order; an empty list when it is clean.

    `require` maps a column to True when every case must have a value there (`t2w` is always required).
    `mask_grid` maps a mask column to the image it was drawn on (default `t2w`); the mask must share that
    image's size, spacing (relative `geometry_tolerance`), direction (absolute) and origin (within
    `geometry_tolerance` voxels). Other images need only overlap `t2w` physically.
    Raises ValueError for an invalid `require` or `mask_grid` (configuration, not manifest, errors).
    """
    return _inspect(Path(manifest_path), require, geometry_tolerance, mask_grid).problems


def write_checked_manifest(
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    split_fractions: dict[str, float],
    split_seed: int,
    stratify_by: str | None = "pirads",
    require: dict[str, bool] | None = None,
    geometry_tolerance: float = 1e-3,
    mask_grid: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Check the manifest and write the checked manifest (contract section 2); returns what was written.

    Raises ManifestError listing every problem, writing nothing. Otherwise: columns in contract order, paths
    absolute, `split` assigned by `assign_splits` when empty for every row, `volume_ml` (mL) filled from the
    prostate mask (foreground voxels x voxel volume) when empty. The file appears atomically.
    """
    manifest_path, out_path = Path(manifest_path), Path(out_path)
    inspection = _inspect(manifest_path, require, geometry_tolerance, mask_grid)
    if inspection.problems:
        raise ManifestError(inspection.problems, manifest_path)

    table = inspection.table[MANIFEST_COLUMNS].copy()
    for (i, column), path in inspection.paths.items():
        table.at[i, column] = str(path)
    if (table["split"] == "").all():
        table["split"] = assign_splits(table, split_fractions, split_seed, stratify_by)
    for i, volume in inspection.volumes_ml.items():
        if table.at[i, "volume_ml"] == "":
            table.at[i, "volume_ml"] = f"{volume:.10g}"

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        with open(tmp, "w", newline="") as f:
            table.to_csv(f, index=False)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return table
