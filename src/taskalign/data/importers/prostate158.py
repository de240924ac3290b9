"""Prostate158 (Adams et al., Comput Biol Med 2022; zenodo 6481141) -> manifest.

Layout: `<root>/{train,valid,test}/<id>/` holding t2.nii.gz, adc.nii.gz, dwi.nii.gz (high b),
t2_anatomy_reader<r>.nii.gz (1 = transition zone / central gland, 2 = peripheral zone, on the T2 grid),
adc_tumor_reader<r>.nii.gz (cancer, drawn on the ADC grid), optionally t2_tumor_reader<r>.nii.gz (on T2);
cases without cancer may instead reference `empty.nii.gz`. Optional `<root>/{train,valid,test}.csv`
(columns ID, t2, adc, ..., paths relative to the root) give the official splits.

Zones map TZ -> 1, PZ -> 2 (labels.ZONE_LABELS); prostate = zones > 0. The ADC-grid tumour mask is binarised and
resampled nearest-neighbour onto the T2 grid (masks lie on the t2w grid in the manifest), after the check that
it lies on the ADC's grid; the lesion checks measure it on its own grid. Everything converted
goes to `converted/<id>/`; images are used where they lie.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from taskalign.data.importers.common import (
    CohortImportError,
    binarise,
    empty_row,
    manifest_path,
    onto_grid,
    problem,
    raise_problems,
    read_grid,
    read_image,
    remap_labels,
    rows_by_case,
    write_converted,
)
from taskalign.data.labels import ZONE_LABELS

log = logging.getLogger(__name__)

ANATOMY = {0: 0, 1: ZONE_LABELS["tz"], 2: ZONE_LABELS["pz"]}
SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
EMPTY_TUMOR = "empty.nii.gz"


def import_prostate158(
    source: Path,
    out_dir: Path,
    cohort: str,
    *,
    reader: int = 1,
    lesion_grid: str = "adc",
    use_splits: bool = True,
    resample_masks: bool = False,
) -> list[dict]:
    """One manifest row per case folder holding t2.nii.gz (one or two levels below `source`).

    Options:
      reader: 1 or 2, whose anatomy and tumour masks to use (reader 2 exists for the test cases only).
      lesion_grid: "adc" (adc_tumor_reader<r>, resampled onto T2; the reference annotation), "t2"
        (t2_tumor_reader<r>), or "none".
      use_splits: take split from train/valid/test CSVs or folder names (train, valid -> val, test).
      resample_masks: resample an anatomy (or t2 tumour) mask that is not on the T2 grid (default: refuse it).
    """
    source = Path(source)
    lesion_grid = "none" if lesion_grid is None else str(lesion_grid).lower()
    if lesion_grid not in ("adc", "t2", "none"):
        raise CohortImportError(f"option lesion_grid: {lesion_grid!r} is not one of adc, t2, none")
    case_dirs = sorted({p.parent for p in [*source.glob("*/t2.nii.gz"), *source.glob("*/*/t2.nii.gz")]})
    if not case_dirs:
        raise CohortImportError(f"Prostate158 source {source}: no <split>/<id>/t2.nii.gz")
    seen: dict[str, Path] = {}
    twice = []
    for directory in case_dirs:
        if directory.name in seen:
            twice.append(problem(directory.name, directory, f"case id occurs twice; the other folder is "
                                                            f"{seen[directory.name]}"))
        seen[directory.name] = directory
    raise_problems(twice, f"Prostate158 source {source}")
    csv_splits, csv_tumor = _read_split_csvs(source, reader) if use_splits else ({}, {})

    def make_row(directory: Path) -> dict:
        return _case_row(directory, out_dir, cohort, reader, lesion_grid, resample_masks,
                         csv_splits if use_splits else None, csv_tumor)

    rows, problems = rows_by_case(case_dirs, make_row)
    raise_problems(problems, f"Prostate158 source {source}", rows)
    return rows


def _case_row(directory: Path, out_dir, cohort, reader, lesion_grid, resample_masks, csv_splits, csv_tumor) -> dict:
    """One case's manifest row; every problem of the case in one CohortImportError."""
    case = directory.name
    problems = []
    row = empty_row(case, case, cohort)
    if csv_splits is not None:
        row["split"] = csv_splits.get(directory.resolve()) or SPLIT_NAMES.get(directory.parent.name.lower(), "")
    for column, name in (("t2w", "t2.nii.gz"), ("adc", "adc.nii.gz"), ("dwi", "dwi.nii.gz")):
        if (directory / name).is_file():
            row[column] = manifest_path(directory / name, out_dir)
        else:
            log.warning("case %s: no %s", case, directory / name)
    grid = read_grid(directory / "t2.nii.gz", case, "T2")

    anatomy = directory / f"t2_anatomy_reader{reader}.nii.gz"
    if anatomy.is_file():
        try:
            zones = remap_labels(read_image(anatomy, case, "anatomy"), ANATOMY, case, anatomy, "anatomy mask")
            zones = onto_grid(zones, grid, case, anatomy, "anatomy mask", resample_masks)
            row["zones"] = write_converted(zones, out_dir, case, "zones.nii.gz", source=anatomy)
            gland = binarise(zones, 1)
            row["prostate"] = write_converted(gland, out_dir, case, "prostate.nii.gz", source=anatomy)
        except CohortImportError as error:
            problems += error.problems
    else:
        log.warning("case %s: no %s", case, anatomy)

    if lesion_grid != "none":
        tumor = directory / f"{lesion_grid}_tumor_reader{reader}.nii.gz"
        if tumor.is_file():
            try:
                row["lesion"] = _tumour_on_t2(tumor, directory, grid, case, out_dir, lesion_grid, resample_masks)
            except CohortImportError as error:
                problems += error.problems
        elif (directory / EMPTY_TUMOR).is_file() or csv_tumor.get(directory.resolve(), "").endswith(EMPTY_TUMOR):
            # The dataset marks "no cancer" explicitly: an all-zero mask on the T2 grid says the same.
            empty = sitk.Image([int(n) for n in grid.size], sitk.sitkUInt8)
            empty.SetSpacing(grid.spacing)
            empty.SetOrigin(grid.origin)
            empty.SetDirection(grid.direction)
            row["lesion"] = write_converted(empty, out_dir, case, "lesion.nii.gz")
        else:
            log.warning("case %s: no %s", case, tumor)
    raise_problems(problems, f"case {case}", [row])
    return row


