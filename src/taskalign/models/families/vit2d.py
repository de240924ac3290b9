"""Family `vit2d`: a DINOv2 ViT (patch 14, register tokens, LayerScale) applied slice by slice as ProViCNet does.

The ViT is DINOv2's `DinoVisionTransformer` (facebookresearch/dinov2; ProViCNet uses hub `dinov2_vits14_reg`:
width 384, depth 12, 6 heads, 4 registers, LayerNorm eps 1e-6, position table for 518 px = 37 x 37 patches,
resized bicubic with antialias and no offset), with DINOv2's parameter names. How a volume is fed is ProViCNet's
(pimed/ProViCNet `Prostate_DataGenerator.getNChannel`, `ProViCNet.prepare_tokens_with_axispos`):
- one modality: the encoder has 1 input channel, and the input contract names the cache channel (ProViCNet trains
  one model per modality: T2, ADC, DWI);
- every axial slice j is resized (bilinear) to `slice_size` (ProViCNet: 448) and becomes one 2D sample whose 3
  channels are slices j-1, j, j+1, the triplet shifted inwards at the first and last slice;
- tokens: [class, registers, axis_pos(j), axis_max(S), patches], the position table added to the class and patch
  tokens only; `axis_pos` and `axis_max` are Linear(1, width) of the raw slice index j and slice count S
  (`axis_tokens=False` for a plain DINOv2 without them);
- the patch tokens of the S slices are stacked along z: a (B, width, S, H/14, W/14) map.

Levels: `block0` .. `block{depth-1}` (each block's patch tokens, before the final norm) and `final` (after it).
The class, register and axis tokens are not part of any level.

Layouts: `dinov2` (the hub model's keys; `mask_token` ignored), `provicnet` (ProViCNet's `T2_best.pth` etc.:
`backbone.*` + `axis_pos`/`axis_max`; the segmentation head `head.*`, the contrastive head `CL_Head.*` and
`backbone.mask_token` ignored) and `taskalign`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taskalign.models.families import Family, register
from taskalign.models.families.base import FINAL, FoundationEncoder, Level, LoadReport

NAME = "vit2d"


@dataclass(frozen=True)
class ViT2dGeometry:
    """Shapes of the 2D ViT (defaults: DINOv2 ViT-S/14 with 4 registers, as in ProViCNet) and how a volume is fed."""

    width: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 14
    n_registers: int = 4
    mlp_ratio: float = 4.0
    img_size: tuple[int, int, int] = (64, 256, 256)  # (D, H, W) of the volume fed (the cache's crop)
    slice_size: tuple[int, int] = (448, 448)  # each slice resized to this (multiples of `patch`) before the ViT
    pos_grid: int = 37  # side of the stored position table (DINOv2: 518 / 14)
    axis_tokens: bool = True  # ProViCNet's axis_pos / axis_max tokens
    slice_channels: int = 3  # slices j - 1, j, j + 1 as the 3 image channels
    eps: float = 1e-6

    def __post_init__(self):
        if any(s % self.patch for s in self.slice_size):
            raise ValueError(f"{NAME}: slice size {self.slice_size} must be a multiple of the patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"{NAME}: width {self.width} is not divisible by {self.heads} heads")
        if self.slice_channels % 2 == 0:
            raise ValueError(f"{NAME}: slice_channels {self.slice_channels} must be odd (a centre slice)")
        _check_slices(self.img_size[0], self.slice_channels)

    @property
    def tokens(self) -> tuple[int, int]:
        return self.slice_size[0] // self.patch, self.slice_size[1] // self.patch


def _check_slices(n_slices: int, slice_channels: int) -> None:
    if n_slices < 2 * slice_channels:
        # ProViCNet zero-pads such volumes, which changes the slice count; not reproduced
        raise ValueError(f"{NAME}: a volume of {n_slices} slices; ProViCNet's slicing needs at least "
                         f"{2 * slice_channels} for {slice_channels}-slice stacks")


def slice_stack_index(n_slices: int, slice_channels: int) -> torch.Tensor:
    """(S, slice_channels) slice indices of each sample: ProViCNet's `getNChannel` (centre moved inwards at the ends)."""
    half, rows = slice_channels // 2, []
    for j in range(n_slices):
        centre = j + half if j - half < 0 else j - half if j + half >= n_slices else j
        rows.append(list(range(centre - half, centre + half + 1)))
    return torch.tensor(rows)


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """DINOv2's pre-norm block with LayerScale on both residual branches."""

    def __init__(self, g: ViT2dGeometry):
        super().__init__()
        self.norm1 = nn.LayerNorm(g.width, eps=g.eps)
        self.attn = Attention(g.width, g.heads)
        self.ls1 = LayerScale(g.width)
        self.norm2 = nn.LayerNorm(g.width, eps=g.eps)
        self.mlp = Mlp(g.width, int(g.width * g.mlp_ratio))
        self.ls2 = LayerScale(g.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, g: ViT2dGeometry):
        super().__init__()
        self.proj = nn.Conv2d(g.slice_channels, g.width, kernel_size=g.patch, stride=g.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ResampleTo(nn.Module):
    """A (B, C, d, h, w) map at `stride` input voxels per map voxel -> the same map at `target` voxels per map voxel
    on each axis (average pooling where coarser, trilinear where finer; no parameters)."""

    def __init__(self, stride: tuple[float, float, float], target: float):
        super().__init__()
        self.factors = tuple(s / target for s in stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(max(1, round(n * f)) for n, f in zip(x.shape[2:], self.factors))
        x = F.adaptive_avg_pool3d(x, tuple(min(n, s) for n, s in zip(x.shape[2:], size)))
        if tuple(x.shape[2:]) != size:
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return x


class ViT2dEncoder(FoundationEncoder):
    family = NAME
    geometry_cls = ViT2dGeometry
    lora_targets = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
    # regexes (full match) over the keys after the layout's renaming
    ignore_on_import = (r"mask_token", r"head\..*", r"CL_Head\..*")

    def __init__(self, geometry: ViT2dGeometry):
        super().__init__(geometry)
        g = geometry
        self.patch_embed = PatchEmbed(g)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, g.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g.pos_grid ** 2, g.width))
        self.register_tokens = nn.Parameter(torch.zeros(1, g.n_registers, g.width))
        self.blocks = nn.ModuleList(Block(g) for _ in range(g.depth))
        self.norm = nn.LayerNorm(g.width, eps=g.eps)
        if g.axis_tokens:
            self.axis_pos = nn.Linear(1, g.width)
            self.axis_max = nn.Linear(1, g.width)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: class, registers and (ProViCNet) the two axis tokens."""
        return 1 + self.geometry.n_registers + (2 if self.geometry.axis_tokens else 0)

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """DINOv2's `interpolate_pos_encoding` (interpolate_offset 0, antialias): (1, 1 + h * w, width)."""
        m = self.geometry.pos_grid
        if h * w == m * m and h == w:
            return self.pos_embed
        table = self.pos_embed.float()
        grid = table[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True)
        return torch.cat((table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)), dim=1).to(self.pos_embed.dtype)

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B * D, slice_channels, *slice_size): resized slices stacked with their neighbours."""
        b, c, d, hh, ww = x.shape
        if c != 1:
            raise ValueError(f"{NAME}: the encoder takes 1 channel (one modality), got {c}")
        _check_slices(d, self.geometry.slice_channels)
        flat = x.reshape(b * d, 1, hh, ww)
        if (hh, ww) != tuple(self.geometry.slice_size):
            flat = F.interpolate(flat, size=self.geometry.slice_size, mode="bilinear", align_corners=False)
        index = slice_stack_index(d, self.geometry.slice_channels).to(x.device)
        return flat.reshape(b, d, *flat.shape[2:])[:, index].flatten(0, 1)

    def tokens(self, images: torch.Tensor, n_slices: int) -> torch.Tensor:
        """(B * S, 3, h, w) slice stacks -> the token sequence before the first block."""
        n = images.shape[0]
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = x + self.position_table(images.shape[2] // self.geometry.patch, images.shape[3] // self.geometry.patch)
        parts = [x[:, :1], self.register_tokens.expand(n, -1, -1)]
        if self.geometry.axis_tokens:
            j = torch.arange(n_slices, device=x.device, dtype=x.dtype).repeat(n // n_slices)[:, None]
            parts += [self.axis_pos(j)[:, None], self.axis_max(torch.full_like(j, float(n_slices)))[:, None]]
        return torch.cat(parts + [x[:, 1:]], dim=1)

    def levels(self) -> list[Level]:
        g = self.geometry
        stride = (1.0, g.img_size[1] / g.tokens[0], g.img_size[2] / g.tokens[1])
        return [Level(f"block{i}", g.width, stride) for i in range(g.depth)] + [Level(FINAL, g.width, stride)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, d = x.shape[0], x.shape[2]
        images = self.slices(x)
        h, w = images.shape[2] // self.geometry.patch, images.shape[3] // self.geometry.patch
        p = self.n_prefix

        def volume(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, p:].reshape(b, d, h, w, -1).permute(0, 4, 1, 2, 3)

        t, out = self.tokens(images, d), {}
        for i, block in enumerate(self.blocks):
            t = block(t)
            out[f"block{i}"] = volume(t)
        out[FINAL] = volume(self.norm(t))
        return out

    def partial_prefixes(self, k: int) -> list[str]:
        n = self.geometry.depth
        if not 1 <= k <= n:
            raise ValueError(f"partial:{k}: {NAME} has {n} blocks")
        return [f"blocks.{i}." for i in range(n - k, n)] + ["norm."]

    def default_pyramid_levels(self) -> tuple[str, ...]:
        n = self.geometry.depth
        return tuple(f"block{max(round((i + 1) * n / 4) - 1, 0)}" for i in range(4))

    def pyramid(self, names: tuple[str, ...], channels: int) -> nn.Module:
        """Four blocks' maps resampled to 4, 8, 16 and 32 input voxels per map voxel on every axis (the slice maps
        are full resolution along z and 1/14 of the resized slice in-plane), then projected by a 1x1 conv."""
        names = tuple(names) or self.default_pyramid_levels()
        by_name = {level.name: level for level in self.levels()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{NAME}: unknown pyramid levels {unknown}; levels: {list(by_name)}")
        resample = tuple(ResampleTo(by_name[n].stride, 4.0 * 2 ** i) for i, n in enumerate(names))
        from taskalign.models.upernet import LevelPyramid

        return LevelPyramid(names, (self.geometry.width,) * len(names), channels, resample)


# --- checkpoint layouts ---------------------------------------------------------------------------------------

def _split(state: dict, layout: str, prefix: str, options: dict) -> tuple[dict, LoadReport]:
    """Strip `prefix` from the backbone's keys; ignore-listed keys into the report, every other key passed on."""
    report = LoadReport(NAME, layout, options.get("source", ""))
    out = {}
    for key, value in state.items():
        new = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if any(re.fullmatch(pattern, new) for pattern in ViT2dEncoder.ignore_on_import):
            report.ignored.append(key)
            continue
        out[new] = value
        report.mapping[new] = key
    return out, report


