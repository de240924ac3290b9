"""Family `convnextv2_3d`: ProFound's 3D ConvNeXt V2 with GRN (001's "ProFound", ConvNeXt V2 Tiny, FCMAE-pretrained).

Architecture as ProFound's dense `models/convnextv2.py` (github pipiwang/ProFound, branch demo): stem Conv3d
kernel = stride = 4 + channels-first LayerNorm; downsample layers 1 and 2: LayerNorm + Conv3d kernel = stride = 2;
downsample layer 3: LayerNorm + Conv3d kernel 1 stride 1 (ProFound's choice, so stages 3 and 4 share a stride).
Blocks: depthwise Conv3d 7^3, LayerNorm (channels last), `pwconv1` Linear C -> 4C, GELU, GRN, `pwconv2`, residual.
Every LayerNorm eps 1e-6; GRN adds 1e-6 to the mean of the L2 norms. Parameter names are ProFound's own.

Levels: `stage1` .. `stage4`, each stage's output map (what ProFound's `forward(x, ret_hids=True)` returns as
its hidden states: 1/4, 1/8, 1/16, 1/16 of the input), and `final`, the final LayerNorm applied to the spatial
mean of stage 4: ProFound's pooled vector (what its classifier reads), as a (B, C, 1, 1, 1) map so that its
spatial mean is that vector. Input axes: (D, H, W) as cached, the order ProFound feeds ((z, y, x)).

Layouts:
- `profound`: the dense keys of `models/convnextv2.py` (a bare state dict or {"model": ...}), or a whole
  fine-tuned ProFound `Classifier` (`encoder.*` + `head.*`; the head is ignored).
- `profound_fcmae`: the FCMAE pretraining checkpoint (sparse MinkowskiEngine encoder `encoder.*`, decoder,
  `mask_token`, `proj`, `pred`), converted with ProFound's own `remap_checkpoint_keys` rules. The final `norm` is
  not in such a file: it keeps its init (weight 1, bias 0), as in ProFound's fine-tuning, and the report says so.
Missing and unexpected keys are left to the generic strict importer: a converter renames what it knows, lists
what the family ignores, and passes every other key through under its own name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

from taskalign.models.families import Family, register
from taskalign.models.families.base import FINAL, FoundationEncoder, ImportRefused, Level, LoadReport

NAME = "convnextv2_3d"


@dataclass(frozen=True)
class ConvNeXtV2Geometry:
    """Shapes of a 3D ConvNeXt V2 (defaults: ProFound's `convnextv2_tiny`, input 3 x 64 x 256 x 256)."""

    in_channels: int = 3
    depths: tuple[int, int, int, int] = (3, 3, 9, 3)
    dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    img_size: tuple[int, int, int] = (64, 256, 256)  # (D, H, W) the encoder is built for; any multiple of 16 runs
    eps: float = 1e-6
    drop_path: float = 0.0

    def __post_init__(self):
        if len(self.depths) != 4 or len(self.dims) != 4:
            raise ValueError(f"{NAME}: depths {self.depths} and dims {self.dims} need 4 stages each")
        bad = [s for s in self.img_size if s % 16]
        if bad:
            raise ValueError(f"{NAME}: image size {self.img_size} must be a multiple of 16 (stem 4 x 2 x 2) on every axis")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) map (ProFound's `LayerNorm(data_format="channels_first")`)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps).movedim(-1, 1)


class GRN(nn.Module):
    """Global response normalisation on channels-last (B, D, H, W, C); gamma, beta stored (1, 1, 1, 1, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim: int, eps: float, drop_path: float):
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + self.drop_path(y.permute(0, 4, 1, 2, 3))


class ConvNeXtV2Encoder(FoundationEncoder):
    family = NAME
    geometry_cls = ConvNeXtV2Geometry
    lora_targets = r".*stages\.\d+\.\d+\.(pwconv1|pwconv2)"
    # regexes (full match): FCMAE's decoder side (ProFound's remap drops every key containing these words) and a
    # fine-tuned Classifier's head
    ignore_on_import = (r".*(decoder|mask_token|proj|pred).*", r"head\..*")

    def __init__(self, geometry: ConvNeXtV2Geometry):
        super().__init__(geometry)
        dims, eps = geometry.dims, geometry.eps
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv3d(geometry.in_channels, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0], eps))])
        for i, stride in enumerate((2, 2, 1)):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(dims[i], eps), nn.Conv3d(dims[i], dims[i + 1], kernel_size=stride, stride=stride)))
        rates = torch.linspace(0, geometry.drop_path, sum(geometry.depths)).tolist()
        starts = [sum(geometry.depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dims[i], eps, rates[starts[i] + j]) for j in range(geometry.depths[i])))
            for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=eps)
        for module in self.modules():  # ProFound's init (trunc normal 0.02, zero bias) for a model built from scratch
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def levels(self) -> list[Level]:
        dims, size = self.geometry.dims, self.geometry.img_size
        strides = (4, 8, 16, 16)
        return [Level(f"stage{i + 1}", dims[i], (float(s),) * 3) for i, s in enumerate(strides)] + [
            Level(FINAL, dims[-1], tuple(float(s) for s in size))]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            out[f"stage{i + 1}"] = x
        out[FINAL] = self.norm(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]
        return out

    def partial_prefixes(self, k: int) -> list[str]:
        """The last k stages with the downsample layer (LayerNorm + conv) that opens each, and the final norm."""
        if not 1 <= k <= 4:
            raise ValueError(f"partial:{k}: {NAME} has 4 stages")
        return [p for i in range(4 - k, 4) for p in (f"downsample_layers.{i}.", f"stages.{i}.")] + ["norm."]

    def default_pyramid_levels(self) -> tuple[str, ...]:
        return ("stage1", "stage2", "stage3", "stage4")

    def pyramid(self, names: tuple[str, ...], channels: int) -> nn.Module:
        names = tuple(names) or self.default_pyramid_levels()
        by_name = {level.name: level for level in self.levels()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{NAME}: unknown pyramid levels {unknown}; levels: {list(by_name)}")
        from taskalign.models.upernet import LevelPyramid

        return LevelPyramid(names, tuple(by_name[n].channels for n in names), channels)


# --- checkpoint layouts ---------------------------------------------------------------------------------------

def convert_taskalign(state: dict[str, torch.Tensor], geometry: ConvNeXtV2Geometry, options: dict):
    """This pipeline's own encoder files: the family's keys as they are."""
    report = LoadReport(NAME, "taskalign", options.get("source", ""))
    report.mapping = {k: k for k in state}
    return dict(state), report


def convert_profound(state: dict[str, torch.Tensor], geometry: ConvNeXtV2Geometry, options: dict):
    """ProFound's dense keys, bare or under a Classifier's `encoder.` (its `head.*` ignored)."""
    report = LoadReport(NAME, "profound", options.get("source", ""))
    wrapped = any(k.startswith("encoder.") for k in state)
    out = {}
    for key, value in state.items():
        if wrapped and key.startswith("head."):
            report.ignored.append(key)
            continue
        new = key[len("encoder."):] if wrapped and key.startswith("encoder.") else key
        out[new] = value
        report.mapping[new] = key
    if wrapped:
        report.notes.append("a whole ProFound Classifier: the encoder's keys taken from `encoder.*`, the head ignored")
    return out, report


def _dense_kernel(key: str, value: torch.Tensor) -> torch.Tensor:
    """A MinkowskiEngine kernel as the dense Conv3d weight, by ProFound's `remap_checkpoint_keys` permutations."""
    if value.ndim == 3:  # (k^3, in, out) full convolution
        volume, c_in, c_out = value.shape
        k = round(volume ** (1 / 3))
        if k ** 3 != volume:
            raise ImportRefused(f"{NAME}/profound_fcmae: {key} has {volume} kernel positions, not a cube")
        return value.permute(2, 1, 0).reshape(c_out, c_in, k, k, k).permute(0, 1, 4, 3, 2)
    if value.ndim == 2:
        if key == "downsample_layers.3.1.weight":  # the kernel-1 downsample: (in, out)
            return value.permute(1, 0)[:, :, None, None, None]
        volume, c = value.shape  # depthwise (k^3, C)
        k = round(volume ** (1 / 3))
        if k ** 3 != volume:
            raise ImportRefused(f"{NAME}/profound_fcmae: {key} has {volume} kernel positions, not a cube")
        return value.permute(1, 0).reshape(c, 1, k, k, k).permute(0, 1, 4, 3, 2)
    raise ImportRefused(f"{NAME}/profound_fcmae: {key} kernel of shape {tuple(value.shape)}: expected (k^3, in, out) "
                        f"or (k^3, C)")


def convert_profound_fcmae(state: dict[str, torch.Tensor], geometry: ConvNeXtV2Geometry, options: dict):
    """ProFound's FCMAE pretraining checkpoint (sparse encoder) -> the dense encoder's keys."""
    report = LoadReport(NAME, "profound_fcmae", options.get("source", ""))
    out = {}
    for key, value in state.items():
        if re.fullmatch(ConvNeXtV2Encoder.ignore_on_import[0], key):
            report.ignored.append(key)
            continue
        new = key.split(".", 1)[1] if key.startswith("encoder.") else key
        if new.endswith(".kernel"):
            new = new[: -len(".kernel")] + ".weight"
            value = _dense_kernel(new, value)
        elif re.search(r"\.(ln|linear)\.(weight|bias)$", new):
            parts = new.split(".")
            new = ".".join(parts[:-2] + parts[-1:])
        if new.endswith("bias") and value.ndim != 1:
            value = value.reshape(-1)
        elif ".grn." in new and value.ndim == 2:
            value = value.reshape(1, 1, 1, 1, -1)
        out[new] = value
        report.mapping[new] = key
    missing_norm = [k for k in ("norm.weight", "norm.bias") if k not in out]
    if missing_norm:
        c = geometry.dims[-1]
        out.setdefault("norm.weight", torch.ones(c))
        out.setdefault("norm.bias", torch.zeros(c))
        report.notes.append(f"{', '.join(missing_norm)} not in the FCMAE checkpoint (the sparse encoder has no final "
                            "norm): kept at init, weight 1 and bias 0, as ProFound's fine-tuning leaves them")
    report.notes.append("sparse kernels made dense by ProFound's remap_checkpoint_keys permutations; "
                        "`.ln`/`.linear` dropped from names; (1, C) biases flattened, GRN (1, C) -> (1, 1, 1, 1, C)")
    return out, report


def fcmae_encoder_state(dense: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `convert_profound_fcmae` on the encoder: a dense encoder state -> the `encoder.*` keys and
    sparse shapes of ProFound's FCMAE checkpoint (MinkowskiEngine kernels (k^3, in, out) / (k^3, C), the kernel-1
    downsample (in, out), `.ln` / `.linear` sub-modules, (1, C) biases and GRN). The final norm is not in such a
    file. Used to write example checkpoints (tools/make_example_checkpoints.py)."""
    out = {}
    for key, v in dense.items():
        if key.startswith("norm."):
            continue
        parts = key.split(".")
        if key.startswith("downsample_layers.0."):  # the stem stays a dense conv and channels-first LayerNorm
            new = key
        elif key.startswith("downsample_layers.") and parts[2] == "0":  # MinkowskiLayerNorm
            new = ".".join(parts[:3] + ["ln", parts[3]])
        elif key.startswith("downsample_layers.") and parts[3] == "weight":  # MinkowskiConvolution
            new, (c_out, c_in) = ".".join(parts[:3] + ["kernel"]), v.shape[:2]
            v = v.reshape(c_out, c_in).permute(1, 0) if v.shape[2] == 1 else \
                v.permute(0, 1, 4, 3, 2).reshape(c_out, c_in, -1).permute(2, 1, 0)
        elif key.endswith("dwconv.weight"):  # MinkowskiChannelwiseConvolution
            new, v = key[: -len(".weight")] + ".kernel", v.permute(0, 1, 4, 3, 2).reshape(v.shape[0], -1).permute(1, 0)
        elif key.startswith("downsample_layers.") or key.endswith("dwconv.bias") or ".grn." in key:
            new, v = key, v.reshape(1, -1)
        elif ".norm." in key:
            new = key.replace(".norm.", ".norm.ln.")
        elif ".pwconv" in key:
            new = ".".join(parts[:-1] + ["linear", parts[-1]])
        else:
            raise ValueError(f"{NAME}: no FCMAE name for encoder key {key}")
        out[f"encoder.{new}"] = v.contiguous()
    return out


_KEY = re.compile(r"(?:^|\.)stages\.\d+\.\d+\.(?:dwconv|pwconv1)\.(?:weight|kernel|linear\.weight)$")


def recognises(state: dict[str, torch.Tensor]) -> bool:
    """A ConvNeXt (V2) stage block: `stages.<s>.<b>.dwconv` / `.pwconv1`, dense or sparse."""
    return any(_KEY.search(k) for k in state)


register(Family(
    name=NAME,
    encoder_cls=ConvNeXtV2Encoder,
    layouts={"taskalign": convert_taskalign, "profound": convert_profound, "profound_fcmae": convert_profound_fcmae},
    recognises=recognises,
    description="ProFound's 3D ConvNeXt V2 with GRN (pipiwang/ProFound models/convnextv2.py)",
    layout_notes={
        "taskalign": "this pipeline's encoder files (the family's own keys)",
        "profound": "dense keys of ProFound's models/convnextv2.py, bare, {'model': ...} or a whole Classifier",
        "profound_fcmae": "FCMAE pretraining checkpoint (sparse encoder.*); decoder/mask_token/proj/pred ignored; "
                          "final norm absent and kept at init",
    },
))
