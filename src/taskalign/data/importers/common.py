"""What every importer shares: manifest rows, atomic writes, label remapping and moving masks onto the T2W grid.

Importers return one dict per case (keys from `labels.MANIFEST_COLUMNS`); `write_manifest` checks and writes them.
Files an importer has to convert go to `<manifest dir>/converted/<case_id>/` and are referenced relative to the
manifest's directory; files used as they are keep their absolute source path.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from taskalign.data.file_checks import geometry_differences, nifti_voxel_scan
from taskalign.data.grid import GRID_TOLERANCE, Grid
from taskalign.data.image_io import unreadable_message, write_image
from taskalign.data.labels import MANIFEST_COLUMNS, ZONE_LABELS
from taskalign.data.manifest_table import CASE_ID_PATTERN, CASE_ID_RULE
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)

CONVERTED_DIR = "converted"

# DICOM tags of the T2W acquisition, as SimpleITK names them (also found in MHA headers written by picai_prep).
ACQUISITION_TAGS = {
    "tr": "0018|0080",  # RepetitionTime, ms
    "te": "0018|0081",  # EchoTime, ms
    "flip_angle": "0018|1314",  # FlipAngle, deg
    "field_strength": "0018|0087",  # MagneticFieldStrength, T
    "vendor": "0008|0070",  # Manufacturer
}


class CohortImportError(ValueError):
    """A source layout an importer cannot turn into a manifest; the message names case, file and problem.
    `problems` lists them one per line; `rows` holds the cases that did import, so the integrity check can
    still run on them and the user gets every problem in one report."""

    def __init__(self, message: str, problems: list[str] | None = None, rows: list[dict] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]
        self.rows = list(rows or [])


class ConvertedPath(str):
    """A manifest path of a file the importer wrote, remembering the source file it came from (the integrity
    check's messages name the source: the converted file of a refused import does not survive) and, for a mask
    it resampled, the mask on the grid it was drawn on (`native`: the lesion checks measure it there)."""

    source: str
    native: sitk.Image | None

    def __new__(cls, value: str, source: Path | str | None, native: sitk.Image | None = None):
        path = super().__new__(cls, value)
        path.source = str(source) if source is not None else value
        path.native = native
        return path


def problem(case: str, path: Path | str | None, what: str) -> str:
    """One line of an error report: `case <id>: <file>: <problem>`."""
    where = f"{path}: " if path is not None else ""
    return f"case {case}: {where}{what}"


def raise_problems(problems: list[str], context: str, rows: list[dict] | None = None) -> None:
    """Raise one CohortImportError listing every problem (a user fixes them all in one go); `rows` are the
    cases that imported."""
    if problems:
        listing = "\n  ".join(problems)
        raise CohortImportError(f"{context}: {len(problems)} problem(s):\n  {listing}", problems, rows)


def rows_by_case(cases, make_row) -> tuple[list[dict], list[str]]:
    """`make_row(case)` for every case; a CohortImportError costs that case only, its problems are collected (and
    the row it still made, so the integrity check can add what it finds)."""
    rows, problems = [], []
    for case in cases:
        try:
            rows.append(make_row(case))
        except CohortImportError as error:
            problems += error.problems
            rows += error.rows
    return rows, problems


# ---------------------------------------------------------------------------------------------------------------
# Manifest


def empty_row(case_id: str, patient_id: str, cohort: str) -> dict:
    row = {column: "" for column in MANIFEST_COLUMNS}
    row.update(case_id=case_id, patient_id=patient_id, cohort=cohort)
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else format(value, ".10g")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.floating):
        return _cell(float(value))
    return str(value).strip()


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame of strings with exactly MANIFEST_COLUMNS; checks case ids (pattern, uniqueness)."""
    problems = []
    for row in rows:
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            problems.append(problem(row.get("case_id", "?"), None, f"unknown manifest column(s) {unknown}"))
    seen: dict[str, int] = {}
    for row in rows:
        case = _cell(row.get("case_id"))
        if not CASE_ID_PATTERN.fullmatch(case):
            problems.append(problem(case or "?", None, CASE_ID_RULE))
        if not _cell(row.get("patient_id")):
            problems.append(problem(case, None, "empty patient_id"))
        seen[case] = seen.get(case, 0) + 1
    problems += [problem(case, None, f"case_id occurs {n} times") for case, n in seen.items() if n > 1]
    raise_problems(problems, "manifest")
    table = [[_cell(row.get(column)) for column in MANIFEST_COLUMNS] for row in rows]
    return pd.DataFrame(table, columns=MANIFEST_COLUMNS, dtype=str)


def write_manifest(rows: list[dict], out_manifest: Path) -> pd.DataFrame:
    """Check the rows and write them atomically as the manifest CSV; returns the written table."""
    frame = manifest_frame(rows)
    with atomic_path(Path(out_manifest)) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def manifest_path(path: Path | str, out_dir: Path) -> str:
    """Path as the manifest stores it: relative to the manifest's folder when inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path(out_dir).absolute()).as_posix()
    except ValueError:
        return str(path)


def converted_path(out_dir: Path, case_id: str, name: str) -> Path:
    return Path(out_dir) / CONVERTED_DIR / case_id / name


def write_converted(image: sitk.Image, out_dir: Path, case_id: str, name: str, source: Path | None = None,
                    native: sitk.Image | None = None) -> str:
    """Write `converted/<case_id>/<name>` and return the path as the manifest stores it (knowing its `source`, and
    the `native` mask it was resampled from when its grid differs)."""
    if native is not None and Grid.of(native).matches(Grid.of(image)):
        native = None
    path = manifest_path(write_image(image, converted_path(out_dir, case_id, name)), out_dir)
    return ConvertedPath(path, source, native)


# ---------------------------------------------------------------------------------------------------------------
# Images on disk


def read_image(path: Path, case: str, what: str) -> sitk.Image:
    """The image, or a CohortImportError naming case, file and problem: unreadable, or NaN/Inf in its voxels
    (ITK <= 5.4 reads NaN and Inf in NIfTI as 0, so a conversion would hide them from the integrity check)."""
    path = Path(path)
    try:
        counts = nifti_voxel_scan(path)
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CohortImportError(problem(case, path, unreadable_message(path, what, error))) from None
    except (OSError, EOFError, struct.error, zlib.error) as error:
        raise CohortImportError(problem(case, path, f"{what} unreadable: the file is truncated or corrupt "
                                                    f"({error})")) from None
    if counts is None and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(image)
        counts = (int(np.isnan(array).sum()), int(np.isinf(array).sum()))
    bad = [f"{count} {word} voxel{'s' if count != 1 else ''}" for count, word in zip(counts or (0, 0), ("NaN", "Inf"))
           if count]
    if bad:
        raise CohortImportError(problem(case, path, f"{what} contains {' and '.join(bad)}"))
    return image


def read_grid(path: Path, case: str, what: str) -> Grid:
    """The grid in a 3-D file's header, or a CohortImportError naming case, file and problem."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise CohortImportError(problem(case, path, unreadable_message(Path(path), f"{what} header", error))) from None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise CohortImportError(problem(case, path, f"{what} is {reader.GetDimension()}-D with "
                                                    f"{reader.GetNumberOfComponents()} value(s) per voxel, expected "
                                                    "a 3-D image with one"))
    return Grid.of(reader)


