"""Pretraining objectives on our encoder: MAE reconstruction (ProFound) and PRISM-style multitask objectives.

Pretraining is the vit3d family's with a class token (it masks tokens and reads the class token); any other
family is refused here (other families enter the pipeline as imported checkpoints).

Why not MONAI's `MaskedAutoEncoderViT`: its encoder has a fused `qkv`, returns no per-block hidden states and stores
the final norm as `blocks.12`, so its weights would not be our `Encoder` (split Q/K/V, class token, `norm`). The MAE
is therefore built around our `Encoder` (`embed` + `run_blocks` on the visible tokens only) and reuses MONAI's
`TransformerBlock` for the light decoder; the saved encoder is exactly the one every later stage loads.

Objectives (any non-empty subset of OBJECTIVES; only enabled ones build parameters):
- reconstruction: MAE (He et al. 2022; ProFound): per-sample random masking of `mask_ratio` of the patch tokens,
  the encoder on the visible tokens, a decoder (linear to `decoder_hidden`, learned mask token, learned decoder
  position embedding, `decoder_layers` TransformerBlocks, linear to prod(patch) * C) predicting every patch; MSE on
  the masked patches only, targets optionally normalised per patch (`norm_pix_loss`).
- metadata: MLP on the class token of the full input -> normalised (TR, TE, flip angle); L1 over the known values
  (PRISM's scanning-parameter regression uses the mean absolute error).
- translation: T2W -> ADC. The encoder sees the T2W channel only (the others zeroed, as an absent channel is in
  the cache), a linear head maps the final patch tokens to the ADC voxels of their patch; L1 against the ADC
  channel, for cases whose T2W and ADC are present.
- contrastive: InfoNCE between the sequences of one case (PRISM's anatomy-invariant contrastive learning, with the
  real diffusion images as the second view instead of a synthesised one): view 1 = T2W only, view 2 = DWI + ADC
  (T2W zeroed); mean patch token -> projection MLP -> L2-normalised; symmetric cross-entropy over the batch,
  positives = the same case.

Encoder passes are shared: all full-token views (full input for metadata, T2W-only for translation and
contrastive, diffusion-only for contrastive) go through the encoder as one stacked batch; the MAE pass (visible
tokens only) is separate. Losses are computed in float32, so the module runs under bf16 autocast on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks.transformerblock import TransformerBlock
from torch import nn

from taskalign.models.families.vit3d import ViT3dEncoder

OBJECTIVES = ("reconstruction", "metadata", "translation", "contrastive")
DEFAULT_WEIGHTS = {"reconstruction": 1.0, "metadata": 1.0, "translation": 1.0, "contrastive": 0.5}
DIFFUSION_CHANNELS = ("dwi", "adc")
NORM_PIX_LOSS = True  # MAE's per-patch normalised targets, as ProFound pretrains
CONTRASTIVE_TEMPERATURE = 0.1  # InfoNCE temperature (PRISM's contrastive objective)


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, pd * ph * pw * C), patches in the Conv3d patch embedding's token order
    (D', H', W' row-major); inside a patch the voxels are (pd, ph, pw, C) row-major."""
    b, c, d, h, w = x.shape
    pd, ph, pw = patch_size
    gd, gh, gw = d // pd, h // ph, w // pw
    x = x.reshape(b, c, gd, pd, gh, ph, gw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b gd gh gw pd ph pw c
    return x.reshape(b, gd * gh * gw, pd * ph * pw * c)


def unpatchify(patches: torch.Tensor, patch_size: tuple[int, int, int], grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, pd * ph * pw * C) -> (B, C, D, H, W)."""
    b = patches.shape[0]
    pd, ph, pw = patch_size
    gd, gh, gw = grid
    c = patches.shape[2] // (pd * ph * pw)
    x = patches.reshape(b, gd, gh, gw, pd, ph, pw, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b c gd pd gh ph gw pw
    return x.reshape(b, c, gd * pd, gh * ph, gw * pw)


def random_masking(batch: int, n_tokens: int, mask_ratio: float, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (MAE). Exactly `n_tokens - n_keep` tokens are masked
    in every sample, n_keep = round(n_tokens * (1 - mask_ratio)) clamped to [1, n_tokens - 1].

    Returns keep (B, n_keep) long, indices of the visible tokens; mask (B, N) float, 1 = masked; restore (B, N)
    long, the permutation that puts [visible, masked] back into token order."""
    n_keep = min(max(int(round(n_tokens * (1.0 - mask_ratio))), 1), n_tokens - 1)
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, n_tokens, device=device)
    mask[:, :n_keep] = 0
    return shuffle[:, :n_keep], torch.gather(mask, 1, restore), restore


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix_loss: bool = True) -> torch.Tensor:
    """MSE over the masked patches only. pred, target (B, N, P) patches; mask (B, N), 1 = masked. With
    `norm_pix_loss` each target patch is normalised by its own mean and variance (MAE)."""
    pred, target = pred.float(), target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the entries where `known` is True; 0 (still in the graph) when nothing is known."""
    known = known.float()
    return ((pred.float() - target.float()).abs() * known).sum() / known.sum().clamp(min=1.0)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views: a, b (B, E) L2-normalised embeddings, row i of a and of b the same case
    (positives), every other row a negative. Random embeddings give ~log(B)."""
    logits = a.float() @ b.float().T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _init_linear(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every Linear (MAE's initialisation): wide outputs such as
    prod(patch) * C voxels then start near 0, so the losses start at their predict-the-mean baseline instead of
    well above it, and a falling loss means something was learned."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return _init_linear(nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_out)))


class MAEDecoder(nn.Module):
    """Light MAE decoder: encoder tokens of the visible patches -> a prediction for every patch.

    Input (B, 1 + n_keep, hidden) (class token first) and `restore` (B, N); output (B, N, prod(patch) * C)."""

    def __init__(self, encoder_hidden: int, n_tokens: int, out_features: int, hidden: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Linear(encoder_hidden, hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position_embedding = nn.Parameter(torch.zeros(1, n_tokens, hidden))
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, 4 * hidden, heads, qkv_bias=True, use_flash_attention=True) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.pred = nn.Linear(hidden, out_features)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        _init_linear(self)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        cls, visible = x[:, :1], x[:, 1:]
        b, n = restore.shape
        tokens = torch.cat((visible, self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)), dim=1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, tokens.shape[2]))
        x = torch.cat((cls, tokens + self.position_embedding), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x)[:, 1:])


