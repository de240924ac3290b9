"""Encoder checkpoints: our own safetensors files, and published encoders in the timm/ProFound key layout.

Our file: the encoder's state dict as safetensors, the geometry (and the stage's own facts: variant, epoch, ...) as
JSON in the metadata, so a later stage rebuilds the encoder from the file alone.

timm layout (ProFound, most published 3D ViTs): `patch_embed.proj`, `pos_embed` (class-token position first),
`cls_token`, `blocks.N.norm1/norm2`, a fused `blocks.N.attn.qkv` (rows [Q; K; V]), `attn.proj`,
`mlp.fc1/fc2`, `norm`. Our encoder has no class-token position embedding; the class token's position vector is
added to the class token itself, which gives the same token into block 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from torch import nn

from taskalign.models.encoder import Encoder, EncoderGeometry
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)

LAYOUTS = ("taskalign", "timm")
WRAPPER_KEYS = ("state_dict", "model", "encoder", "teacher", "student")
STRIP_PREFIXES = ("module.", "encoder.", "backbone.", "model.")
# timm keys that are not part of an encoder (heads, decoders); reported, never loaded
IGNORED = re.compile(r"^(head|fc_norm|decoder|mask_token|classifier)")


@contextmanager
def named_safetensors_errors(path: Path):
    """A file that is not safetensors (a pickle put in its place, a truncated file) is refused naming the file;
    safetensors itself parses the header as JSON and the rest as raw tensor bytes, so nothing in it runs."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def weights_only_refusal(error: Exception) -> str:
    """What torch's weights-only refusal says was refused, without its boilerplate (which advises loading the
    file unrestricted), else the error's first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    text = " ".join(named) if named else (lines or [type(error).__name__])[0]
    return re.sub(r"^Please file an issue .*? use case: ", "", text)


def save_encoder(encoder: Encoder, path: Path, metadata: dict | None = None) -> None:
    """Write the encoder as safetensors, geometry and `metadata` as JSON strings in the file's metadata."""
    meta = {"geometry": json.dumps(asdict(encoder.geometry))}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_metadata(path: Path) -> dict:
    """The metadata an encoder file was saved with (geometry included), JSON-decoded."""
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def geometry_of(path: Path) -> EncoderGeometry:
    raw = read_metadata(path).get("geometry")
    if raw is None:
        raise ValueError(f"{path}: not a taskalign encoder file (no geometry in its metadata)")
    return EncoderGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclass(frozen=True)
class EncoderFile:
    """An encoder file read once: its tensors (CPU), geometry and the sha256 of its bytes (what resume
    fingerprints and frozen task models name it by)."""

    path: Path
    state: dict[str, torch.Tensor]
    geometry: EncoderGeometry
    sha256: str

    @classmethod
    def read(cls, path: Path) -> "EncoderFile":
        data = Path(path).read_bytes()
        with named_safetensors_errors(path):
            state = load_safetensors(data)
        return cls(Path(path), state, geometry_of(path), hashlib.sha256(data).hexdigest())

    def build(self, device: torch.device | str = "cpu") -> Encoder:
        """The encoder built on `device` (its random init runs there: no CPU build then copy on a GPU; on CPU the
        same RNG draws as ever), then loaded strictly: every key, every shape."""
        with torch.device(device):
            encoder = Encoder(self.geometry)
        encoder.load_state_dict(self.state, strict=True)
        return encoder


def load_encoder(path: Path, device: torch.device | str = "cpu") -> Encoder:
    """Rebuild an encoder saved by `save_encoder` on `device`."""
    return EncoderFile.read(path).build(device)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the frozen parameters (requires_grad False): what training changed, plus buffers.
    Tensors are the model's own (no copy)."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A snapshot of `state` in host memory that later training steps do not change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `trained_state` output; every key the model has must come from it unless the model holds it frozen."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    if unexpected or set(missing) - frozen:
        raise KeyError(f"state does not fit the model: missing {sorted(set(missing) - frozen)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")


