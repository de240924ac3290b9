"""Medical Segmentation Decathlon Task05_Prostate -> manifest.

Layout: `dataset.json`, `imagesTr/prostate_XX.nii.gz` (4-D: one 3-D volume per channel, `modality` in
dataset.json: {"0": "T2", "1": "ADC"}), `labelsTr/prostate_XX.nii.gz` (`labels`: {"0": "background",
"1": "PZ", "2": "TZ"}), `imagesTs/` without labels. Cases are read from dataset.json's lists, which also keeps
out the macOS `._prostate_XX.nii.gz` files the official archive contains.

Each 4-D image is split into `converted/<case>/{t2w,adc}.nii.gz`; channels and labels are mapped by their
names in dataset.json, never by position. Zones are remapped to labels.ZONE_LABELS (PZ -> 2, TZ -> 1) and
prostate = zones > 0.

ADC: the MSD ADC channel is not in the vendors' 1e-6 mm^2/s (the manifest contract's unit) and its scale is not
documented. It is written unscaled, with a warning; give `adc_scale` (a factor into 1e-6 mm^2/s) once known.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import SimpleITK as sitk

from taskalign.data.importers.common import (
    CohortImportError,
    Grid,
    binarise,
    empty_row,
    onto_grid,
    problem,
    raise_problems,
    read_image,
    remap_labels,
    rows_by_case,
    write_converted,
    zone_label,
)

log = logging.getLogger(__name__)

CHANNEL_COLUMNS = {"t2": "t2w", "t2w": "t2w", "adc": "adc", "dwi": "dwi", "hbv": "dwi"}


def import_msd(
    source: Path,
    out_dir: Path,
    cohort: str,
    *,
    include_test: bool = False,
    adc_scale: float | None = None,
    resample_masks: bool = False,
) -> list[dict]:
    """One manifest row per training case (and per test image with include_test).

    Options:
      include_test: also import imagesTs (no labels; useful for an unlabelled pretraining corpus).
      adc_scale: multiply the ADC channel by this factor (written as float32); default: leave it unscaled.
      resample_masks: resample a label map that is not on the image grid (default: refuse it).
    """
    source = Path(source)
    spec_path = source / "dataset.json"
    spec = _read_spec(spec_path)
    channels = _channel_columns(spec, spec_path)
    zones_lut = _zone_mapping(spec, spec_path)
    if "adc" in channels.values() and adc_scale is None:
        log.warning("MSD ADC is not in 1e-6 mm^2/s; written unscaled (option adc_scale converts it)")
    entries = _entries(spec, spec_path, source, include_test)

    def make_row(entry: tuple[Path, Path | None]) -> dict:
        return _case_row(*entry, out_dir, cohort, channels, zones_lut, adc_scale, resample_masks)

    rows, problems = rows_by_case(entries, make_row)
    raise_problems(problems, f"MSD source {source}", rows)
    return rows


def _read_spec(path: Path) -> dict:
    if not path.is_file():
        raise CohortImportError(f"MSD source {path.parent}: no dataset.json")
    try:
        spec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CohortImportError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise CohortImportError(f"{path}: expected a JSON object with modality, labels and training, got "
                                f"{type(spec).__name__}")
    return spec


def _entries(spec: dict, path: Path, source: Path, include_test: bool) -> list[tuple[Path, Path | None]]:
    """(image, label or None) per case listed in dataset.json; every malformed entry is a problem."""
    lists = [("training", True)] + ([("test", False)] if include_test else [])
    entries, problems = [], []
    for key, labelled in lists:
        items = spec.get(key, [])
        if not isinstance(items, list):
            problems.append(f"{path}: `{key}` must be a list, got {type(items).__name__}")
            continue
        for n, item in enumerate(items):
            fields = item if isinstance(item, dict) else {"image": item} if not labelled else {}
            image, label = fields.get("image"), fields.get("label")
            if not isinstance(image, str) or (labelled and not isinstance(label, str)):
                wanted = '{"image": ..., "label": ...}' if labelled else 'a path or {"image": ...}'
                problems.append(f"{path}: `{key}`[{n}] is {json.dumps(item)[:80]}, expected {wanted}")
                continue
            entries.append((_resolve(source, image), _resolve(source, label) if labelled else None))
    raise_problems(problems, f"MSD dataset.json {path}")
    if not entries:
        raise CohortImportError(f"MSD source {source}: dataset.json lists no cases")
    return entries


def _case_row(image_path: Path, label_path: Path | None, out_dir, cohort, channels, zones_lut, adc_scale,
              resample_masks) -> dict:
    """One case's manifest row; every problem of the case (a missing image and a missing label) at once."""
    case = image_path.name.removesuffix(".nii.gz").removesuffix(".nii")
    row = empty_row(case, case, cohort)
    problems = []
    if not image_path.is_file():
        problems.append(problem(case, image_path, "listed in dataset.json but missing"))
    if label_path is not None and not label_path.is_file():
        problems.append(problem(case, label_path, "label listed in dataset.json but missing"))
    raise_problems(problems, f"case {case}")
    # read_image refuses NaN/Inf in the source: ITK would read them as 0 and the split channels would hide them
    image = read_image(image_path, case, "4-D image")
    volumes = _split_channels(image, len(channels), case, image_path)
    for index, column in channels.items():
        volume = volumes[index]
        if column == "adc" and adc_scale is not None:
            volume = sitk.Cast(volume, sitk.sitkFloat32) * float(adc_scale)
        row[column] = write_converted(volume, out_dir, case, f"{column}.nii.gz", source=image_path)
    if label_path is not None:
        zones = remap_labels(read_image(label_path, case, "label"), zones_lut, case, label_path, "label map")
        t2w_index = next(i for i, c in channels.items() if c == "t2w")
        zones = onto_grid(zones, Grid.of(volumes[t2w_index]), case, label_path, "label map", resample_masks)
        row["zones"] = write_converted(zones, out_dir, case, "zones.nii.gz", source=label_path)
        gland = binarise(zones, 1)
        row["prostate"] = write_converted(gland, out_dir, case, "prostate.nii.gz", source=label_path)
    return row


