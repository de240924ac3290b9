"""pyradiomics on the cache: settings reach the extractor, names and groups, errors naming the case, pool = serial."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("radiomics")

from taskalign.analysis.radiomics import case_features, cohort_features, feature_groups, load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "config" / "radiomics.yaml"
SHAPE = (20, 40, 40)
# 3 mm slices and 1.5 mm pixels: a 4 x 8 x 8 voxel ellipsoid is a 12 mm sphere only if the spacing order is right.
SPACING = [3.0, 1.5, 1.5]
SEMI_AXES = (4.0, 8.0, 8.0)


def write_case(root: Path, case_id: str, seed: int = 0, masks: tuple[str, ...] = ("prostate",),
               channels_present: tuple[str, ...] = ("t2w", "dwi", "adc"), empty: bool = False) -> Path:
    """A cache dir holding a textured ellipsoid on a normalised-looking background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    centre = [(n - 1) / 2 for n in SHAPE]
    inside = sum(((c - m) / a) ** 2 for c, m, a in zip((z, y, x), centre, SEMI_AXES)) <= 1.0
    image = np.empty((3, *SHAPE), dtype=np.float32)
    for c in range(3):
        texture = np.sin(x / (1.5 + c + seed)) * np.cos(y / (2.0 + seed)) + 0.4 * rng.standard_normal(SHAPE)
        image[c] = np.where(inside, 0.5 + texture, -1.5 + 0.2 * rng.standard_normal(SHAPE))
    case_dir = root / case_id
    case_dir.mkdir(parents=True)
    np.save(case_dir / "image.npy", image)
    if "prostate" in masks:
        np.save(case_dir / "prostate.npy", (inside & (not empty)).astype(np.uint8))
    meta = {"case_id": case_id, "channels": ["t2w", "dwi", "adc"], "channels_present": list(channels_present),
            "masks_present": list(masks), "spacing_mm": SPACING, "shape": list(SHAPE)}
    (case_dir / "meta.json").write_text(json.dumps(meta))
    return case_dir


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(PARAMS)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return write_case(tmp_path_factory.mktemp("cache"), "syn_0000")


@pytest.fixture(scope="module")
def features(case, params) -> dict[str, float]:
    return case_features(case, ("t2w", "adc"), params)


def test_names_prefixed_and_grouped(features):
    assert features and not any("diagnostics" in name for name in features)
    assert all(name.startswith(("t2w_", "adc_")) for name in features)
    t2w = {name[4:] for name in features if name.startswith("t2w_")}
    assert t2w == {name[4:] for name in features if name.startswith("adc_")}
    assert feature_groups("t2w_original_glcm_Contrast") == {"image": "t2w", "filter": "original", "class": "glcm",
                                                            "group": "texture"}
    groups = pd.DataFrame([feature_groups(name) for name in features])
    assert set(groups["filter"]) == {"original", "log"}
    assert set(groups["group"]) == {"intensity", "shape", "texture"}
    assert set(groups["class"]) == {"shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"}
    assert "t2w_original_glcm_SumAverage" not in features  # left out in the YAML (redundant)
    assert feature_groups("adc_wavelet-LLH_firstorder_Mean")["filter"] == "wavelet"
    assert feature_groups("adc_log-sigma-2-0-mm-3D_gldm_DependenceEntropy")["filter"] == "log"
    with pytest.raises(ValueError, match="not <image>_<imageType>_<class>_<Feature>"):
        feature_groups("t2w_original_foo_Bar")


def test_spacing_reaches_extractor(features):
    # anisotropic voxels make a sphere only with (x, y, z) spacing given to SimpleITK in the right order
    assert features["t2w_original_shape_Flatness"] > 0.85
    assert features["t2w_original_shape_Sphericity"] > 0.85
    assert features["t2w_original_shape_MeshVolume"] == pytest.approx(4 / 3 * np.pi * 12.0 ** 3, rel=0.15)


def test_settings_reach_extractor(case, params, features):
    coarse = copy.deepcopy(params)
    coarse["setting"]["binWidth"] = 0.3
    coarse["setting"]["voxelArrayShift"] = 20
    other = case_features(case, ("t2w", "adc"), coarse)
    assert other.keys() == features.keys()
    for name in ("t2w_original_glcm_Contrast", "t2w_original_glrlm_RunEntropy", "adc_original_glszm_ZoneEntropy"):
        assert other[name] != pytest.approx(features[name], rel=1e-3), name
    for name in (n for n in features if "_shape_" in n or "_log-" in n):  # LoG keeps its own binWidth
        if "_firstorder_" not in name:
            assert other[name] == pytest.approx(features[name], rel=1e-9), name
    assert other["t2w_original_firstorder_Energy"] > features["t2w_original_firstorder_Energy"]
    assert other["t2w_original_firstorder_Mean"] == pytest.approx(features["t2w_original_firstorder_Mean"])
    assert params["setting"]["binWidth"] == 0.1  # the caller's dict is not modified


def test_errors_name_case_and_file(tmp_path, params):
    no_mask = write_case(tmp_path, "syn_nomask", masks=())
    with pytest.raises(FileNotFoundError, match=r"case syn_nomask: .*syn_nomask/prostate\.npy: no prostate mask"):
        case_features(no_mask, ("t2w",), params)
    empty = write_case(tmp_path, "syn_empty", empty=True)
    with pytest.raises(ValueError, match=r"case syn_empty: .*syn_empty/prostate\.npy: prostate mask is empty"):
        case_features(empty, ("t2w",), params)
    no_adc = write_case(tmp_path, "syn_noadc", channels_present=("t2w", "dwi"))
    with pytest.raises(ValueError, match=r"case syn_noadc: .*syn_noadc/meta\.json: channel 'adc' not present"):
        case_features(no_adc, ("t2w", "adc"), params)


def test_pool_equals_serial(tmp_path):
    rows = []
    for i, split in enumerate(["train", "val", "test"]):
        case_dir = write_case(tmp_path / "cache", f"syn_{i:04d}", seed=i)
        rows.append({"case_id": f"syn_{i:04d}", "patient_id": f"p{i}", "split": split, "cache_dir": str(case_dir)})
    index = tmp_path / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    serial = cohort_features(index, PARAMS, ["t2w", "adc"], processes=1)
    pooled = cohort_features(index, PARAMS, ["t2w", "adc"], processes=2)
    pd.testing.assert_frame_equal(serial, pooled)
    assert list(serial.columns[:3]) == ["case_id", "patient_id", "split"]
    assert list(serial.columns[3:]) == sorted(serial.columns[3:])
    assert serial["case_id"].tolist() == ["syn_0000", "syn_0001", "syn_0002"]
    assert serial.iloc[:, 3:].notna().all().all()