def timm_to_encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """timm key layout -> our encoder's keys. Returns (mapped state, keys that have no place in an encoder,
    {our key: the checkpoint key it came from})."""
    out, ignored, origin = {}, [], {}
    simple = [
        (r"^patch_embed\.proj\.", "patch_embedding.patch_embeddings."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"blocks.\1.attn.out_proj."),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.linear1."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.linear2."),
        (r"^blocks\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
        (r"^norm\.", "norm."),
    ]
    pos = state.get("pos_embed")
    for key, value in state.items():
        if key in ("pos_embed", "cls_token"):
            continue
        qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            q, k, v = value.chunk(3, dim=0)
            for name, part in zip(("to_q", "to_k", "to_v"), (q, k, v)):
                ours = f"blocks.{qkv.group(1)}.attn.{name}.{qkv.group(2)}"
                out[ours], origin[ours] = part.clone(), key
            continue
        for pattern, repl in simple:
            if re.match(pattern, key):
                ours = re.sub(pattern, repl, key)
                out[ours], origin[ours] = value, key
                break
        else:
            ignored.append(key)
    if pos is not None:
        out["patch_embedding.position_embeddings"] = pos[:, 1:]
        origin["patch_embedding.position_embeddings"] = "pos_embed"
        if "cls_token" in state:
            out["cls_token"] = state["cls_token"] + pos[:, :1]
    elif "cls_token" in state:
        out["cls_token"] = state["cls_token"]
    if "cls_token" in state:
        origin["cls_token"] = "cls_token"
    return out, ignored, origin


def encoder_to_timm_state(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Our encoder in the timm layout (class-token position embedding zero), the inverse of the map above."""
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    out = {}
    pos = state.pop("patch_embedding.position_embeddings")
    out["cls_token"] = state.pop("cls_token")
    out["pos_embed"] = torch.cat((torch.zeros_like(out["cls_token"]), pos), dim=1)
    for i in range(encoder.geometry.num_layers):
        for part in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [state.pop(f"blocks.{i}.attn.{n}.{part}") for n in ("to_q", "to_k", "to_v")], dim=0)
    back = [
        (r"^patch_embedding\.patch_embeddings\.", "patch_embed.proj."),
        (r"^blocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
        (r"^blocks\.(\d+)\.mlp\.linear1\.", r"blocks.\1.mlp.fc1."),
        (r"^blocks\.(\d+)\.mlp\.linear2\.", r"blocks.\1.mlp.fc2."),
    ]
    for key, value in state.items():
        for pattern, repl in back:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    return out


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch file loaded with weights_only=True (no pickled code runs), with
    training wrappers (`state_dict`, `model`, ...) and prefixes (`module.`, `encoder.`, ...) removed."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        with named_safetensors_errors(path):
            state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickles with custom classes are refused by weights_only
            raise ValueError(f"{path}: cannot be read with weights_only=True ({weights_only_refusal(err)}); save "
                             "it as a plain state dict or safetensors") from err
    while isinstance(state, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)     # encoder keys the checkpoint did not have
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no encoder counterpart
    ignored: list[str] = field(default_factory=list)     # heads/decoders in the checkpoint, skipped on purpose


def load_external_encoder(path: Path, geometry: EncoderGeometry, layout: str = "timm") -> tuple[Encoder, LoadReport]:
    """A published encoder in `layout` ("timm" or "taskalign") loaded into our encoder of `geometry`.

    Shape mismatches are refused with the key named; missing and unexpected keys are logged and returned (a
    missing key keeps its random init)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    state = read_state_file(path)
    ignored, origin = [], {}
    if layout == "timm":
        state, ignored, origin = timm_to_encoder_state(state)
    encoder = Encoder(geometry)
    own = encoder.state_dict()
    report = LoadReport(ignored=[k for k in ignored if IGNORED.match(k)])
    report.unexpected = sorted([k for k in ignored if not IGNORED.match(k)] + [k for k in state if k not in own])
    report.missing = sorted(k for k in own if k not in state)
    if len(report.missing) > len(own) / 2:  # a few missing keys are reported; most missing is the wrong layout
        raise ValueError(f"{path}: {len(report.missing)} of the encoder's {len(own)} keys not found in layout {layout!r} "
                         f"(first keys in the file: {', '.join(list(state)[:5]) or 'none'})")
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            source = f"{origin[key]} (-> {key})" if origin.get(key, key) != key else key
            raise ValueError(f"{path}: key {source} has shape {tuple(value.shape)}, the encoder of geometry "
                             f"{asdict(geometry)} needs {tuple(own[key].shape)}")
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    for name, keys in (("missing (left at random init)", report.missing), ("unexpected", report.unexpected),
                       ("ignored", report.ignored)):
        if keys:
            log.warning("%s: %d %s keys: %s", path, len(keys), name, ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
    return encoder, report