def _tumour_on_t2(tumor: Path, directory: Path, grid, case, out_dir, lesion_grid: str, resample_masks: bool) -> str:
    """The binarised tumour mask on the T2 grid. One drawn on the ADC must lie on the ADC's grid (the geometry check
    of every mask) before it is resampled onto T2; the native mask goes along for the lesion checks."""
    native = binarise(read_image(tumor, case, "tumour mask"), 1)
    drawn_on = None
    if lesion_grid == "adc":
        adc = directory / "adc.nii.gz"
        if not adc.is_file():
            raise CohortImportError(problem(case, tumor, f"tumour mask drawn on the ADC, but there is no {adc}"))
        drawn_on = ("adc.nii.gz", read_grid(adc, case, "ADC"))
    mask = onto_grid(native, grid, case, tumor, "tumour mask", resample_masks, drawn_on)
    return write_converted(mask, out_dir, case, "lesion.nii.gz", source=tumor, native=native)


def _read_split_csvs(source: Path, reader: int) -> tuple[dict[Path, str], dict[Path, str]]:
    """{case folder: split} and {case folder: tumour column value} from <root>/{train,valid,test}.csv."""
    splits, tumor = {}, {}
    for name, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        path = source / f"{name}.csv"
        if not path.is_file():
            continue
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "t2" not in frame.columns:
            raise CohortImportError(f"Prostate158 split file {path}: no t2 column")
        for record in frame.to_dict("records"):
            folder = (source / record["t2"].strip()).parent.resolve()
            if folder in splits and splits[folder] != split:
                raise CohortImportError(problem(folder.name, path, f"listed in both {splits[folder]} and {split}"))
            splits[folder] = split
            tumor[folder] = record.get(f"adc_tumor_reader{reader}", "")
    return splits, tumor

