"""Bad input on every route into the pipeline (issue 26): the importers and the manifest route run one integrity
check; each refusal names case, file and problem, and leaves nothing behind. Also: the clean PI-CAI sample passes
with its PI-RADS/ISUP warning, and the QC montage shows the smallest lesion."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import write_checked
from taskalign.cli.import_cohort import main as import_cli
from taskalign.data.importers import CohortImportError, import_cohort
from taskalign.data.integrity import check_manifest, inspect_manifest
from taskalign.data.labels import MANIFEST_COLUMNS
from taskalign.data.sanity import sanity_config

CASE = "10795_1000811"
GLAND = f"picai_labels/anatomical_delineations/whole_gland/AI/Bosma22b/{CASE}.nii.gz"
T2W = f"images/10795/{CASE}_t2w.mha"
ADC = f"images/10795/{CASE}_adc.mha"


@pytest.fixture
def picai(shared_data, tmp_path) -> Path:
    """A writable copy of the PI-CAI sample."""
    copy = tmp_path / "picai"
    shutil.copytree(shared_data / "picai-sample", copy)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def refused_import(source: Path, out: Path, **options) -> str:
    """The import's error message; asserts the output folder holds nothing new."""
    before = listing(out.parent)
    with pytest.raises(CohortImportError) as caught:
        import_cohort("picai", source, out, "picai", **options)
    assert listing(out.parent) == before, "a refused import left files behind"
    return str(caught.value)


def rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    image = change(image) or image
    sitk.WriteImage(image, str(path), True)


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ------------------------------------------------------------------------------------------------ PI-CAI importer


