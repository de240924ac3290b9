"""Encoder files (own layout; imports: tests/test_encoders.py), LoRA injection and merging, the segmentation head, paper geometry."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from monai.losses import DiceLoss

from conftest import REPO
from taskalign.models.checkpoint_io import load_encoder, read_metadata, save_encoder
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry, PatchConv3d
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


def test_own_checkpoint_round_trips_with_geometry_and_metadata(tmp_path):
    encoder = seeded_encoder()
    save_encoder(encoder, tmp_path / "enc.safetensors", {"variant": "mae", "epoch": 3})
    loaded = load_encoder(tmp_path / "enc.safetensors").eval()
    assert loaded.geometry == TINY
    meta = read_metadata(tmp_path / "enc.safetensors")
    assert meta["epoch"] == 3 and meta["family"] == "vit3d"
    x = torch.randn(2, 3, *TINY.img_size)
    a, b = encoder(x), loaded(x)
    assert list(a) == [f"block{i}" for i in range(TINY.num_layers)] + ["final"]
    for name in a:
        assert a[name].shape == (2, TINY.hidden_size, *TINY.grid) and torch.equal(a[name], b[name])


def test_a_file_from_before_families_reads_as_vit3d(tmp_path):
    """Encoder files written before families (no `family`, geometry without eps / class_token / qkv_bias) load."""
    from safetensors.torch import save_file

    encoder = seeded_encoder()
    old_geometry = {k: v for k, v in vars(TINY).items() if k not in ("layer_norm_eps", "class_token", "qkv_bias")}
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"geometry": json.dumps(old_geometry)})
    loaded = load_encoder(tmp_path / "old.safetensors")
    assert loaded.geometry == TINY and loaded.family == "vit3d"


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
        lora_levels = model.encoder(x)
        merged_levels = merged(x)
    assert len(lora_levels) == TINY.num_layers + 1
    for name, a in lora_levels.items():
        torch.testing.assert_close(merged_levels[name], a, atol=1e-5, rtol=1e-5, msg=name)


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
    with pytest.raises(ValueError, match=r"levels \[4\] do not exist"):
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
    outputs = [model(x)["final"] for model in (fast, plain)]
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
        fused = model.encoder(x)["final"]
        for block in blocks:
            block.use_flash_attention = False
        explicit = model.encoder(x)["final"]
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fused, torch.zeros_like(fused))


def test_encoder_file_is_read_once_and_built_on_the_device_it_is_asked_for(tmp_path):
    from taskalign.models.checkpoint_io import EncoderFile, content_sha256

    torch.manual_seed(0)
    path = tmp_path / "enc.safetensors"
    save_encoder(Encoder(TINY), path)
    encoder_file = EncoderFile.read(path)
    assert encoder_file.sha256 == content_sha256(path.read_bytes())
    built = encoder_file.build("cpu")
    reference = load_encoder(path)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in reference.state_dict().items())
    with torch.device("meta"):  # the build honours the device it is given, not the ambient one
        assert encoder_file.build("cpu").cls_token.device.type == "cpu"


def test_an_encoder_written_twice_has_one_content_digest_whatever_its_header_order(tmp_path):
    """safetensors writes its metadata map in an order that changes between writes; the digest that frozen task
    models and resume states name an encoder by must not (it did: 14 model files of two identical test runs differed)."""
    from taskalign.models.checkpoint_io import EncoderFile, content_sha256

    encoder = seeded_encoder()
    meta = {f"key{k}": k for k in range(12)}  # a long metadata map: one order of 12! in many
    paths = [tmp_path / f"{n}.safetensors" for n in range(4)]
    for path in paths:
        save_encoder(encoder, path, meta)
    data = [path.read_bytes() for path in paths]
    size = int.from_bytes(data[0][:8], "little")
    reordered = json.loads(data[0][8 : 8 + size])
    reordered["__metadata__"] = dict(reversed(list(reordered["__metadata__"].items())))
    header = json.dumps(reordered).encode()
    flipped = len(header).to_bytes(8, "little") + header + data[0][8 + size :]
    assert flipped != data[0]
    assert len({content_sha256(d) for d in data + [flipped]}) == 1
    assert EncoderFile.read(paths[0]).sha256 == content_sha256(flipped)
    other = seeded_encoder(seed=1)
    save_encoder(other, tmp_path / "other.safetensors", meta)
    assert EncoderFile.read(tmp_path / "other.safetensors").sha256 != EncoderFile.read(paths[0]).sha256
