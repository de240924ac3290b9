"""Encoder families: vit3d's three checkpoint layouts imported through the `import_encoder` rule's CLI against
reference models written here (MONAI's own classes for the monai layout, a timm-style ProFound ViT-MAE saved as
ProFound's util/misc.save_model saves it), refused checkpoints and their messages, input contracts in the data
path, and every stage (fine-tuning protocols, LoRA continual pretraining, features, the target probe, task-model
reload) with every registered family at a tiny geometry on the phantom cache (the other families' checkpoint
layouts: tests/test_encoder_families.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskalign.cli.encoder_file import main as encoder_file_main
from taskalign.models.checkpoint_io import EncoderFile, import_checkpoint, read_metadata, save_encoder
from taskalign.models.families import all_families
from taskalign.models.families.base import FINAL, ImportRefused, InputContract
from taskalign.models.families.convnextv2_3d import ConvNeXtV2Encoder, ConvNeXtV2Geometry
from taskalign.models.families.swin3d import Swin3dGeometry
from taskalign.models.families.vit2d import ViT2dGeometry
from taskalign.models.families.vit3d import ViT3dEncoder, ViT3dGeometry
from taskalign.models.family_names import FAMILY_LAYOUTS

TOL = 1e-5
HIDDEN, HEADS, MLP, LAYERS = 24, 2, 40, 3
IMG, PATCH = (8, 16, 16), (4, 8, 8)  # a 2 x 2 x 2 token grid


def perturb(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, biases and norms away from their zero/one init, so every key map is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
    return module.eval()


def geometry(**overrides) -> ViT3dGeometry:
    return ViT3dGeometry(**{"in_channels": 3, "img_size": IMG, "patch_size": PATCH, "hidden_size": HIDDEN,
                            "mlp_dim": MLP, "num_layers": LAYERS, "num_heads": HEADS, **overrides})


def import_with_cli(tmp_path, path, family: str, layout: str, geom, contract: dict | None = None, **extra):
    """The command the `import_encoder` rule runs; returns (exit code, encoder file path)."""
    out = tmp_path / f"{path.stem}.encoder.safetensors"
    geometry_json = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(geom).items()}
    params = {"family": family, "layout": layout, "geometry": geometry_json, "path": str(path),
              "input": contract or {"channels": ["t2w", "dwi", "adc"], "normalisation": "clip_zscore",
                                    "spacing_mm": None, "size": list(geom.img_size)}, **extra}
    return encoder_file_main(["--params", json.dumps(params), "--out", str(out)]), out


def levels_of(path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return EncoderFile.read(path).build().eval()(x)


def to_volume(tokens: torch.Tensor, grid=(2, 2, 2)) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def max_difference(ours: dict, reference: dict) -> float:
    """The largest absolute difference over every named level, after checking each level equal within float32
    tolerance (|a - b| <= 1e-5 + 1e-5 |b|, the project's convention: features reach ~10 here)."""
    assert list(ours) == list(reference)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], atol=TOL, rtol=TOL, msg=name)
    return max(float((ours[k] - reference[k]).abs().max()) for k in reference)


# --------------------------------------------------------------------------- ProFound's ViT-MAE, timm-style, in 3D


class TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ProFoundViTMAE(nn.Module):
    """ProFound's models/mae.py MaskedAutoencoderViT as far as keys and the encoder forward go (3D patches, fixed
    position table with a class-token row, eps 1e-6), with its decoder's keys."""

    def __init__(self, layers: int = LAYERS, in_chans: int = 3):
        super().__init__()
        n = int(np.prod([i // p for i, p in zip(IMG, PATCH)]))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(in_chans, HIDDEN, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, HIDDEN))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, HIDDEN), requires_grad=False)
        self.blocks = nn.ModuleList(TimmBlock(HIDDEN, HEADS, MLP) for _ in range(layers))
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.decoder_embed = nn.Linear(HIDDEN, 16)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, 16), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([TimmBlock(16, 2, 32)])
        self.decoder_norm = nn.LayerNorm(16, eps=1e-6)
        self.decoder_pred = nn.Linear(16, int(np.prod(PATCH)) * in_chans)

    def encoder_levels(self, x):
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        h, out = torch.cat((cls, tokens), dim=1), {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            out[f"block{i}"] = to_volume(h[:, 1:])
        out[FINAL] = to_volume(self.norm(h)[:, 1:])
        return out


def save_profound(model: nn.Module, path) -> None:
    """As ProFound's util/misc.save_model: model, optimizer, epoch, scaler and the argparse.Namespace of args."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_base", mask_ratio=0.75)}, path)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, *IMG, generator=torch.Generator().manual_seed(5))


def test_profound_training_checkpoint_imports_through_the_cli_and_matches_its_forward(tmp_path, x):
    reference = perturb(ProFoundViTMAE(), 1)
    save_profound(reference, tmp_path / "checkpoint-7.pth")
    code, out = import_with_cli(tmp_path, tmp_path / "checkpoint-7.pth", "vit3d", "profound",
                                geometry(layer_norm_eps=1e-6))
    assert code == 0
    with torch.no_grad():
        expected = reference.encoder_levels(x)
    difference = max_difference(levels_of(out, x), expected)
    report = read_metadata(out)["load_report"]
    print(f"\nprofound: max feature difference {difference:.2e}\nload report: {json.dumps(report)}")
    assert sorted(report["ignored"]) == sorted(k for k in reference.state_dict() if k.startswith(("decoder_", "mask_token")))
    assert report["mapping"]["blocks.0.attn.to_k.weight"] == "blocks.0.attn.qkv.weight"
    assert set(report["mapping"]) == set(EncoderFile.read(out).state)  # every tensor came from the file
    # eps matters: ProFound's 1e-6 read as MONAI's default 1e-5 moves the features measurably
    (tmp_path / "eps").mkdir()
    code, wrong_eps = import_with_cli(tmp_path / "eps", tmp_path / "checkpoint-7.pth", "vit3d", "profound", geometry())
    with pytest.raises(AssertionError):
        max_difference(levels_of(wrong_eps, x), expected)


def test_the_rule_command_runs_as_a_process(tmp_path, x):
    """`python -m taskalign.cli.encoder_file` as the import_encoder rule runs it (the other tests call its main)."""
    import subprocess
    import sys

    from conftest import REPO

    reference = perturb(ProFoundViTMAE(), 1)
    save_profound(reference, tmp_path / "checkpoint.pth")
    geometry_json = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(geometry(layer_norm_eps=1e-6)).items()}
    params = {"family": "vit3d", "layout": "profound", "geometry": geometry_json, "path": str(tmp_path / "checkpoint.pth"),
              "input": {"channels": ["t2w", "dwi", "adc"], "normalisation": "zscore_nonzero", "spacing_mm": None,
                        "size": list(IMG)}, "checkpoint_size": None}
    out = tmp_path / "encoder.safetensors"
    proc = subprocess.run([sys.executable, "-m", "taskalign.cli.encoder_file", "--params", json.dumps(params), "--out",
                           str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        max_difference(levels_of(out, x), reference.encoder_levels(x))
    assert EncoderFile.read(out).contract == InputContract(("t2w", "dwi", "adc"), "zscore_nonzero", None, IMG)


def test_monai_vit_imports_with_its_class_token_and_without(tmp_path, x):
    from monai.networks.nets import ViT

    for classification, qkv_bias in ((True, True), (False, False)):
        reference = perturb(ViT(3, IMG, PATCH, hidden_size=HIDDEN, mlp_dim=MLP, num_layers=LAYERS, num_heads=HEADS,
                                classification=classification, num_classes=2, qkv_bias=qkv_bias), 2)
        path = tmp_path / f"monai_vit_{classification}.pt"
        torch.save(reference.state_dict(), path)
        code, out = import_with_cli(tmp_path, path, "vit3d", "monai", geometry(class_token=classification))
        assert code == 0
        with torch.no_grad():
            _, hidden = reference(x)
        p = int(classification)
        expected = {f"block{i}": to_volume(h[:, p:]) for i, h in enumerate(hidden)}
        with torch.no_grad():
            expected[FINAL] = to_volume(reference.norm(hidden[-1])[:, p:])
        difference = max_difference(levels_of(out, x), expected)
        report = read_metadata(out)["load_report"]
        print(f"\nmonai ViT classification={classification} qkv_bias={qkv_bias}: max feature difference "
              f"{difference:.2e}\nload report notes: {report['notes']}; ignored: {report['ignored']}")
        assert any("qkv bias absent" in note for note in report["notes"]) == (not qkv_bias)
        if classification:
            assert {"classification_head.0.weight", "classification_head.0.bias"} <= set(report["ignored"])


def test_monai_mae_with_default_qkv_bias_imports_with_no_tensor_left_at_random(tmp_path, x):
    from monai.networks.nets import MaskedAutoEncoderViT

    reference = perturb(MaskedAutoEncoderViT(3, IMG, PATCH, hidden_size=HIDDEN, mlp_dim=MLP, num_layers=LAYERS,
                                             num_heads=HEADS, decoder_hidden_size=12, decoder_mlp_dim=16,
                                             decoder_num_layers=1, decoder_num_heads=2), 3)
    torch.save(reference.state_dict(), tmp_path / "mae.pt")
    code, out = import_with_cli(tmp_path, tmp_path / "mae.pt", "vit3d", "monai", geometry())
    assert code == 0
    with torch.no_grad():  # MONAI's own encoder path without masking: class token prepended after the positions
        h = torch.cat((reference.cls_token.expand(2, -1, -1), reference.patch_embedding(x)), dim=1)
        expected = {}
        for i, block in enumerate(reference.blocks[:LAYERS]):
            h = block(h)
            expected[f"block{i}"] = to_volume(h[:, 1:])
        expected[FINAL] = to_volume(reference.blocks[LAYERS](h)[:, 1:])
    difference = max_difference(levels_of(out, x), expected)
    report = read_metadata(out)["load_report"]
    print(f"\nmonai MaskedAutoEncoderViT: max feature difference {difference:.2e}\nload report notes: "
          f"{report['notes']}\nignored: {report['ignored']}")
    state = EncoderFile.read(out).state
    assert set(report["mapping"]) == set(state)  # no tensor of the encoder without a source
    assert report["mapping"]["norm.weight"] == f"blocks.{LAYERS}.weight"
    sources = {k: v for k, v in reference.state_dict().items()}
    for key, value in state.items():  # ... and none left at its random init: each equals its source (or zero)
        source = report["mapping"][key]
        if source == "(zeros)":
            assert not value.any(), key
        elif ".qkv." in source:
            part = ("to_q", "to_k", "to_v").index(key.split(".")[3])
            assert torch.equal(value, sources[source].chunk(3)[part]), key
        else:
            assert torch.equal(value, sources[source]), key
    assert any(k.startswith("decoder_") for k in report["ignored"]) and "mask_tokens" in report["ignored"]


def test_position_embeddings_are_interpolated_for_another_crop_and_noted(tmp_path, x):
    torch.manual_seed(0)
    small = perturb(ViT3dEncoder(geometry()), 4)
    save_encoder(small, tmp_path / "small.safetensors")
    bigger = geometry(img_size=(8, 32, 32))
    code, out = import_with_cli(tmp_path, tmp_path / "small.safetensors", "vit3d", "taskalign", bigger,
                                checkpoint_size=list(IMG))
    assert code == 0
    table = small.patch_embedding.position_embeddings.detach()
    expected = F.interpolate(table.transpose(1, 2).reshape(1, HIDDEN, 2, 2, 2), size=(2, 4, 4), mode="trilinear",
                             align_corners=False).flatten(2).transpose(1, 2)
    assert torch.equal(EncoderFile.read(out).state["patch_embedding.position_embeddings"], expected)
    assert any("interpolated (trilinear) from the (2, 2, 2) token grid" in n for n in read_metadata(out)["load_report"]["notes"])
    # without the checkpoint's crop the mismatch is refused, not guessed
    with pytest.raises(ImportRefused, match="position_embeddings.*width"):
        import_checkpoint(tmp_path / "small.safetensors", "vit3d", "taskalign", bigger)


# ------------------------------------------------------------------------------------------- refused checkpoints


def refused(path, geom=None, layout="profound") -> str:
    with pytest.raises(ImportRefused) as err:
        import_checkpoint(path, "vit3d", layout, geom or geometry(layer_norm_eps=1e-6))
    message = str(err.value)
    print(f"\n{message}")
    assert "family 'vit3d', layout " in message and "The file's first keys:" in message
    return message


def test_a_removed_key_an_extra_key_and_one_block_too_few_are_refused_with_the_cause(tmp_path):
    state = perturb(ProFoundViTMAE(), 6).state_dict()
    removed = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc1.bias"}
    torch.save({"model": removed}, tmp_path / "removed.pth")
    message = refused(tmp_path / "removed.pth")
    assert "1 keys the encoder needs are not in the file (blocks.1.mlp.fc1.bias (-> blocks.1.mlp.linear1.bias))" \
        in message  # named as the file would name it
    assert "keys removed from or added to the file" in message
    assert "The file's first keys: cls_token, pos_embed, mask_token, decoder_pos_embed" in message  # the file's own

    torch.save({"model": {**state, "blocks.0.attn.rel_pos_bias": torch.zeros(3)}}, tmp_path / "extra.pth")
    message = refused(tmp_path / "extra.pth")
    assert "1 file keys with no place in the encoder and not on the ignore-list (blocks.0.attn.rel_pos_bias)" in message

    shallow = perturb(ProFoundViTMAE(layers=LAYERS - 1), 7)
    save_profound(shallow, tmp_path / "shallow.pth")
    message = refused(tmp_path / "shallow.pth")
    assert f"depth: the file has {LAYERS - 1} blocks (blocks.0..blocks.{LAYERS - 2}), the geometry asks for {LAYERS}" \
        in message
    deeper = refused(_save(tmp_path, "deep.pth", state), geometry(layer_norm_eps=1e-6, num_layers=LAYERS - 1))
    assert f"depth: the file has {LAYERS} blocks (blocks.{LAYERS - 1} extra), the geometry asks for {LAYERS - 1}" \
        in deeper


def _save(tmp_path, name, state):
    torch.save({"model": state}, tmp_path / name)
    return tmp_path / name


def test_a_2d_kernel_for_a_3d_family_and_another_family_are_named(tmp_path):
    state = perturb(ProFoundViTMAE(), 8).state_dict()
    flat = {**state, "patch_embed.proj.weight": torch.randn(HIDDEN, 3, 8, 8)}
    message = refused(_save(tmp_path, "vit2d.pth", flat))
    assert "a 2D kernel for a 3D family: patch_embedding.patch_embeddings.weight is a Conv2d weight (24, 3, 8, 8)" \
        in message

    torch.manual_seed(0)
    save_encoder(ConvNeXtV2Encoder(TINY["convnextv2_3d"][0]), tmp_path / "convnext.safetensors")
    message = refused(tmp_path / "convnext.safetensors", layout="taskalign")
    assert "the file's keys look like family 'convnextv2_3d', not 'vit3d'" in message


def test_the_cli_exits_1_with_the_message_in_the_log(tmp_path, caplog):
    state = perturb(ProFoundViTMAE(), 9).state_dict()
    del state["norm.weight"]
    code, out = import_with_cli(tmp_path, _save(tmp_path, "no_norm.pth", state), "vit3d", "profound",
                                geometry(layer_norm_eps=1e-6))
    assert code == 1 and not out.exists()
    assert "1 keys the encoder needs are not in the file (norm.weight)" in caplog.text


class Custom:  # a pickled class other than argparse.Namespace: what weights_only=True exists to refuse
    pass


def test_a_pickle_with_other_classes_is_refused_not_run(tmp_path):
    torch.save({"model": perturb(ProFoundViTMAE(), 1).state_dict(), "hook": Custom()}, tmp_path / "custom.pth")
    with pytest.raises(ImportRefused, match="weights_only=True"):
        import_checkpoint(tmp_path / "custom.pth", "vit3d", "profound", geometry())


def test_a_file_in_another_layout_of_the_family_is_named(tmp_path):
    save_profound(perturb(ProFoundViTMAE(), 1), tmp_path / "profound.pth")
    message = refused(tmp_path / "profound.pth", layout="monai")
    assert "the file fits layout 'profound', 'timm' of family 'vit3d'" in message


# ------------------------------------------------------------------------------------------------ input contracts


def test_zscore_nonzero_from_the_cache_equals_monai_on_the_raw_image(tmp_path):
    """With clip_percentiles [0, 100] the cache's normalisation is undone exactly: the re-normalised image equals
    MONAI NormalizeIntensity(nonzero=True, channel_wise=True) on the raw channels in the contract's order, except
    the foreground-minimum voxel, which the cache cannot tell from background."""
    from monai.transforms import NormalizeIntensity

    from taskalign.data.dataset import contract_image
    from taskalign.data.preprocess import normalise

    rng = np.random.default_rng(0)
    raw = rng.uniform(5, 500, size=(3, 6, 8, 8))
    raw[:, :2] = 0.0  # background
    cached, stats = zip(*(normalise(raw[c], raw[c] != 0, [0, 100]) for c in range(3)))
    meta = {"channels": ["t2w", "dwi", "adc"], "channels_present": ["t2w", "dwi", "adc"], "spacing_mm": [1, 1, 1],
            "shape": [6, 8, 8], "normalisation": dict(zip(["t2w", "dwi", "adc"], stats))}
    contract = InputContract(("adc", "t2w"), "zscore_nonzero", (1.0, 1.0, 1.0), (6, 8, 8)).to_json()
    image, present = contract_image(torch.from_numpy(np.stack(cached)), meta, contract, tmp_path)
    expected = NormalizeIntensity(nonzero=True, channel_wise=True)(raw[[2, 0]].astype(np.float32))
    expected = np.asarray(expected)
    for j, c in enumerate((2, 0)):
        at_min = raw[c] == raw[c][raw[c] != 0].min()
        assert at_min.sum() == 1 and image[j][at_min].item() == 0.0
        np.testing.assert_allclose(image[j][~at_min], expected[j][~at_min], atol=1e-5)
    assert present == ["adc", "t2w"]
    with pytest.raises(ValueError, match=r"needs channel\(s\) \['t1w'\], the cache has \['t2w', 'dwi', 'adc'\]"):
        contract_image(torch.zeros(3, 6, 8, 8), meta, {**contract, "channels": ["t1w"]}, tmp_path)
    with pytest.raises(ValueError, match=r"spacing_mm \[2.0, 1.0, 1.0\], the cache \[1, 1, 1\]"):
        contract_image(torch.zeros(3, 6, 8, 8), meta, {**contract, "spacing_mm": [2.0, 1.0, 1.0]}, tmp_path)


# ------------------------------------------------------------------------------------- every stage, every family

TASK_CHANNELS = ["t2w", "dwi", "adc"]
VIT = ViT3dGeometry(3, (16, 32, 32), (4, 8, 8), 32, 64, 4, 2)
CONTRACT = InputContract(("adc", "dwi", "t2w"), "zscore_nonzero", (4.0, 3.0, 3.0), (16, 32, 32))
# Each family at a tiny geometry that takes the tiny cache's 16 x 32 x 32 crop as it is: ConvNeXt V2 needs
# multiples of 16 (stem 4, two stride-2 downsamples); MONAI's Swin multiples of patch x 16 (4 patch mergings),
# so patch 1 here (window 2 keeps it fast); vit2d one modality and at least 6 slices (ProViCNet's 3-slice stacks), slices resized to 28^2.
TINY = {
    "vit3d": (VIT, CONTRACT),
    "convnextv2_3d": (ConvNeXtV2Geometry(in_channels=3, depths=(1, 1, 2, 1), dims=(4, 8, 8, 16),
                                         img_size=(16, 32, 32)), CONTRACT),
    "swin3d": (Swin3dGeometry(in_channels=3, feature_size=6, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                              window_size=2, patch_size=1, img_size=(16, 32, 32), orientation="dhw"), CONTRACT),
    "vit2d": (ViT2dGeometry(width=16, depth=4, heads=2, patch=14, n_registers=2, img_size=(16, 32, 32),
                            slice_size=(28, 28), pos_grid=2), replace(CONTRACT, channels=("t2w",))),
}
FAMILIES = sorted(TINY)
# partial:2 trains these (and nothing else of the encoder): the last 2 blocks or stages with their norms
PARTIAL_2 = {
    "vit3d": {"blocks.2.", "blocks.3.", "norm."},
    "convnextv2_3d": {"downsample_layers.2.", "stages.2.", "downsample_layers.3.", "stages.3.", "norm."},
    "swin3d": {"swinViT.layers3.", "swinViT.layers4.", "swinViT.layers3c.", "swinViT.layers4c."},
    "vit2d": {"blocks.2.", "blocks.3.", "norm."},
}


def encoder_file(tmp_path, family: str, contract: InputContract | None = None):
    torch.manual_seed(0)
    geometry, default_contract = TINY[family]
    encoder = all_families()[family].encoder_cls(geometry)
    path = tmp_path / family / "encoder.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(encoder, path, {"variant": "test"}, contract=contract or default_contract)
    return path


def finetune_params(layers) -> dict:
    return {"channels": TASK_CHANNELS, "seed": 0, "epochs": 1, "lr": 1e-3, "warmup_epochs": 0, "weight_decay": 0.0,
            "augment": {"prob": 0.3, "flip_prob": 0.5, "rotate_deg": 10, "zoom": [0.9, 1.1], "intensity": 0.1},
            "batch_size": 4, "head": {"mlp_hidden": 8, "decoder_channels": 8, "layers": layers},
            "specialist": {"channels": [4, 8, 16]}}


# head levels for a mixed-family run: a map {family: levels}, as config/paper.yaml writes it (swin3d: its default
# pyramid named; vit2d: absent, so its default pyramid)
LAYERS_BY_FAMILY = {"vit3d": [0, 1, 2, 3], "convnextv2_3d": [0, 1, 2, 3], "swin3d": ["stage1", "stage2", 3, FINAL]}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("protocol, task_name", [("frozen", "volume_reg"), ("partial:2", "zone_seg"),
                                                 ("full", "super_res")])
def test_fine_tuning_protocols_run_for_each_family(tiny_cache, tmp_path, family, protocol, task_name):
    from safetensors.torch import load_file

    from taskalign.evaluate.evaluate import EvaluationJob, run_evaluation
    from taskalign.models.task_model import load_task_model
    from taskalign.tasks.spec import Task
    from taskalign.train.finetune import FinetuneJob, run_finetune

    specs = {"volume_reg": {"type": "volume_reg", "cohort": "anatomy", "inputs": ["t2w"]},
             "zone_seg": {"type": "zone_seg", "cohort": "anatomy", "inputs": TASK_CHANNELS},
             "super_res": {"type": "super_res", "cohort": "anatomy", "inputs": ["t2w"], "factor": 4}}
    task = Task.from_config(task_name, specs[task_name])
    path = encoder_file(tmp_path, family)
    out = tmp_path / "run"
    params = {**finetune_params(LAYERS_BY_FAMILY), "task": specs[task_name]}
    history = run_finetune(FinetuneJob(task=task, init="pretrained:x", protocol=protocol, encoder_path=path,
                           indexes=[tiny_cache["anatomy"]], params=params, model_out=out / "model.safetensors",
                           history_csv=out / "h.csv", curve_png=out / "c.png", timing_json=out / "t.json",
                           resume_dir=tmp_path / "resume"))
    assert len(history) == 1 and np.isfinite(history[0]["train_total"])  # one epoch, a finite loss
    stored = load_file(str(out / "model.safetensors"))
    pretrained = EncoderFile.read(path).state
    parameters = {n for n, _ in EncoderFile.read(path).build().named_parameters()}  # Swin's index buffers aside
    encoder_keys = {k[len("encoder."):] for k in stored if k.startswith("encoder.")} & parameters
    if protocol == "frozen":  # the task model names its encoder file instead
        assert not encoder_keys
    elif protocol == "partial:2":
        prefixes = PARTIAL_2[family]
        assert all(k.startswith(tuple(prefixes)) for k in encoder_keys), sorted(encoder_keys)
        assert all(any(k.startswith(p) for k in encoder_keys) for p in prefixes), sorted(encoder_keys)
        assert any(not torch.equal(stored[f"encoder.{k}"], pretrained[k]) for k in encoder_keys)  # they trained
    else:
        assert encoder_keys == parameters
    model, meta = load_task_model(out / "model.safetensors", task, TASK_CHANNELS)
    assert meta["family"] == family and InputContract.from_json(meta["input"]) == TINY[family][1]
    assert model.encoder.family == family
    run_evaluation(EvaluationJob(task=task, model_path=out / "model.safetensors", indexes=[tiny_cache["anatomy"]],
                   params={**params, "bootstrap": 5, "save_volumes": 0}, metrics_csv=out / "m.csv",
                   cases_csv=out / "cases.csv", predictions_npz=out / "p.npz", montage_png=out / "montage.png"))
    assert np.isfinite(pd.read_csv(out / "m.csv")["value"]).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_continual_pretraining_features_and_probe_for_each_family(tiny_cache, tmp_path, family):
    from taskalign.analysis.feature_files import load_features
    from taskalign.analysis.features import extract
    from taskalign.analysis.target_probe import probe
    from taskalign.tasks.spec import Task
    from taskalign.train.continual import ContinualJob, run_continual

    pretrained = encoder_file(tmp_path, family)
    out = tmp_path / "continual"
    params = {"target": "prostate", "layers": LAYERS_BY_FAMILY, "rank": 2, "alpha": 4, "dropout": 0.0,
              "decoder_channels": 8, "epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0,
              "weight_decay": 0.0, "seed": 0}
    run_continual(ContinualJob(variant="x", pretrained=pretrained, index=tiny_cache["anatomy"], params=params,
                  encoder_out=out / "encoder.safetensors", adapter_out=out / "adapter.safetensors",
                  history_csv=out / "h.csv", curve_png=out / "c.png", resume_dir=tmp_path / "resume"))
    before, after = EncoderFile.read(pretrained), EncoderFile.read(out / "encoder.safetensors")
    assert after.family == family and after.contract == TINY[family][1] and set(after.state) == set(before.state)
    changed = {k for k in before.state if not torch.equal(before.state[k], after.state[k])}
    targets = all_families()[family].encoder_cls.lora_targets
    assert changed and all(_is_adapted(k, targets) for k in changed), changed  # only what LoRA adapted, merged

    task = Task.from_config("zone_seg", {"type": "zone_seg", "cohort": "anatomy", "inputs": TASK_CHANNELS})
    feature_layers = {"vit3d": [1, "block3"], "convnextv2_3d": ["stage2"], "swin3d": [0, "stage3"], "vit2d": [2]}
    extract(task=task, model_path=out / "encoder.safetensors", source="encoder", indexes=[tiny_cache["anatomy"]],
            params={"channels": TASK_CHANNELS, "layers": feature_layers, "batch_size": 4, "seed": 0},
            out_npz=tmp_path / "features.npz")
    cases, features = load_features(tmp_path / "features.npz")
    expected = {"vit3d": ["block1", "block3"], "convnextv2_3d": ["stage2"], "swin3d": ["stage0", "stage3"],
                "vit2d": ["block2"]}[family] + [FINAL]
    assert list(features) == expected and all(v.shape[0] == len(cases) for v in features.values())
    width = {level.name: level.channels for level in after.build().levels()}
    assert all(features[name].shape[1] == width[name] and np.isfinite(features[name]).all() for name in expected)
    probe_layers = {"vit3d": [0, 1, 2, 3], "convnextv2_3d": ["stage2"], "swin3d": ["stage1"], "vit2d": ["block1"]}
    table = probe(encoders={"pretrained-x": pretrained, "continual-x": out / "encoder.safetensors"},
                  index=tiny_cache["anatomy"], target="prostate", layers=probe_layers[family], batch_size=4, n_boot=20)
    assert len(table) == 2 * len(probe_layers[family]) and np.isfinite(table["val_r2"]).all()


def _is_adapted(key: str, targets: str) -> bool:
    import re

    return re.fullmatch(targets, key.rsplit(".", 1)[0]) is not None


def test_a_contract_the_cache_cannot_meet_is_an_error_naming_both(tiny_cache, tmp_path):
    from taskalign.tasks.spec import Task
    from taskalign.train.finetune import FinetuneJob, run_finetune

    path = encoder_file(tmp_path, "vit3d", InputContract(TASK_CHANNELS, "clip_zscore", (1.0, 0.5, 0.5), None))
    task = Task.from_config("volume_reg", {"type": "volume_reg", "cohort": "anatomy", "inputs": ["t2w"]})
    with pytest.raises(ValueError, match=r"contract has spacing_mm \[1.0, 0.5, 0.5\], the cache \[4.0, 3.0, 3.0\]"):
        run_finetune(FinetuneJob(task=task, init="pretrained:x", protocol="frozen", encoder_path=path,
                     indexes=[tiny_cache["anatomy"]], params=finetune_params([0, 1, 2, 3]),
                     model_out=tmp_path / "m.safetensors", history_csv=tmp_path / "h.csv", curve_png=tmp_path / "c.png",
                     timing_json=tmp_path / "t.json", resume_dir=tmp_path / "resume"))


def test_pretraining_is_vit3d_only():
    from taskalign.models.pretraining import PretrainingModel

    with pytest.raises(ValueError, match="vit3d family with a class token, got family 'convnextv2_3d'"):
        PretrainingModel(ConvNeXtV2Encoder(TINY["convnextv2_3d"][0]), ["reconstruction"], TASK_CHANNELS)
    with pytest.raises(ValueError, match="without a class token"):
        PretrainingModel(ViT3dEncoder(geometry(class_token=False)), ["reconstruction"], TASK_CHANNELS)


# ------------------------------------------------------------------------------------------ public API and config


def test_public_api_loads_an_encoder_and_returns_named_numpy_maps(tmp_path, x):
    import taskalign.models as api

    path = encoder_file(tmp_path, "vit3d")
    encoder = api.load_encoder(path)
    volume = torch.randn(3, 16, 32, 32).numpy()
    features = api.encoder_features(path, volume)
    assert list(features) == [f"block{i}" for i in range(4)] + [FINAL]
    with torch.no_grad():
        direct = encoder(torch.from_numpy(volume)[None])
    for name, value in features.items():
        assert isinstance(value, np.ndarray) and value.shape == (32, 4, 4, 4)
        np.testing.assert_array_equal(value, direct[name][0].numpy())


def test_the_torch_free_family_table_agrees_with_the_registry():
    families = all_families()
    assert set(families) == set(FAMILY_LAYOUTS) == set(TINY)  # and the stage tests above run every family
    for name, fam in families.items():
        assert tuple(fam.layouts) == FAMILY_LAYOUTS[name], name


def test_the_plan_validates_family_layout_and_channels_without_torch():
    import subprocess
    import sys

    from conftest import REPO, TEST_CONFIG, plan_of
    from taskalign.plan import PlanError

    # the plan of every shipped config is built as the Snakefile builds it: torch and MONAI never load
    code = ("import sys, yaml, taskalign.plan.outputs, taskalign.plan.params, taskalign.plan.retarget\n"
            "from taskalign.plan.config_check import checked_plan\n"
            "for name in sys.argv[1:]: checked_plan(yaml.safe_load(open(name)), 'workflow/schemas/config.schema.yaml')\n"
            "print(sorted({'torch', 'monai'} & set(sys.modules)))")
    configs = [str(p) for p in sorted((REPO / "config").glob("*.yaml")) if p.name != "radiomics.yaml"]
    assert subprocess.run([sys.executable, "-c", code, *configs], capture_output=True, text=True, cwd=REPO,
                          check=True).stdout.strip() == "[]"
    import copy

    config = copy.deepcopy(TEST_CONFIG)
    config["pretrain"]["variants"]["ext"] = {"source": "checkpoint", "path": "/x.pth", "family": "vit3d",
                                             "layout": "dinov2", "input": {"channels": ["t1w"]}}
    config["pretrain"]["variants"]["other"] = {"source": "checkpoint", "path": "/y.pth", "family": "resnet"}
    with pytest.raises(PlanError) as err:
        plan_of(config)
    text = str(err.value)
    assert "pretrain.variants.ext.layout: family vit3d has no layout 'dinov2'" in text
    assert "pretrain.variants.ext.input.channels: ['t1w'] not in preprocess.channels" in text
    assert "pretrain.variants.other.family: unknown encoder family 'resnet'" in text


def test_no_stage_branches_on_a_family():
    """Stages use the protocol only: no isinstance on an encoder class and no family-name comparison outside the
    family modules (pretraining, which is vit3d's by design, checks its encoder once)."""
    import re
    from pathlib import Path

    names = "|".join(FAMILY_LAYOUTS)
    branch = re.compile(rf"isinstance\([^)]*(Encoder|ViT3d)\b|\.family\s*(==|!=|in\b)|(==|!=)\s*\"({names})\"")
    src = Path(__file__).resolve().parents[1] / "src" / "taskalign"
    found = [f"{path.relative_to(src)}:{i}: {line.strip()}"
             for package in ("models", "train", "evaluate", "analysis", "tasks", "data")
             for path in sorted((src / package).rglob("*.py"))
             if "families" not in path.parts and path.name != "pretraining.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, found


def test_depth_is_diagnosed_per_stage_for_hierarchical_keys():
    from taskalign.models.checkpoint_io import _depth_cause

    z = torch.zeros(1)
    own = {f"stages.2.{b}.dwconv.weight": z for b in range(3)} | {"stages.3.0.dwconv.weight": z}
    state = {f"stages.2.{b}.dwconv.weight": z for b in range(2)} | {"stages.3.0.dwconv.weight": z}
    assert _depth_cause(["stages.2.2.dwconv.weight"], [], state, own) == \
        "depth: the file has 2 stages.2 (stages.2.0..stages.2.1), the geometry asks for 3 (stages.2.2 missing)"
    swin = {f"layers3.0.blocks.{b}.attn.qkv.weight": z for b in range(2)}
    deeper = swin | {"layers3.0.blocks.2.attn.qkv.weight": z}
    assert _depth_cause([], ["layers3.0.blocks.2.attn.qkv.weight"], deeper, swin) == \
        "depth: the file has 3 layers3.0.blocks (layers3.0.blocks.2 extra), the geometry asks for 2"
    assert _depth_cause(["stages.2.0.dwconv.weight"], [], state, own) is None  # a hole, not depth
