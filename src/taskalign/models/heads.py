"""Task models: an encoder with a task head (SPEC "Tasks"), or a task-specific MONAI network (the specialist).

Heads read the encoder through its family's protocol (taskalign.models.families.base): a 2-layer MLP on
`pooled` (the spatial mean of the `final` level; classification, regression); the UperNet decoder shared with
continual pretraining, fed by the family's `pyramid` (segmentation; restoration with an intensity output); a sub-pixel
head on the fused UperNet features for super-resolution. Restoration models whose input already is the target
contrast (super-resolution, distortion correction) predict a residual on the input T2W, from a zeroed output
layer: they start as the identity.
Specialists: MONAI ResNet-10 layout (one basic block per stage; widths from config, the paper's 64-512 at paper
scale) for classification and regression, UNet for segmentation and restoration, MONAI's DiffusionModelUNet for
the DDPM translation. A task's kind names its head and specialist (`HEADS`, `SPECIALISTS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample
from monai.networks.nets import ResNet, UNet
from torch import nn

from taskalign.models.families.base import FINAL, FoundationEncoder
from taskalign.models.upernet import EncoderUperNet
from taskalign.tasks.spec import Task


class MLPHead(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderMLP(nn.Module):
    """Encoder -> `pooled` (the spatial mean of its final level) -> MLP: logits or a regression value."""

    def __init__(self, encoder: FoundationEncoder, n_out: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        width = {level.name: level.channels for level in encoder.levels()}[FINAL]
        self.head = MLPHead(width, hidden, n_out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pooled(self.encoder(image)))


class EncoderRestoration(EncoderUperNet):
    """UperNet with an intensity output; `residual_channel`: the output is added to that input channel;
    `subpixel`: the fused features go through a sub-pixel (pixel-shuffle) upsampling head instead of a 1x1 conv."""

    def __init__(self, encoder: FoundationEncoder, layers: tuple, channels: int, residual_channel: int | None,
                 subpixel: bool = False):
        super().__init__(encoder, out_channels=1, layers=layers, channels=channels)
        self.residual_channel = residual_channel
        self.subpixel = SubpixelUpsample(3, channels, out_channels=1, scale_factor=2) if subpixel else None
        if residual_channel is not None:
            zero_output(self.subpixel if subpixel else self.decoder.classifier)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.decoder.fused(self.adapter(self.encoder(image)))
        out = self.subpixel(features) if self.subpixel is not None else self.decoder.classifier(features)
        out = F.interpolate(out, size=image.shape[2:], mode="trilinear", align_corners=False)
        if self.residual_channel is not None:
            out = out + image[:, self.residual_channel : self.residual_channel + 1]
        return out


class ResidualUNet(nn.Module):
    """The restoration specialist: MONAI UNet, optionally predicting a residual on one input channel."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], residual_channel: int | None):
        super().__init__()
        self.net = UNet(3, in_channels, 1, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=1)
        self.residual_channel = residual_channel
        # MONAI's UNet ends in a residual unit (conv + skip conv): a zeroed 1x1x1 output conv starts it at zero
        self.output = zero_output(nn.Conv3d(1, 1, kernel_size=1)) if residual_channel is not None else nn.Identity()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.output(self.net(image))
        if self.residual_channel is not None:
            out = out + image[:, self.residual_channel : self.residual_channel + 1]
        return out


def zero_output(layer: nn.Module) -> nn.Module:
    """Zero a residual model's last layer, so that training starts from the identity (the degraded input): away
    from the degradation the input already is the target, and a random residual would first have to unlearn
    its noise there."""
    for param in layer.parameters():
        nn.init.zeros_(param)
    return layer


def n_model_outputs(task: Task) -> int:
    """The model's output channels: the kind's (multi-class segmentation adds a background channel)."""
    return task.kind.model_outputs(task.type.n_outputs)


def residual_channel(task: Task, channels: list[str]) -> int | None:
    """The input channel a restoration model adds its output to (super-resolution and distortion correction
    restore the T2W they are given); None when the model predicts the target outright."""
    residual = task.type.residual_input
    return channels.index(residual) if residual is not None else None


def output_layer(model: nn.Module) -> nn.Module:
    """The layer that makes an FM task model's output: its input is the head's (or decoder's) last features, what
    fine-tuning changes even when the encoder is frozen (the `head` feature level, 001's D2P)."""
    if isinstance(model, EncoderMLP):
        return model.head.net[-1]
    subpixel = getattr(model, "subpixel", None)
    return subpixel if subpixel is not None else model.decoder.classifier


def _mlp(task, encoder, channels, head):
    return EncoderMLP(encoder, n_model_outputs(task), head["mlp_hidden"])


def _upernet(task, encoder, channels, head):
    return EncoderUperNet(encoder, n_model_outputs(task), head["layers"], head["decoder_channels"])


def _restoration(task, encoder, channels, head):
    return EncoderRestoration(encoder, head["layers"], head["decoder_channels"],
                              residual_channel(task, channels), subpixel=task.type.subpixel)


def _noise_predictor(task, encoder, channels, head):
    from taskalign.models.diffusion import NoisePredictor  # a subclass of EncoderRestoration

    return NoisePredictor(encoder, head["layers"], head["decoder_channels"], channels.index(task.type.target))


def _resnet(task, channels, specialist):
    widths = tuple(specialist["channels"])
    stages = (list(widths) + [widths[-1]] * 4)[:4]
    return ResNet("basic", [1, 1, 1, 1], stages, spatial_dims=3, n_input_channels=len(channels),
                  num_classes=n_model_outputs(task),
                  conv1_t_stride=tuple(specialist.get("resnet_stem_stride", (1, 1, 1))))


def _unet(task, channels, specialist):
    widths = tuple(specialist["channels"])
    return UNet(3, len(channels), n_model_outputs(task), channels=widths, strides=(2,) * (len(widths) - 1),
                num_res_units=1)


def _residual_unet(task, channels, specialist):
    return ResidualUNet(len(channels), tuple(specialist["channels"]), residual_channel(task, channels))


def _diffusion_unet(task, channels, specialist):
    from taskalign.models.diffusion import DiffusionUNet

    return DiffusionUNet(len(channels), tuple(specialist["channels"]))


# a kind's `head` / `specialist` -> the model it names (taskalign.tasks.kinds declares which)
HEADS = {"mlp": _mlp, "upernet": _upernet, "intensity_upernet": _restoration, "noise_predictor": _noise_predictor}
SPECIALISTS = {"resnet": _resnet, "unet": _unet, "residual_unet": _residual_unet, "diffusion_unet": _diffusion_unet}


def encoder_model(task: Task, encoder: Encoder, channels: list[str], head: dict) -> nn.Module:
    """The task kind's head on `encoder`. head: mlp_hidden, decoder_channels, layers."""
    return HEADS[task.kind.head](task, encoder, channels, head)


def specialist_model(task: Task, channels: list[str], specialist: dict) -> nn.Module:
    """The task kind's MONAI network on the same inputs. specialist: channels (UNet widths; the first four are
    the ResNet stage widths), resnet_stem_stride (the config's; a model file without it was trained with MONAI's
    default stride 1)."""
    return SPECIALISTS[task.kind.specialist](task, channels, specialist)
