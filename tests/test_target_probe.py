"""The linear probe of the continual-pretraining target in encoder tokens (taskalign.analysis.target_probe)."""

import numpy as np
import pandas as pd
import pytest
import torch

from taskalign.analysis.target_probe import bootstrap_r2, patch_occupancy, r2, random_reference, ridge_fit, run
from taskalign.models.checkpoint_io import save_encoder
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry

GEOMETRY = EncoderGeometry(3, (16, 32, 32), (4, 8, 8), 32, 64, 4, 2)


def probe_settings(**changes) -> dict:
    """The probe's settings as taskalign.plan.params.target_probe gives them, tiny."""
    return {"target": "prostate", "layers": [0, 3], "batch_size": 4, "bootstrap": 50, "seed": 0, **changes}


def test_patch_occupancy_follows_the_token_order():
    mask = torch.zeros(1, 1, 16, 32, 32)
    mask[0, 0, 4:8, 16:24, 24:32] = 1  # the whole patch at grid (1, 2, 3)
    mask[0, 0, 0:2, 0:8, 0:8] = 1  # half of the patch at grid (0, 0, 0)
    occupancy = patch_occupancy(mask, GEOMETRY.patch_size)
    assert occupancy.shape == (1, GEOMETRY.n_tokens)
    volume = Encoder(GEOMETRY).tokens_to_volume(occupancy[..., None])  # the layout the adapter reads tokens in
    assert volume[0, 0, 1, 2, 3] == 1 and volume[0, 0, 0, 0, 0] == 0.5
    assert float(occupancy.sum()) == 1.5


def test_an_informative_token_beats_noise_with_a_paired_interval_above_zero():
    rng = np.random.default_rng(0)
    cases, tokens = 12, 16
    y = rng.uniform(size=cases * tokens)
    good = np.c_[y + 0.05 * rng.normal(size=y.size), rng.normal(size=(y.size, 4))]
    noise = rng.normal(size=(y.size, 5))
    train, val = slice(0, 8 * tokens), slice(8 * tokens, None)
    preds = {name: ridge_fit(x[train], y[train]).predict(x[val]) for name, x in {"good": good, "noise": noise}.items()}
    assert r2(y[val], preds["good"]) > 0.95 and r2(y[val], preds["noise"]) < 0.1
    from sklearn.metrics import r2_score

    assert all(r2(y[val], p) == pytest.approx(r2_score(y[val], p), abs=1e-12) for p in preds.values())
    draws = bootstrap_r2(y[val], preds, np.repeat(np.arange(4), tokens), {"good": "noise", "noise": None}, 200, 0)
    assert len(draws["good"]) == 200 and set(draws) == {"good", "noise", "good-gain"}
    assert np.percentile(draws["good-gain"], 2.5) > 0.8


def test_the_reference_is_the_random_init_of_the_same_stage():
    names = ["pretrained-mae", "continual-mae", "pretrained-random", "continual-random"]
    assert random_reference("continual-mae", names) == "continual-random"
    assert random_reference("pretrained-mae", names) == "pretrained-random"
    assert random_reference("continual-random", names) is None
    assert random_reference("continual-mae", ["continual-mae", "pretrained-random"]) is None


def test_the_probe_table_and_figure_on_a_phantom_cache(tiny_cache, tmp_path):
    encoders = {}
    for seed, name in enumerate(["continual-mae", "continual-random"]):
        torch.manual_seed(seed)
        encoders[name] = tmp_path / f"{name}.safetensors"
        save_encoder(Encoder(GEOMETRY), encoders[name])
    table = run(encoders=encoders, index=tiny_cache["anatomy"], settings=probe_settings(bootstrap=50),
                out_csv=tmp_path / "probe.csv", out_png=tmp_path / "probe.png", threads=1)
    assert list(table["encoder"]) == ["continual-mae"] * 2 + ["continual-random"] * 2
    assert pd.read_csv(tmp_path / "probe.csv").shape == table.shape
    assert (tmp_path / "probe.png").stat().st_size > 0
    assert (table["val_r2"] <= 1).all() and (table["val_r2_low"] <= table["val_r2_high"]).all()
    gains = table.set_index("encoder")["gain"]
    assert gains["continual-mae"].notna().all() and gains["continual-random"].isna().all()
    assert (table["val_tokens"] == 4 * GEOMETRY.n_tokens).all()


def test_position_alone_explains_nothing_of_the_probed_share(tiny_cache, tmp_path):
    """The crop is centred on the gland, so a token that knows only its position predicts most of the raw share;
    the probe takes the position's mean out, so such a token must score about 0."""
    torch.manual_seed(0)
    blind = Encoder(GEOMETRY)
    with torch.no_grad():  # no image in the tokens: position embedding only
        blind.patch_embedding.patch_embeddings.weight.zero_()
        blind.patch_embedding.patch_embeddings.bias.zero_()
    save_encoder(blind, tmp_path / "blind.safetensors")
    table = run(encoders={"continual-blind": tmp_path / "blind.safetensors"}, index=tiny_cache["anatomy"],
                settings=probe_settings(bootstrap=20), out_csv=tmp_path / "probe.csv", out_png=tmp_path / "probe.png")
    assert (table["val_r2"] < 0.05).all(), table


def test_a_cohort_without_validation_cases_is_refused_naming_the_index(tiny_cache, tmp_path):
    index = pd.read_csv(tiny_cache["anatomy"])
    only_train = tmp_path / "train_only.csv"
    index[index["split"] == "train"].to_csv(only_train, index=False)
    torch.manual_seed(0)
    save_encoder(Encoder(GEOMETRY), tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match="train_only.csv: the target probe needs val cases"):
        run(encoders={"continual-mae": tmp_path / "e.safetensors"}, index=only_train,
            settings=probe_settings(layers=[0], bootstrap=10), out_csv=tmp_path / "p.csv", out_png=tmp_path / "p.png")
    assert not (tmp_path / "p.csv").exists()
