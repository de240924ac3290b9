"""The 3D ViT encoder: MONAI's ViT with separate Q, K, V projections and a class token.

MONAI's `ViT` builds its blocks with a fused `qkv` linear and no way to ask for separate ones. Continual
pretraining needs separate low-rank updates on Q, K and V (seed 000), so the blocks are rebuilt with
`use_combined_linear=False` (`attn.to_q`, `attn.to_k`, `attn.to_v`, `attn.out_proj`) and
`use_flash_attention=True` (PyTorch's fused scaled-dot-product attention, on CPU and GPU). The class token follows
the timm/ProFound layout so that published encoders load with a plain key map (taskalign.models.checkpoint_io).

Forward: `x (B, C, D, H, W) -> (normed (B, 1 + N, hidden), hidden_states [num_layers x (B, 1 + N, hidden)])`,
token 0 the class token, hidden states before the final norm (as MONAI returns them).

The patch embedding's Conv3d (kernel = stride = patch) runs as patchify + one matmul (`PatchConv3d`): the same
weights under the same keys, about 1.5x faster forward + backward on CPU (benchmarks/bench_train.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks.transformerblock import TransformerBlock
from monai.networks.nets import ViT
from torch import nn


@dataclass(frozen=True)
class EncoderGeometry:
    """Everything that fixes the encoder's parameter shapes."""

    in_channels: int
    img_size: tuple[int, int, int]  # (D, H, W) voxels
    patch_size: tuple[int, int, int]
    hidden_size: int
    mlp_dim: int
    num_layers: int
    num_heads: int

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (D', H', W')."""
        return tuple(i // p for i, p in zip(self.img_size, self.patch_size))

    @property
    def n_tokens(self) -> int:
        d, h, w = self.grid
        return d * h * w

    @classmethod
    def from_config(cls, config: dict) -> "EncoderGeometry":
        """From the validated workflow config (sections `encoder` and `preprocess`)."""
        enc, pre = config["encoder"], config["preprocess"]
        return cls(
            in_channels=len(pre["channels"]),
            img_size=tuple(pre["size"]),
            patch_size=tuple(enc["patch_size"]),
            hidden_size=enc["hidden_size"],
            mlp_dim=enc["mlp_dim"],
            num_layers=enc["num_layers"],
            num_heads=enc["num_heads"],
        )

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


class Encoder(ViT):
    """MONAI ViT with split Q/K/V, qkv bias (timm layout), fused attention and a class token."""

    def __init__(self, geometry: EncoderGeometry, dropout_rate: float = 0.0):
        geometry.check()
        super().__init__(
            in_channels=geometry.in_channels,
            img_size=geometry.img_size,
            patch_size=geometry.patch_size,
            hidden_size=geometry.hidden_size,
            mlp_dim=geometry.mlp_dim,
            num_layers=geometry.num_layers,
            num_heads=geometry.num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            classification=True,  # creates cls_token; the classification head is removed below
            dropout_rate=dropout_rate,
            spatial_dims=3,
            qkv_bias=True,
        )
        self.geometry = geometry
        self.patch_embedding.patch_embeddings = PatchConv3d.replacing(self.patch_embedding.patch_embeddings)
        self.classification = False
        del self.classification_head
        self.blocks = nn.ModuleList(
            TransformerBlock(
                geometry.hidden_size,
                geometry.mlp_dim,
                geometry.num_heads,
                dropout_rate,
                qkv_bias=True,
                use_flash_attention=True,
                use_combined_linear=False,
            )
            for _ in range(geometry.num_layers)
        )
        for block in self.blocks:  # an unused cross-attention norm MONAI always builds: not part of a ViT's weights
            block.norm_cross_attn = nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embedding, (B, N, hidden); no class token."""
        return self.patch_embedding(x)

    def run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prepend the class token to (B, n, hidden) tokens (any subset, e.g. MAE's visible ones), run the blocks.

        Returns (final-normed (B, 1 + n, hidden), [per-block output (B, 1 + n, hidden)])."""
        x = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.run_blocks(self.embed(x))

    def tokens_to_volume(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, hidden) (class token removed) -> feature map (B, hidden, D', H', W')."""
        d, h, w = self.geometry.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], d, h, w)


def build_encoder(config: dict) -> Encoder:
    """The encoder of the workflow config."""
    return Encoder(EncoderGeometry.from_config(config))
