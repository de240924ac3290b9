"""Encoder files and checkpoint import.

Our file: the encoder's state dict as safetensors; its family, geometry, input contract, load report (for an
imported checkpoint) and the stage's own facts (variant, epoch, ...) as JSON in the metadata, so a later stage
rebuilds the encoder from the file alone, whatever its family.

Import (`import_checkpoint`), the same for every family: the file is read without running code (safetensors, or
torch.load with weights_only=True and `argparse.Namespace` allowed, as training scripts pickle their arguments),
wrappers (`model`, `state_dict`, ...) and prefixes (`module.`, ...) are removed, only tensors kept; the family's
layout converter renames the keys (taskalign.models.families); then every key the encoder needs must come from the
file with its shape, and every file key must have a place in the encoder or be on the family's ignore-list.
Anything else is refused with the likely cause (depth, width, patch size, a 2D kernel, another family's keys).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from torch import nn

from taskalign.models.families import all_families, family
from taskalign.models.families.base import FoundationEncoder, ImportRefused, InputContract, LoadReport, geometry_from_json
from taskalign.models.family_names import DEFAULT_FAMILY
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "encoder", "teacher", "student", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")
N_FIRST_KEYS = 6


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


def save_encoder(encoder: FoundationEncoder, path: Path, metadata: dict | None = None,
                 contract: InputContract | None = None, report: LoadReport | None = None) -> None:
    """Write the encoder as safetensors; family, geometry, input contract, load report and `metadata` as JSON
    strings in the file's metadata."""
    meta = {"family": json.dumps(encoder.family), "geometry": json.dumps(asdict(encoder.geometry))}
    if contract is not None:
        meta["input"] = json.dumps(contract.to_json())
    if report is not None:
        meta["load_report"] = json.dumps(report.to_json())
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_metadata(path: Path) -> dict:
    """The metadata an encoder file was saved with (family, geometry, ...), JSON-decoded."""
    with named_safetensors_errors(path), safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def encoder_spec(meta: dict, where: str) -> tuple[str, object, InputContract | None]:
    """(family, geometry, contract) from an encoder file's (or a task model's) metadata."""
    if meta.get("geometry") is None:
        raise ValueError(f"{where}: not a taskalign encoder (no geometry in its metadata)")
    name = meta.get("family", DEFAULT_FAMILY)
    geometry = geometry_from_json(family(name).encoder_cls.geometry_cls, meta["geometry"])
    contract = InputContract.from_json(meta["input"]) if meta.get("input") else None
    return name, geometry, contract


def geometry_of(path: Path):
    """The geometry an encoder file was saved with (its family's dataclass)."""
    return encoder_spec(read_metadata(path), str(path))[1]


def build_encoder(name: str, geometry, device: torch.device | str = "cpu") -> FoundationEncoder:
    """A family's encoder of `geometry`, built on `device` (its random init runs there)."""
    with torch.device(device):
        return family(name).encoder_cls(geometry)


def content_sha256(data: bytes) -> str:
    """sha256 of a safetensors file's content: its JSON header with sorted keys, then the tensor bytes. safetensors
    writes the metadata map in an order that changes from one write to the next, so the same encoder written twice
    has other bytes but this digest."""
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(header.encode() + data[8 + size :]).hexdigest()


@dataclass(frozen=True)
class EncoderFile:
    """An encoder file read once: its tensors (CPU), family, geometry, input contract (None in files from before
    contracts) and its content digest (`content_sha256`: what resume fingerprints and frozen task models name it by)."""

    path: Path
    state: dict[str, torch.Tensor]
    family: str
    geometry: object
    contract: InputContract | None
    sha256: str

    @classmethod
    def read(cls, path: Path) -> "EncoderFile":
        data = Path(path).read_bytes()
        with named_safetensors_errors(path):
            state = load_safetensors(data)
        name, geometry, contract = encoder_spec(read_metadata(path), str(path))
        return cls(Path(path), state, name, geometry, contract, content_sha256(data))

    def build(self, device: torch.device | str = "cpu") -> FoundationEncoder:
        """The encoder built on `device` (no CPU build then copy on a GPU; on CPU the same RNG draws as ever),
        then loaded strictly: every key, every shape."""
        encoder = build_encoder(self.family, self.geometry, device)
        encoder.load_state_dict(self.state, strict=True)
        return encoder

    def spec(self) -> dict:
        """What a task model stores to rebuild this encoder: family, geometry, input contract."""
        return {"family": self.family, "geometry": asdict(self.geometry),
                "input": self.contract.to_json() if self.contract else None}


def load_encoder(path: Path, device: torch.device | str = "cpu") -> FoundationEncoder:
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


