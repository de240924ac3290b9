"""Family `vit3d`: a 3D ViT (MONAI's ViT blocks with separate Q, K, V projections, optional class token).

MONAI's `ViT` builds its blocks with a fused `qkv` linear and no way to ask for separate ones. Continual
pretraining needs separate low-rank updates on Q, K and V (seed 000), so the blocks are rebuilt with
`use_combined_linear=False` (`attn.to_q`, `attn.to_k`, `attn.to_v`, `attn.out_proj`) and
`use_flash_attention=True` (PyTorch's fused scaled-dot-product attention, on CPU and GPU).

Levels: `block0` .. `block{L-1}` (each block's output, before the final norm) and `final` (after it), each a map
(B, hidden, D', H', W') of the patch tokens (class token left out). Pyramid: `ViTAdapter` on 4 blocks.
`partial:k`: the last k blocks and the final norm. LoRA: Q, K, V and O of every block.

Layouts (checkpoint key layouts this family imports):
- `taskalign`: our own keys (an encoder file's tensors).
- `profound`: timm keys as ProFound's ViT-MAE (`models/mae.py`) saves them: `patch_embed.proj`, `pos_embed`
  (class-token position row first), `cls_token`, `blocks.N.norm1/norm2`, a fused `blocks.N.attn.qkv` (rows
  [Q; K; V]), `attn.proj`, `mlp.fc1/fc2`, `norm`. Its LayerNorms have eps 1e-6 (give `layer_norm_eps: 1e-6`).
  Our encoder has no class-token position embedding: that row is added to the class token itself, which gives
  the same token into block 0. `decoder_*` and `mask_token` are the MAE decoder's: ignored.
- `monai`: MONAI `ViT` and `MaskedAutoEncoderViT`: fused `attn.qkv` split into Q, K, V; a checkpoint without a
  qkv bias (MONAI's default `qkv_bias=False`) gets zero biases, noted in the load report; the MAE's final norm
  stored as `blocks.<L>.*` is renamed `norm.*`; the MAE's class token takes no position embedding (as MONAI
  prepends it after the position embedding is added); `norm_cross_attn`, `cross_attn`, `decoder_*`,
  `mask_tokens` and `classification_head` are ignored.

The patch embedding's Conv3d (kernel = stride = patch) runs as patchify + one matmul (`PatchConv3d`): the same
weights under the same keys, about 1.5x faster forward + backward on CPU (benchmarks/bench_train.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from monai.networks.blocks.transformerblock import TransformerBlock
from monai.networks.nets import ViT
from torch import nn

from taskalign.models.families import Family, register
from taskalign.models.families.base import (FINAL, FoundationEncoder, ImportRefused, Level, LoadReport,
                                            interpolate_positions)

FAMILY = "vit3d"


@dataclass(frozen=True)
class ViT3dGeometry:
    """Everything that fixes the encoder's parameter shapes and numerics."""

    in_channels: int
    img_size: tuple[int, int, int]  # (D, H, W) voxels
    patch_size: tuple[int, int, int]
    hidden_size: int
    mlp_dim: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float = 1e-5  # ProFound's timm blocks: 1e-6
    class_token: bool = True  # False: MONAI ViT(classification=False) and other ViTs without one
    qkv_bias: bool = True

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (D', H', W')."""
        return tuple(i // p for i, p in zip(self.img_size, self.patch_size))

    @property
    def n_tokens(self) -> int:
        d, h, w = self.grid
        return d * h * w

    @classmethod
    def from_config(cls, config: dict) -> "ViT3dGeometry":
        """The pipeline's own encoder, from the validated workflow config (sections `encoder` and `preprocess`)."""
        enc, pre = config["encoder"], config["preprocess"]
        return cls(in_channels=len(pre["channels"]), img_size=tuple(pre["size"]), patch_size=tuple(enc["patch_size"]),
                   hidden_size=enc["hidden_size"], mlp_dim=enc["mlp_dim"], num_layers=enc["num_layers"],
                   num_heads=enc["num_heads"])

    def check(self) -> None:
        for axis, (i, p) in enumerate(zip(self.img_size, self.patch_size)):
            if i % p:
                raise ValueError(f"image size {self.img_size} is not divisible by patch size {self.patch_size} (axis {axis})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


class PatchConv3d(nn.Conv3d):
    """A Conv3d whose kernel equals its stride (no padding, no dilation), computed as patchify + matmul.

    Returns the Conv3d's (B, out, D', H', W') as a view of (B, N, out) tokens, so MONAI's flatten + transpose that
    follows copies nothing. The sums run in another order than the convolution's: equal to float tolerance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        grid = [size // k for size, k in zip(x.shape[2:], self.kernel_size)]
        if [g * k for g, k in zip(grid, self.kernel_size)] != list(x.shape[2:]):
            return super().forward(x)  # a size the patches do not tile: the convolution's cropping semantics
        (gd, gh, gw), (kd, kh, kw) = grid, self.kernel_size
        patches = x.reshape(b, c, gd, kd, gh, kh, gw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, gd * gh * gw, -1)
        tokens = nn.functional.linear(patches, self.weight.flatten(1), self.bias)
        return tokens.transpose(1, 2).unflatten(2, grid)

    @classmethod
    def replacing(cls, conv: nn.Conv3d) -> PatchConv3d:
        """The same parameters (not copies) in a PatchConv3d; built on the meta device, so no RNG draw moves."""
        if conv.kernel_size != conv.stride or any(conv.padding) or conv.groups != 1 or any(d != 1 for d in conv.dilation):
            raise ValueError(f"PatchConv3d needs kernel = stride, no padding/dilation/groups, got {conv}")
        patch = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                    device="meta")
        patch.weight, patch.bias = conv.weight, conv.bias
        return patch


class ViT3dEncoder(FoundationEncoder):
    """Patch embedding + position table (MONAI's), optional class token, L pre-norm blocks with split Q/K/V, norm.

    Built from a MONAI `ViT` whose blocks are replaced; the random init draws the same numbers in the same order as
    the encoder of earlier versions (the seeded random-weight encoder is unchanged)."""

    family = FAMILY
    geometry_cls = ViT3dGeometry
    lora_targets = r".*blocks\.\d+\.attn\.(to_q|to_k|to_v|out_proj)"

    def __init__(self, geometry: ViT3dGeometry, dropout_rate: float = 0.0):
        super().__init__(geometry)
        geometry.check()
        vit = ViT(in_channels=geometry.in_channels, img_size=geometry.img_size, patch_size=geometry.patch_size,
                  hidden_size=geometry.hidden_size, mlp_dim=geometry.mlp_dim, num_layers=geometry.num_layers,
                  num_heads=geometry.num_heads, proj_type="conv", pos_embed_type="learnable",
                  classification=geometry.class_token, dropout_rate=dropout_rate, spatial_dims=3,
                  qkv_bias=geometry.qkv_bias)
        self.patch_embedding = vit.patch_embedding
        self.patch_embedding.patch_embeddings = PatchConv3d.replacing(self.patch_embedding.patch_embeddings)
        if geometry.class_token:
            self.cls_token = vit.cls_token
        self.blocks = nn.ModuleList(
            TransformerBlock(geometry.hidden_size, geometry.mlp_dim, geometry.num_heads, dropout_rate,
                             qkv_bias=geometry.qkv_bias, use_flash_attention=True, use_combined_linear=False)
            for _ in range(geometry.num_layers)
        )
        self.norm = nn.LayerNorm(geometry.hidden_size, eps=geometry.layer_norm_eps)
        for block in self.blocks:
            block.norm_cross_attn = nn.Identity()  # built by MONAI, never used by a ViT: not part of its weights
            block.norm1.eps = block.norm2.eps = geometry.layer_norm_eps
        if geometry.class_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    # --- the token-level interface (MAE pretraining runs the blocks on the visible tokens only) -----------------

    @property
    def n_prefix(self) -> int:
        """Tokens before the patch tokens (the class token)."""
        return int(self.geometry.class_token)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embedding, (B, N, hidden); no class token."""
        return self.patch_embedding(x)

    def run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prepend the class token (if any) to (B, n, hidden) tokens (any subset, e.g. MAE's visible ones), run the
        blocks. Returns (final-normed (B, n_prefix + n, hidden), [per-block output (B, n_prefix + n, hidden)])."""
        x = tokens
        if self.geometry.class_token:
            x = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden

    def tokens_to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, hidden) -> feature map (B, hidden, D', H', W'), a view (no copy)."""
        return tokens.transpose(1, 2).unflatten(2, self.geometry.grid)

    # --- the protocol -------------------------------------------------------------------------------------------

    def levels(self) -> list[Level]:
        stride = tuple(float(p) for p in self.geometry.patch_size)
        return [Level(f"block{i}", self.geometry.hidden_size, stride) for i in range(self.geometry.num_layers)] + \
            [Level(FINAL, self.geometry.hidden_size, stride)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        normed, hidden = self.run_blocks(self.embed(x))
        p = self.n_prefix
        out = {f"block{i}": self.tokens_to_volume(h[:, p:]) for i, h in enumerate(hidden)}
        out[FINAL] = self.tokens_to_volume(normed[:, p:])
        return out

    def partial_prefixes(self, k: int) -> list[str]:
        n = self.geometry.num_layers
        if not 0 <= k <= n:
            raise ValueError(f"partial:{k}: the vit3d encoder has {n} blocks")
        return [f"blocks.{i}." for i in range(n - k, n)] + (["norm."] if k else [])

    def default_pyramid_levels(self) -> tuple[str, ...]:
        n = self.geometry.num_layers
        return tuple(f"block{max(round((i + 1) * n / 4) - 1, 0)}" for i in range(4))

    def pyramid(self, names: tuple[str, ...], channels: int) -> nn.Module:
        from taskalign.models.upernet import ViTAdapter

        return ViTAdapter(self.geometry, tuple(names) or self.default_pyramid_levels(), channels)


# ------------------------------------------------------------------------------------------------ checkpoint layouts

IGNORE = {
    "taskalign": (),
    "profound": (r"decoder_.*", r"mask_token", r"head\..*", r"fc_norm\..*"),
    "monai": (r"decoder_.*", r"mask_tokens?", r"classification_head\..*", r"blocks\.\d+\.norm_cross_attn\..*",
              r"blocks\.\d+\.cross_attn\..*"),
}


def _ignored(layout: str, key: str) -> bool:
    return any(re.fullmatch(pattern, key) for pattern in IGNORE[layout])


def _split_qkv(out: dict, report: LoadReport, key: str, value: torch.Tensor, block: str, part: str) -> None:
    for name, piece in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
        ours = f"blocks.{block}.attn.{name}.{part}"
        out[ours], report.mapping[ours] = piece.clone(), key


def _position_table(table: torch.Tensor, geometry: ViT3dGeometry, options: dict, report: LoadReport,
                    key: str) -> torch.Tensor:
    """The patch position table (1, N, hidden) for the geometry's grid: as stored, or interpolated from the grid
    of the crop the checkpoint was trained at (`options["checkpoint_size"]`) when that differs."""
    source = options.get("checkpoint_size")
    if source is None or tuple(source) == tuple(geometry.img_size):
        return table  # a wrong token count is refused with the other shape mismatches
    src_grid = tuple(s // p for s, p in zip(source, geometry.patch_size))
    if src_grid[0] * src_grid[1] * src_grid[2] != table.shape[1]:
        raise ImportRefused(f"{key} holds {table.shape[1]} positions; the checkpoint's crop {list(source)} with patch "
                            f"{list(geometry.patch_size)} gives a {src_grid} grid of "
                            f"{src_grid[0] * src_grid[1] * src_grid[2]}")
    report.notes.append(f"position embeddings {key} interpolated (trilinear) from the {src_grid} token grid of the "
                        f"checkpoint's crop {list(source)} to the {geometry.grid} grid of {list(geometry.img_size)}")
    return interpolate_positions(table, src_grid, geometry.grid)


def from_taskalign(state: dict, geometry: ViT3dGeometry, options: dict) -> tuple[dict, LoadReport]:
    report = LoadReport(FAMILY, "taskalign", options.get("source", ""))
    out = dict(state)
    report.mapping = {k: k for k in state}
    key = "patch_embedding.position_embeddings"
    if key in out:
        out[key] = _position_table(out[key], geometry, options, report, key)
    return out, report


TIMM_RENAMES = [
    (r"^patch_embed\.proj\.", "patch_embedding.patch_embeddings."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"blocks.\1.attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.linear1."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.linear2."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^norm\.", "norm."),
]


def from_profound(state: dict, geometry: ViT3dGeometry, options: dict) -> tuple[dict, LoadReport]:
    """timm keys (ProFound's ViT-MAE) -> ours. Keys that match no rule are passed on unchanged (and so refused as
    unexpected unless they are on the ignore-list)."""
    report = LoadReport(FAMILY, "profound", options.get("source", ""))
    out = {}
    for key, value in state.items():
        if _ignored("profound", key):
            report.ignored.append(key)
            continue
        if key in ("pos_embed", "cls_token"):
            continue
        qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            _split_qkv(out, report, key, value, qkv.group(1), qkv.group(2))
            continue
        for pattern, repl in TIMM_RENAMES:
            if re.match(pattern, key):
                ours = re.sub(pattern, repl, key)
                out[ours], report.mapping[ours] = value, key
                break
        else:
            out[key] = value
    pos = state.get("pos_embed")
    prefix = int("cls_token" in state)  # a timm table has a class-token row exactly when there is a class token
    if pos is not None:
        ours = "patch_embedding.position_embeddings"
        out[ours] = _position_table(pos[:, prefix:], geometry, options, report, "pos_embed")
        report.mapping[ours] = "pos_embed"
    if "cls_token" in state:
        cls = state["cls_token"]
        if pos is not None:
            cls = cls + pos[:, :1]
            report.notes.append("cls_token: the class-token row of pos_embed added to it (our class token has no "
                                "position embedding)")
        out["cls_token"], report.mapping["cls_token"] = cls, "cls_token" + (" + pos_embed[:, 0]" if pos is not None else "")
    return out, report


def from_monai(state: dict, geometry: ViT3dGeometry, options: dict) -> tuple[dict, LoadReport]:
    """MONAI `ViT` / `MaskedAutoEncoderViT` keys -> ours."""
    report = LoadReport(FAMILY, "monai", options.get("source", ""))
    n = geometry.num_layers
    mae_norm = f"blocks.{n}."
    renamed = {}
    # the MAE stores its final norm as the last entry of its block Sequential: a LayerNorm's weight and bias only
    if "norm.weight" not in state and f"{mae_norm}weight" in state and state[f"{mae_norm}weight"].dim() == 1 and \
            all(k[len(mae_norm):] in ("weight", "bias") for k in state if k.startswith(mae_norm)):
        renamed = {f"norm.{k[len(mae_norm):]}": k for k in state if k.startswith(mae_norm)}
        state = {(f"norm.{k[len(mae_norm):]}" if k.startswith(mae_norm) else k): v for k, v in state.items()}
        report.notes.append(f"final norm read from {mae_norm}weight/bias (MaskedAutoEncoderViT layout)")
    out = {}
    for key, value in state.items():
        if _ignored("monai", key):
            report.ignored.append(key)
            continue
        qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            _split_qkv(out, report, key, value, qkv.group(1), qkv.group(2))
            continue
        out[key], report.mapping[key] = value, renamed.get(key, key)
    if geometry.qkv_bias:
        zeros = []
        for i in range(n):
            if f"blocks.{i}.attn.qkv.weight" in state and f"blocks.{i}.attn.qkv.bias" not in state:
                for name in ("to_q", "to_k", "to_v"):
                    ours = f"blocks.{i}.attn.{name}.bias"
                    out[ours] = torch.zeros(geometry.hidden_size, dtype=state[f"blocks.{i}.attn.qkv.weight"].dtype)
                    report.mapping[ours] = "(zeros)"
                zeros.append(i)
        if zeros:
            report.notes.append(f"qkv bias absent in the checkpoint (MONAI's qkv_bias=False): Q, K, V biases of "
                                f"{len(zeros)} blocks set to zero, which computes the same")
    key = "patch_embedding.position_embeddings"
    if key in out:
        out[key] = _position_table(out[key], geometry, options, report, key)
    if "cls_token" in out and geometry.class_token:
        report.notes.append("cls_token used as stored, without a position embedding (MONAI prepends it after the "
                            "position embedding is added)")
    return out, report


def recognises(state: dict) -> bool:
    """Any of the three layouts: a patch-embedding Conv3d kernel and ViT blocks with attention and an MLP."""
    keys = set(state)
    conv = next((state[k] for k in ("patch_embedding.patch_embeddings.weight", "patch_embed.proj.weight") if k in keys),
                None)
    blocks = any(re.match(r"^blocks\.0\.attn\.(qkv|to_q)\.weight$", k) for k in keys)
    return conv is not None and conv.dim() == 5 and blocks


register(Family(
    name=FAMILY,
    encoder_cls=ViT3dEncoder,
    layouts={"taskalign": from_taskalign, "profound": from_profound, "timm": from_profound, "monai": from_monai},
    recognises=recognises,
    description="3D ViT (MONAI blocks, split Q/K/V): the pipeline's own encoder, ProFound's ViT-MAE, MONAI ViT/MAE",
    layout_notes={
        "taskalign": "this pipeline's encoder files",
        "profound": "ProFound's ViT-MAE (timm keys, fused qkv, class-token position row; eps 1e-6)",
        "timm": "alias of profound",
        "monai": "MONAI ViT / MaskedAutoEncoderViT (fused qkv, optional qkv bias, MAE norm as blocks.<L>)",
    },
))
