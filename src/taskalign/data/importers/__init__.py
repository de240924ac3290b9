"""Importers: a layout users have (PI-CAI, DICOM study, NIfTI folder, Prostate158, MSD) -> manifest CSV.

Each importer is `f(source, out_dir, cohort, **options) -> list[row dict]`; files it has to convert go to
`<out_dir>/converted/<case_id>/`. `import_cohort` runs one into a staging folder, runs the integrity check of the
manifest route on what it made, and only when nothing is wrong moves the converted files into place and writes the
manifest (labels.MANIFEST_COLUMNS, in order). A refused import leaves nothing behind and reports every problem of
every case at once. The manifest contract is docs/data-contract.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from taskalign.data.importers.common import (
    CONVERTED_DIR,
    CohortImportError,
    ConvertedPath,
    raise_problems,
    write_manifest,
)
from taskalign.data.importers.dicom import import_dicom
from taskalign.data.importers.msd import import_msd
from taskalign.data.importers.nifti_folder import import_nifti_folder
from taskalign.data.importers.picai import PicaiOptions, import_picai
from taskalign.data.importers.prostate158 import import_prostate158
from taskalign.data.integrity import inspect_manifest
from taskalign.data.problems import Problem
from taskalign.data.sanity import SanityConfig

log = logging.getLogger(__name__)

IMPORTERS = {
    "picai": import_picai,
    "dicom": import_dicom,
    "nifti": import_nifti_folder,
    "prostate158": import_prostate158,
    "msd": import_msd,
}

OPTION_TYPES = {"picai": PicaiOptions}


def importer_options(kind: str) -> dict[str, object]:
    """Option names of one importer with their defaults: its keyword-only parameters, or the fields of its
    options dataclass where it has too many for a signature (OPTION_TYPES)."""
    if kind in OPTION_TYPES:
        return {field.name: field.default for field in dataclasses.fields(OPTION_TYPES[kind])}
    parameters = inspect.signature(IMPORTERS[kind]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def import_cohort(
    kind: str,
    source: Path | str,
    out_manifest: Path | str,
    cohort: str,
    *,
    mask_grid: dict[str, str] | None = None,
    sanity: SanityConfig | None = None,
    **options,
) -> pd.DataFrame:
    """Run importer `kind` on `source` and write `out_manifest`; converted files go to `converted/` beside it.

    The result passes the integrity check (`mask_grid`, `sanity` as there) before anything appears; otherwise a
    CohortImportError lists the importer's and the check's problems, naming each case, source file and problem.
    Returns the manifest as written (all columns as text)."""
    if kind not in IMPORTERS:
        raise CohortImportError(f"unknown importer {kind!r}; importers are {sorted(IMPORTERS)}")
    known = importer_options(kind)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise CohortImportError(f"importer {kind}: unknown option(s) {unknown}; options are {sorted(known)}")
    source = Path(source)
    if not source.exists():
        raise CohortImportError(f"importer {kind}: source {source} does not exist")
    out_manifest = Path(out_manifest)
    out_dir = out_manifest.parent
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # removed again if the import is refused
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".import-"))
    try:
        frame, warnings = _import_staged(kind, source, staging, cohort, mask_grid, sanity, options)
        _move_into_place(staging, out_dir)  # manifest paths are relative to the folder: valid in both
        write_manifest(frame.to_dict("records"), out_manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            if not any(folder.iterdir()):
                folder.rmdir()
    for warning in warnings:
        log.warning("%s", warning)
    log.info("%s importer: %d case(s) from %s -> %s", kind, len(frame), source, out_manifest)
    return frame


def _import_staged(kind, source, staging, cohort, mask_grid, sanity, options) -> tuple[pd.DataFrame, list[str]]:
    """Import into `staging` and check the result; (manifest, warnings), or CohortImportError with every problem."""
    try:
        rows, problems = IMPORTERS[kind](source, staging, cohort, **options), []
    except CohortImportError as error:
        if not error.rows:
            raise
        rows, problems = error.rows, error.problems
    origins = {_absolute(staging, value): value.source for row in rows for value in row.values()
               if isinstance(value, ConvertedPath)}
    native_lesions = {str(row["case_id"]): row["lesion"].native for row in rows
                      if isinstance(row.get("lesion"), ConvertedPath) and row["lesion"].native is not None}
    frame = write_manifest(rows, staging / "manifest.csv")
    inspection = inspect_manifest(staging / "manifest.csv", mask_grid=mask_grid, sanity=sanity,
                                  native_lesions=native_lesions)
    problems += [_named_by_source(p, origins) for p in inspection.problems]
    if any("geometry differs" in p for p in problems):
        problems.append("masks must lie on the grid of the image they were drawn on (the T2W; Prostate158's tumours: "
                        "the ADC); importer option resample_masks=true resamples them nearest-neighbour (logged; the "
                        "lesion_outside_gland check then guards the result)")
    raise_problems(problems, f"{kind} import of {source}")
    return frame, [_named_by_source(w, origins) for w in inspection.warnings]


def _absolute(base: Path, value: str) -> str:
    return os.path.normpath(base.absolute() / value)


def _named_by_source(found: Problem, origins: dict[str, str]) -> str:
    """The check's problem with a converted file (gone once the import is refused) replaced by its source."""
    if found.file in origins:
        found = Problem(found.case_id, found.column, origins[found.file], found.message)
    return str(found)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """The staged converted files replace those of an earlier import."""
    converted, staged = out_dir / CONVERTED_DIR, staging / CONVERTED_DIR
    if converted.exists():
        shutil.rmtree(converted)
    if staged.exists():
        os.replace(staged, converted)


__all__ = ["IMPORTERS", "CohortImportError", "import_cohort", "importer_options"]