def convert_taskalign(state: dict, geometry: ViT2dGeometry, options: dict):
    report = LoadReport(NAME, "taskalign", options.get("source", ""))
    report.mapping = {k: k for k in state}
    return dict(state), report


def convert_dinov2(state: dict, geometry: ViT2dGeometry, options: dict):
    """A DINOv2 hub backbone's state dict (`block_chunks=0` keys: `blocks.<i>.*`)."""
    return _split(state, "dinov2", "", options)


def convert_provicnet(state: dict, geometry: ViT2dGeometry, options: dict):
    """ProViCNet's model file: `backbone.*` (DINOv2), `axis_pos`, `axis_max`; heads ignored."""
    return _split(state, "provicnet", "backbone.", options)


def recognises(state: dict) -> bool:
    """A 2D (Conv2d patch kernel) ViT with DINOv2's register tokens or LayerScale, under any prefix."""
    kernels = [v for k, v in state.items() if re.search(r"(?:^|\.)patch_embed\.proj\.weight$", k)]
    dinov2 = any(re.search(r"(?:^|\.)(register_tokens|blocks\.\d+\.ls1\.gamma)$", k) for k in state)
    return dinov2 and any(v.ndim == 4 for v in kernels)


register(Family(
    name=NAME,
    encoder_cls=ViT2dEncoder,
    layouts={"taskalign": convert_taskalign, "dinov2": convert_dinov2, "provicnet": convert_provicnet},
    recognises=recognises,
    description="DINOv2 ViT (patch 14, registers, LayerScale) applied slice by slice as ProViCNet does",
    layout_notes={
        "taskalign": "this pipeline's encoder files (the family's own keys)",
        "dinov2": "facebookresearch/dinov2 hub keys (mask_token ignored); use axis_tokens=false",
        "provicnet": "ProViCNet model file: backbone.* + axis_pos/axis_max; head.*, CL_Head.*, mask_token ignored",
    },
))
