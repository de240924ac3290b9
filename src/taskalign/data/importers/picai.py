"""PI-CAI public layout -> manifest.

Source folder:

    images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha            (PI-CAI imaging archive, picai_prep output)
    picai_labels/clinical_information/marksheet.csv                  (DIAGNijmegen/picai_labels)
    picai_labels/anatomical_delineations/whole_gland/AI/Bosma22b/<case>.nii.gz      whole gland, {0, 1}
    picai_labels/anatomical_delineations/zonal_pz_tz/AI/Yuan23/<case>.nii.gz        1 = PZ, 2 = TZ
    picai_labels/csPCa_lesion_delineations/human_expert/resampled/<case>.nii.gz     ISUP grade 2-5, 0 = ISUP <= 1
    picai_labels/csPCa_lesion_delineations/AI/Bosma22a/<case>.nii.gz                1 = csPCa (ISUP >= 2), AI

case_id = `<patient>_<study>`, patient_id = `<patient>`; `dwi` = hbv (the scanner-computed high-b image).
Masks are remapped (zones: PZ/TZ swapped into labels.ZONE_LABELS; lesions binarised) and written to
`converted/<case>/`; all PI-CAI masks are drawn on (or resampled to) the axial T2W grid.

Marksheet: `lesion_PIRADS` is a comma-separated list per lesion ("4,4"; "N/A" for a lesion without a score).
pirads = the largest score (1 counts as 2, the contract's floor); an empty field is left empty unless
`pirads_if_no_lesion` is given, because it does not say whether the case was read as PI-RADS <= 2 or simply
not scored; a list of unscored lesions only ("N/A") is left empty.
volume_ml = `prostate_volume` (mL, from the radiology report).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from taskalign.data.importers.common import (
    CohortImportError,
    Grid,
    acquisition_metadata,
    binarise,
    empty_row,
    manifest_path,
    onto_grid,
    problem,
    read_header,
    read_image,
    remap_labels,
    write_converted,
)
from taskalign.data.labels import ZONE_LABELS

log = logging.getLogger(__name__)

SEQUENCES = {"t2w": "t2w", "adc": "adc", "dwi": "hbv"}  # manifest column -> PI-CAI file suffix
# Yuan23 zonal masks: 1 = PZ, 2 = TZ (picai_labels README).
YUAN23_ZONES = {0: 0, 1: ZONE_LABELS["pz"], 2: ZONE_LABELS["tz"]}
# Binarisation threshold per lesion source: human masks hold ISUP grades (>= 2 is csPCa), AI masks hold 1.
LESION_SOURCES = {
    "human": ("csPCa_lesion_delineations/human_expert/resampled", 2),
    "ai": ("csPCa_lesion_delineations/AI/Bosma22a", 1),
}


def import_picai(
    source: Path,
    out_dir: Path,
    cohort: str,
    *,
    images_dir: str | None = None,
    labels_dir: str | None = None,
    marksheet: str | None = None,
    gland: str = "AI/Bosma22b",
    zones: str = "AI/Yuan23",
    lesion: str = "human,ai",
    pirads_if_no_lesion: int | None = None,
) -> list[dict]:
    """One manifest row per `<patient>_<study>_t2w.mha` under `images/`.

    Options:
      images_dir, labels_dir, marksheet: override `<source>/images`, `<source>/picai_labels` and
        `<labels_dir>/clinical_information/marksheet.csv` (a missing marksheet leaves pirads/volume empty).
      gland: whole-gland folder under anatomical_delineations/whole_gland/ (default AI/Bosma22b), or "none".
      zones: zonal folder under anatomical_delineations/zonal_pz_tz/ with 1 = PZ, 2 = TZ (default AI/Yuan23),
        or "none".
      lesion: lesion sources in order of preference, comma-separated from {human, ai}, or "none";
        default "human,ai" (the expert mask, else the AI mask).
      pirads_if_no_lesion: value (2 per the manifest contract) for cases whose lesion_PIRADS is empty.
    """
    source = Path(source)
    images = Path(images_dir) if images_dir else source / "images"
    labels = Path(labels_dir) if labels_dir else source / "picai_labels"
    sheet_path = Path(marksheet) if marksheet else labels / "clinical_information" / "marksheet.csv"
    if not images.is_dir():
        raise CohortImportError(f"PI-CAI source {source}: no images folder at {images}")
    lesion_order = [] if _off(lesion) else [part.strip() for part in str(lesion).split(",") if part.strip()]
    unknown = [part for part in lesion_order if part not in LESION_SOURCES]
    if unknown:
        raise CohortImportError(f"option lesion: unknown source(s) {unknown}; use a list from {list(LESION_SOURCES)}")

    sheet = _read_marksheet(sheet_path)
    rows = []
    for t2w in sorted(images.glob("*/*_t2w.mha")):
        patient = t2w.parent.name
        case = t2w.name[: -len("_t2w.mha")]
        if not case.startswith(f"{patient}_"):
            raise CohortImportError(problem(case, t2w, f"file name does not start with its folder's name {patient}_"))
        rows.append(
            _case_row(case, patient, cohort, t2w, out_dir, labels, gland, zones, lesion_order, sheet,
                      pirads_if_no_lesion)
        )
    if not rows:
        raise CohortImportError(f"PI-CAI source {source}: no <patient>/<patient>_<study>_t2w.mha under {images}")
    return rows


def _case_row(case, patient, cohort, t2w, out_dir, labels, gland, zones, lesion_order, sheet, pirads_if_no_lesion):
    row = empty_row(case, patient, cohort)
    for column, suffix in SEQUENCES.items():
        path = t2w.with_name(f"{case}_{suffix}.mha")
        if path.is_file():
            row[column] = manifest_path(path, out_dir)
        else:
            log.warning("case %s: no %s image (%s)", case, suffix, path)
    row.update(acquisition_metadata(read_header(t2w)))
    grid = Grid.of_file(t2w)

    if not _off(gland):
        path = labels / "anatomical_delineations" / "whole_gland" / gland / f"{case}.nii.gz"
        if path.is_file():
            mask = onto_grid(binarise(read_image(path, case, "whole gland")), grid, case, path, "whole gland")
            row["prostate"] = write_converted(mask, out_dir, case, "prostate.nii.gz")
        else:
            log.warning("case %s: no whole-gland mask (%s)", case, path)
    if not _off(zones):
        path = labels / "anatomical_delineations" / "zonal_pz_tz" / zones / f"{case}.nii.gz"
        if path.is_file():
            mask = remap_labels(read_image(path, case, "zones"), YUAN23_ZONES, case, path, "zonal mask")
            mask = onto_grid(mask, grid, case, path, "zonal mask")
            row["zones"] = write_converted(mask, out_dir, case, "zones.nii.gz")
        else:
            log.warning("case %s: no zonal mask (%s)", case, path)
    for name in lesion_order:
        folder, threshold = LESION_SOURCES[name]
        path = labels / folder / f"{case}.nii.gz"
        if path.is_file():
            mask = onto_grid(binarise(read_image(path, case, "lesion"), threshold), grid, case, path, "lesion mask")
            row["lesion"] = write_converted(mask, out_dir, case, "lesion.nii.gz")
            log.info("case %s: lesion mask from %s (%s)", case, name, path)
            break
    else:
        if lesion_order:
            log.warning("case %s: no lesion mask in %s", case, ", ".join(lesion_order))

    entry = sheet.get(case)
    if entry is None:
        if sheet:
            log.warning("case %s: not in the marksheet", case)
        return row
    row["pirads"] = _case_pirads(case, entry.get("lesion_PIRADS"), pirads_if_no_lesion)
    volume = _number(entry.get("prostate_volume"))
    row["volume_ml"] = "" if volume is None else volume
    return row


def _read_marksheet(path: Path) -> dict[str, dict]:
    """Marksheet rows by case id `<patient_id>_<study_id>` (ids kept as text)."""
    if not path.is_file():
        log.warning("no PI-CAI marksheet at %s: pirads and volume_ml stay empty", path)
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"patient_id", "study_id"} - set(frame.columns)
    if missing:
        raise CohortImportError(f"marksheet {path}: missing column(s) {sorted(missing)}")
    return {f"{r['patient_id'].strip()}_{r['study_id'].strip()}": r for r in frame.to_dict("records")}


def _case_pirads(case: str, text, if_no_lesion) -> int | str:
    """Largest lesion score in a 'a,b,...' list ('N/A' entries skipped); PI-RADS 1 counts as 2, the contract's
    floor (no lesion worth reporting). An empty field gives `if_no_lesion` (or ''); a list of unscored
    lesions only ('N/A') gives '' (there are lesions, their score is unknown)."""
    text = str(text or "").strip()
    if not text:
        return "" if if_no_lesion is None else int(if_no_lesion)
    scores = []
    for part in text.split(","):
        part = part.strip()
        if part in ("", "N/A", "NA", "nan"):
            continue
        value = _number(part)
        if value is None or not 1 <= value <= 5 or not float(value).is_integer():
            raise CohortImportError(problem(case, "marksheet", f"lesion_PIRADS entry {part!r} is not a score 1-5"))
        scores.append(int(value))
    return max(2, max(scores)) if scores else ""


def _off(option) -> bool:
    return option is None or str(option).strip().lower() in ("", "none")


def _number(text) -> float | None:
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
