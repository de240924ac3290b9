"""The pipeline's own encoder under its earlier names: family `vit3d` (taskalign.models.families.vit3d)."""

from __future__ import annotations

from taskalign.models.families.vit3d import PatchConv3d, ViT3dEncoder, ViT3dGeometry

Encoder = ViT3dEncoder
EncoderGeometry = ViT3dGeometry

__all__ = ["Encoder", "EncoderGeometry", "PatchConv3d", "build_encoder"]


def build_encoder(config: dict) -> ViT3dEncoder:
    """The encoder of the workflow config (the pipeline pretrains vit3d)."""
    return ViT3dEncoder(ViT3dGeometry.from_config(config))
