"""LoRA on the encoder with PEFT: separate low-rank updates on Q, K, V and O of every block (seed 000), base frozen.

`add_lora` injects the adapters in place (the encoder keeps its class and methods, so `run_blocks` and the
hidden states work unchanged); `merge_lora` folds them back into a plain `Encoder` with the same keys as the
pretrained one, so every later stage loads a continual encoder exactly like a pretrained one.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from taskalign.models.encoder import Encoder

LORA_TARGETS = r".*blocks\.\d+\.attn\.(to_q|to_k|to_v|out_proj)"


def add_lora(encoder: Encoder, rank: int, alpha: float, dropout: float) -> Encoder:
    """Inject LoRA into Q, K, V, O of every block; only the LoRA matrices stay trainable."""
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    encoder = inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in name
    n_layers = sum(isinstance(m, LoraLayer) for m in encoder.modules())
    if n_layers != 4 * encoder.geometry.num_layers:
        raise RuntimeError(f"LoRA reached {n_layers} layers, expected Q, K, V, O of {encoder.geometry.num_layers} blocks")
    return encoder


def lora_state_dict(encoder: Encoder) -> dict[str, torch.Tensor]:
    """The LoRA matrices only (what training changed)."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items() if "lora_" in k}


def merge_lora(encoder: Encoder) -> Encoder:
    """A plain `Encoder` whose Q, K, V, O weights are W + (alpha / r) B A; the LoRA encoder is left untouched."""
    merged = copy.deepcopy(encoder).cpu()
    for module in merged.modules():
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
    state = {k.replace(".base_layer", ""): v for k, v in merged.state_dict().items() if "lora_" not in k}
    plain = Encoder(encoder.geometry)
    plain.load_state_dict(state, strict=True)
    return plain.eval()
