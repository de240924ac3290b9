"""Noise predictors of 001's DDPM translation (taskalign.tasks.kinds.DiffusionTranslation): the task model on a
foundation-model encoder, and MONAI's DiffusionModelUNet as the specialist (001: "Specialized task-specific model
here is DDPM model").

Both are called as MONAI's DiffusionInferer calls a diffusion model, `model(x, timesteps, context)`, with x the
noisy target (1 channel) followed by the condition (concat mode): the task's encoder input, its target channel
zeroed. The FM predictor puts the noisy target back into the target's channel, so the encoder sees the layout it
was pretrained on (the noisy DWI where the DWI goes, the T2W beside it), and adds a sinusoidal timestep embedding,
through a 2-layer MLP, to the fused decoder features before the output convolution: the encoder itself stays as
pretrained, whatever the protocol freezes (001's frozen FM predicts noise through its decoder alone).
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from taskalign.models.families.base import FoundationEncoder
from taskalign.models.heads import EncoderRestoration


def batch_timesteps(timesteps: torch.Tensor, batch: int) -> torch.Tensor:
    """The inferer's sampling loop passes one timestep for the batch; training passes one per item."""
    timesteps = timesteps.reshape(-1)
    return timesteps.expand(batch) if timesteps.numel() == 1 else timesteps


class NoisePredictor(EncoderRestoration):
    """The UperNet intensity model (no residual) predicting the noise of its target channel at a timestep."""

    def __init__(self, encoder: FoundationEncoder, layers, channels: int, target_channel: int):
        super().__init__(encoder, layers, channels, residual_channel=None)
        self.target_channel = target_channel
        self.width = channels + channels % 2  # sinusoidal embeddings come in sin/cos pairs
        self.time = nn.Sequential(nn.Linear(self.width, channels), nn.SiLU(), nn.Linear(channels, channels))
        self._embedding: torch.Tensor | None = None
        self.decoder.classifier.register_forward_pre_hook(self._add_time)

    def _add_time(self, module: nn.Module, args: tuple) -> tuple:
        features = args[0]
        return (features + self._embedding.to(features.dtype)[:, :, None, None, None],)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None) -> torch.Tensor:
        noisy, condition = x[:, :1], x[:, 1:]
        t = self.target_channel
        image = torch.cat([condition[:, :t], noisy, condition[:, t + 1 :]], dim=1)
        steps = batch_timesteps(timesteps, x.shape[0])
        self._embedding = self.time(get_timestep_embedding(steps, self.width).to(x.dtype))
        try:
            return super().forward(image)
        finally:
            self._embedding = None


class DiffusionUNet(nn.Module):
    """MONAI's DiffusionModelUNet on [noisy target, condition]; attention in its middle block only (a 3D volume has
    too many tokens for attention at the finer levels)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        groups = math.gcd(*widths)
        # the middle block always attends: MONAI's 8-channel heads where the deepest width allows, else one head
        self.net = DiffusionModelUNet(3, in_channels + 1, 1, num_res_blocks=1, channels=widths,
                                      attention_levels=(False,) * len(widths), norm_num_groups=min(groups, 32),
                                      num_head_channels=8 if widths[-1] % 8 == 0 else widths[-1])

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None) -> torch.Tensor:
        return self.net(x, batch_timesteps(timesteps, x.shape[0]).long())
