"""Importers: real PI-CAI / ProstateX samples (../shared/data) and tiny synthetic NIfTI, Prostate158, MSD layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from taskalign.cli.import_cohort import main as cli_main
from taskalign.cli.import_cohort import parse_options
from taskalign.data.importers import IMPORTERS, CohortImportError, import_cohort
from taskalign.data.labels import MANIFEST_COLUMNS, ZONE_LABELS

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PICAI = SHARED_DATA / "picai-sample"
PROSTATEX = SHARED_DATA / "prostatex-dicom" / "ProstateX-0001"
PICAI_CASE = "10795_1000811"
TZ, PZ = ZONE_LABELS["tz"], ZONE_LABELS["pz"]


@pytest.fixture(scope="module")
def real_data() -> Path:
    if not (PICAI.is_dir() and PROSTATEX.is_dir()):
        pytest.skip(f"real MRI samples not found at {SHARED_DATA} (the repository's sibling shared/data)")
    return SHARED_DATA


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def resolve(manifest: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else manifest.parent / path


def read_manifest(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == MANIFEST_COLUMNS
    return frame


# ---------------------------------------------------------------------------------------------------------------
# Real data


def test_registry_names_every_importer():
    assert set(IMPORTERS) == {"picai", "dicom", "nifti", "prostate158", "msd"}


@pytest.mark.realdata
def test_picai_sample(real_data, tmp_path):
    out = tmp_path / "manifest.csv"
    import_cohort("picai", PICAI, out, "picai")
    frame = read_manifest(out)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.case_id, row.patient_id, row.cohort, row.split) == (PICAI_CASE, "10795", "picai", "")
    images = PICAI / "images" / "10795"
    for column, suffix in (("t2w", "t2w"), ("adc", "adc"), ("dwi", "hbv")):
        assert resolve(out, row[column]) == images / f"{PICAI_CASE}_{suffix}.mha"
    assert row.pirads == "4"  # lesion_PIRADS "4,4"
    assert float(row.volume_ml) == 28
    # The sample's MHAs carry no DICOM tags (they went through NIfTI): metadata stays empty.
    assert [row[c] for c in ("tr", "te", "flip_angle", "field_strength", "vendor")] == [""] * 5

    source_zones = array(PICAI / "picai_labels/anatomical_delineations/zonal_pz_tz/AI/Yuan23" / f"{PICAI_CASE}.nii.gz")
    zones = array(resolve(out, row.zones))
    assert set(np.unique(zones)) == {0, TZ, PZ}
    assert (zones == TZ).sum() == (source_zones == 2).sum() > 0  # Yuan23: 1 = PZ, 2 = TZ
    assert (zones == PZ).sum() == (source_zones == 1).sum() > 0
    prostate = array(resolve(out, row.prostate))
    assert set(np.unique(prostate)) == {0, 1}
    lesion = resolve(out, row.lesion)
    assert lesion.is_file() and not array(lesion).any()  # ISUP 1 case: no csPCa lesion
    t2w = sitk.ReadImage(str(images / f"{PICAI_CASE}_t2w.mha"))
    for column in ("prostate", "zones", "lesion"):
        mask = sitk.ReadImage(str(resolve(out, row[column])))
        assert mask.GetSize() == t2w.GetSize()
        assert np.allclose(mask.GetOrigin(), t2w.GetOrigin(), atol=1e-4)


@pytest.mark.realdata
def test_dicom_refuses_duplicate_t2w(real_data, tmp_path):
    with pytest.raises(CohortImportError) as raised:
        import_cohort("dicom", PROSTATEX, tmp_path / "manifest.csv", "prostatex")
    message = str(raised.value)
    assert "t2w" in message and "ProstateX-0001" in message
    assert "series 6 't2_tse_tra'" in message and "series 10 't2_tse_tra'" in message
    assert not (tmp_path / "manifest.csv").exists()


@pytest.fixture(scope="module")
def dicom_import(real_data, tmp_path_factory) -> tuple[Path, pd.Series]:
    out = tmp_path_factory.mktemp("dicom") / "manifest.csv"
    import_cohort("dicom", PROSTATEX, out, "prostatex", on_duplicate="latest")
    frame = read_manifest(out)
    assert len(frame) == 1
    return out, frame.iloc[0]


@pytest.mark.realdata
@pytest.mark.parametrize("column, picai_name", [("t2w", "t2w"), ("adc", "adc"), ("dwi", "hbv")])
def test_dicom_reproduces_picai_mha(dicom_import, column, picai_name):
    out, row = dicom_import
    ours = sitk.ReadImage(str(resolve(out, row[column])))
    reference = sitk.ReadImage(str(PICAI / "images" / "10795" / f"{PICAI_CASE}_{picai_name}.mha"))
    assert ours.GetPixelID() == reference.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
    assert ours.GetSize() == reference.GetSize()
    for ours_value, reference_value in (
        (ours.GetSpacing(), reference.GetSpacing()),
        (ours.GetOrigin(), reference.GetOrigin()),
        (ours.GetDirection(), reference.GetDirection()),
    ):
        assert np.allclose(ours_value, reference_value, atol=1e-4)


@pytest.mark.realdata
def test_dicom_metadata_and_dwi_split(dicom_import):
    out, row = dicom_import
    assert (row.patient_id, row.vendor) == ("ProstateX-0001", "SIEMENS")
    assert (float(row.tr), float(row.te), float(row.flip_angle), float(row.field_strength)) == (5660, 104, 160, 3)
    case_dir = resolve(out, row.t2w).parent
    split = sorted(case_dir.glob("dwi_b*.mha"))
    assert [p.name for p in split] == ["dwi_b400.mha", "dwi_b50.mha", "dwi_b800.mha"]
    means = {}
    for b in (50, 400, 800):
        image = sitk.ReadImage(str(case_dir / f"dwi_b{b}.mha"))
        assert image.GetSize() == (84, 128, 19)
        assert float(image.GetMetaData("0018|9087")) == b
        means[b] = sitk.GetArrayFromImage(image).mean()
    assert means[50] > means[400] > means[800]  # diffusion attenuates with b
    hbv = sitk.ReadImage(str(resolve(out, row.dwi)))
    assert np.allclose(hbv.GetOrigin(), sitk.ReadImage(str(case_dir / "dwi_b800.mha")).GetOrigin(), atol=1e-4)


@pytest.mark.realdata
def test_dicom_highest_acquired_b_is_dwi_without_computed_series(real_data, tmp_path):
    out = tmp_path / "manifest.csv"
    # Switch the computed-b role off; the acquired series is then the only DWI (the CALC_BVAL one would
    # otherwise match the default dwi regex too).
    patterns = {"hbv": "", "dwi": r"_MIX$"}
    import_cohort("dicom", PROSTATEX, out, "px", on_duplicate="latest", patterns=patterns, case_id="px1")
    row = read_manifest(out).iloc[0]
    assert row.case_id == "px1" and row.dwi == "converted/px1/dwi_b800.mha"
    import_cohort("dicom", PROSTATEX, out, "px", on_duplicate="latest", patterns=patterns, min_dwi_b=1000)
    assert read_manifest(out).iloc[0].dwi == ""  # b800 < 1000: not a high-b image


# ---------------------------------------------------------------------------------------------------------------
# Synthetic layouts


def volume(values: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def labels_block(shape=(4, 6, 6)) -> np.ndarray:
    """0 background, 1 in one corner block, 2 in another (z, y, x)."""
    out = np.zeros(shape, dtype=np.uint8)
    out[1:3, 1:3, 1:3] = 1
    out[1:3, 3:5, 3:5] = 2
    out[2, 1, 4] = 2
    return out


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def nifti_folder(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for case in ("a1", "b2"):
        for kind in ("t2w", "adc"):  # ADC in 1e-6 mm^2/s, as the contract says
            write(volume(rng.integers(500, 1500, (4, 6, 6)).astype(np.int16)), root / f"{case}_{kind}.nii.gz")
        write(volume(labels_block()), root / "masks" / f"{case}_zones.nii.gz")
        lesion = np.zeros((4, 6, 6), dtype=np.uint8)
        lesion[2, 2, 2] = 3  # ISUP 3
        lesion[1, 1, 1] = 1  # ISUP 1, not significant
        write(volume(lesion), root / "masks" / f"{case}_lesion.nii.gz")
    return {
        "t2w": r"(?P<case>[^_]+)_t2w\.nii\.gz",
        "adc": r"(?P<case>[^_]+)_adc\.nii\.gz",
        "zones": r"masks/(?P<case>[^_]+)_zones\.nii\.gz",
        "lesion": r"masks/(?P<case>[^_]+)_lesion\.nii\.gz",
    }


def test_nifti_folder_rows_labels_and_remapping(tmp_path):
    source = tmp_path / "src"
    mapping = nifti_folder(source)
    mapping_file = tmp_path / "mapping.yaml"
    mapping_file.write_text(yaml.safe_dump(mapping))
    labels = tmp_path / "labels.csv"
    table = {"case_id": ["a1", "b2"], "pirads": ["4", "2"], "split": ["train", "test"]}
    pd.DataFrame(table).to_csv(labels, index=False)
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("nifti", source, out, "mine", mapping=str(mapping_file), labels=str(labels),
                  zones_map={1: PZ, 2: TZ}, lesion_threshold=2)
    frame = read_manifest(out).set_index("case_id")
    assert list(frame.index) == ["a1", "b2"]
    assert list(frame.pirads) == ["4", "2"] and list(frame.split) == ["train", "test"]
    assert list(frame.patient_id) == ["a1", "b2"] and set(frame.cohort) == {"mine"}
    assert resolve(out, frame.loc["a1", "t2w"]) == source / "a1_t2w.nii.gz"  # used where it lies
    assert frame.loc["a1", "dwi"] == "" and frame.loc["a1", "prostate"] == ""
    source_zones = labels_block()
    zones = array(resolve(out, frame.loc["a1", "zones"]))
    assert frame.loc["a1", "zones"].startswith("converted/a1/")
    assert (zones == PZ).sum() == (source_zones == 1).sum() and (zones == TZ).sum() == (source_zones == 2).sum()
    lesion = array(resolve(out, frame.loc["b2", "lesion"]))
    assert lesion.sum() == 1 and lesion[2, 2, 2] == 1


def test_nifti_folder_patient_group(tmp_path):
    source = tmp_path / "src"
    for name in ("P1_s1_t2w.nii.gz", "P1_s2_t2w.nii.gz"):
        write(volume(np.arange(18, dtype=np.int16).reshape(2, 3, 3)), source / name)
    out = tmp_path / "manifest.csv"
    import_cohort("nifti", source, out, "c", mapping={"t2w": r"(?P<case>(?P<patient>[^_]+)_s\d)_t2w\.nii\.gz"})
    frame = read_manifest(out)
    assert list(frame.case_id) == ["P1_s1", "P1_s2"] and list(frame.patient_id) == ["P1", "P1"]


def test_nifti_folder_reports_unmatched_and_duplicate_files(tmp_path):
    source = tmp_path / "src"
    mapping = nifti_folder(source)
    write(volume(np.zeros((2, 3, 3), np.int16)), source / "a1_t2w_old.nii.gz")  # matches nothing
    write(volume(np.zeros((2, 3, 3), np.int16)), source / "sub" / "a1_adc.nii.gz")  # second adc for a1
    write(volume(np.zeros((2, 3, 3), np.int16)), source / "c3_adc.nii.gz")  # case without t2w
    (source / "README.txt").write_text("not an image, ignored")
    with pytest.raises(CohortImportError) as raised:
        import_cohort("nifti", source, tmp_path / "manifest.csv", "c", mapping=mapping)
    message = str(raised.value)
    assert "a1_t2w_old.nii.gz: image file matches no regex" in message
    assert "case a1:" in message and "second adc file" in message
    assert "case c3:" in message and "no t2w file" in message
    assert "README" not in message
    assert not (tmp_path / "manifest.csv").exists()
    # Unmatched files can be skipped on request; the duplicate stays an error.
    with pytest.raises(CohortImportError, match="second adc file"):
        import_cohort("nifti", source, tmp_path / "manifest.csv", "c", mapping=mapping, ignore_unmatched=True)


def test_nifti_folder_checks_mapping_and_options(tmp_path):
    source = tmp_path / "src"
    nifti_folder(source)
    with pytest.raises(CohortImportError, match="no named group"):
        import_cohort("nifti", source, tmp_path / "m.csv", "c", mapping={"t2w": r"(.*)_t2w\.nii\.gz"})
    with pytest.raises(CohortImportError, match="unknown column"):
        import_cohort("nifti", source, tmp_path / "m.csv", "c", mapping={"t2w": r"(?P<case>.*)", "flair": "x"})
    with pytest.raises(CohortImportError, match="unknown option"):
        import_cohort("nifti", source, tmp_path / "m.csv", "c", mapping={"t2w": "x"}, mappings={})


def picai_layout(root: Path) -> None:
    """Two cases: 1 has an ISUP-graded expert lesion mask, 2 only an AI lesion mask."""
    for patient, study in (("1", "11"), ("2", "22")):
        case = f"{patient}_{study}"
        for kind in ("t2w", "adc", "hbv"):  # ADC in 1e-6 mm^2/s
            values = np.random.default_rng(int(patient)).integers(800, 1600, (4, 6, 6)).astype(np.uint16)
            write(volume(values), root / "images" / patient / f"{case}_{kind}.mha")
        labels = root / "picai_labels"
        write(volume(labels_block()), labels / "anatomical_delineations/zonal_pz_tz/AI/Yuan23" / f"{case}.nii.gz")
        write(volume((labels_block() > 0).astype(np.uint8)),
              labels / "anatomical_delineations/whole_gland/AI/Bosma22b" / f"{case}.nii.gz")
    graded = np.zeros((4, 6, 6), np.uint8)
    graded[1, 1, 1], graded[2, 2, 2] = 3, 1  # an ISUP 3 lesion; 1 is not a csPCa grade
    write(volume(graded), labels / "csPCa_lesion_delineations/human_expert/resampled/1_11.nii.gz")
    ai = np.zeros((4, 6, 6), np.uint8)
    ai[1, 2, 2] = 1  # inside the gland: a lesion outside it is refused (lesion_outside_gland)
    write(volume(ai), labels / "csPCa_lesion_delineations/AI/Bosma22a/2_22.nii.gz")
    sheet = labels / "clinical_information" / "marksheet.csv"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_text('patient_id,study_id,prostate_volume,lesion_PIRADS\n1,11,40.5,"N/A,3"\n2,22,,\n')


def test_picai_synthetic_lesion_sources_and_marksheet(tmp_path):
    source = tmp_path / "picai"
    picai_layout(source)
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("picai", source, out, "picai")
    frame = read_manifest(out).set_index("case_id")
    assert list(frame.index) == ["1_11", "2_22"] and list(frame.patient_id) == ["1", "2"]
    assert list(frame.pirads) == ["3", ""]  # "N/A,3" -> 3; empty stays unknown by default
    assert list(frame.volume_ml) == ["40.5", ""]
    human = array(resolve(out, frame.loc["1_11", "lesion"]))
    assert human.sum() == 1 and human[1, 1, 1] == 1
    ai = array(resolve(out, frame.loc["2_22", "lesion"]))
    assert ai.sum() == 1 and ai[1, 2, 2] == 1
    import_cohort("picai", source, out, "picai", lesion="human", pirads_if_no_lesion=2)
    frame = read_manifest(out).set_index("case_id")
    assert frame.loc["2_22", "lesion"] == "" and frame.loc["2_22", "pirads"] == "2"


def prostate158_layout(root: Path) -> None:
    # ADC voxels cover 2 x 2 T2 voxels: both grids start at the same corner (-0.25 mm in x and y).
    t2_spacing, adc_spacing, adc_origin = (0.5, 0.5, 3.0), (1.0, 1.0, 3.0), (0.25, 0.25, 0.0)
    for split, case, tumor in (("train", "020", True), ("train", "021", False), ("valid", "030", True)):
        folder = root / split / case
        write(volume(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8), t2_spacing), folder / "t2.nii.gz")
        write(volume(np.full((4, 4, 4), 1200, np.float32), adc_spacing, adc_origin), folder / "adc.nii.gz")
        write(volume(np.ones((4, 4, 4), np.float32), adc_spacing, adc_origin), folder / "dwi.nii.gz")
        anatomy = np.zeros((4, 8, 8), np.uint8)
        anatomy[1:3, 2:6, 2:6] = 2  # PZ
        anatomy[1:3, 3:5, 3:5] = 1  # TZ
        write(volume(anatomy, t2_spacing), folder / "t2_anatomy_reader1.nii.gz")
        if tumor:
            mask = np.zeros((4, 4, 4), np.uint8)
            mask[2, 1, 1] = 1  # one ADC voxel = 2 x 2 T2 voxels
            write(volume(mask, adc_spacing, adc_origin), folder / "adc_tumor_reader1.nii.gz")
    pd.DataFrame({"ID": ["020", "021"], "t2": ["train/020/t2.nii.gz", "train/021/t2.nii.gz"],
                  "adc_tumor_reader1": ["train/020/adc_tumor_reader1.nii.gz", "empty.nii.gz"]}
                 ).to_csv(root / "train.csv", index=False)


def test_prostate158_zones_splits_and_lesion_on_t2_grid(tmp_path):
    source = tmp_path / "prostate158"
    prostate158_layout(source)
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("prostate158", source, out, "p158")
    frame = read_manifest(out).set_index("case_id")
    assert list(frame.index) == ["020", "021", "030"]  # ids stay text, leading zeros kept
    assert list(frame.split) == ["train", "train", "val"]
    assert resolve(out, frame.loc["020", "dwi"]) == source / "train" / "020" / "dwi.nii.gz"
    zones = array(resolve(out, frame.loc["020", "zones"]))
    assert (zones == TZ).sum() == 2 * 2 * 2 and (zones == PZ).sum() == 2 * 16 - 8
    assert array(resolve(out, frame.loc["020", "prostate"])).sum() == 2 * 16
    lesion_image = sitk.ReadImage(str(resolve(out, frame.loc["020", "lesion"])))
    assert lesion_image.GetSize() == (8, 8, 4) and lesion_image.GetSpacing() == (0.5, 0.5, 3.0)
    lesion = sitk.GetArrayFromImage(lesion_image)
    assert lesion.sum() == 4 and lesion[2, 2:4, 2:4].all()
    # 021 is marked tumour-free ("empty.nii.gz"): an all-zero mask on the T2 grid.
    assert not array(resolve(out, frame.loc["021", "lesion"])).any()


def msd_layout(root: Path, labels=None) -> np.ndarray:
    rng = np.random.default_rng(1)
    label = labels_block()
    training = []
    for case in ("prostate_00", "prostate_04"):
        t2 = volume(rng.integers(0, 500, (4, 6, 6)).astype(np.float32), (0.6, 0.6, 4.0), (1.0, 2.0, 3.0))
        adc = volume(rng.integers(0, 3000, (4, 6, 6)).astype(np.float32), (0.6, 0.6, 4.0), (1.0, 2.0, 3.0))
        write(sitk.JoinSeries([t2, adc]), root / "imagesTr" / f"{case}.nii.gz")
        write(volume(label, (0.6, 0.6, 4.0), (1.0, 2.0, 3.0)), root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"macOS resource fork")
    spec = {
        "name": "PROSTATE",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": labels or {"0": "background", "1": "PZ", "2": "TZ"},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return label


def test_msd_splits_4d_and_maps_labels_by_name(tmp_path):
    source = tmp_path / "Task05_Prostate"
    label = msd_layout(source)
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("msd", source, out, "msd")
    frame = read_manifest(out).set_index("case_id")
    assert list(frame.index) == ["prostate_00", "prostate_04"]
    four_d = sitk.ReadImage(str(source / "imagesTr" / "prostate_04.nii.gz"))
    for index, column in ((0, "t2w"), (1, "adc")):
        image = sitk.ReadImage(str(resolve(out, frame.loc["prostate_04", column])))
        assert image.GetDimension() == 3 and image.GetSize() == (6, 6, 4)
        assert np.allclose(image.GetSpacing(), (0.6, 0.6, 4.0)) and np.allclose(image.GetOrigin(), (1, 2, 3))
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(four_d)[index])
    zones = array(resolve(out, frame.loc["prostate_04", "zones"]))
    assert (zones == PZ).sum() == (label == 1).sum() and (zones == TZ).sum() == (label == 2).sum()
    assert array(resolve(out, frame.loc["prostate_04", "prostate"])).sum() == (label > 0).sum()


def test_msd_labels_follow_dataset_json_and_unknown_names_fail(tmp_path):
    swapped = tmp_path / "swapped"
    label = msd_layout(swapped, labels={"0": "background", "1": "transition zone", "2": "peripheral zone"})
    out = tmp_path / "out" / "manifest.csv"
    import_cohort("msd", swapped, out, "msd")
    zones = array(resolve(out, read_manifest(out).zones[0]))
    assert (zones == TZ).sum() == (label == 1).sum()
    odd = tmp_path / "odd"
    msd_layout(odd, labels={"0": "background", "1": "PZ", "2": "tumour"})
    with pytest.raises(CohortImportError, match="tumour"):
        import_cohort("msd", odd, tmp_path / "odd.csv", "msd")


def test_cli_with_spec(tmp_path):
    source = tmp_path / "Task05_Prostate"
    msd_layout(source)
    out = tmp_path / "cli" / "manifest.csv"
    spec = json.dumps({"kind": "msd", "source": str(source), "options": {}})
    assert cli_main(["--spec", spec, "--cohort", "msd", "--out", str(out)]) == 0
    assert len(read_manifest(out)) == 2
    assert cli_main(["--kind", "msd", "--source", str(source), "--cohort", "msd", "--out", str(out),
                     "--option", "no_such=1"]) == 1


def test_cli_option_values():
    options = parse_options(["patterns.t2w=t2_tse_tra$", "case_id=0001", "min_dwi_b=1000", "gland=none",
                             "include_test=true", "mapping.t2w=(?P<case>[^_]+)_t2w\\.nii\\.gz"])
    assert options == {
        "patterns": {"t2w": "t2_tse_tra$"}, "case_id": "0001", "min_dwi_b": 1000, "gland": None,
        "include_test": True, "mapping": {"t2w": r"(?P<case>[^_]+)_t2w\.nii\.gz"},
    }
