"""DICOM study (one sub-folder per series, as TCIA/ProstateX export it) -> MHA files + manifest.

Series are found with GDCM (`ImageSeriesReader.GetGDCMSeriesIDs`, any depth under the source) and grouped into
studies by StudyInstanceUID: one manifest row per study. Each series is given a role by a regex on its
SeriesDescription (0008|103e), tried in the order adc, hbv, t2w, dwi so that "ep2d_diff_..._ADC" is ADC and not
the mixed DWI. Defaults follow picai_prep's ProstateX mappings:

    adc  ADC                 (ep2d_diff_tra_DYNDIST_MIX_ADC)
    hbv  CALC_BVAL           (scanner-computed high b, ep2d_diff_tra_DYNDIST_MIXCALC_BVAL)
    t2w  t2_tse_tra          (axial T2 TSE; sagittal/coronal and localizers do not match)
    dwi  ep2d_diff / diff    (acquired DWI, several b-values mixed in one series)

Two series matching one role (a repeated acquisition) are refused unless on_duplicate="latest", which takes the
highest SeriesNumber (a repeat is normally the better one; PI-CAI used series 10 of ProstateX-0001).

A series is converted like picai_prep's dcm2mha: GDCM's file order, `ImageSeriesReader.Execute()`, stored
pixel type (no rescale), compressed MHA. Acquisition tags of the series (not patient identifiers) are kept in
the MHA header. The acquired DWI series is split by b-value into `dwi_b<b>.mha` (b also in tag 0018|9087);
`dwi` in the manifest is the computed high-b image, else the highest acquired b if it is >= min_dwi_b.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from taskalign.data.importers.common import (
    CASE_ID_PATTERN,
    CASE_ID_RULE,
    CohortImportError,
    ConvertedPath,
    acquisition_metadata,
    converted_path,
    empty_row,
    manifest_path,
    raise_problems,
    read_header,
    rows_by_case,
    write_image,
)

log = logging.getLogger(__name__)

ROLE_ORDER = ("adc", "hbv", "t2w", "dwi")
DEFAULT_PATTERNS = {
    "adc": r"adc",
    "hbv": r"calc_?bval|calc_?b\d",
    "t2w": r"t2_?tse_?tra",
    "dwi": r"ep2d_?diff|diff",
}
ON_DUPLICATE = ("error", "latest")
# Tags copied into the MHA header: what describes the acquisition, nothing that identifies the patient.
KEPT_TAGS = (
    "0008|0008", "0008|0060", "0008|0070", "0008|1090", "0008|103e", "0018|0020", "0018|0021", "0018|0023",
    "0018|0024", "0018|0050", "0018|0080", "0018|0081", "0018|0087", "0018|0088", "0018|0095", "0018|1314",
    "0018|5100", "0018|9087", "0020|0011", "0020|0037", "0028|0030",
)


@dataclass
class Series:
    """One DICOM series: its files in GDCM order and the tags of its first file."""

    directory: Path
    uid: str
    files: list[str]
    header: dict[str, str] = field(repr=False)

    @property
    def number(self) -> int | None:
        try:
            return int(float(self.header.get("0020|0011", "")))
        except ValueError:
            return None

    @property
    def description(self) -> str:
        return self.header.get("0008|103e", "")

    @property
    def study_uid(self) -> str:
        return self.header.get("0020|000d", "")

    def label(self) -> str:
        return f"series {self.number} '{self.description}' ({self.directory})"


def import_dicom(
    source: Path,
    out_dir: Path,
    cohort: str,
    *,
    on_duplicate: str = "error",
    patterns: dict | None = None,
    case_id: str | None = None,
    patient_id: str | None = None,
    min_dwi_b: float = 800,
) -> list[dict]:
    """One manifest row per DICOM study under `source`.

    Options:
      on_duplicate: "error" (default) refuses two series for one role; "latest" takes the highest SeriesNumber.
      patterns: {role: regex} overriding DEFAULT_PATTERNS (case-insensitive search in SeriesDescription);
        roles adc, hbv, t2w, dwi; a regex "" switches a role off.
      case_id, patient_id: ids for a single study (default: PatientID tag and `<PatientID>_<StudyDate>`).
      min_dwi_b: smallest acquired b (s/mm^2) used as `dwi` when there is no computed high-b series.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise CohortImportError(f"option on_duplicate: {on_duplicate!r} is not one of {ON_DUPLICATE}")
    role_patterns = dict(DEFAULT_PATTERNS)
    for role, pattern in (patterns or {}).items():
        if role not in ROLE_ORDER:
            raise CohortImportError(f"option patterns: unknown role {role!r}; roles are {ROLE_ORDER}")
        role_patterns[role] = pattern
    series = find_series(Path(source))
    if not series:
        raise CohortImportError(f"DICOM source {source}: no DICOM series found")
    studies: dict[str, list[Series]] = {}
    for s in series:
        studies.setdefault(s.study_uid, []).append(s)
    if (case_id or patient_id) and len(studies) > 1:
        raise CohortImportError(
            f"DICOM source {source}: options case_id/patient_id name one study, but it holds {len(studies)} studies"
        )
    rows, problems = rows_by_case(studies.values(), lambda study: _study_row(
        study, Path(source), out_dir, cohort, role_patterns, on_duplicate, (case_id, patient_id), min_dwi_b))
    raise_problems(problems, f"DICOM source {source}", rows)
    return rows


