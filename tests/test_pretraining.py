"""Pretraining objectives learn on the phantom cohort; masking and patch layout are what the MAE needs."""

from __future__ import annotations

import pytest
import torch

from taskalign.data.dataset import CacheDataset, read_index
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry
from taskalign.models.pretraining import PretrainingModel, info_nce, patchify, random_masking, unpatchify
from taskalign.tasks.loader import make_loader
from taskalign.train.loop import adamw_warmup_cosine, train_one_epoch

GEOMETRY = EncoderGeometry(in_channels=3, img_size=(16, 32, 32), patch_size=(4, 8, 8), hidden_size=48, mlp_dim=96,
                           num_layers=3, num_heads=3)
CHANNELS = ["t2w", "dwi", "adc"]
EPOCHS = 60  # the MAE (per-patch normalised targets, noisy phantom) needs the most; ~3 s per objective


def test_patchify_inverts_and_follows_the_token_order():
    x = torch.randn(2, 3, 16, 32, 32)
    patches = patchify(x, GEOMETRY.patch_size)
    assert patches.shape == (2, GEOMETRY.n_tokens, 4 * 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, GEOMETRY.patch_size, GEOMETRY.grid), x)
    # token 1 is the patch next along W, as in the Conv3d patch embedding's flatten order
    assert torch.equal(patches[0, 1].reshape(4, 8, 8, 3), x[0, :, 0:4, 0:8, 8:16].permute(1, 2, 3, 0))


def test_random_masking_hides_the_ratio_per_sample():
    keep, mask, restore = random_masking(3, 64, 0.75)
    assert keep.shape == (3, 16) and mask.sum(dim=1).tolist() == [48.0] * 3
    for b in range(3):
        assert mask[b, keep[b]].sum() == 0  # the kept tokens are the unmasked ones
    assert torch.equal(restore.argsort(dim=1).argsort(dim=1), restore)


def test_info_nce_is_low_for_matched_views_and_log_b_for_random():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert info_nce(a, a, 0.05) < 0.01
    random = torch.stack([info_nce(a, torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), 1.0)
                          for _ in range(50)]).mean()
    assert abs(random - torch.log(torch.tensor(8.0))) < 0.3


def test_an_objective_needing_a_missing_channel_is_refused():
    geometry = EncoderGeometry(2, (16, 32, 32), (4, 8, 8), 48, 96, 1, 3)
    with pytest.raises(ValueError, match="translation needs channels"):
        PretrainingModel(Encoder(geometry), ["translation"], ["t2w", "dwi"])


@pytest.mark.parametrize("objectives", [["reconstruction"], ["metadata"], ["translation"], ["contrastive"],
                                        ["reconstruction", "metadata", "translation", "contrastive"]],
                         ids=lambda o: "+".join(o))
def test_loss_falls_on_the_phantom_cohort(tiny_cache, objectives):
    """The last epoch's mean training loss of each objective is below 80% of the first epoch's."""
    torch.manual_seed(0)
    rows = read_index([tiny_cache["corpus"]], splits=["train"])
    loader = make_loader(CacheDataset(rows), 4, shuffle=True, seed=0, device=torch.device("cpu"), drop_last=True)
    model = PretrainingModel(Encoder(GEOMETRY), objectives, CHANNELS, mask_ratio=0.75, decoder_layers=1)
    optimizer, scheduler = adamw_warmup_cosine(model.parameters(), lr=3e-3, weight_decay=0.05,
                                               warmup_steps=len(loader), total_steps=EPOCHS * len(loader))
    history = [train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"), lambda m, b: m(b))
               for _ in range(EPOCHS)]
    for name in objectives:
        first, last = history[0][name], history[-1][name]
        assert last < 0.8 * first, f"{name}: first epoch {first:.4f}, last {last:.4f}"
