"""Family `swin3d`: MONAI's `SwinTransformer` as SwinUNETR and PRISM (002, github zqiuak/PRISM) build it.

The module is MONAI's own class (monai.networks.nets.swin_unetr.SwinTransformer) under the attribute `swinViT`,
so the parameter names are SwinUNETR's and PRISM's: patch 2, window 7, mlp ratio 4, qkv bias, LayerNorm,
`use_v2=True` (a residual conv block before each stage) and the depths / heads / feature size of PRISM's
`Model_Var` (scale B: feature 48, depths 2/2/2/2, heads 3/6/12/24; L: 96, 2/2/6/2; H: 192, 2/2/18/2).

Levels: MONAI's five hidden states with `normalize=True` (a LayerNorm over channels without affine), as PRISM
reads them: `stage0` (patch embedding, 1/2), `stage1` (1/4), `stage2` (1/8), `stage3` (1/16) and `final` (the
deepest, 1/32, 16 x feature channels: PRISM's latent).

Input axes: the cache holds (D, H, W) = (z, y, x) in LPS (x towards the patient's left, y posterior); PRISM feeds
NIfTI arrays after MONAI `Orientation("RAS")`, i.e. (x, y, z) with x towards the right and y anterior. With
`orientation="ras"` (default) the forward turns the cache's array into PRISM's (flip of y and x, then axes
reversed) and every level map back into (D, H, W) LPS; `orientation="dhw"` feeds the cache's array as it is.

Layouts: `monai` (a SwinUNETR state dict: `swinViT.*` kept, its decoder ignored; or a bare SwinTransformer's keys),
`prism` (PRISM's checkpoint `state_dict`: `swinViT.*` kept, the `D.swinViT.*` duplicates checked equal and
dropped, heads and decoder ignored) and `taskalign`. For both, a patch kernel with 1 input channel is expanded
to the geometry's input channels by repetition (`expand_as`, as PRISM's loader does), and the report says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from taskalign.models.families import Family, register
from taskalign.models.families.base import FINAL, FoundationEncoder, ImportRefused, Level, LoadReport

NAME = "swin3d"
ORIENTATIONS = ("ras", "dhw")
PATCH_KERNEL = "swinViT.patch_embed.proj.weight"


@dataclass(frozen=True)
class Swin3dGeometry:
    """Shapes of PRISM's Swin backbone (defaults: scale B) and the axis order it is fed in."""

    in_channels: int = 1
    feature_size: int = 48
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 2
    mlp_ratio: float = 4.0
    use_v2: bool = True
    img_size: tuple[int, int, int] = (64, 256, 256)  # (D, H, W); every axis a multiple of 32 (patch 2, 4 mergings)
    orientation: str = "ras"

    def __post_init__(self):
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"{NAME}: orientation {self.orientation!r}, expected one of {ORIENTATIONS}")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"{NAME}: depths {self.depths} and num_heads {self.num_heads} need 4 stages each")
        bad = [s for s in self.img_size if s % (self.patch_size * 16)]
        if bad:
            raise ValueError(f"{NAME}: image size {self.img_size} must be a multiple of {self.patch_size * 16} on "
                             "every axis (patch embedding and 4 patch mergings)")


