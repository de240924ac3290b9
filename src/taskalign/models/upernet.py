"""Segmentation head of continual pretraining (seed 000) and of the segmentation/restoration tasks: a feature
pyramid from the encoder's family (`FoundationEncoder.pyramid`) and a UperNet decoder.

A ViT's pyramid is `ViTAdapter`: it resamples the maps of 4 chosen blocks to four scales (x4, x2, x1, x0.5 of the
token grid per axis; the x0.5 scale pools only the axes that have 2 or more tokens), so a plain ViT feeds a
feature pyramid. UperNet (Xiao et al. 2018): pyramid pooling (bins 1, 2, 3, 6, clamped to the map) on
the coarsest map, FPN top-down fusion, all levels upsampled to the finest and fused; logits are upsampled to
the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from taskalign.models.families.base import FoundationEncoder

SCALES = (4, 2, 1, 0.5)
POOL_BINS = (1, 2, 3, 6)


def _groups(channels: int) -> int:
    """Group norm works on 1x1x1 maps and batch 1, unlike batch or instance norm, given 2+ channels per group."""
    return next((g for g in (8, 4, 2) if channels % g == 0 and channels // g >= 2), 1)


def conv(in_ch: int, out_ch: int, kernel: int) -> Convolution:
    return Convolution(3, in_ch, out_ch, kernel_size=kernel, act="relu",
                       norm=("group", {"num_groups": _groups(out_ch)}), bias=False)


class ViTAdapter(nn.Module):
    """Block maps (B, hidden, D', H', W') of 4 levels -> feature maps (B, channels, ...) at SCALES of the token grid.
    `geometry`: a vit3d geometry (hidden_size, grid)."""

    def __init__(self, geometry, names: tuple[str, ...], channels: int):
        super().__init__()
        if len(names) != len(SCALES):
            raise ValueError(f"the adapter takes {len(SCALES)} levels, got {list(names)}")
        self.names = tuple(names)
        self.grid = geometry.grid
        hidden = geometry.hidden_size
        branches = []
        for scale in SCALES:
            if scale > 1:
                resample = nn.ConvTranspose3d(hidden, hidden, kernel_size=int(scale), stride=int(scale))
            elif scale < 1:
                window = tuple(2 if g >= 2 else 1 for g in self.grid)
                resample = nn.MaxPool3d(window, window)
            else:
                resample = nn.Identity()
            branches.append(nn.Sequential(resample, conv(hidden, channels, 1)))
        self.branches = nn.ModuleList(branches)

    def forward(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [branch(levels[name]) for name, branch in zip(self.names, self.branches)]


class LevelPyramid(nn.Module):
    """{level: map} -> [map per named level, resampled and projected to `channels` by a 1x1 conv], finest first:
    the pyramid of the hierarchical families (convnextv2_3d, swin3d: levels already multi-scale, resample =
    identity) and of vit2d (its slice maps resampled to 4 scales)."""

    def __init__(self, names: tuple[str, ...], in_channels: tuple[int, ...], channels: int,
                 resample: tuple[nn.Module, ...] | None = None):
        super().__init__()
        if len(names) != 4:
            raise ValueError(f"UperNet reads 4 levels, got {names}")
        resample = resample or tuple(nn.Identity() for _ in names)
        self.names = tuple(names)
        self.branches = nn.ModuleList(nn.Sequential(r, nn.Conv3d(c, channels, kernel_size=1))
                                      for r, c in zip(resample, in_channels))

    def forward(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [branch(levels[name]) for name, branch in zip(self.names, self.branches)]


class PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins: tuple[int, ...] = POOL_BINS):
        super().__init__()
        self.bins = bins
        self.convs = nn.ModuleList(conv(channels, channels, 1) for _ in bins)
        self.fuse = conv(channels * (len(bins) + 1), channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [x]
        for b, block in zip(self.bins, self.convs):
            out = F.adaptive_avg_pool3d(x, tuple(min(b, s) for s in size))
            pooled.append(F.interpolate(block(out), size=size, mode="trilinear", align_corners=False))
        return self.fuse(torch.cat(pooled, dim=1))


class UperNetDecoder(nn.Module):
    """Feature pyramid (finest first) -> logits at the finest scale."""

    def __init__(self, channels: int, levels: int, out_channels: int):
        super().__init__()
        self.ppm = PyramidPooling(channels)
        self.lateral = nn.ModuleList(conv(channels, channels, 1) for _ in range(levels - 1))
        self.fpn = nn.ModuleList(conv(channels, channels, 3) for _ in range(levels - 1))
        self.fuse = conv(channels * levels, channels, 3)
        self.classifier = nn.Conv3d(channels, out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fused(features))

    def fused(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The fused pyramid at the finest scale, (B, channels, ...): what heads other than the classifier read."""
        top = self.ppm(features[-1])
        laterals = [lat(f) for lat, f in zip(self.lateral, features[:-1])] + [top]
        for i in range(len(laterals) - 2, -1, -1):  # top-down
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[2:], mode="trilinear",
                                                      align_corners=False)
        outs = [fpn(x) for fpn, x in zip(self.fpn, laterals[:-1])] + [top]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="trilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(outs, dim=1))


class EncoderUperNet(nn.Module):
    """Encoder (plain or LoRA-injected) + its family's pyramid + UperNet: image (B, C, D, H, W) -> logits
    (B, out, D, H, W). `layers`: the pyramid's levels (names, or integers counting the encoder's levels;
    `FoundationEncoder.resolve_levels`); empty for the family's default."""

    def __init__(self, encoder: FoundationEncoder, out_channels: int, layers: tuple, channels: int):
        super().__init__()
        self.encoder = encoder
        self.adapter = encoder.pyramid(tuple(encoder.resolve_levels(layers)), channels)
        self.decoder = UperNetDecoder(channels, len(SCALES), out_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.adapter(self.encoder(image)))
        return F.interpolate(logits, size=image.shape[2:], mode="trilinear", align_corners=False)
