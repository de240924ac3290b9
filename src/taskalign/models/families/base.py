"""The encoder protocol: what every stage may ask of a foundation-model encoder, whatever its family.

An encoder is a family (its module in this package), a geometry (the family's own frozen dataclass: everything
that fixes parameter shapes), weights, and an input contract (channel order, normalisation, spacing, crop). The
stages (task heads, protocols, LoRA, features, Table 6's layer columns) use only what is declared here and never
branch on a family's name; a family's particulars live in its own module.

Levels: an encoder names the outputs it exposes, shallow to deep (a ViT's blocks `block0` .. `block11`, a
hierarchical encoder's stages or blocks), plus `final` (the output after the final norm). `forward` returns each
as a feature map (B, C, d, h, w) in the input's (D, H, W) axis order; the features of CKA, MMD, the lens and the
probe are the spatial means of these maps. `pyramid` turns chosen levels into the four maps UperNet reads.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
from torch import nn

FINAL = "final"


@dataclass(frozen=True)
class Level:
    """One named output of an encoder: `channels` deep, one map voxel per `stride` input voxels along (D, H, W)."""

    name: str
    channels: int
    stride: tuple[float, float, float]


@dataclass(frozen=True)
class InputContract:
    """What an encoder expects to be fed, recorded in its file and checked by every stage that feeds it.

    channels: cache channel names in the order of the encoder's input channels.
    normalisation: `clip_zscore` (the cache's own: percentile-clipped z-score over the foreground) or
        `zscore_nonzero` (z-score over non-zero voxels, no clipping: MONAI NormalizeIntensity(nonzero=True,
        channel_wise=True), as ProFound and PRISM feed their models).
    spacing_mm, size: the (D, H, W) voxel spacing and crop the encoder was built for; None for 'any'."""

    channels: tuple[str, ...]
    normalisation: str = "clip_zscore"
    spacing_mm: tuple[float, float, float] | None = None
    size: tuple[int, int, int] | None = None

    NORMALISATIONS: ClassVar[tuple[str, ...]] = ("clip_zscore", "zscore_nonzero")

    def __post_init__(self):
        if self.normalisation not in self.NORMALISATIONS:
            raise ValueError(f"input normalisation {self.normalisation!r}: expected one of {self.NORMALISATIONS}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "InputContract":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclass
class LoadReport:
    """How a checkpoint became an encoder; stored in the encoder file's metadata.

    mapping: {encoder key: checkpoint key(s) it came from}; ignored: checkpoint keys on the family's documented
    ignore-list (decoders, mask tokens, heads); notes: what was changed on the way (a position table
    interpolated, a zero qkv bias for a checkpoint without one, ...)."""

    family: str
    layout: str
    source: str
    mapping: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class ImportRefused(ValueError):
    """A checkpoint that does not fit a family/layout/geometry; the message says which and the likely cause."""


def interpolate_positions(table: torch.Tensor, source_grid: tuple[int, int, int],
                          target_grid: tuple[int, int, int]) -> torch.Tensor:
    """A (1, N, C) position table on `source_grid` (tokens in (d, h, w) order, w fastest) resampled trilinearly to
    `target_grid`, (1, N', C)."""
    volume = table.transpose(1, 2).reshape(1, table.shape[2], *source_grid).float()
    resized = torch.nn.functional.interpolate(volume, size=tuple(target_grid), mode="trilinear", align_corners=False)
    return resized.flatten(2).transpose(1, 2).to(table.dtype).contiguous()


def geometry_from_json(geometry_cls, raw: dict):
    """A frozen geometry dataclass from JSON (lists back to tuples)."""
    names = {f.name for f in fields(geometry_cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{geometry_cls.__name__}: unknown geometry fields {unknown}")
    return geometry_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


class FoundationEncoder(nn.Module):
    """Base class of every family's encoder module.

    Subclasses set `family` and `geometry_cls`, take their geometry as the only required constructor argument,
    and implement `levels`, `forward`, `partial_prefixes` and `pyramid`. The parameter names are the family's
    own canonical key layout (what `state_dict` holds and our encoder files store)."""

    family: ClassVar[str]
    geometry_cls: ClassVar[type]
    # PEFT `target_modules` regex over module names: the linears LoRA adapts (attention and/or MLP).
    lora_targets: ClassVar[str]
    # checkpoint keys that are never part of this encoder (decoders, mask tokens, heads): skipped, and listed
    # in the load report; any other key without a place in the encoder is an import error.
    ignore_on_import: ClassVar[tuple[str, ...]] = ()

    def __init__(self, geometry):
        super().__init__()
        self.geometry = geometry

    # --- what the stages ask ----------------------------------------------------------------------------------

    def levels(self) -> list[Level]:
        """Every named level, shallow to deep, `final` last."""
        raise NotImplementedError

    def level_names(self) -> list[str]:
        return [level.name for level in self.levels()]

    def resolve_levels(self, refs) -> list[str]:
        """Level references from a config -> level names. A string is a level name; an integer n is the n-th
        level counted from the shallowest with `final` left out (vit3d: `block{n}`). `refs` may also be a map
        {family: references}: this family's entry is used, and a family without one gets [] (the caller's
        default). Unknown references are an error naming the levels there are."""
        if isinstance(refs, dict):
            refs = refs.get(self.family, [])
        names = self.level_names()
        inner = [n for n in names if n != FINAL]
        out, bad = [], []
        for ref in refs:
            if isinstance(ref, str) and ref in names:
                out.append(ref)
            elif isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(inner):
                out.append(inner[ref])
            else:
                bad.append(ref)
        if bad:
            raise ValueError(f"levels {bad} do not exist in this {self.family} encoder; its levels are "
                             f"{', '.join(names)} (integers 0..{len(inner) - 1} count them from the shallowest)")
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, in_channels, D, H, W) -> {level name: (B, C, d, h, w)} for every level of `levels()`."""
        raise NotImplementedError

    def pooled(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """The vector an MLP head reads, (B, C): the spatial mean of `final`."""
        return levels[FINAL].flatten(2).mean(dim=2)

    def partial_prefixes(self, k: int) -> list[str]:
        """Parameter-name prefixes trainable under `partial:k`: the last k blocks (or stages) with the norms that
        follow them. k larger than the family's unit count is an error naming that count."""
        raise NotImplementedError

    def pyramid(self, names: tuple[str, ...], channels: int) -> nn.Module:
        """A trainable module: {level: map} -> [4 maps of `channels` channels], finest first, for UperNet.
        `names`: the levels it reads (the family's default when empty)."""
        raise NotImplementedError

    def default_pyramid_levels(self) -> tuple[str, ...]:
        raise NotImplementedError

    # --- helpers shared by families -----------------------------------------------------------------------------

    def lora_module_count(self) -> int:
        """How many modules `lora_targets` matches (LoRA checks it reached all of them)."""
        return sum(1 for name, _ in self.named_modules() if re.fullmatch(self.lora_targets, name))