# ------------------------------------------------------------------------------------------------------- import


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch file, without running pickled code: torch.load with
    weights_only=True, `argparse.Namespace` allowed (training checkpoints keep their arguments in one). Wrappers
    (`model`, `state_dict`, ...) and a prefix every key shares (`module.`) are removed; non-tensor entries of a
    training checkpoint (optimizer, epoch, scaler, args) are not kept."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        with named_safetensors_errors(path):
            return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with other classes: refused rather than run
        raise ImportRefused(f"{path}: cannot be read with weights_only=True ({weights_only_refusal(err)}); save its "
                            "state dict with torch.save(model.state_dict()) or as safetensors") from err
    while isinstance(state, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict):
        raise ImportRefused(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ImportRefused(f"{path}: no tensors found (top-level keys: {', '.join(map(str, list(state)[:8]))})")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def import_checkpoint(path: Path, family_name: str, layout: str, geometry, options: dict | None = None
                      ) -> tuple[FoundationEncoder, LoadReport]:
    """A checkpoint written by another project -> (encoder of `family_name` and `geometry`, load report).

    Strict: a missing key, a key without a place in the encoder (not on the family's ignore-list) or a shape that
    differs is an `ImportRefused` naming the family, layout, the file's own first keys and the likely cause."""
    fam = family(family_name)
    if layout not in fam.layouts:
        raise ImportRefused(f"family {family_name!r} has no layout {layout!r}; its layouts: {', '.join(fam.layouts)}")
    raw = read_checkpoint(path)
    options = {**(options or {}), "source": str(path)}
    try:
        state, report = fam.layouts[layout](raw, geometry, options)
    except ImportRefused as err:
        raise ImportRefused(f"{path}: cannot import as family {family_name!r}, layout {layout!r}: {err}. "
                            f"{_first_keys(raw)}") from err
    encoder = fam.encoder_cls(geometry)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        raise ImportRefused(refusal(path, family_name, layout, geometry, raw, state, own, report))
    encoder.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
    log.info("%s: imported as %s/%s: %d tensors, %d ignored%s", path, family_name, layout, len(own),
             len(report.ignored), "".join(f"; {note}" for note in report.notes))
    for note in report.notes:
        log.warning("%s: %s", path, note)
    return encoder, report


def _first_keys(raw: dict) -> str:
    keys = list(raw)
    more = f" (+{len(keys) - N_FIRST_KEYS} more)" if len(keys) > N_FIRST_KEYS else ""
    return f"The file's first keys: {', '.join(keys[:N_FIRST_KEYS])}{more}."


def _listed(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _file_key(key: str, mapping: dict[str, str]) -> str:
    """A missing encoder key as the layout would have named it in the file, from a mapped key of the same form
    (blocks.1.mlp.linear1.bias -> blocks.1.mlp.fc1.bias, given blocks.0's mapping); the encoder key otherwise."""
    numbers = re.findall(r"\d+", key)
    form = re.sub(r"\d+", "#", key)
    for ours, theirs in mapping.items():
        if re.sub(r"\d+", "#", ours) == form and ours != theirs and len(re.findall(r"\d+", theirs)) == len(numbers):
            digits = iter(numbers)
            named = re.sub(r"\d+", lambda _: next(digits), theirs)
            return f"{named} (-> {key})"
    return key


def _unit(key: str) -> tuple[str, int] | None:
    """(container, index) of the innermost numbered unit a key belongs to: blocks.11.attn.to_q.weight ->
    (blocks, 11); a hierarchical stage's block stages.2.2.dwconv.weight -> (stages.2, 2); None without one."""
    parts = key.split(".")
    numbered = [i for i, part in enumerate(parts[:-1]) if part.isdigit() and i > 0]
    if not numbered:
        return None
    i = numbered[-1]
    return ".".join(parts[:i]), int(parts[i])


def refusal(path, family_name: str, layout: str, geometry, raw: dict, state: dict, own: dict,
            report: LoadReport) -> str:
    """The message of a refused import: what does not fit, and why that is likely."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = [f"{path}: cannot import as family {family_name!r}, layout {layout!r}:"]
    if missing:
        named = list(dict.fromkeys(_file_key(k, report.mapping) for k in missing))
        parts.append(f"{len(named)} keys the encoder needs are not in the file ({_listed(named)});")
    if unexpected:
        extra = list(dict.fromkeys(report.mapping.get(k, k) for k in unexpected))
        parts.append(f"{len(extra)} file keys with no place in the encoder and not on the ignore-list "
                     f"({_listed(extra)});")
    for key in wrong_shape[:2]:
        source = report.mapping.get(key, key)
        parts.append(f"{source}{f' (-> {key})' if source != key else ''} has shape {tuple(state[key].shape)}, the "
                     f"geometry needs {tuple(own[key].shape)};")
    parts.append(f"likely cause: {likely_cause(family_name, layout, geometry, raw, state, own)}.")
    parts.append(_first_keys(raw))
    return " ".join(parts)


def likely_cause(family_name: str, layout: str, geometry, raw: dict, state: dict, own: dict) -> str:
    """Why a converted `state` does not fit the encoder's `own`: another family, depth, a shape that tells (2D
    kernel, kernel size, channels, width), another layout of this family, or edited keys."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    causes = []
    fits = [name for name, fam in all_families().items() if name != family_name and fam.recognises(raw)]
    if fits and not family(family_name).recognises(raw):  # the one cause that explains every other mismatch
        return f"the file's keys look like family {', '.join(map(repr, fits))}, not {family_name!r}"
    depth = _depth_cause(missing, unexpected, state, own)
    if depth:
        causes.append(depth)
    causes += _shape_causes(family_name, state, own, wrong_shape)
    if not causes:
        other = _fitting_layouts(family_name, layout, geometry, raw, own)
        if other:
            causes.append(f"the file fits layout {', '.join(map(repr, other))} of family {family_name!r}")
        elif missing and unexpected and len(missing) > len(own) / 2:
            causes.append(f"another architecture or key layout (none of the registered families "
                          f"{', '.join(all_families())} recognises these keys)")
        else:
            causes.append("keys removed from or added to the file (a truncated or edited checkpoint, or another "
                          "variant of the architecture)")
    return "; ".join(causes)


def _shape_causes(family_name: str, state: dict, own: dict, wrong_shape: list[str]) -> list[str]:
    """The most telling shape mismatch: a 2D kernel, then a kernel (patch) size, input channels, width."""
    found = {}
    for key in wrong_shape:
        have, need = tuple(state[key].shape), tuple(own[key].shape)
        if len(have) == 4 and len(need) == 5:
            found.setdefault(0, f"a 2D kernel for a 3D family: {key} is a Conv2d weight {have}, the {family_name} "
                                f"family needs a Conv3d weight {need} (this is a 2D model)")
        elif len(have) == len(need) == 5 and have[:2] == need[:2]:
            found.setdefault(1, f"patch/kernel size: the file's {key} has kernel {list(have[2:])}, the geometry "
                                f"{list(need[2:])}")
        elif len(have) == len(need) == 5 and have[0] == need[0] and have[1] != need[1]:
            found.setdefault(2, f"input channels: the file's {key} takes {have[1]} channels, the geometry "
                                f"{need[1]} (in_channels)")
        elif len(have) == len(need):
            have_dim, need_dim = next((h, n) for h, n in zip(have, need) if h != n)
            found.setdefault(3, f"width: the file's {key} is {have_dim} wide where the geometry has {need_dim} "
                                f"(hidden size / dims, or the crop's token count for a position table)")
        else:
            found.setdefault(3, f"width/rank: the file's {key} is {have}, the geometry's {need}")
    return [found[k] for k in sorted(found)][:2]


def _depth_cause(missing, unexpected, state, own) -> str | None:
    """A different number of blocks (per stage for a hierarchical family): missing keys only in the deepest units
    of one container, or extra keys only beyond them."""
    def units(keys):
        return {u for u in map(_unit, keys) if u is not None}

    for wanted, other, have_keys in ((missing, unexpected, state), (unexpected, missing, own)):
        found = units(wanted)
        if not wanted or other or any(_unit(k) is None for k in wanted) or len({c for c, _ in found}) != 1:
            continue
        container = next(iter(found))[0]
        present = {i for c, i in units(have_keys) if c == container}
        first = min(i for _, i in found)
        if not present or first <= max(present):
            continue
        if wanted is missing:
            need = present | {i for _, i in found}
            return (f"depth: the file has {len(present)} {container} ({container}.0..{container}.{max(present)}), "
                    f"the geometry asks for {len(need)} ({container}.{first} missing)")
        return (f"depth: the file has {len(present) + len(found)} {container} ({container}.{first} extra), the "
                f"geometry asks for {len(present)}")
    return None


def _fitting_layouts(family_name, layout, geometry, raw, own) -> list[str]:
    """Other layouts of the same family under which every key fits."""
    fits = []
    for name, converter in family(family_name).layouts.items():
        if name == layout:
            continue
        try:
            state, _ = converter(raw, geometry, {})
        except Exception:  # a layout that cannot even convert these keys does not fit
            continue
        if set(state) == set(own) and all(tuple(state[k].shape) == tuple(own[k].shape) for k in own):
            fits.append(name)
    return fits
