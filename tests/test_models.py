"""Encoder checkpoints (own and timm layout), LoRA injection and merging, the segmentation head, paper geometry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceLoss

from conftest import REPO
from taskalign.models.checkpoint_io import (encoder_to_timm_state, load_encoder, load_external_encoder,
                                            read_metadata, save_encoder)
from taskalign.models.encoder import Encoder, EncoderGeometry, PatchConv3d
from taskalign.models.lora import add_lora, merge_lora
from taskalign.models.pretraining import PretrainingModel
from taskalign.models.upernet import EncoderUperNet

TINY = EncoderGeometry(in_channels=3, img_size=(8, 32, 32), patch_size=(4, 8, 8), hidden_size=32, mlp_dim=64,
                       num_layers=4, num_heads=2)
LINEAR_KEYS = ("to_q", "to_k", "to_v", "out_proj")


def seeded_encoder(seed: int = 0, geometry: EncoderGeometry = TINY) -> Encoder:
    torch.manual_seed(seed)
    encoder = Encoder(geometry)
    with torch.no_grad():  # biases and norms away from their zero/one init, so the key map is really exercised
        for name, p in encoder.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return encoder.eval()


def timm_reference_forward(state: dict, x: torch.Tensor, geometry: EncoderGeometry) -> list[torch.Tensor]:
    """A ViT forward written against the timm key layout (fused qkv, class-token position embedding)."""
    tokens = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=geometry.patch_size)
    tokens = tokens.flatten(2).transpose(1, 2)
    cls = state["cls_token"].expand(x.shape[0], -1, -1)
    h = torch.cat((cls, tokens), dim=1) + state["pos_embed"]
    heads, outputs = geometry.num_heads, []
    for i in range(geometry.num_layers):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        y = F.layer_norm(h, (h.shape[-1],), p("norm1.weight"), p("norm1.bias"))
        b, n, c = y.shape
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, n, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1) @ v
        h = h + F.linear(attn.transpose(1, 2).reshape(b, n, c), p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(h, (c,), p("norm2.weight"), p("norm2.bias"))
        h = h + F.linear(F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        outputs.append(h)
    return outputs


def test_own_checkpoint_round_trips_with_geometry_and_metadata(tmp_path):
    encoder = seeded_encoder()
    save_encoder(encoder, tmp_path / "enc.safetensors", {"variant": "mae", "epoch": 3})
    loaded = load_encoder(tmp_path / "enc.safetensors").eval()
    assert loaded.geometry == TINY
    assert read_metadata(tmp_path / "enc.safetensors")["epoch"] == 3
    x = torch.randn(2, 3, *TINY.img_size)
    for a, b in zip(encoder(x)[1], loaded(x)[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout_round_trips_and_matches_a_timm_forward(tmp_path, suffix):
    encoder = seeded_encoder()
    state = encoder_to_timm_state(encoder)
    torch.manual_seed(1)
    state["pos_embed"][:, :1] = 0.1 * torch.randn_like(state["pos_embed"][:, :1])  # a class-token position
    state["head.weight"] = torch.randn(2, TINY.hidden_size)  # a classification head: ignored, not loaded
    path = tmp_path / f"published{suffix}"
    if suffix == ".pth":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 99}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, report = load_external_encoder(path, TINY, layout="timm")
    assert report.missing == [] and report.unexpected == [] and report.ignored == ["head.weight"]
    x = torch.randn(2, 3, *TINY.img_size)
    with torch.no_grad():
        ours = loaded.eval()(x)[1]
        reference = timm_reference_forward(state, x, TINY)
    for i, (a, b) in enumerate(zip(ours, reference)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"block {i}")
    # and back: our encoder -> timm -> our encoder is the identity
    back = encoder_to_timm_state(loaded)
    assert set(back) == set(state) - {"head.weight"}


def test_wrong_shape_is_refused_naming_the_key(tmp_path):
    state = encoder_to_timm_state(seeded_encoder())
    state["blocks.2.mlp.fc1.weight"] = torch.zeros(TINY.mlp_dim + 1, TINY.hidden_size)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.fc1\.weight .*shape \(65, 32\)"):
        load_external_encoder(tmp_path / "bad.pth", TINY, layout="timm")


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = encoder_to_timm_state(seeded_encoder())
    del state["norm.weight"]
    state["blocks.0.attn.relative_bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pth")
    _, report = load_external_encoder(tmp_path / "partial.pth", TINY, layout="timm")
    assert report.missing == ["norm.weight"]
    assert report.unexpected == ["blocks.0.attn.relative_bias"]


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": encoder_to_timm_state(seeded_encoder()), "args": argparse_like()}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_external_encoder(tmp_path / "pickle.pth", TINY, layout="timm")


class argparse_like:  # noqa: N801 - stands for the Namespace objects training scripts pickle into checkpoints
    pass


def test_a_file_in_another_layout_is_refused(tmp_path):
    torch.save(seeded_encoder().state_dict(), tmp_path / "ours.pth")
    with pytest.raises(ValueError, match=r"keys not found in layout .timm."):
        load_external_encoder(tmp_path / "ours.pth", TINY, layout="timm")
    loaded, report = load_external_encoder(tmp_path / "ours.pth", TINY, layout="taskalign")
    assert report.missing == [] and report.unexpected == []


@pytest.fixture(scope="module")
def trained_lora():
    """A LoRA segmentation model after a few Dice steps on a blob, with the base state from before training."""
    encoder = seeded_encoder()
    base_before = copy.deepcopy(encoder.state_dict())
    model = EncoderUperNet(add_lora(encoder, rank=4, alpha=8, dropout=0.1), out_channels=1, layers=(0, 1, 2, 3),
                           channels=8)
    torch.manual_seed(0)
    x = torch.randn(2, 3, *TINY.img_size)
    target = (x[:, :1] > 0.5).float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = DiceLoss(sigmoid=True)
    grads = set()
    model.train()
    for _ in range(4):
        optimizer.zero_grad()
        loss_fn(model(x), target).backward()
        grads |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
    return model.eval(), base_before, grads


def test_only_lora_and_decoder_parameters_train(trained_lora):
    model, base_before, grads = trained_lora
    encoder_grads = {n for n in grads if n.startswith("encoder.")}
    assert encoder_grads and all("lora_" in n for n in encoder_grads)
    assert {n for n in grads if n.startswith(("adapter.", "decoder."))}
    for n in ("to_q", "to_k", "to_v", "out_proj"):
        assert any(f"attn.{n}.lora_A" in g for g in encoder_grads), n
    state = model.encoder.state_dict()
    for key, before in base_before.items():
        after = state[key.replace(f".{key.split('.')[-1]}", f".base_layer.{key.split('.')[-1]}")
                      if any(f".{t}." in key for t in LINEAR_KEYS) else key]
        assert torch.equal(before, after), key


def test_merged_encoder_equals_lora_encoder_for_every_block(trained_lora):
    model, _, _ = trained_lora
    merged = merge_lora(model.encoder)
    x = torch.randn(2, 3, *TINY.img_size)
    with torch.no_grad():
        lora_normed, lora_hidden = model.encoder(x)
        merged_normed, merged_hidden = merged(x)
    assert len(lora_hidden) == TINY.num_layers
    for i, (a, b) in enumerate(zip(lora_hidden, merged_hidden)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=f"block {i}")
    torch.testing.assert_close(merged_normed, lora_normed, atol=1e-5, rtol=1e-5)


def test_merging_changes_exactly_the_q_k_v_o_weights(trained_lora):
    model, base_before, _ = trained_lora
    merged = merge_lora(model.encoder).state_dict()
    assert set(merged) == set(base_before)  # same keys as the pretrained encoder
    changed = {k for k in merged if not torch.equal(merged[k], base_before[k])}
    expected = {f"blocks.{i}.attn.{n}.weight" for i in range(TINY.num_layers) for n in LINEAR_KEYS}
    assert changed == expected


def test_segmentation_head_returns_input_size_logits_on_anisotropic_grids():
    geometry = EncoderGeometry(3, (8, 64, 64), (8, 16, 16), 32, 64, 4, 2)  # token grid 1 x 4 x 4
    model = EncoderUperNet(Encoder(geometry), out_channels=2, layers=(0, 1, 2, 3), channels=8)
    assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 2, 8, 64, 64)
    with pytest.raises(ValueError, match="out of range"):
        EncoderUperNet(Encoder(geometry), out_channels=1, layers=(0, 1, 2, 4), channels=8)


def test_one_training_step_at_paper_geometry_on_cpu():
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    geometry = EncoderGeometry.from_config(config)
    assert geometry.img_size == (64, 256, 256) and geometry.hidden_size == 768 and geometry.num_layers == 12
    torch.manual_seed(0)
    encoder = Encoder(geometry)
    model = PretrainingModel(encoder, objectives=["reconstruction", "metadata", "translation"],
                             channels=config["preprocess"]["channels"], mask_ratio=config["pretrain"]["mask_ratio"])
    batch = {"image": torch.randn(1, 3, 64, 256, 256), "channels_present": torch.ones(1, 3, dtype=torch.bool),
             "metadata": torch.zeros(1, 3), "metadata_known": torch.ones(1, 3, dtype=torch.bool)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = encoder.blocks[11].attn.to_q.weight.detach().clone()
    losses = model(batch)
    losses["total"].backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, encoder.blocks[11].attn.to_q.weight)


def test_one_continual_step_at_paper_geometry_on_cpu():
    from taskalign.train.continual import segmentation_model

    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    model = segmentation_model(Encoder(EncoderGeometry.from_config(config)), config["continual"])
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 256, 256)
    logits = model(x)
    assert logits.shape == (1, 1, 64, 256, 256)
    DiceLoss(sigmoid=True)(logits, (x[:, :1] > 1).float()).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_grads) == 4 * 12 and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_patch_matmul_embedding_equals_the_convolution(monkeypatch):
    """The speed-up (patchify + matmul for the kernel = stride Conv3d) keeps the initial weights bit-identical and
    the outputs and gradients equal to float tolerance."""
    fast = seeded_encoder(3)
    monkeypatch.setattr(PatchConv3d, "replacing", staticmethod(lambda conv: conv))
    plain = seeded_encoder(3)
    assert type(fast.patch_embedding.patch_embeddings) is PatchConv3d
    assert type(plain.patch_embedding.patch_embeddings) is torch.nn.Conv3d
    for (name, a), (_, b) in zip(fast.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, TINY.in_channels, *TINY.img_size, generator=torch.Generator().manual_seed(0))
    outputs = [model(x)[0] for model in (fast, plain)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for model, out in zip((fast, plain), outputs):
        out.square().mean().backward()
    torch.testing.assert_close(fast.patch_embedding.patch_embeddings.weight.grad,
                               plain.patch_embedding.patch_embeddings.weight.grad, rtol=1e-4, atol=1e-6)
    odd = torch.randn(1, 3, 9, 33, 35)  # sizes the patches do not tile: the convolution's semantics
    torch.testing.assert_close(fast.patch_embedding.patch_embeddings(odd), plain.patch_embedding.patch_embeddings(odd))


def test_every_attention_block_uses_fused_attention_with_the_same_numbers():
    """MONAI's SABlock with use_flash_attention runs torch's scaled_dot_product_attention; on CPU it equals the
    explicit softmax(QK^T)V to float tolerance, in the encoder and the MAE decoder."""
    from monai.networks.blocks.selfattention import SABlock

    torch.manual_seed(0)
    model = PretrainingModel(Encoder(TINY), objectives=["reconstruction"], channels=["t2w", "dwi", "adc"],
                             mask_ratio=0.5, weights={"reconstruction": 1.0}, decoder_layers=1).eval()
    blocks = [m for m in model.modules() if isinstance(m, SABlock)]
    assert len(blocks) == TINY.num_layers + 1 and all(b.use_flash_attention for b in blocks)
    x = torch.randn(2, 3, *TINY.img_size)
    with torch.no_grad():
        fused = model.encoder(x)[0]
        for block in blocks:
            block.use_flash_attention = False
        explicit = model.encoder(x)[0]
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fused, torch.zeros_like(fused))


def test_encoder_file_is_read_once_and_built_on_the_device_it_is_asked_for(tmp_path):
    import hashlib

    from taskalign.models.checkpoint_io import EncoderFile

    torch.manual_seed(0)
    path = tmp_path / "enc.safetensors"
    save_encoder(Encoder(TINY), path)
    encoder_file = EncoderFile.read(path)
    assert encoder_file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    built = encoder_file.build("cpu")
    reference = load_encoder(path)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in reference.state_dict().items())
    with torch.device("meta"):  # the build honours the device it is given, not the ambient one
        assert encoder_file.build("cpu").cls_token.device.type == "cpu"