def find_series(source: Path) -> list[Series]:
    """Every DICOM series in any folder under `source` (one folder may hold several series)."""
    found = []
    for directory, dirnames, filenames in os.walk(source):
        dirnames.sort()
        if not filenames:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
            if files:
                found.append(Series(Path(directory), uid, files, read_header(files[0])))
    return found


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip("-")


def _study_row(study, source, out_dir, cohort, role_patterns, on_duplicate, ids, min_dwi_b):
    """ids: the (case_id, patient_id) options, None where the DICOM headers name them."""
    first = study[0].header
    case_id, patient_id = (None if v is None else str(v) for v in ids)
    patient = patient_id or _safe_id(first.get("0010|0020", "")) or _safe_id(source.name)
    case = case_id or "_".join(part for part in (patient, _safe_id(first.get("0008|0020", ""))) if part)
    if not CASE_ID_PATTERN.fullmatch(case):
        raise CohortImportError(f"study {source}: case_id {case!r}: {CASE_ID_RULE}")
    where = f"study {case} ({source})"

    candidates = assign_roles(study, role_patterns)
    chosen = {role: resolve_duplicates(where, role, found, on_duplicate) for role, found in candidates.items()}
    if "t2w" not in chosen:
        listing = "; ".join(s.label() for s in study)
        raise CohortImportError(
            f"{where}: no series matches role 't2w' (regex {role_patterns['t2w']!r}); series found: {listing}"
        )

    row = empty_row(case, patient, cohort)
    written = {}
    for role in ("t2w", "adc", "hbv"):
        if role in chosen:
            written[role] = convert_series(chosen[role], converted_path(out_dir, case, f"{role}.mha"), where)
        else:
            log.warning("%s: no series for role %s", where, role)
    dwi_by_b = {}
    if "dwi" in chosen:
        for b, files in split_by_b_value(chosen["dwi"], where).items():
            name = f"dwi_b{b:g}.mha"
            path = converted_path(out_dir, case, name)
            dwi_by_b[b] = convert_series(chosen["dwi"], path, where, files, b_value=b)
        log.info("%s: DWI series %s split into b = %s", where, chosen["dwi"].number, sorted(dwi_by_b))

    # named by their series folder: the check's messages must point at what survives a refused import
    row["t2w"] = ConvertedPath(manifest_path(written["t2w"], out_dir), chosen["t2w"].directory)
    if "adc" in written:
        row["adc"] = ConvertedPath(manifest_path(written["adc"], out_dir), chosen["adc"].directory)
    if "hbv" in written:
        row["dwi"] = ConvertedPath(manifest_path(written["hbv"], out_dir), chosen["hbv"].directory)
    elif dwi_by_b and max(dwi_by_b) >= min_dwi_b:
        row["dwi"] = ConvertedPath(manifest_path(dwi_by_b[max(dwi_by_b)], out_dir), chosen["dwi"].directory)
        log.info("%s: no computed high-b series; dwi = acquired b%g", where, max(dwi_by_b))
    elif dwi_by_b:
        log.warning("%s: highest acquired b = %g < min_dwi_b = %g; dwi left empty", where, max(dwi_by_b), min_dwi_b)
    row.update(acquisition_metadata(chosen["t2w"].header))
    return row


def assign_roles(study: list[Series], role_patterns: dict[str, str]) -> dict[str, list[Series]]:
    """Series per role; each series takes the first role (in ROLE_ORDER) whose regex finds its description."""
    candidates: dict[str, list[Series]] = {}
    for s in study:
        for role in ROLE_ORDER:
            pattern = role_patterns.get(role)
            if pattern and re.search(pattern, s.description, re.IGNORECASE):
                candidates.setdefault(role, []).append(s)
                break
        else:
            log.debug("%s: no role", s.label())
    return candidates