class PretrainingModel(nn.Module):
    """The encoder plus the heads of the enabled objectives.

    `forward(batch) -> {objective: scalar loss, ..., "total": weighted sum}`. batch: `image` (B, C, D, H, W) with
    channels named by `channels` (config order); `channels_present` (B, C) bool (translation, contrastive);
    `metadata` (B, 3) and `metadata_known` (B, 3) bool (metadata). `weights` default to DEFAULT_WEIGHTS.
    """

    def __init__(
        self,
        encoder: ViT3dEncoder,
        objectives: list[str],
        channels: list[str],
        mask_ratio: float = 0.75,
        weights: dict[str, float] | None = None,
        decoder_layers: int = 2,
    ):
        super().__init__()
        objectives = list(dict.fromkeys(objectives))
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise ValueError(f"objectives must be a non-empty subset of {OBJECTIVES}, got {objectives}")
        if not isinstance(encoder, ViT3dEncoder) or not encoder.geometry.class_token:
            what = "a vit3d encoder without a class token" if isinstance(encoder, ViT3dEncoder) else \
                f"family {getattr(encoder, 'family', type(encoder).__name__)!r}"
            raise ValueError(f"pretraining (MAE / multitask) runs on the vit3d family with a class token, got {what}")
        geometry = encoder.geometry
        if len(channels) != geometry.in_channels:
            raise ValueError(f"{len(channels)} channel names {channels} for an encoder of {geometry.in_channels} channels")
        self.channels = list(channels)
        needed = {"translation": ("t2w", "adc"), "contrastive": ("t2w",)}
        for objective, names in needed.items():
            missing = [c for c in names if c not in channels]
            if objective in objectives and missing:
                raise ValueError(f"objective {objective} needs channels {missing}, not in {channels}")
        if "contrastive" in objectives and not any(c in channels for c in DIFFUSION_CHANNELS):
            raise ValueError(f"objective contrastive needs a diffusion channel ({DIFFUSION_CHANNELS}) in {channels}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")

        self.encoder = encoder
        self.objectives = objectives
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = NORM_PIX_LOSS
        self.temperature = CONTRASTIVE_TEMPERATURE
        self.weights = {o: float({**DEFAULT_WEIGHTS, **(weights or {})}[o]) for o in objectives}
        hidden = geometry.hidden_size
        patch_voxels = math.prod(geometry.patch_size)

        if "reconstruction" in objectives:
            dec_hidden = max(hidden // 2, 8)  # a light decoder (MAE): half the encoder's width
            heads = geometry.num_heads if dec_hidden % geometry.num_heads == 0 else 1
            self.decoder = MAEDecoder(hidden, geometry.n_tokens, patch_voxels * geometry.in_channels, dec_hidden,
                                      decoder_layers, heads)
        if "metadata" in objectives:
            self.metadata_head = _mlp(hidden, hidden, 3)
            nn.init.zeros_(self.metadata_head[-1].weight)  # start at the centre of METADATA_SCALES (target 0)
        if "translation" in objectives:
            self.translation_head = _init_linear(nn.Linear(hidden, patch_voxels))
        if "contrastive" in objectives:
            self.projection = _mlp(hidden, hidden, hidden)

    def _channel_view(self, image: torch.Tensor, keep: tuple[str, ...]) -> torch.Tensor:
        """The image with every channel not in `keep` zeroed (what an absent channel is in the cache)."""
        weights = torch.tensor([c in keep for c in self.channels], dtype=image.dtype, device=image.device)
        return image * weights.view(1, -1, 1, 1, 1)

    def _present(self, batch: dict, name: str) -> torch.Tensor:
        return batch["channels_present"][:, self.channels.index(name)].bool()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image = batch["image"]
        b = image.shape[0]
        if "contrastive" in self.objectives and b < 2:
            raise ValueError(f"the contrastive objective needs at least 2 cases per batch (negatives), got {b}")
        losses = {}

        # one encoder pass over every full-token view the enabled objectives need
        views = {}
        if "metadata" in self.objectives:
            views["full"] = image
        if "translation" in self.objectives or "contrastive" in self.objectives:
            views["t2w"] = self._channel_view(image, ("t2w",))
        if "contrastive" in self.objectives:
            views["diffusion"] = self._channel_view(image, DIFFUSION_CHANNELS)
        if views:
            normed, _ = self.encoder.run_blocks(self.encoder.embed(torch.cat(list(views.values()))))
            encoded = dict(zip(views, normed.split(b)))

        if "reconstruction" in self.objectives:
            losses["reconstruction"] = self._reconstruction(image)
        if "metadata" in self.objectives:
            pred = self.metadata_head(encoded["full"][:, 0])
            losses["metadata"] = masked_l1(pred, batch["metadata"], batch["metadata_known"])
        if "translation" in self.objectives:
            losses["translation"] = self._translation(encoded["t2w"], image, batch)
        if "contrastive" in self.objectives:
            losses["contrastive"] = self._contrastive(encoded["t2w"], encoded["diffusion"], batch)

        losses["total"] = sum(self.weights[name] * loss for name, loss in losses.items())
        return losses

    def _reconstruction(self, image: torch.Tensor) -> torch.Tensor:
        geometry = self.encoder.geometry
        tokens = self.encoder.embed(image)
        keep, mask, restore = random_masking(tokens.shape[0], tokens.shape[1], self.mask_ratio, image.device)
        visible = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[2]))
        latent, _ = self.encoder.run_blocks(visible)
        pred = self.decoder(latent, restore)
        return reconstruction_loss(pred, patchify(image, geometry.patch_size), mask, self.norm_pix_loss)

    def _translation(self, encoded: torch.Tensor, image: torch.Tensor, batch: dict) -> torch.Tensor:
        geometry = self.encoder.geometry
        patches = self.translation_head(encoded[:, 1:])
        pred = unpatchify(patches, geometry.patch_size, geometry.grid)  # (B, 1, D, H, W)
        adc = self.channels.index("adc")
        target = image[:, adc : adc + 1]
        valid = self._present(batch, "adc") & self._present(batch, "t2w")
        known = valid.view(-1, 1, 1, 1, 1).expand_as(pred)
        return masked_l1(pred, target, known)

    def _contrastive(self, t2w: torch.Tensor, diffusion: torch.Tensor, batch: dict) -> torch.Tensor:
        a = F.normalize(self.projection(t2w[:, 1:].mean(dim=1)).float(), dim=-1)
        b = F.normalize(self.projection(diffusion[:, 1:].mean(dim=1)).float(), dim=-1)
        has_diffusion = torch.zeros_like(self._present(batch, "t2w"))
        for name in DIFFUSION_CHANNELS:
            if name in self.channels:
                has_diffusion |= self._present(batch, name)
        valid = self._present(batch, "t2w") & has_diffusion
        if int(valid.sum()) < 2:  # no negatives: contributes nothing (but stays in the graph)
            return 0.0 * (a.sum() + b.sum())
        return info_nce(a[valid], b[valid], self.temperature)
