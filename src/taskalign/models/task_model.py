"""A task model as a whole: built around an encoder (or as a specialist), initialised at its masks' class prior,
its trainable parameters set by the protocol, saved with the metadata that rebuilds it, and loaded again.

Fine-tuning builds and saves it; evaluation and feature extraction load it. A model whose encoder was (partly)
frozen does not store the encoder again: its file holds what the run trained and names the encoder file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from taskalign.models.checkpoint_io import (EncoderFile, build_encoder, encoder_spec, named_safetensors_errors,
                                            trained_state)
from taskalign.models.families.base import FoundationEncoder
from taskalign.models.heads import encoder_model, n_model_outputs, specialist_model
from taskalign.runtime import atomic_path, read_array
from taskalign.tasks.spec import Task


def build_model(task: Task, init: str, encoder: FoundationEncoder | None, params: dict) -> nn.Module:
    """The task model around `encoder` (None for the specialist). params: channels, head or specialist."""
    if init == "specialist":
        return specialist_model(task, params["channels"], params["specialist"])
    if encoder is None:
        raise ValueError(f"init {init} needs an encoder")
    return encoder_model(task, encoder, params["channels"], params["head"])


def apply_protocol(model: nn.Module, protocol: str) -> list[str]:
    """Set requires_grad for the protocol; return the names of the trainable parameters. `partial:k` unfreezes what
    the encoder's family names for it (`partial_prefixes`: vit3d's last k blocks and the final norm)."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and protocol != "full":
        keep = 0 if protocol == "frozen" else int(protocol.split(":")[1])
        trainable = encoder.partial_prefixes(keep) if keep else []
        for name, param in encoder.named_parameters():
            param.requires_grad = any(name.startswith(prefix) for prefix in trainable)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def mask_prior(rows, task: Task) -> torch.Tensor:
    """Class frequencies of the target masks over `rows` (their cache folders), background first: 2 values for a
    binary mask, n_model_outputs for labels. One count is added per class, so that a class absent from these
    cases still gets a finite log-prior."""
    n_out = n_model_outputs(task)
    n_classes = 2 if n_out == 1 else n_out
    counts = np.ones(n_classes)
    for case in rows["cache_dir"]:
        mask = read_array(Path(case) / f"{task.type.target}.npy")
        labels = (mask > 0) if n_out == 1 else mask
        counts += np.bincount(labels.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
    return torch.as_tensor(counts / counts.sum())


def start_at_prior(model: nn.Module, task: Task, prior: torch.Tensor) -> None:
    """Set a segmentation model's output bias to its training masks' class frequencies `prior` (n_model_outputs
    values, summing to 1): logit(p) for one sigmoid channel, log(p) for softmax (the prior initialisation of
    Lin et al. 2017, focal loss). From a zero bias every voxel starts at p = 0.5 (or 1/classes), and the
    steps a short run has go to lowering the background: a lesion UNet stayed at val Dice 0.007 after 12 epochs,
    0.17 with this. The output layer is the model's last convolution with that many output channels."""
    n_out = n_model_outputs(task)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.out_channels == n_out]
    if not layers or layers[-1].bias is None:
        raise ValueError(f"{type(model).__name__}: no output convolution with {n_out} channels and a bias")
    bias = torch.logit(prior[1:]) if n_out == 1 else torch.log(prior)
    with torch.no_grad():
        layers[-1].bias.copy_(bias.to(layers[-1].bias.dtype))


def save_task_model(model: nn.Module, path: Path, meta: dict, encoder_file: EncoderFile | None = None) -> None:
    """Weights as safetensors, `meta` (JSON values) as its metadata: init, geometry and architecture rebuild it.

    When `encoder_file` is the file the model's encoder came from and some encoder parameters stayed frozen,
    those are left out and the metadata's "encoder" names the file (path relative to the model file) and its
    sha256: a frozen ViT-B run stores its head, not 86M parameters again."""
    state = model.state_dict()
    frozen = set(state) - set(trained_state(model))
    if frozen and encoder_file is not None:
        if any(not key.startswith("encoder.") for key in frozen):
            raise ValueError(f"{path}: frozen parameters outside the encoder cannot be named by an encoder file")
        state = {k: v for k, v in state.items() if k not in frozen}
        meta = {**meta, "encoder": {"file": os.path.relpath(encoder_file.path, Path(path).parent),
                                    "sha256": encoder_file.sha256}}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})


def referenced_encoder_state(model_path: Path, reference: dict) -> dict[str, torch.Tensor]:
    """The frozen encoder parameters a model file names, under the task model's `encoder.` keys; refused when the
    encoder file's bytes are not the ones the model was trained on."""
    path = Path(model_path).parent / reference["file"]
    if not path.exists():
        raise FileNotFoundError(f"{model_path}: its frozen encoder {path} does not exist")
    encoder = EncoderFile.read(path)
    if encoder.sha256 != reference["sha256"]:
        raise ValueError(f"{model_path}: its frozen encoder {path} has sha256 {encoder.sha256[:12]}..., the model "
                         f"was trained on {reference['sha256'][:12]}...; the encoder was rewritten since (rerun "
                         "the fine-tune)")
    return {f"encoder.{k}": v for k, v in encoder.state.items()}


def load_task_model(path: Path, task: Task, channels: list[str],
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A fine-tuned model file -> (model on `device` in eval mode, metadata). Built on `device` directly, around
    an encoder of the family stored in the file. `channels`: the cache's channel order, the model's input unless
    its encoder declares its own (input contract)."""
    with named_safetensors_errors(path):
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
        state = load_file(str(path))
    if "encoder" in meta:
        state = {**referenced_encoder_state(path, meta["encoder"]), **state}
    encoder = None
    if meta["geometry"]:  # family, geometry and input contract of the encoder it was trained from
        name, geometry, contract = encoder_spec(meta, str(path))
        encoder = build_encoder(name, geometry, device)
        channels = list(contract.channels) if contract is not None else channels
    with torch.device(device):
        model = build_model(task, meta["init"], encoder, {"channels": channels, **meta["architecture"]})
    model.load_state_dict(state, strict=True)
    return model.eval(), meta