def test_clean_picai_sample_passes_with_the_pirads_isup_warning(picai, tmp_path, caplog):
    out = tmp_path / "out" / "manifest.csv"
    with caplog.at_level(logging.WARNING):
        import_cohort("picai", picai, out, "picai")
        write_checked(out, tmp_path / "checked.csv", split_fractions={"train": 1, "val": 0, "test": 0},
                               split_seed=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(CASE in w and "PI-RADS 4 but the lesion mask is empty" in w and "ISUP" in w for w in warnings)
    assert any("volume_ml 28 mL" in w and "radiology report" in w for w in warnings)


def test_gland_mask_with_a_wrong_spacing_is_refused(picai, tmp_path):
    rewrite(picai / GLAND, lambda image: image.SetSpacing((0.6, 0.6, 3.0)))
    message = refused_import(picai, tmp_path / "out" / "manifest.csv")
    assert f"case {CASE}" in message and str(picai / GLAND) in message
    assert "geometry differs from t2w (spacing 0.6x0.6x3.0 vs 0.5x0.5x3.0 mm)" in message
    assert "resample_masks" in message


def test_gland_mask_with_a_wrong_spacing_fails_the_cli(picai, tmp_path, caplog):
    rewrite(picai / GLAND, lambda image: image.SetSpacing((0.6, 0.6, 3.0)))
    out = tmp_path / "out" / "manifest.csv"
    assert import_cli(["--kind", "picai", "--source", str(picai), "--cohort", "picai", "--out", str(out)]) == 1
    assert not out.parent.exists()


def test_resampling_an_off_grid_mask_is_explicit_and_logged(picai, tmp_path, caplog):
    rewrite(picai / GLAND, lambda image: image.SetSpacing((0.6, 0.6, 3.0)))
    with caplog.at_level(logging.WARNING):
        import_cohort("picai", picai, tmp_path / "out" / "manifest.csv", "picai", resample_masks=True)
    assert any("resampled nearest-neighbour" in r.getMessage() and "resample_masks" in r.getMessage()
               for r in caplog.records)


def test_gland_mask_with_values_0_1_7_is_refused(picai, tmp_path):
    def add_seven(image):
        array = sitk.GetArrayFromImage(image)
        array[array.shape[0] // 2, 0, 0] = 7
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    rewrite(picai / GLAND, add_seven)
    message = refused_import(picai, tmp_path / "out" / "manifest.csv")
    assert f"case {CASE}" in message and str(picai / GLAND) in message
    assert "label value(s) [7] outside the expected [0, 1]" in message


def test_half_truncated_t2w_is_refused_without_blaming_a_missing_file(picai, tmp_path):
    truncate(picai / T2W)
    message = refused_import(picai, tmp_path / "out" / "manifest.csv")
    assert f"case {CASE}" in message and str(picai / T2W) in message
    assert "truncated or corrupt" in message and "No such file or directory" not in message


def test_corrupt_t2w_header_is_a_problem_not_a_traceback(picai, tmp_path):
    truncate(picai / T2W, 0.0001)
    message = refused_import(picai, tmp_path / "out" / "manifest.csv")
    assert f"case {CASE}" in message and str(picai / T2W) in message and "T2W header unreadable" in message
    assert "No such file or directory" not in message


def test_every_problem_of_a_case_comes_in_one_report(picai, tmp_path):
    (picai / ADC).unlink()
    sheet = picai / "picai_labels/clinical_information/marksheet.csv"
    sheet.write_text(sheet.read_text().replace('"4,4"', '"4,9"'))
    rewrite(picai / GLAND, lambda image: image.SetSpacing((0.6, 0.6, 3.0)))
    message = refused_import(picai, tmp_path / "out" / "manifest.csv")
    assert f"{picai / ADC}: adc image missing" in message
    assert f"{sheet}: marksheet lesion_PIRADS entry '9' is not a score 1-5" in message
    assert str(picai / GLAND) in message and "geometry differs" in message
    assert import_cohort("picai", picai, tmp_path / "ok" / "manifest.csv", "picai", allow_missing="adc",
                         gland="none", pirads_if_no_lesion=2, lesion="none", marksheet=str(tmp_path / "none.csv")
                         ).loc[0, "adc"] == ""


def test_a_failed_import_keeps_the_earlier_converted_files_out_of_the_way(picai, tmp_path):
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("picai", picai, out, "picai")
    before = {p: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    rewrite(picai / GLAND, lambda image: image.SetSpacing((0.6, 0.6, 3.0)))
    refused_import(picai, out)
    assert {p: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------------------------ manifest route


def manifest_of(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "manifest.csv"
    lines = [",".join(MANIFEST_COLUMNS)]
    lines += [",".join(str(row.get(c, "")) for c in MANIFEST_COLUMNS) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def image_file(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), path.suffix != ".mha")
    return path


def case_files(tmp_path: Path, lesion_at=(slice(2, 4), slice(3, 5), slice(3, 5))) -> dict:
    t2w = np.random.default_rng(0).integers(1, 500, (6, 8, 8)).astype(np.int16)
    gland = np.zeros((6, 8, 8), np.uint8)
    gland[1:5, 2:6, 2:6] = 1
    lesion = np.zeros_like(gland)
    lesion[lesion_at] = 1
    return {"case_id": "c1", "patient_id": "p1", "cohort": "x", "pirads": 4,
            "t2w": image_file(tmp_path / "t2w.mha", t2w), "prostate": image_file(tmp_path / "gland.nii.gz", gland),
            "lesion": image_file(tmp_path / "lesion.nii.gz", lesion)}


@pytest.mark.parametrize("name", ["t2w.mha", "gland.nii.gz"])
def test_manifest_route_reads_integer_images_to_the_last_voxel(tmp_path, name):
    row = case_files(tmp_path)
    truncate(tmp_path / name)
    problems = [str(p) for p in check_manifest(manifest_of(tmp_path, [row]))]
    assert any("case c1" in p and str(tmp_path / name) in p and "truncated or corrupt" in p for p in problems)
    assert not any("No such file or directory" in p for p in problems)


def test_manifest_route_refuses_a_lesion_outside_the_gland_unless_turned_off(tmp_path):
    row = case_files(tmp_path, lesion_at=(slice(0, 1), slice(0, 2), slice(0, 2)))
    manifest = manifest_of(tmp_path, [row])
    problems = [str(p) for p in check_manifest(manifest)]
    assert problems == [f"case c1, column lesion, file {tmp_path / 'lesion.nii.gz'}: 100% of the lesion lies outside "
                        "the prostate (measured on the lesion's own grid; error from 20%): the lesion mask's geometry "
                        "is probably wrong (another grid, a flipped axis, a shifted origin or another case's mask) "
                        "[check lesion_outside_gland]"]
    assert check_manifest(manifest, sanity=sanity_config({"lesion_outside_gland": "warning"})) == []


def test_check_manifest_cli_takes_checks_from_params(tmp_path):
    from taskalign.cli.check_manifest import main

    row = case_files(tmp_path, lesion_at=(slice(0, 1), slice(0, 2), slice(0, 2)))
    params = {"split_fractions": {"train": 1, "val": 0, "test": 0}, "split_seed": 0, "stratify_by": None,
              "require": {}}
    args = ["--manifest", str(manifest_of(tmp_path, [row])), "--out", str(tmp_path / "out.csv"), "--params"]
    assert main([*args, json.dumps(params)]) == 1 and not (tmp_path / "out.csv").exists()
    assert main([*args, json.dumps({**params, "checks": {"lesion_outside_gland": "off"}})]) == 0


# ------------------------------------------------------------------------------------------------ QC montage


def test_qc_montage_shows_the_smallest_lesion(tiny_cache, tmp_path):
    from taskalign.data.qc import MASK_COLOURS, montage_case

    index = tiny_cache["anatomy"]
    case_dirs = [d for d in (index.parent / "anatomy").iterdir() if (d / "lesion.npy").exists()]
    sizes = {d: int(np.load(d / "lesion.npy").sum()) for d in case_dirs}
    smallest = min((d for d in case_dirs if sizes[d] > 0), key=sizes.get)
    png = tmp_path / "qc.png"
    montage_case(smallest, png)
    pixels = (mpimg.imread(png)[..., :3] * 255).round().astype(int)
    red = tuple(int(MASK_COLOURS["lesion"][i:i + 2], 16) for i in (1, 3, 5))
    assert (np.abs(pixels - red).sum(axis=-1) < 30).sum() >= 3, f"no lesion outline in {smallest.name}'s montage"


def study_manifests(tmp_path: Path, cohorts: dict[str, list[tuple]]) -> list[Path]:
    """Checked-manifest stand-ins: {cohort: [(case_id, patient_id, split, file)]}."""
    paths = []
    for cohort, cases in cohorts.items():
        frame = pd.DataFrame(cases, columns=["case_id", "patient_id", "split", "t2w"])
        frame["t2w"] = [str(tmp_path / f) for f in frame["t2w"]]
        paths.append(tmp_path / f"{cohort}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


def anatomy_like(seed: int) -> np.ndarray:
    """A smooth random volume (z, y, x) with structure at the fingerprint's scale, as anatomy has."""
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).normal(size=(12, 48, 48))
    return (400 + 4000 * gaussian_filter(noise, (1, 4, 4))).clip(0, 4000)


def test_the_same_study_is_found_whatever_its_format_within_and_across_cohorts(tmp_path, caplog):
    """Issue 33, item 5: one study stored as uint16 and as float32 with its rows flipped (header saying so), under
    two patient ids in one cohort's train and test splits, is leakage; a third copy, rows flipped without the
    header, in another cohort's train split belongs to the same study."""
    from taskalign.cli import shared_studies as cli

    study, other = anatomy_like(0), anatomy_like(1)
    as_uint16 = sitk.GetImageFromArray(study.astype(np.uint16))
    as_uint16.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(as_uint16, str(tmp_path / "a.nii.gz"))
    flipped = sitk.GetImageFromArray((study[:, ::-1, :] / 1000).astype(np.float32))  # rows flipped, other scale
    flipped.SetSpacing((0.5, 0.5, 3.0))
    flipped.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # ... and the header says so
    flipped.SetOrigin((0.0, 23.5, 0.0))
    sitk.WriteImage(flipped, str(tmp_path / "b.mha"))
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(study[:, ::-1, :]).astype(np.int16))  # header unchanged
    sitk.WriteImage(mirrored, str(tmp_path / "c.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(other.astype(np.int16)), str(tmp_path / "d.mha"))
    paths = study_manifests(tmp_path, {"picai": [("p1", "pp1", "train", "a.nii.gz"), ("p2", "pp2", "test", "b.mha"),
                                                 ("p3", "pp3", "test", "d.mha")],
                                       "corpus": [("x1", "px1", "train", "c.nrrd")]})
    out = tmp_path / "results" / "manifests" / "study_digests.csv"
    args = ["--manifests", *map(str, paths), "--out", str(out)]
    with caplog.at_level(logging.WARNING):
        assert cli.main(args) == 1
    assert listing(tmp_path / "results") == set()  # nothing under results/
    (line,) = [r.getMessage() for r in caplog.records if "[check shared_studies]" in r.getMessage()]
    assert "occurs 3 times in splits test and train" in line
    for place in (f"cohort picai case p1 (patient pp1, split train, file {tmp_path / 'a.nii.gz'})",
                  f"cohort picai case p2 (patient pp2, split test, file {tmp_path / 'b.mha'})",
                  f"cohort corpus case x1 (patient px1, split train, file {tmp_path / 'c.nrrd'})"):
        assert place in line
    assert "case p3" not in line


def test_a_study_twice_in_one_split_is_a_warning(tmp_path, caplog):
    from taskalign.cli import shared_studies as cli

    study = anatomy_like(2)
    sitk.WriteImage(sitk.GetImageFromArray(study.astype(np.uint16)), str(tmp_path / "a.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(study.astype(np.float32)), str(tmp_path / "b.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(anatomy_like(3).astype(np.float32)), str(tmp_path / "c.nii.gz"))
    paths = study_manifests(tmp_path, {"risk": [("r1", "q1", "train", "a.mha"), ("r2", "q2", "train", "b.nii.gz"),
                                                ("r3", "q3", "test", "c.nii.gz")]})
    out = tmp_path / "digests.csv"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["--manifests", *map(str, paths), "--out", str(out)]) == 0
    (record,) = [r for r in caplog.records if "[check shared_studies]" in r.getMessage()]
    assert record.levelno == logging.WARNING and "occurs 2 times in split train" in record.getMessage()
    assert "case r1" in record.getMessage() and "case r2" in record.getMessage()
    digests = pd.read_csv(out).set_index("case_id")
    assert digests.loc["r1", "study"] == digests.loc["r2", "study"] != digests.loc["r3", "study"]


# ------------------------------------------------------------------------------------------------ issue 33, item 4


def prostate158_case(root: Path, adc_shift_mm: float = 0.0, mask_direction=None, mask_shift_mm: float = 0.0) -> Path:
    """One Prostate158 case: T2 40 x 40 x 8 at 1 x 1 x 3 mm, gland x 5-34 mm; ADC and its tumour mask at 2 x 2 x 3 mm
    (lesion: 8 ADC voxels in x, 14.5-28.5 mm). `adc_shift_mm` moves the ADC and its mask together in x (a wrong ADC
    header: 2 of the 8 lesion voxels land outside the gland, 25%); `mask_direction` / `mask_shift_mm` change the
    mask's header alone."""
    folder = root / "train" / "100"
    rng = np.random.default_rng(0)
    t2 = sitk.GetImageFromArray(rng.integers(100, 900, (8, 40, 40)).astype(np.int16))
    t2.SetSpacing((1.0, 1.0, 3.0))
    anatomy = np.zeros((8, 40, 40), np.uint8)
    anatomy[2:6, 5:35, 5:35] = 2  # PZ
    zones = sitk.GetImageFromArray(anatomy)
    zones.CopyInformation(t2)
    adc = sitk.GetImageFromArray(rng.normal(1200, 100, (8, 20, 20)).astype(np.float32))
    adc.SetSpacing((2.0, 2.0, 3.0))
    adc.SetOrigin((0.5 + adc_shift_mm, 0.5, 0.0))
    lesion = np.zeros((8, 20, 20), np.uint8)
    lesion[3, 10, 7:15] = 1
    tumour = sitk.GetImageFromArray(lesion)
    tumour.CopyInformation(adc)
    tumour.SetOrigin((0.5 + adc_shift_mm + mask_shift_mm, 0.5, 0.0))
    if mask_direction is not None:
        tumour.SetDirection(mask_direction)
    folder.mkdir(parents=True)
    for image, name in ((t2, "t2.nii.gz"), (zones, "t2_anatomy_reader1.nii.gz"), (adc, "adc.nii.gz"),
                        (tumour, "adc_tumor_reader1.nii.gz")):
        sitk.WriteImage(image, str(folder / name))
    return folder / "adc_tumor_reader1.nii.gz"


def refused(kind: str, source: Path, results: Path, **options) -> str:
    """The import's message; asserts that nothing is left under results/."""
    with pytest.raises(CohortImportError) as caught:
        import_cohort(kind, source, results / "cohorts" / kind / "manifest.csv", kind, **options)
    assert listing(results) == set(), "a refused import left files under results/"
    return str(caught.value)


def test_prostate158_clean_adc_tumour_is_resampled_onto_t2(tmp_path):
    prostate158_case(tmp_path / "p158")
    frame = import_cohort("prostate158", tmp_path / "p158", tmp_path / "results" / "manifest.csv", "p158")
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "results" / frame.loc[0, "lesion"])))
    assert lesion.sum() == 8 * 2 * 2  # 8 ADC voxels of 2 x 2 T2 voxels


def test_prostate158_adc_tumour_with_flipped_direction_cosines_is_a_named_error(tmp_path):
    tumour = prostate158_case(tmp_path / "p158", mask_direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    message = refused("prostate158", tmp_path / "p158", tmp_path / "results")
    assert (f"case 100: {tumour}: tumour mask geometry differs from adc.nii.gz, the image it was drawn on "
            "(direction cosines differ by up to 2.0)") in message
    # resample_masks accepts the header; the lesion, measured on its own grid, is then outside the gland
    message = refused("prostate158", tmp_path / "p158", tmp_path / "results", resample_masks=True)
    assert f"case 100, column lesion, file {tumour}: 100% of the lesion lies outside the prostate" in message
    assert "[check lesion_outside_gland]" in message


def test_prostate158_adc_tumour_shifted_10mm_is_a_named_error(tmp_path):
    tumour = prostate158_case(tmp_path / "p158", mask_shift_mm=10.0)
    message = refused("prostate158", tmp_path / "p158", tmp_path / "results")
    assert f"case 100: {tumour}: tumour mask geometry differs from adc.nii.gz" in message
    assert "origin (10.5, 0.5, 0.0) vs (0.5, 0.5, 0.0) mm" in message


def test_a_lesion_a_quarter_outside_the_gland_is_an_error_and_a_twentieth_a_warning(tmp_path, caplog):
    """ADC and tumour mask consistent, the ADC header 10 mm off: 25% of the lesion outside the gland (under the old
    50% limit) is now an error; with the limit raised it is a warning."""
    tumour = prostate158_case(tmp_path / "p158", adc_shift_mm=10.0)
    message = refused("prostate158", tmp_path / "p158", tmp_path / "results")
    assert (f"case 100, column lesion, file {tumour}: 25% of the lesion lies outside the prostate (measured on the "
            "lesion's own grid; error from 20%)") in message
    with caplog.at_level(logging.WARNING):
        import_cohort("prostate158", tmp_path / "p158", tmp_path / "ok" / "manifest.csv", "p158",
                      sanity=sanity_config(limits={"lesion_outside_gland": 0.3}))
    assert any("25% of the lesion lies outside the prostate (measured on the lesion's own grid; warning from 5%)"
               in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------ issue 33, item 6


def refused_check(manifest: Path, results: Path, **kw) -> list[str]:
    """The integrity check's problems; asserts that the checked manifest was not written (nothing under results/)."""
    from taskalign.data.integrity import ManifestError

    with pytest.raises(ManifestError) as caught:
        write_checked(manifest, results / "manifests" / "x.csv",
                               split_fractions={"train": 1, "val": 0, "test": 0}, split_seed=0, **kw)
    assert listing(results) == set()
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("value", [0, 250])
def test_a_constant_t2w_is_a_named_error(tmp_path, value):
    row = case_files(tmp_path)
    image_file(tmp_path / "t2w.mha", np.full((6, 8, 8), value, np.int16))
    assert refused_check(manifest_of(tmp_path, [row]), tmp_path / "results") == [
        f"case c1, column t2w, file {tmp_path / 't2w.mha'}: image is constant: every voxel is {value}; the file holds "
        "no image"]


def test_a_near_constant_t2w_is_a_named_error(tmp_path):
    row = case_files(tmp_path)
    t2w = np.zeros((6, 8, 8), np.int16)
    t2w[0, 0, :3] = 7  # 3 of 384 voxels: below the 1st percentile
    image_file(tmp_path / "t2w.mha", t2w)
    (problem,) = refused_check(manifest_of(tmp_path, [row]), tmp_path / "results")
    assert f"case c1, column t2w, file {tmp_path / 't2w.mha'}: image is near-constant" in problem


def adc_case(tmp_path: Path, adc: np.ndarray) -> dict:
    row = case_files(tmp_path)
    row["adc"] = image_file(tmp_path / "adc.nii.gz", adc.astype(np.float32))
    return row


def test_adc_with_negative_values_is_an_error_and_a_few_a_documented_warning(tmp_path):
    adc = np.random.default_rng(0).normal(1200, 100, (6, 8, 8))
    adc[:, :2] *= -1  # a quarter negative: a signed export
    problems = refused_check(manifest_of(tmp_path, [adc_case(tmp_path, adc)]), tmp_path / "results")
    assert len(problems) == 1
    assert problems[0].startswith(f"case c1, column adc, file {tmp_path / 'adc.nii.gz'}: 96 negative ADC voxels "
                                  "(25.0% of the nonzero ones, minimum -")
    assert "a diffusion coefficient cannot be negative" in problems[0]
    adc[:, :2] *= -1
    adc[0, 0, 0] = -5.0  # one voxel: fit noise
    inspection = inspect_manifest(manifest_of(tmp_path, [adc_case(tmp_path, adc)]))
    assert inspection.problems == [] and [str(w) for w in inspection.warnings] == [
        f"case c1, column adc, file {tmp_path / 'adc.nii.gz'}: 1 negative ADC voxel (0.3% of the nonzero ones, "
        "minimum -5): accepted as fit noise"]


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_adc_in_the_wrong_units_is_a_named_error(tmp_path, scale):
    adc = np.random.default_rng(0).normal(1200, 100, (6, 8, 8)) * scale
    (problem,) = refused_check(manifest_of(tmp_path, [adc_case(tmp_path, adc)]), tmp_path / "results")
    assert problem.startswith(f"case c1, column adc, file {tmp_path / 'adc.nii.gz'}: median ADC of the gland ")
    assert "is outside 100-5000 (1e-6 mm^2/s, the contract's unit): wrong units" in problem


def test_headers_in_metres_are_a_named_error(tmp_path):
    row = case_files(tmp_path)
    for name in ("t2w.mha", "gland.nii.gz", "lesion.nii.gz"):
        image = sitk.ReadImage(str(tmp_path / name))
        image.SetSpacing((0.001, 0.001, 0.002))
        sitk.WriteImage(image, str(tmp_path / name))
    problems = refused_check(manifest_of(tmp_path, [row]), tmp_path / "results")
    for column, name in (("t2w", "t2w.mha"), ("prostate", "gland.nii.gz"), ("lesion", "lesion.nii.gz")):
        assert (f"case c1, column {column}, file {tmp_path / name}: voxel spacing 0.001x0.001x0.002 mm outside "
                "0.1-10.0 mm: the header is in other units (metres?)") in problems


def msd_source(root: Path, cases=("prostate_00", "prostate_01"), adc=None) -> Path:
    rng = np.random.default_rng(0)
    training = []
    for case in cases:
        t2 = sitk.GetImageFromArray(rng.integers(100, 900, (4, 8, 8)).astype(np.float32))
        values = rng.normal(1200, 100, (4, 8, 8)).astype(np.float32) if adc is None else adc
        image = sitk.JoinSeries([t2, sitk.GetImageFromArray(values)])
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / "imagesTr" / f"{case}.nii.gz"))
        label = np.zeros((4, 8, 8), np.uint8)
        label[1:3, 2:6, 2:6] = 1
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labelsTr" / f"{case}.nii.gz"))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    spec = {"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_nan_in_the_msd_adc_is_found_before_the_conversion_hides_it(tmp_path):
    adc = np.full((4, 8, 8), 1200, np.float32)
    adc[2, 3, 3] = np.nan
    source = msd_source(tmp_path / "msd", cases=("prostate_00",), adc=adc)
    message = refused("msd", source, tmp_path / "results")
    assert f"case prostate_00: {source / 'imagesTr' / 'prostate_00.nii.gz'}: 4-D image contains 1 NaN voxel" in message


# ------------------------------------------------------------------------------------------------ issue 33, item 7


def test_case_id_dot_dot_is_refused_on_every_route(tmp_path):
    row = case_files(tmp_path)
    problems = refused_check(manifest_of(tmp_path, [{**row, "case_id": ".."}]), tmp_path / "results")
    assert problems == ["case .., column case_id: case_id may only contain A-Z a-z 0-9 _ . - and may not be '.' or "
                        "'..' (it names folders)"]
    source = tmp_path / "folder"
    source.mkdir()
    image_file(source / ".._t2w.nii.gz", np.random.default_rng(0).integers(1, 500, (6, 8, 8)).astype(np.int16))
    message = refused("nifti", source, tmp_path / "results", mapping={"t2w": r"(?P<case>[^_]+)_t2w\.nii\.gz"})
    assert (f"case ..: {source / '.._t2w.nii.gz'}: the regex's case group gives '..': case_id may only contain "
            "A-Z a-z 0-9 _ . - and may not be '.' or '..'") in message


def test_msd_reports_every_missing_file_of_every_case(tmp_path):
    source = msd_source(tmp_path / "msd", cases=("prostate_00", "prostate_01", "prostate_02"))
    (source / "imagesTr" / "prostate_00.nii.gz").unlink()
    (source / "labelsTr" / "prostate_00.nii.gz").unlink()
    (source / "labelsTr" / "prostate_02.nii.gz").unlink()
    message = refused("msd", source, tmp_path / "results")
    assert "3 problem(s)" in message
    assert f"case prostate_00: {source / 'imagesTr' / 'prostate_00.nii.gz'}: listed in dataset.json but missing" in message
    assert f"case prostate_00: {source / 'labelsTr' / 'prostate_00.nii.gz'}: label listed in dataset.json but missing" in message
    assert f"case prostate_02: {source / 'labelsTr' / 'prostate_02.nii.gz'}: label listed in dataset.json but missing" in message


@pytest.mark.parametrize("text, expected", [
    ('{"modality": {"0": "T2"}, "labels": {"0": "background"}, "training": [', "not valid JSON"),
    ('{"modality": {"0": "T2"}, "labels": {"0": "background"}, "training": ["imagesTr/a.nii.gz"]}',
     '`training`[0] is "imagesTr/a.nii.gz", expected {"image": ..., "label": ...}'),
    ('["training"]', "expected a JSON object with modality, labels and training, got list"),
])
def test_a_malformed_msd_dataset_json_is_a_named_problem(tmp_path, text, expected):
    source = tmp_path / "msd"
    source.mkdir()
    (source / "dataset.json").write_text(text)
    message = refused("msd", source, tmp_path / "results")
    assert str(source / "dataset.json") in message and expected in message


def test_a_4d_t2w_in_prostate158_is_a_named_problem(tmp_path):
    prostate158_case(tmp_path / "p158")
    t2 = tmp_path / "p158" / "train" / "100" / "t2.nii.gz"
    volume = sitk.ReadImage(str(t2))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(t2))
    message = refused("prostate158", tmp_path / "p158", tmp_path / "results")
    assert f"case 100: {t2}: T2 is 4-D with 1 value(s) per voxel, expected a 3-D image with one" in message


def test_every_config_problem_is_listed_in_one_round(tmp_path):
    import copy

    from conftest import REPO, TEST_CONFIG

    from taskalign.plan import PlanError
    from taskalign.plan.config_check import checked_plan

    config = copy.deepcopy(TEST_CONFIG)
    config["pretrain"]["lr"] = float("nan")
    config["pretrain"]["epochs"] = 10**9
    config["finetune"]["lr"] = 1e9
    config["data"]["cohorts"]["anatomy"]["splits"] = [4, 0, 2]
    config["tasks"]["volume_reg"]["cohort"] = "nowhere"
    with pytest.raises(PlanError) as caught:
        checked_plan(config, REPO / "workflow/schemas/config.schema.yaml")
    assert caught.value.problems == [
        "finetune.lr: 1000000000.0 is greater than the maximum of 1",
        "pretrain.epochs: 1000000000 is greater than the maximum of 10000",
        "pretrain.lr: nan is not a finite number",
        "tasks.volume_reg.cohort: unknown cohort 'nowhere'",
        "tasks.distortion, tasks.zone_seg: cohort 'anatomy' has no val cases (to pick the best epoch)",
    ]


def test_a_manifest_cohort_without_val_cases_fails_the_plan(tmp_path):
    import copy

    from conftest import plan_of, TEST_CONFIG

    from taskalign.plan import PlanError

    rows = [{**case_files(tmp_path), "case_id": f"c{n}", "patient_id": f"p{n}", "split": split}
            for n, split in enumerate(["train", "train", "test"])]
    config = copy.deepcopy(TEST_CONFIG)
    config["data"]["cohorts"]["anatomy"] = {"source": "manifest", "path": str(manifest_of(tmp_path, rows))}
    with pytest.raises(PlanError) as caught:
        plan_of(config)
    assert caught.value.problems == ["tasks.distortion, tasks.zone_seg: cohort 'anatomy' has no val cases "
                                     "(to pick the best epoch)"]


def test_the_manifest_check_refuses_an_imported_task_cohort_without_val_cases(tmp_path, capsys):
    """An importer's cohort has no manifest at plan time: rule check_manifest, which training waits for, refuses."""
    from taskalign.cli.check_manifest import main

    rows = [{**case_files(tmp_path), "case_id": f"c{n}", "patient_id": f"p{n}"} for n in range(3)]
    params = {"split_fractions": {"train": 0.7, "val": 0.1, "test": 0.2}, "split_seed": 0, "stratify_by": None,
              "require": {}, "split_needs": {"val": "tasks.zone_seg: cohort 'anatomy' has no val cases (to pick the "
                                                        "best epoch)"}}
    out = tmp_path / "results" / "manifests" / "anatomy.csv"
    args = ["--manifest", str(manifest_of(tmp_path, rows)), "--out", str(out), "--params", json.dumps(params)]
    assert main(args) == 1
    assert listing(tmp_path / "results") == set()
    assert ("column split: tasks.zone_seg: cohort 'anatomy' has no val cases (to pick the best epoch); the checked "
            "manifest has train 2, val 0, test 1") in capsys.readouterr().err
    assert main([*args[:-1], json.dumps({**params, "split_needs": {}})]) == 0 and out.exists()


def test_a_constant_t2w_is_refused_on_the_dicom_route(shared_data, tmp_path):
    """ProstateX-0001's axial T2 series with every pixel 0, its tags kept (issue 33: the DICOM route let it pass)."""
    series = shared_data / "prostatex-dicom/ProstateX-0001/07-08-2011/10.000000-t2tsetra-17541"
    blank = tmp_path / "dicom" / "ProstateX-0001" / "t2"
    blank.mkdir(parents=True)
    for path in sorted(series.glob("*.dcm")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        image = reader.Execute()
        zeros = sitk.Image(image.GetSize(), image.GetPixelID())
        zeros.CopyInformation(image)
        for key in reader.GetMetaDataKeys():
            if int(key[:4], 16) % 2 == 0:  # public tags (private ones hold binary values GDCM cannot write back)
                zeros.SetMetaData(key, reader.GetMetaData(key))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(blank / path.name))
        writer.Execute(zeros)
    message = refused("dicom", tmp_path / "dicom", tmp_path / "results")
    assert f"case ProstateX-0001_20110708, column t2w, file {blank}: " in message  # the series, not a staged file
    assert "image is constant: every voxel is 0; the file holds no image" in message


def test_picai_resampled_lesion_is_measured_on_its_own_grid(picai, tmp_path):
    """resample_masks on a lesion whose header is flipped: the resampled lesion would say little, the native one is
    outside the gland."""
    lesion = picai / f"picai_labels/csPCa_lesion_delineations/human_expert/resampled/{CASE}.nii.gz"
    image = sitk.ReadImage(str(lesion))
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    gland = sitk.GetArrayFromImage(sitk.ReadImage(str(picai / GLAND)))
    array[tuple(np.argwhere(gland > 0)[len(np.argwhere(gland > 0)) // 2])] = 3  # ISUP 3, in the gland's middle
    flipped = sitk.GetImageFromArray(array)
    flipped.CopyInformation(image)
    flipped.SetDirection(tuple(-v if i in (0, 4) else v for i, v in enumerate(image.GetDirection())))
    sitk.WriteImage(flipped, str(lesion))
    message = refused("picai", picai, tmp_path / "results", resample_masks=True, lesion="human")
    assert f"case {CASE}, column lesion, file {lesion}: 100% of the lesion lies outside the prostate" in message