def _resolve(source: Path, entry: str) -> Path:
    return source / entry.removeprefix("./")


def _channel_columns(spec: dict, path: Path) -> dict[int, str]:
    """{channel index: manifest column} from dataset.json `modality` (or nnU-Net v2 `channel_names`)."""
    names = spec.get("modality") or spec.get("channel_names")
    if not isinstance(names, dict) or not names:
        raise CohortImportError(f"{path}: no `modality` listing the channels")
    out = {}
    for index, name in names.items():
        column = CHANNEL_COLUMNS.get(str(name).strip().lower())
        if column is None:
            raise CohortImportError(f"{path}: channel {index} {name!r} is none of {sorted(CHANNEL_COLUMNS)}")
        if column in out.values():
            raise CohortImportError(f"{path}: two channels map to {column}")
        if not str(index).isdigit():
            raise CohortImportError(f"{path}: channel index {index!r} in `modality` is not a number")
        out[int(index)] = column
    if "t2w" not in out.values():
        raise CohortImportError(f"{path}: no T2 channel in `modality` {names}")
    return out


def _zone_mapping(spec: dict, path: Path) -> dict[int, int]:
    """{source label: our zone label} from dataset.json `labels` ({"1": "PZ"}, or nnU-Net v2's {"PZ": 1})."""
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise CohortImportError(f"{path}: no `labels`")
    pairs = [(k, v) if str(k).isdigit() else (v, k) for k, v in labels.items()]
    out = {}
    for value, name in pairs:
        if not str(value).isdigit():
            raise CohortImportError(f"{path}: `labels` entry {value!r}: {name!r} pairs no label number with a name")
        ours = zone_label(str(name))
        if ours is None:
            raise CohortImportError(f"{path}: label {value} {name!r} is not a structure labels.ZONE_LABELS knows")
        out[int(value)] = ours
    return out


def _split_channels(image: sitk.Image, count: int, case: str, path: Path) -> list[sitk.Image]:
    """3-D volumes of a 4-D (or vector-pixel) image, in channel order."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        volumes = [sitk.VectorIndexSelectionCast(image, i) for i in range(image.GetNumberOfComponentsPerPixel())]
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        volumes = [sitk.Extract(image, size[:3] + [0], [0, 0, 0, i]) for i in range(size[3])]
    else:
        volumes = [image]
    if len(volumes) != count:
        raise CohortImportError(problem(case, path, f"{len(volumes)} channel(s), dataset.json lists {count}"))
    return volumes