def read_header(path: Path) -> dict[str, str]:
    """Metadata of an image file (DICOM tags as 'gggg|eeee') without reading its pixels; values stripped."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOn()
    reader.ReadImageInformation()
    header = {}
    for key in reader.GetMetaDataKeys():
        try:
            header[key] = reader.GetMetaData(key).strip()
        except UnicodeDecodeError:  # binary private values
            header[key] = ""
    return header


def _float(text: str | None) -> float | None:
    try:
        value = float(str(text).split("\\")[0])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def acquisition_metadata(header: dict[str, str]) -> dict:
    """tr, te (ms), flip_angle (deg), field_strength (T), vendor from DICOM tags; absent tags give ''."""
    out = {}
    for column, tag in ACQUISITION_TAGS.items():
        text = header.get(tag, "")
        if column == "vendor":
            out[column] = text.strip()
            continue
        value = _float(text)
        if column == "field_strength" and value is not None and value > 20:
            value = value / 10000.0  # a few old headers give gauss
        out[column] = "" if value is None else value
    return out


# ---------------------------------------------------------------------------------------------------------------
# Grids and labels


def onto_grid(mask: sitk.Image, grid: Grid, case: str, path: Path, what: str, resample: bool = False,
              drawn_on: tuple[str, Grid] | None = None) -> sitk.Image:
    """The mask on `grid` (the T2W's): its own voxels with the grid's exact geometry when it already lies there
    (within grid.GRID_TOLERANCE). A mask on another grid is resampled nearest-neighbour (labels must not be
    interpolated) only when `resample` (the importers' option `resample_masks`): a wrong header would otherwise
    move the mask without a word. Else it keeps its own grid, and the integrity check refuses it.

    `drawn_on` = (name, grid) of the image a mask was drawn on (Prostate158's ADC-grid tumours): the mask must lie
    on that grid, the check the integrity check makes for every mask, and is then resampled onto `grid` as a
    conversion; a mask on neither grid is refused unless `resample`. The lesion checks guard every result."""
    if mask.GetDimension() != 3:
        raise CohortImportError(problem(case, path, f"{what} is {mask.GetDimension()}-D, expected 3-D"))
    if Grid.of(mask).matches(grid):
        mask = sitk.Image(mask)
        mask.SetSpacing(grid.spacing)
        mask.SetOrigin(grid.origin)
        mask.SetDirection(grid.direction)
        return mask
    if drawn_on is not None and not resample:
        name, source = drawn_on
        differences = geometry_differences(Grid.of(mask), source, GRID_TOLERANCE)
        if differences:
            raise CohortImportError(problem(case, path, f"{what} geometry differs from {name}, the image it was drawn "
                                                        f"on ({'; '.join(differences)})"))
        log.info("case %s: %s %s resampled nearest-neighbour from the %s grid onto the T2W grid", case, what, path, name)
    elif not resample:
        return mask
    else:
        log.warning("case %s: %s %s is not on the T2W grid (spacing %s vs %s mm); resampled nearest-neighbour onto "
                    "it (option resample_masks)", case, what, path, mask.GetSpacing(), grid.spacing)
    return sitk.Resample(
        mask, grid.size, sitk.Transform(), sitk.sitkNearestNeighbor, grid.origin, grid.spacing, grid.direction,
        0, mask.GetPixelID(),
    )


def remap_labels(image: sitk.Image, mapping: dict[int, int], case: str, path: Path, what: str) -> sitk.Image:
    """uint8 image with source label v replaced by mapping[v]; a value the mapping lacks is an error."""
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    unknown = [v.item() for v in values if v.item() not in mapping]
    if unknown:
        raise CohortImportError(
            problem(case, path, f"{what} has label value(s) {unknown} outside the expected {sorted(mapping)}")
        )
    out = np.zeros(array.shape, dtype=np.uint8)
    for source, target in mapping.items():
        out[array == source] = target
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def binarise(image: sitk.Image, threshold: float = 1) -> sitk.Image:
    """uint8 {0, 1}: 1 where the value is >= threshold."""
    out = (sitk.GetArrayViewFromImage(image) >= threshold).astype(np.uint8)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


_ZONE_ALIASES = {
    "background": 0,
    "bg": 0,
    "pz": ZONE_LABELS["pz"],
    "peripheral": ZONE_LABELS["pz"],
    "peripheralzone": ZONE_LABELS["pz"],
    "tz": ZONE_LABELS["tz"],
    "transition": ZONE_LABELS["tz"],
    "transitionzone": ZONE_LABELS["tz"],
    "transitionalzone": ZONE_LABELS["tz"],
    # The central gland (TZ + central zone + anterior stroma) is what TZ labels mean in most public datasets.
    "cg": ZONE_LABELS["tz"],
    "centralgland": ZONE_LABELS["tz"],
    **{name.replace("_", ""): label for name, label in ZONE_LABELS.items()},
    "sv": ZONE_LABELS["seminal_vesicles"],
    "seminalvesicle": ZONE_LABELS["seminal_vesicles"],
    "neurovascularbundles": ZONE_LABELS["nvb"],
    "neurovascularbundle": ZONE_LABELS["nvb"],
}


def zone_label(name: str) -> int | None:
    """Our zone label (labels.ZONE_LABELS, 0 = background) for a structure name such as 'PZ' or
    'transition zone'; None when the name is not one we know."""
    return _ZONE_ALIASES.get(re.sub(r"[^a-z]", "", name.lower()))


def parse_int_map(value, what: str) -> dict[int, int]:
    """{source: target} from a dict or a 'a:b,c:d' string (CLI options)."""
    if isinstance(value, dict):
        items = value.items()
    else:
        items = [part.split(":", 1) for part in str(value).split(",") if part.strip()]
    try:
        return {int(k): int(v) for k, v in items}
    except (TypeError, ValueError):
        raise CohortImportError(f"option {what}: expected a mapping of integers like '1:2,2:1', got {value!r}")
