"""A plain folder of image files (NIfTI, MHA, NRRD) -> manifest, through one regex per manifest column.

    mapping (a dict, or a YAML file holding it):
        t2w:    '(?P<case>[^_]+)_t2w\\.nii\\.gz'
        adc:    '(?P<case>[^_]+)_adc\\.nii\\.gz'
        zones:  'labels/(?P<case>[^_]+)_zones\\.nii\\.gz'

Each regex must hold a named group `case` and may hold `patient` (patient_id; else patient_id = case_id).
A regex without '/' is matched (in full) against file names, one with '/' against paths relative to the source;
the folder is searched recursively. Columns: t2w, adc, dwi, prostate, zones, lesion, rectum; t2w is required.

A label CSV (`labels` option) with a `case_id` column adds any of patient_id, split, pirads, sector, volume_ml,
tr, te, flip_angle, field_strength, vendor. Files are used where they lie unless a conversion is asked for
(`zones_map`, `lesion_threshold`); converted masks go to `converted/<case>/`.

Errors, all reported at once: an image file that matches no regex (unless ignore_unmatched), a file that matches
two columns, two files for one case and column, a case without t2w, a patient group that disagrees between
files, label rows for unknown cases, unknown label columns.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from taskalign.runtime import read_yaml_mapping
from taskalign.data.importers.common import (
    CASE_ID_PATTERN,
    CASE_ID_RULE,
    CohortImportError,
    binarise,
    empty_row,
    manifest_path,
    parse_int_map,
    problem,
    raise_problems,
    read_image,
    remap_labels,
    rows_by_case,
    write_converted,
)
from taskalign.data.labels import IMAGE_COLUMNS, MASK_COLUMNS

log = logging.getLogger(__name__)

FILE_COLUMNS = IMAGE_COLUMNS + MASK_COLUMNS
LABEL_COLUMNS = ["patient_id", "split", "pirads", "sector", "volume_ml", "tr", "te", "flip_angle",
                 "field_strength", "vendor"]
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def import_nifti_folder(
    source: Path,
    out_dir: Path,
    cohort: str,
    *,
    mapping: dict | str | None = None,
    labels: str | None = None,
    zones_map: dict | str | None = None,
    lesion_threshold: float | None = None,
    ignore_unmatched: bool = False,
) -> list[dict]:
    """One manifest row per case found by the `t2w` regex.

    Options:
      mapping: {column: regex} or the path of a YAML file holding it (required).
      labels: CSV joined on case_id (see the module docstring).
      zones_map: {source label: our label} for the zones masks, e.g. {1: 2, 2: 1} for 1 = PZ, 2 = TZ sources
        (labels.ZONE_LABELS: 1 TZ, 2 PZ, ...; 0 stays background unless given); a source label the map
        lacks is an error. Remapped masks are written to converted/.
      lesion_threshold: binarise lesion masks at value >= threshold (e.g. 2 for ISUP-graded masks).
      ignore_unmatched: skip image files that match no regex instead of failing.
    """
    source = Path(source)
    if not source.is_dir():
        raise CohortImportError(f"NIfTI source {source} is not a folder")
    patterns = _compile_mapping(mapping)
    found, problems = _match_files(source, patterns, ignore_unmatched)

    patients: dict[str, str] = {}
    for (case, column), (path, patient) in sorted(found.items()):
        if patient is not None and patients.setdefault(case, patient) != patient:
            problems.append(problem(case, path, f"patient group {patient!r} differs from {patients[case]!r}"))
    cases = sorted({case for case, _ in found})
    for case in cases:  # checked before anything is written: a case id names the folder of its converted files
        if not CASE_ID_PATTERN.fullmatch(case):
            first = next(found[(case, c)][0] for c in FILE_COLUMNS if (case, c) in found)
            problems.append(problem(case, first, f"the regex's case group gives {case!r}: {CASE_ID_RULE}"))
    for case in cases:
        if (case, "t2w") not in found:
            others = [str(found[(case, c)][0]) for c in FILE_COLUMNS if (case, c) in found]
            problems.append(problem(case, others[0], "no t2w file for this case (t2w is the reference image)"))
    label_rows = _read_labels(Path(labels), set(cases), problems) if labels else {}
    raise_problems(problems, f"NIfTI source {source}")
    if not cases:
        raise CohortImportError(f"NIfTI source {source}: no file matches the t2w regex {patterns['t2w'].pattern!r}")

    zone_lut = {0: 0, **parse_int_map(zones_map, "zones_map")} if zones_map is not None else None

    def make_row(case: str) -> dict:
        row = empty_row(case, patients.get(case, case), cohort)
        for column in FILE_COLUMNS:
            if (case, column) not in found:
                continue
            path = found[(case, column)][0]
            if column == "zones" and zone_lut is not None:
                mask = remap_labels(read_image(path, case, "zones"), zone_lut, case, path, "zones mask")
                row[column] = write_converted(mask, out_dir, case, "zones.nii.gz", source=path)
            elif column == "lesion" and lesion_threshold is not None:
                mask = binarise(read_image(path, case, "lesion"), lesion_threshold)
                row[column] = write_converted(mask, out_dir, case, "lesion.nii.gz", source=path)
            else:
                row[column] = manifest_path(path, out_dir)
        for column, value in label_rows.get(case, {}).items():
            if str(value).strip() != "":
                row[column] = value
        return row

    rows, problems = rows_by_case(cases, make_row)
    raise_problems(problems, f"NIfTI source {source}", rows)
    return rows


def _compile_mapping(mapping) -> dict[str, re.Pattern]:
    if mapping is None:
        raise CohortImportError("the nifti importer needs option mapping: {column: regex} or a YAML file of it")
    if isinstance(mapping, (str, Path)):
        try:
            mapping = read_yaml_mapping(mapping, "option mapping ({column: regex})")
        except ValueError as err:
            raise CohortImportError(str(err)) from None
    unknown = sorted(set(mapping) - set(FILE_COLUMNS))
    if unknown:
        raise CohortImportError(f"option mapping: unknown column(s) {unknown}; columns are {FILE_COLUMNS}")
    if "t2w" not in mapping:
        raise CohortImportError("option mapping: a t2w regex is required (t2w is the reference image)")
    patterns = {}
    for column, text in mapping.items():
        try:
            pattern = re.compile(str(text))
        except re.error as error:
            raise CohortImportError(f"option mapping: {column} regex {text!r}: {error}")
        if "case" not in pattern.groupindex:
            raise CohortImportError(f"option mapping: {column} regex {text!r} has no named group (?P<case>...)")
        patterns[column] = pattern
    return patterns


def _match_files(source: Path, patterns: dict[str, re.Pattern], ignore_unmatched: bool):
    """{(case, column): (path, patient or None)} and the problems met on the way."""
    found: dict[tuple[str, str], tuple[Path, str | None]] = {}
    problems = []
    for directory, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(directory) / name
            relative = path.relative_to(source).as_posix()
            hits = []
            for column, pattern in patterns.items():
                match = pattern.fullmatch(relative if "/" in pattern.pattern else name)
                if match:
                    hits.append((column, match))
            if not hits:
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    if ignore_unmatched:
                        log.info("ignored %s: matches no regex", path)
                    else:
                        problems.append(f"{path}: image file matches no regex of the mapping")
                continue
            if len(hits) > 1:
                columns = [column for column, _ in hits]
                problems.append(problem(hits[0][1]["case"], path, f"matches the regexes of several columns {columns}"))
                continue
            column, match = hits[0]
            case = match["case"]
            patient = match.groupdict().get("patient")
            if (case, column) in found:
                problems.append(
                    problem(case, path, f"second {column} file for this case; the first is {found[(case, column)][0]}")
                )
                continue
            found[(case, column)] = (path, patient)
    return found, problems


def _read_labels(path: Path, cases: set[str], problems: list[str]) -> dict[str, dict]:
    if not path.is_file():
        raise CohortImportError(f"option labels: {path} is not a file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "case_id" not in frame.columns:
        raise CohortImportError(f"label CSV {path}: no case_id column")
    unknown = sorted(set(frame.columns) - set(LABEL_COLUMNS) - {"case_id"})
    if unknown:
        raise CohortImportError(f"label CSV {path}: unknown column(s) {unknown}; allowed: case_id, {LABEL_COLUMNS}")
    out = {}
    for record in frame.to_dict("records"):
        case = record.pop("case_id").strip()
        if case in out:
            problems.append(problem(case, path, "case_id occurs twice in the label CSV"))
        elif case not in cases:
            problems.append(problem(case, path, "label row for a case with no image files"))
        out[case] = record
    return out
