"""LoRA on an encoder with PEFT: low-rank updates on the linears its family names (`lora_targets`: vit3d's Q, K, V
and O of every block, seed 000), base frozen.

`add_lora` injects the adapters in place (the encoder keeps its class and methods, so its levels work unchanged);
`merge_lora` folds them back into a plain encoder of the same family with the same keys as the pretrained one, so
every later stage loads a continual encoder exactly like a pretrained one.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from taskalign.models.families.base import FoundationEncoder


def add_lora(encoder: FoundationEncoder, rank: int, alpha: float, dropout: float) -> FoundationEncoder:
    """Inject LoRA into every module the family's `lora_targets` matches; only the LoRA matrices stay trainable."""
    expected = encoder.lora_module_count()
    if expected == 0:
        raise ValueError(f"{encoder.family}: its lora_targets {encoder.lora_targets!r} match no module")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=encoder.lora_targets,
                        bias="none")
    encoder = inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in name
    n_layers = sum(isinstance(m, LoraLayer) for m in encoder.modules())
    if n_layers != expected:
        raise RuntimeError(f"LoRA reached {n_layers} layers, {encoder.family}'s lora_targets match {expected}")
    return encoder


def lora_state_dict(encoder: FoundationEncoder) -> dict[str, torch.Tensor]:
    """The LoRA matrices only (what training changed)."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items() if "lora_" in k}


def merge_lora(encoder: FoundationEncoder) -> FoundationEncoder:
    """A plain encoder of the same family whose adapted weights are W + (alpha / r) B A; the LoRA encoder is left
    untouched."""
    merged = copy.deepcopy(encoder).cpu()
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
    state = {k.replace(".base_layer", ""): v for k, v in merged.state_dict().items() if "lora_" not in k}
    plain = type(encoder)(encoder.geometry)
    plain.load_state_dict(state, strict=True)
    return plain.eval()
