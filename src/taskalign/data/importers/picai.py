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
`converted/<case>/`; a value the source convention does not have (a 7 in a whole-gland mask) is a problem, not
thresholded away. PI-CAI masks lie on the axial T2W grid; one that does not is refused, unless option
`resample_masks` resamples it nearest-neighbour (logged; the lesion_outside_gland check then guards it).
Every case is tried; all problems come in one report (see `import_cohort`).

Marksheet: `lesion_PIRADS` is a comma-separated list per lesion ("4,4"; "N/A" for a lesion without a score).
pirads = the largest score (1 counts as 2, the contract's floor); an empty field is left empty unless
`pirads_if_no_lesion` is given, because it does not say whether the case was read as PI-RADS <= 2 or simply
not scored; a list of unscored lesions only ("N/A") is left empty.
volume_ml = `prostate_volume` (mL, the radiology report's estimate, logged as such; the integrity check warns
when it differs from the whole-gland mask's volume).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from taskalign.data.image_io import unreadable_message
from taskalign.data.importers.common import (
    CohortImportError,
    acquisition_metadata,
    empty_row,
    manifest_path,
    onto_grid,
    problem,
    raise_problems,
    read_grid,
    read_header,
    read_image,
    remap_labels,
    rows_by_case,
    write_converted,
)
from taskalign.data.labels import MASK_COLUMNS, ZONE_LABELS

log = logging.getLogger(__name__)

SEQUENCES = {"t2w": "t2w", "adc": "adc", "dwi": "hbv"}  # manifest column -> PI-CAI file suffix
# Yuan23 zonal masks: 1 = PZ, 2 = TZ (picai_labels README).
YUAN23_ZONES = {0: 0, 1: ZONE_LABELS["pz"], 2: ZONE_LABELS["tz"]}
WHOLE_GLAND = {0: 0, 1: 1}
# Source value -> lesion mask value: human masks hold ISUP grades (>= 2 is csPCa; 0 = ISUP <= 1), AI masks 1.
LESION_SOURCES = {
    "human": ("csPCa_lesion_delineations/human_expert/resampled", {0: 0, 1: 0, 2: 1, 3: 1, 4: 1, 5: 1}),
    "ai": ("csPCa_lesion_delineations/AI/Bosma22a", {0: 0, 1: 1}),
}


@dataclass(frozen=True)
class PicaiOptions:
    """The importer's config options (`import_cohort(..., **options)`), with their defaults.

    images_dir, labels_dir, marksheet: override `<source>/images`, `<source>/picai_labels` and
      `<labels_dir>/clinical_information/marksheet.csv` (a missing marksheet leaves pirads/volume empty).
    gland: whole-gland folder under anatomical_delineations/whole_gland/ (default AI/Bosma22b), or "none".
    zones: zonal folder under anatomical_delineations/zonal_pz_tz/ with 1 = PZ, 2 = TZ (default AI/Yuan23),
      or "none".
    lesion: lesion sources in order of preference, comma-separated from {human, ai}, or "none";
      default "human,ai" (the expert mask, else the AI mask).
    pirads_if_no_lesion: value (2 per the manifest contract) for cases whose lesion_PIRADS is empty.
    allow_missing: comma-separated image columns (adc, dwi) a case may lack; any other missing image is a
      problem (a PI-CAI case has all three, so a missing one means a broken copy).
    resample_masks: resample masks that are not on the T2W grid nearest-neighbour (default: refuse them).
    """

    images_dir: str | None = None
    labels_dir: str | None = None
    marksheet: str | None = None
    gland: str = "AI/Bosma22b"
    zones: str = "AI/Yuan23"
    lesion: str = "human,ai"
    pirads_if_no_lesion: int | None = None
    allow_missing: str = ""
    resample_masks: bool = False


def import_picai(source: Path, out_dir: Path, cohort: str, **options) -> list[dict]:
    """One manifest row per `<patient>_<study>_t2w.mha` under `images/`; `options` as PicaiOptions."""
    option = PicaiOptions(**options)
    source = Path(source)
    images = Path(option.images_dir) if option.images_dir else source / "images"
    labels = Path(option.labels_dir) if option.labels_dir else source / "picai_labels"
    sheet_path = Path(option.marksheet) if option.marksheet else labels / "clinical_information" / "marksheet.csv"
    if not images.is_dir():
        raise CohortImportError(f"PI-CAI source {source}: no images folder at {images}")
    lesion_order = [] if _off(option.lesion) else [p.strip() for p in str(option.lesion).split(",") if p.strip()]
    unknown = [part for part in lesion_order if part not in LESION_SOURCES]
    if unknown:
        raise CohortImportError(f"option lesion: unknown source(s) {unknown}; use a list from {list(LESION_SOURCES)}")

    optional = {part.strip() for part in str(option.allow_missing or "").split(",") if part.strip()}
    if optional - {"adc", "dwi"}:
        raise CohortImportError(f"option allow_missing: {sorted(optional - {'adc', 'dwi'})} are not adc or dwi")

    sheet = _read_marksheet(sheet_path)
    t2w_files = sorted(images.glob("*/*_t2w.mha"))
    if not t2w_files:
        raise CohortImportError(f"PI-CAI source {source}: no <patient>/<patient>_<study>_t2w.mha under {images}")
    masks = _MaskSources(labels, option.gland, option.zones, lesion_order, option.resample_masks)

    def make_row(t2w: Path) -> dict:
        return _case_row(t2w, cohort, out_dir, masks, sheet, sheet_path, option.pirads_if_no_lesion, optional)

    rows, problems = rows_by_case(t2w_files, make_row)
    raise_problems(problems, f"PI-CAI source {source}", rows)
    return rows


@dataclass(frozen=True)
class _MaskSources:
    """Where a case's masks are and what to do with them (the importer's options)."""

    labels: Path
    gland: str
    zones: str
    lesion_order: list[str]
    resample: bool

    def candidates(self, case: str) -> list[tuple[str, str, Path, dict[int, int]]]:
        """(manifest column, what, source file, value map) per mask, the lesion sources in order of preference."""
        out = []
        if not _off(self.gland):
            path = self.labels / "anatomical_delineations" / "whole_gland" / self.gland / f"{case}.nii.gz"
            out.append(("prostate", "whole-gland mask", path, WHOLE_GLAND))
        if not _off(self.zones):
            path = self.labels / "anatomical_delineations" / "zonal_pz_tz" / self.zones / f"{case}.nii.gz"
            out.append(("zones", "zonal mask", path, YUAN23_ZONES))
        for name in self.lesion_order:
            folder, values = LESION_SOURCES[name]
            out.append(("lesion", f"{name} lesion mask", self.labels / folder / f"{case}.nii.gz", values))
        return out


def _case_row(t2w: Path, cohort, out_dir, masks: _MaskSources, sheet, sheet_path, pirads_if_no_lesion, optional):
    """One case's manifest row; every problem of the case in one CohortImportError."""
    patient = t2w.parent.name
    case = t2w.name[: -len("_t2w.mha")]
    if not case.startswith(f"{patient}_"):
        raise CohortImportError(problem(case, t2w, f"file name does not start with its folder's name {patient}_"))
    problems = []
    row = empty_row(case, patient, cohort)
    for column, suffix in SEQUENCES.items():
        path = t2w.with_name(f"{case}_{suffix}.mha")
        if path.is_file():
            row[column] = manifest_path(path, out_dir)
        elif column in optional:
            log.warning("case %s: no %s image (%s); allowed by option allow_missing", case, suffix, path)
        else:
            problems.append(problem(case, path, f"{suffix} image missing (option allow_missing={column} accepts that)"))
    try:
        row.update(acquisition_metadata(read_header(t2w)))
        grid = read_grid(t2w, case, "T2W")
    except (CohortImportError, RuntimeError) as error:
        problems += getattr(error, "problems", None) or [problem(case, t2w, unreadable_message(t2w, "T2W header", error))]
        raise_problems(problems, f"case {case}")

    for column, what, path, values in masks.candidates(case):
        if row[column]:
            continue  # a lesion mask from a preferred source is already there
        if not path.is_file():
            log.warning("case %s: no %s (%s)", case, what, path)
            continue
        try:
            native = remap_labels(read_image(path, case, what), values, case, path, what)
            mask = onto_grid(native, grid, case, path, what, masks.resample)
            row[column] = write_converted(mask, out_dir, case, f"{column}.nii.gz", source=path, native=native)
        except CohortImportError as error:
            problems += error.problems
            row[column] = "-"  # tried: a less preferred lesion source must not stand in for a broken one
    for column in MASK_COLUMNS:
        row[column] = "" if row[column] == "-" else row[column]

    entry = sheet.get(case)
    if entry is None:
        if sheet:
            log.warning("case %s: not in the marksheet", case)
    else:
        try:
            row["pirads"] = _case_pirads(case, entry.get("lesion_PIRADS"), pirads_if_no_lesion, sheet_path)
        except CohortImportError as error:
            problems += error.problems
        volume = _number(entry.get("prostate_volume"))
        row["volume_ml"] = "" if volume is None else volume
        if volume is not None:
            log.info("case %s: volume_ml %g mL from the marksheet's prostate_volume (radiology report), not the mask",
                     case, volume)
    raise_problems(problems, f"case {case}", [row])
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


def _case_pirads(case: str, text, if_no_lesion, sheet_path: Path) -> int | str:
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
            raise CohortImportError(
                problem(case, sheet_path, f"marksheet lesion_PIRADS entry {part!r} is not a score 1-5")
            )
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
