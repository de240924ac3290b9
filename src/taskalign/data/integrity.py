"""Integrity check of a cohort manifest and the checked manifest it yields (docs/data-contract.md, sections 1-2).

Every problem is collected before anything is reported, so a user fixes a cohort in one round: the check names
the case, the column, the file and what is wrong. The table checks live in `manifest_table`, the file checks in
`file_checks`; this module runs them and writes the checked manifest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from taskalign.data.file_checks import CaseChecker
from taskalign.data.grid import Grid
from taskalign.data.labels import IMAGE_COLUMNS, MANIFEST_COLUMNS, MASK_COLUMNS, SPLITS
from taskalign.data.manifest_table import REFERENCE_IMAGE, check_rows, read_table
from taskalign.data.problems import ManifestError, Problem
from taskalign.data.sanity import Finding, SanityConfig, native_findings, sanity_config
from taskalign.data.splits import assign_splits
from taskalign.runtime import atomic_path

__all__ = ["Inspection", "ManifestError", "Problem", "check_manifest", "checked_table", "inspect_manifest",
           "split_problems", "write_table"]

log = logging.getLogger(__name__)
# The file a sanity finding about a value column is checked against.
_FILE_OF_COLUMN = {"pirads": "lesion", "volume_ml": "prostate"}


@dataclass
class Inspection:
    """What the check found: the manifest as strings (empty cells ''), every problem (errors) and warning, resolved
    paths, prostate volumes (mL, from the mask)."""

    table: pd.DataFrame
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)
    paths: dict[tuple[object, str], Path] = field(default_factory=dict)
    volumes_ml: dict[object, float] = field(default_factory=dict)


def _sanity_findings(checker: CaseChecker, row: pd.Series, sanity: SanityConfig,
                     native_lesion: sitk.Image | None) -> list[Finding]:
    """The anatomical checks on the masks that passed, each on its own grid. `native_lesion`: the lesion as drawn,
    before an importer resampled it (the check measures it there: resampling can lose it all)."""
    masks, grids = dict(checker.masks), dict(checker.mask_grids)
    if native_lesion is not None and "lesion" in masks:
        masks["lesion"], grids["lesion"] = sitk.GetArrayFromImage(native_lesion), Grid.of(native_lesion)
    if not masks:
        return []
    return native_findings(row.to_dict(), masks, grids, sanity)


def inspect_manifest(
    manifest_path: str | os.PathLike,
    require: dict[str, bool] | None = None,
    geometry_tolerance: float = 1e-3,
    mask_grid: dict[str, str] | None = None,
    sanity: SanityConfig | None = None,
    native_lesions: dict[str, sitk.Image] | None = None,
) -> Inspection:
    """Every problem and warning of a manifest and its files (see `check_manifest`). `native_lesions`: case id ->
    the lesion mask on the grid it was drawn on, where an importer resampled it."""
    sanity = sanity or sanity_config()
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
    read = read_table(manifest_path, problems)
    if read is None:
        return Inspection(pd.DataFrame(columns=MANIFEST_COLUMNS), problems)
    table, present = read
    # A case without an id is named by its manifest line so the user can still find it.
    case = pd.Series(
        [cid or f"<line {n}>" for cid, n in zip(table["case_id"], table["_line"])], index=table.index, dtype=object
    )
    check_rows(table, case, present, require, problems)

    inspection = Inspection(table, problems)
    base = manifest_path.parent.absolute()
    for i, row in table.iterrows():
        checker = CaseChecker(case[i], base, geometry_tolerance, mask_grid, problems)
        for column in IMAGE_COLUMNS:  # t2w first: the others are compared with it
            if row[column]:
                path = inspection.paths[(i, column)] = checker.resolve(row[column])
                checker.check_image(column, path)
        for column in MASK_COLUMNS:
            if row[column]:
                path = inspection.paths[(i, column)] = checker.resolve(row[column])
                checker.check_mask(column, path, row[mask_grid.get(column, REFERENCE_IMAGE)])
        checker.check_adc_units()
        inspection.warnings += checker.warnings
        if checker.volume_ml is not None:
            inspection.volumes_ml[i] = checker.volume_ml
        for finding in _sanity_findings(checker, row, sanity, (native_lesions or {}).get(row["case_id"])):
            path = inspection.paths.get((i, _FILE_OF_COLUMN.get(finding.column, finding.column)))
            found = Problem(case[i], finding.column, None if path is None else str(path),
                            f"{finding.message} [check {finding.check}]")
            (problems if finding.level == "error" else inspection.warnings).append(found)
    return inspection


def check_manifest(
    manifest_path: str | os.PathLike,
    *,
    require: dict[str, bool] | None = None,
    geometry_tolerance: float = 1e-3,
    mask_grid: dict[str, str] | None = None,
    sanity: SanityConfig | None = None,
) -> list[Problem]:
    """Every problem of a source manifest and its files, in manifest order; an empty list when it is clean.

    `require` maps a column to True when every case must have a value there (`t2w` is always required).
    `mask_grid` maps a mask column to the image it was drawn on (default `t2w`); the mask must share that
    image's size, spacing (relative `geometry_tolerance`), direction (absolute) and origin (within
    `geometry_tolerance` voxels). Other images need only overlap `t2w` physically. Every file is read to its
    last voxel. `sanity` sets the anatomical checks (`data.checks`, `data.check_limits`); those at level "error" are problems.
    Raises ValueError for an invalid `require` or `mask_grid` (configuration, not manifest, errors).
    """
    return inspect_manifest(manifest_path, require, geometry_tolerance, mask_grid, sanity).problems


def checked_table(
    manifest_path: str | os.PathLike,
    *,
    split_fractions: dict[str, float],
    split_seed: int,
    stratify_by: str | None = "pirads",
    require: dict[str, bool] | None = None,
    geometry_tolerance: float = 1e-3,
    mask_grid: dict[str, str] | None = None,
    sanity: SanityConfig | None = None,
) -> pd.DataFrame:
    """The checked manifest (contract section 2) as a table, or ManifestError listing every problem.

    Columns in contract order, paths absolute, `split` assigned by `assign_splits` when empty for every row,
    `volume_ml` (mL) filled from the prostate mask (foreground voxels x voxel volume) when empty. Warnings are
    logged."""
    manifest_path = Path(manifest_path)
    inspection = inspect_manifest(manifest_path, require, geometry_tolerance, mask_grid, sanity)
    if inspection.problems:
        raise ManifestError(inspection.problems, manifest_path)
    for warning in inspection.warnings:
        log.warning("%s", warning)

    table = inspection.table[MANIFEST_COLUMNS].copy()
    for (i, column), path in inspection.paths.items():
        table.at[i, column] = str(path)
    if (table["split"] == "").all():
        table["split"] = assign_splits(table, split_fractions, split_seed, stratify_by)
    for i, volume in inspection.volumes_ml.items():
        if table.at[i, "volume_ml"] == "":
            table.at[i, "volume_ml"] = f"{volume:.10g}"
            log.info("case %s: volume_ml %.1f mL from the prostate mask", table.at[i, "case_id"], volume)
    return table


def split_problems(table: pd.DataFrame, needs: dict[str, str]) -> list[Problem]:
    """A problem for each split something needs (`needs`: split -> the problem's text, Plan.split_needs) that has
    no cases: found by the manifest check, before any training job starts."""
    counts = ", ".join(f"{s} {int((table['split'] == s).sum())}" for s in SPLITS)
    return [Problem(None, "split", None, f"{problem}; the checked manifest has {counts}")
            for split, problem in needs.items() if not (table["split"] == split).any()]


def write_table(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """The checked manifest's CSV, appearing atomically."""
    with atomic_path(Path(out_path)) as tmp, open(tmp, "w", newline="") as f:
        table.to_csv(f, index=False)


