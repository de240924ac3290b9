"""Radiomic lens (seed 003) on planted relations: the re-weighted features come out on top, a null does not."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import Ridge

from taskalign.analysis.lens import TABLE_COLUMNS, fit_lens, group_summary, prepare_radiomics, ridge_coefficients

N_CASES, D_EMB = 200, 32
NAMES = [
    "t2w_original_firstorder_Mean", "t2w_original_glcm_Contrast", "t2w_original_shape_Sphericity",
    "t2w_original_firstorder_Kurtosis", "t2w_original_firstorder_Skewness", "t2w_original_glcm_Correlation",
    "t2w_original_glrlm_RunEntropy", "t2w_original_glszm_ZoneEntropy", "t2w_original_gldm_DependenceEntropy",
    "t2w_original_ngtdm_Coarseness", "t2w_original_shape_Elongation", "t2w_original_shape_Flatness",
    "t2w_log-sigma-2-0-mm-3D_firstorder_Mean", "t2w_log-sigma-2-0-mm-3D_glcm_Idm",
    "t2w_log-sigma-3-0-mm-3D_glrlm_RunVariance", "t2w_wavelet-LLH_glszm_ZoneVariance",
    "adc_original_firstorder_Mean", "adc_original_firstorder_Median", "adc_original_firstorder_Entropy",
    "adc_original_glcm_Contrast", "adc_original_glcm_JointEntropy", "adc_original_glrlm_GrayLevelVariance",
    "adc_original_glszm_SmallAreaEmphasis", "adc_original_gldm_LargeDependenceEmphasis",
    "adc_original_ngtdm_Busyness", "adc_log-sigma-2-0-mm-3D_firstorder_Variance",
    "adc_log-sigma-2-0-mm-3D_glcm_Imc1", "adc_log-sigma-3-0-mm-3D_gldm_DependenceVariance",
    "adc_wavelet-HHH_firstorder_Energy", "adc_wavelet-LLL_ngtdm_Strength",
]
SETTINGS = {"pca_components": 8, "hidden": 32, "steps": 500, "lr": 0.01, "weight_decay": 0.001, "ridge_alpha": 1.0,
            "dedup_spearman": 0.95, "permutations": 200, "seeds": [0, 1, 2]}


def _radiomics(n: int = N_CASES, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.standard_normal((n, len(NAMES))), columns=NAMES)
    split = np.array(["train"] * int(0.7 * n) + ["val"] * int(0.15 * n) + ["test"] * (n - int(0.7 * n) - int(0.15 * n)))
    meta = pd.DataFrame({"case_id": [f"c{i:04d}" for i in range(n)], "patient_id": [f"p{i:04d}" for i in range(n)],
                         "split": rng.permutation(split)})
    return pd.concat([meta, frame], axis=1)


# Planted relation: features 3-7 drive both encoders alike; fine-tuning moves weight from feature 1 to feature 2,
# which the pretrained encoder already saw weakly (the lens can only see what its frozen first layer encodes).
PRE = {0: 1.0, 1: 1.0, 2: 0.3, **{j: 0.7 for j in range(3, 8)}}
FT = {0: 1.0, 1: 0.3, 2: 1.5, **{j: 0.7 for j in range(3, 8)}}


def _embedding(radiomics: pd.DataFrame, weights: dict[int, float], noise_seed: int,
               noise: float = 0.05) -> pd.DataFrame:
    """sum_j w_j x_j a_j with one fixed random direction a_j per feature (shared by both encoders) plus noise."""
    directions = np.random.default_rng(1).standard_normal((len(NAMES), D_EMB))
    x = radiomics[NAMES].to_numpy()
    values = sum(w * np.outer(x[:, j], directions[j]) for j, w in weights.items())
    values = values + noise * np.random.default_rng(noise_seed).standard_normal(values.shape)
    return pd.concat([radiomics[["case_id"]], pd.DataFrame(values, columns=[f"e{i}" for i in range(D_EMB)])], axis=1)


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, dict]:
    radiomics = _radiomics()
    return fit_lens(radiomics, _embedding(radiomics, PRE, 2), _embedding(radiomics, FT, 3), SETTINGS)


def test_planted_shift_ranked_first(planted):
    table, summary = planted
    assert list(table.columns) == TABLE_COLUMNS
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    top = table.set_index("feature")["rank"]
    assert top[NAMES[2]] == 1, table.head()
    assert top[NAMES[1]] <= 3, table.head()
    change = table.set_index("feature")["change"]
    assert change[NAMES[2]] > 0 > change[NAMES[1]]
    assert table["sens_pre"].sum() == pytest.approx(1.0) and table["sens_ft"].sum() == pytest.approx(1.0)
    assert summary["r2_pre"] > 0.5 and summary["r2_ft"] > 0.5
    assert summary["perm_p"] < 0.05
    assert table.set_index("feature").loc[NAMES[2], "p_value"] < 0.05
    # found after the family-wise correction too, and nothing else unplanted is
    assert table.set_index("feature").loc[NAMES[2], "p_fwer"] < 0.05
    assert set(table.loc[table["p_fwer"] <= 0.05, "feature"]) <= {NAMES[0], NAMES[1], NAMES[2]}
    assert (table["p_fwer"] >= table["p_value"]).all()
    assert summary["n_train"] == 140 and summary["n_heldout"] == 60
    assert summary["n_features_in"] == summary["n_features_kept"] == len(NAMES)
    assert -1.0 <= summary["stability_spearman"] <= 1.0
    assert summary["seeds"] == "0;1;2" and summary["finetune_seeds"] == "0"


def test_planted_groups_parse(planted):
    table = planted[0].set_index("feature")
    assert table.loc["t2w_original_glcm_Contrast", ["image", "filter", "class", "group"]].tolist() == [
        "t2w", "original", "glcm", "texture"]
    assert table.loc["t2w_original_shape_Sphericity", "group"] == "shape"
    assert table.loc["adc_log-sigma-2-0-mm-3D_glcm_Imc1", "filter"] == "log"
    assert table.loc["adc_wavelet-HHH_firstorder_Energy", ["filter", "group"]].tolist() == ["wavelet", "intensity"]
    groups = group_summary(planted[0])
    assert list(groups.columns) == ["by", "level", "n", "sum", "mean"]
    by_group = groups[groups["by"] == "group"].set_index("level")
    assert set(by_group.index) == {"intensity", "shape", "texture"}
    assert by_group["n"].sum() == len(NAMES)
    # shares move between groups: the group changes sum to 0
    assert by_group["sum"].sum() == pytest.approx(0.0, abs=1e-12)
    assert set(groups[groups["by"] == "image"]["level"]) == {"t2w", "adc"}


def test_fast_enough(planted):
    """100 cases x 200 features, 3 seeds, 200 permutations: under 2 s (after torch's first-call warm-up)."""
    radiomics = _radiomics(100)
    features = np.random.default_rng(3).standard_normal((100, 200))
    names = [f"t2w_original_glcm_F{i:03d}" for i in range(200)]
    frame = pd.concat([radiomics[["case_id", "split"]], pd.DataFrame(features, columns=names)], axis=1)
    pre = _embedding(radiomics, PRE, 2)
    start = time.perf_counter()
    fit_lens(frame, pre, _embedding(radiomics, FT, 3), SETTINGS)
    assert time.perf_counter() - start < 2.0


def test_null_no_change():
    radiomics = _radiomics(seed=5)
    pre = _embedding(radiomics, PRE, 2)
    table, summary = fit_lens(radiomics, pre, pre.copy(), SETTINGS)
    assert summary["total_change"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(summary["stability_spearman"])
    assert summary["perm_p"] > 0.5
    assert summary["r2_pre"] == pytest.approx(summary["r2_ft"])
    assert np.allclose(table["change"], 0.0, atol=1e-9)
    assert summary["n_significant"] == 0 and (table["p_fwer"] == 1.0).all()


def test_exact_copy_dropped():
    radiomics = _radiomics()
    # sorts after its original, so the original is the one kept
    radiomics["t2w_original_firstorder_Mean_copy"] = radiomics["adc_original_firstorder_Mean"] * 3.0 + 1.0
    train = (radiomics["split"] == "train").to_numpy()
    features = radiomics[NAMES + ["t2w_original_firstorder_Mean_copy"]]
    x, kept = prepare_radiomics(features, train, 0.95)
    assert "t2w_original_firstorder_Mean_copy" not in kept and "adc_original_firstorder_Mean" in kept
    assert kept == sorted(NAMES) and x.shape == (N_CASES, len(NAMES))
    assert np.allclose(x[train].mean(axis=0), 0.0) and np.allclose(x[train].std(axis=0), 1.0)
    _, summary = fit_lens(radiomics, _embedding(radiomics, PRE, 2), _embedding(radiomics, FT, 3),
                          {**SETTINGS, "permutations": 10, "seeds": [0]})
    assert summary["n_features_in"] == len(NAMES) + 1 and summary["n_features_kept"] == len(NAMES)


def test_constant_and_nonfinite_dropped():
    radiomics = _radiomics()
    train = (radiomics["split"] == "train").to_numpy()
    features = radiomics[NAMES].assign(t2w_original_shape_VoxelVolume=7.0)
    features.loc[3, NAMES[5]] = np.nan
    _, kept = prepare_radiomics(features, train, 0.95)
    assert "t2w_original_shape_VoxelVolume" not in kept and NAMES[5] not in kept and len(kept) == len(NAMES) - 1


def test_ridge_closed_form_matches_sklearn():
    rng = np.random.default_rng(0)
    h, z = np.maximum(rng.standard_normal((50, 6)), 0), rng.standard_normal((50, 3))
    assert np.allclose(ridge_coefficients(h, z, 0.7), Ridge(alpha=0.7).fit(h, z).coef_)


def test_bad_inputs_named():
    radiomics = _radiomics()
    pre = _embedding(radiomics, PRE, 2)
    with pytest.raises(ValueError, match=r"unknown lens setting\(s\) \['hiden'\]"):
        fit_lens(radiomics, pre, pre, {"hiden": 4})
    few = radiomics.iloc[:100]
    with pytest.raises(ValueError, match=r"only 100 of 200 embedded cases .* e\.g\. \['c0100'"):
        fit_lens(few, pre, pre, SETTINGS)
    with pytest.raises(ValueError, match="different columns"):
        fit_lens(radiomics, pre, pre.drop(columns="e0"), SETTINGS)


def test_seeded_and_leaves_torch_alone():
    radiomics = _radiomics(60)
    pre, ft = _embedding(radiomics, PRE, 2), _embedding(radiomics, FT, 3)
    quick = {**SETTINGS, "steps": 50, "permutations": 20}
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = fit_lens(radiomics, pre, ft, quick)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    again = fit_lens(radiomics, pre, ft, quick)
    pd.testing.assert_frame_equal(first[0], again[0])
    assert pd.Series(first[1]).equals(pd.Series(again[1]))  # NaN (one fine-tuning seed) equals NaN here


def test_rescale_is_no_change():
    """x1.5 on the embeddings changes nothing the encoder emphasises: no feature is significant."""
    radiomics = _radiomics(seed=7)
    pre = _embedding(radiomics, PRE, 2)
    scaled = pre.assign(**{c: 1.5 * pre[c] for c in pre.columns if c != "case_id"})
    table, summary = fit_lens(radiomics, pre, scaled, SETTINGS)
    assert np.allclose(table["change"], 0.0, atol=1e-9)
    assert summary["n_significant"] == 0 and (table["p_fwer"] > 0.05).all() and (table["p_value"] > 0.05).all()
    assert summary["perm_p"] > 0.5


def test_finetuning_seeds_rank_stability():
    radiomics = _radiomics(seed=8)
    pre = _embedding(radiomics, PRE, 2)
    finetuned = {seed: _embedding(radiomics, FT, 10 + seed) for seed in (0, 1, 2)}
    table, summary = fit_lens(radiomics, pre, finetuned, {**SETTINGS, "seeds": [0]})
    assert summary["finetune_seeds"] == "0;1;2"
    assert summary["finetune_stability_spearman"] > 0.5
    top = table.set_index("feature").loc[NAMES[2]]
    assert top["rank"] == 1 and top["rank_min"] == 1 and top["rank_max"] <= 3
    assert (table["rank_min"] <= table["rank_max"]).all()