def resolve_duplicates(where: str, role: str, found: list[Series], on_duplicate: str) -> Series:
    if len(found) == 1:
        return found[0]
    ranked = sorted(found, key=lambda s: (s.number if s.number is not None else -1, s.header.get("0008|0031", "")))
    listing = "; ".join(s.label() for s in ranked)
    if on_duplicate == "latest":
        log.warning("%s: role '%s' matches %d series (%s); took the latest, series %s",
                    where, role, len(found), listing, ranked[-1].number)
        return ranked[-1]
    raise CohortImportError(
        f"{where}: role '{role}' matches {len(found)} series: {listing}. Refusing to guess; "
        f"pass on_duplicate='latest' to take the highest series number, or narrow the {role} regex (option patterns)"
    )


def b_value(header: dict[str, str]) -> float | None:
    """Diffusion b (s/mm^2) of one DWI file: DiffusionBValue, vendor tags, then the Siemens sequence name
    ('*ep_b800t'), ImageComments ('b=800') and the description; None when nothing says."""
    for tag in ("0018|9087", "0019|100c", "2001|1003"):  # standard, Siemens, Philips
        value = _number(header.get(tag))
        if value is not None:
            return value
    ge = _number(header.get("0043|1039"))
    if ge is not None:
        return ge % 1_000_000_000  # GE adds 1e9 to the b-value in some software versions
    for tag, pattern in (
        ("0018|0024", r"_b(\d+)t?(?:#\d+)?$"),
        ("0020|4000", r"\bb\s*=?\s*(\d+)"),
        ("0008|103e", r"\bb[-_ =]?(\d{2,4})\b"),
    ):
        match = re.search(pattern, header.get(tag, ""), re.IGNORECASE)
        if match:
            return float(match.group(1))
    return None


def split_by_b_value(series: Series, where: str) -> dict[float, list[str]]:
    """Files of a DWI series per b-value, each list sorted along the slice normal (GDCM's order)."""
    groups: dict[float, list[tuple[float, str]]] = {}
    for path in series.files:
        header = read_header(Path(path))
        b = b_value(header)
        if b is None:
            raise CohortImportError(
                f"{where}: {path}: no b-value in DiffusionBValue, vendor tags, sequence name or ImageComments "
                f"({series.label()})"
            )
        groups.setdefault(b, []).append((_slice_position(header, path, where), path))
    out = {}
    for b, items in sorted(groups.items()):
        positions = sorted(p for p, _ in items)
        if np.any(np.diff(positions) < 1e-3):
            raise CohortImportError(
                f"{where}: {series.label()}: b = {b:g} has several files at one slice position "
                "(directions or averages stored separately?); cannot make one volume per b"
            )
        out[b] = [path for _, path in sorted(items)]
    counts = {b: len(files) for b, files in out.items()}
    if len(set(counts.values())) > 1:
        log.warning("%s: DWI b-values have different slice counts %s", where, counts)
    return out


def _slice_position(header: dict[str, str], path: str, where: str) -> float:
    try:
        position = np.array([float(v) for v in header["0020|0032"].split("\\")])
        cosines = np.array([float(v) for v in header["0020|0037"].split("\\")])
    except (KeyError, ValueError):
        raise CohortImportError(f"{where}: {path}: no usable ImagePositionPatient/ImageOrientationPatient")
    return float(np.dot(position, np.cross(cosines[:3], cosines[3:6])))


def convert_series(
    series: Series, path: Path, where: str, files: list[str] | None = None, b_value: float | None = None
) -> Path:
    """Read the series (or the given subset of its files, in that order) and write it as compressed MHA."""
    files = files or series.files
    _check_slice_gaps(series, files, where)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise CohortImportError(f"{where}: {series.label()}: cannot read: {str(error).strip().splitlines()[-1]}")
    header = series.header if files is series.files else read_header(Path(files[0]))
    for tag in KEPT_TAGS:
        value = header.get(tag, "")
        if value:
            image.SetMetaData(tag, value)
    if b_value is not None:
        image.SetMetaData("0018|9087", f"{b_value:g}")
    return write_image(image, path)


def _check_slice_gaps(series: Series, files: list[str], where: str) -> None:
    """A missing file shows as one gap twice the others; picai_prep refuses such series too."""
    if len(files) < 3:
        return
    positions = np.array([_slice_position(read_header(Path(f)), f, where) for f in files])
    steps = np.abs(np.diff(positions))
    if steps.max() - steps.min() > 0.01 * max(float(np.median(steps)), 1e-6):
        raise CohortImportError(
            f"{where}: {series.label()}: uneven slice spacing {np.round(steps, 3).tolist()} mm (a missing file?)"
        )


def _number(text) -> float | None:
    try:
        return float(str(text).split("\\")[0])
    except (TypeError, ValueError):
        return None

