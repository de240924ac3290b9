"""Networks and task models: the encoder families (taskalign.models.families), pretraining heads, the UperNet
decoder, LoRA, task heads, building/saving/loading a task model, and the device models run on.

The public API for notebooks (docs/encoders.md):
- `load_encoder(path)`: the encoder in an encoder file, whatever its family, on the CPU in eval mode.
- `encoder_features(path, volume)`: {level name: numpy feature map (C, d, h, w)} for one (C, D, H, W) float32
  volume already normalised as the file's input contract says.

Importing this package does not import torch (the plan reads `family_names` without it)."""

from __future__ import annotations


def load_encoder(path, device="cpu"):
    """The encoder stored in an encoder file (`results/.../encoder.safetensors`), built for its family, eval mode."""
    from taskalign.models.checkpoint_io import load_encoder as _load

    return _load(path, device).eval()


def encoder_features(path, volume) -> dict:
    """{level: float32 numpy map (C, d, h, w)} of the encoder in `path` for one volume (C, D, H, W), already
    normalised per the file's input contract (its channels in its order); levels as the family names them
    (vit3d: block0 .. block{L-1}, final). The volume's shape must be the contract's crop."""
    import numpy as np
    import torch

    encoder = load_encoder(path)
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim != 4:
        raise ValueError(f"encoder_features: volume must be (C, D, H, W), got shape {array.shape}")
    with torch.no_grad():
        levels = encoder(torch.from_numpy(array)[None])
    return {name: level[0].float().numpy().copy() for name, level in levels.items()}