class Swin3dEncoder(FoundationEncoder):
    family = NAME
    geometry_cls = Swin3dGeometry
    lora_targets = r".*layers[1-4]\.0\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(linear1|linear2))"
    # regexes (full match): SwinUNETR's decoder; PRISM's pretext heads, decoder and their ModuleDict aliases
    ignore_on_import = (
        r"(encoder(1|2|3|4|10)|decoder[1-5]|out)\..*",
        r"(G|D\.(?!swinViT\.)\w+)\..*",
        r"(meta_head|part_head|disc_head|recon_head|contrastive_head|str_contrastive_head|seq_contrastive_head"
        r"|structure_disentanglement|sequence_disentanglement|latent_agg|up_decoder|w_mapping|mix_w)\..*",
    )

    def __init__(self, geometry: Swin3dGeometry):
        super().__init__(geometry)
        g = geometry
        self.swinViT = SwinTransformer(
            in_chans=g.in_channels, embed_dim=g.feature_size, window_size=(g.window_size,) * 3,
            patch_size=(g.patch_size,) * 3, depths=g.depths, num_heads=g.num_heads, mlp_ratio=g.mlp_ratio,
            qkv_bias=True, norm_layer=nn.LayerNorm, spatial_dims=3, use_v2=g.use_v2)

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) cache order (LPS) -> the model's axis order."""
        return x.flip(3, 4).permute(0, 1, 4, 3, 2) if self.geometry.orientation == "ras" else x

    def _from_model(self, y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, 1, 4, 3, 2).flip(3, 4) if self.geometry.orientation == "ras" else y

    def levels(self) -> list[Level]:
        c, p = self.geometry.feature_size, self.geometry.patch_size
        names = ["stage0", "stage1", "stage2", "stage3", FINAL]
        return [Level(n, c * 2 ** i, (float(p * 2 ** i),) * 3) for i, n in enumerate(names)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.swinViT(self._to_model(x), normalize=True)
        return {level.name: self._from_model(h) for level, h in zip(self.levels(), hidden)}

    def partial_prefixes(self, k: int) -> list[str]:
        """The last k stages: each MONAI `layers<i>` (its Swin blocks and the patch merging that ends it) with the
        residual conv block `layers<i>c` that opens it (use_v2). The level norms have no parameters."""
        if not 1 <= k <= 4:
            raise ValueError(f"partial:{k}: {NAME} has 4 stages")
        stages = range(5 - k, 5)
        return [f"swinViT.layers{i}." for i in stages] + (
            [f"swinViT.layers{i}c." for i in stages] if self.geometry.use_v2 else [])

    def default_pyramid_levels(self) -> tuple[str, ...]:
        return ("stage1", "stage2", "stage3", FINAL)

    def pyramid(self, names: tuple[str, ...], channels: int) -> nn.Module:
        names = tuple(names) or self.default_pyramid_levels()
        by_name = {level.name: level for level in self.levels()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{NAME}: unknown pyramid levels {unknown}; levels: {list(by_name)}")
        from taskalign.models.upernet import LevelPyramid

        return LevelPyramid(names, tuple(by_name[n].channels for n in names), channels)


# --- checkpoint layouts ---------------------------------------------------------------------------------------

def _expand_patch_kernel(out: dict, geometry: Swin3dGeometry, report: LoadReport) -> None:
    """PRISM's loader: a kernel for 1 input channel copied to every input channel (`expand_as`)."""
    kernel = out.get(PATCH_KERNEL)
    if kernel is not None and kernel.ndim == 5 and kernel.shape[1] == 1 and geometry.in_channels > 1:
        out[PATCH_KERNEL] = kernel.expand(-1, geometry.in_channels, -1, -1, -1).clone()
        report.notes.append(f"{PATCH_KERNEL}: the checkpoint's 1-channel kernel repeated for "
                            f"{geometry.in_channels} input channels (PRISM's loader, expand_as)")


def _keep_backbone(state: dict, report: LoadReport, prefix: str = "") -> dict:
    """Ignore-listed keys into the report; every other key (the backbone, and anything unknown) passes on, under
    `prefix` + its name."""
    out = {}
    for key, value in state.items():
        if any(re.fullmatch(pattern, prefix + key) for pattern in Swin3dEncoder.ignore_on_import):
            report.ignored.append(key)
        else:
            out[prefix + key] = value
            report.mapping[prefix + key] = key
    return out


def convert_taskalign(state: dict, geometry: Swin3dGeometry, options: dict):
    report = LoadReport(NAME, "taskalign", options.get("source", ""))
    report.mapping = {k: k for k in state}
    return dict(state), report


def convert_monai(state: dict, geometry: Swin3dGeometry, options: dict):
    """SwinUNETR (`swinViT.*` + decoder) or a bare SwinTransformer (`patch_embed.*`, `layers1.*`, ...)."""
    report = LoadReport(NAME, "monai", options.get("source", ""))
    bare = not any(k.startswith("swinViT.") for k in state)
    if bare:
        report.notes.append("a bare SwinTransformer state dict: keys placed under `swinViT.`")
    out = _keep_backbone(state, report, "swinViT." if bare else "")
    _expand_patch_kernel(out, geometry, report)
    return out, report


def convert_prism(state: dict, geometry: Swin3dGeometry, options: dict):
    """PRISM's `state_dict`: every backbone tensor twice (`swinViT.*`, `D.swinViT.*`), heads and decoder."""
    report = LoadReport(NAME, "prism", options.get("source", ""))
    unequal = [k for k, v in state.items() if k.startswith("D.swinViT.")
               and (k[2:] not in state or state[k[2:]].shape != v.shape or not torch.equal(state[k[2:]], v))]
    if unequal:
        raise ImportRefused(f"{NAME}/prism: {len(unequal)} `D.swinViT.*` tensors differ from (or lack) their "
                            f"`swinViT.*` twin, e.g. {unequal[0]}: not one backbone saved twice")
    duplicates = [k for k in state if k.startswith("D.swinViT.")]
    out = _keep_backbone({k: v for k, v in state.items() if not k.startswith("D.swinViT.")}, report)
    report.ignored.extend(duplicates)
    if duplicates:
        report.notes.append(f"{len(duplicates)} `D.swinViT.*` duplicates equal to their `swinViT.*` twins: dropped")
    _expand_patch_kernel(out, geometry, report)
    return out, report


_KEY = re.compile(r"(?:^|\.)layers[1-4]\.0\.blocks\.\d+\.attn\.relative_position_bias_table$")


def recognises(state: dict) -> bool:
    """A MONAI Swin stage: `layers<i>.0.blocks.<j>.attn.relative_position_bias_table`, under any prefix."""
    return any(_KEY.search(k) for k in state)


register(Family(
    name=NAME,
    encoder_cls=Swin3dEncoder,
    layouts={"taskalign": convert_taskalign, "monai": convert_monai, "prism": convert_prism},
    recognises=recognises,
    description="MONAI SwinTransformer (SwinUNETR's swinViT; PRISM's backbone, use_v2)",
    layout_notes={
        "taskalign": "this pipeline's encoder files (the family's own keys)",
        "monai": "SwinUNETR state dict (swinViT.* kept, decoder ignored) or a bare SwinTransformer's keys",
        "prism": "PRISM checkpoint state_dict: swinViT.* kept, D.swinViT.* duplicates checked equal and dropped, "
                 "heads/decoder ignored; a 1-channel patch kernel expanded as PRISM's loader does",
    },
))
