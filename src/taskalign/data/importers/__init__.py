"""Importers: a layout users have (PI-CAI, DICOM study, NIfTI folder, Prostate158, MSD) -> manifest CSV.

Each importer is `f(source, out_dir, cohort, **options) -> list[row dict]`; files it has to convert go to
`<out_dir>/converted/<case_id>/`. `import_cohort` runs one and writes the manifest (labels.MANIFEST_COLUMNS, in
order) atomically. The manifest contract is docs/data-contract.md.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pandas as pd

from taskalign.data.importers.common import CohortImportError, write_manifest
from taskalign.data.importers.dicom import import_dicom
from taskalign.data.importers.msd import import_msd
from taskalign.data.importers.nifti_folder import import_nifti_folder
from taskalign.data.importers.picai import import_picai
from taskalign.data.importers.prostate158 import import_prostate158

log = logging.getLogger(__name__)

IMPORTERS = {
    "picai": import_picai,
    "dicom": import_dicom,
    "nifti": import_nifti_folder,
    "prostate158": import_prostate158,
    "msd": import_msd,
}


def importer_options(kind: str) -> dict[str, object]:
    """Option names of one importer with their defaults."""
    parameters = inspect.signature(IMPORTERS[kind]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def import_cohort(kind: str, source: Path | str, out_manifest: Path | str, cohort: str, **options) -> pd.DataFrame:
    """Run importer `kind` on `source` and write `out_manifest`; converted files go beside it.
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
    rows = IMPORTERS[kind](source, out_manifest.parent, cohort, **options)
    frame = write_manifest(rows, out_manifest)
    log.info("%s importer: %d case(s) from %s -> %s", kind, len(frame), source, out_manifest)
    return frame


__all__ = ["IMPORTERS", "CohortImportError", "import_cohort", "importer_options"]
