"""Training-step efficiency of the imported encoder families (convnextv2_3d, swin3d, vit2d) against the fp32 peak.

One step = forward of every level + backward of a loss on `final` (batch 1, all parameters trainable), fp32 on
CPU. FLOPs from torch.utils.flop_counter.FlopCounterMode over that step (the CPU fused-attention ops registered as
in bench_train); peak = best-of-N fp32 2048^2 matmul measured between the steps (interleaved), as bench_train does.

Paper geometry where a step takes under a minute here, else the largest size that does (the row says which):
- convnextv2_3d: ProFound's ConvNeXt V2 Tiny, 3 x 64 x 256 x 256;
- swin3d: PRISM's scale-B Swin (feature 48, depths 2/2/2/2, use_v2), 1 x 64 x 256 x 256 (one sequence);
- vit2d: DINOv2 ViT-S/14 + 4 registers, ProViCNet's 2.5D feed (each 256 x 256 slice resized to 448 x 448);
  the candidates shrink the slice count.
A probe step at the smallest candidate extrapolates (linearly in voxels or slices) which candidate fits.

    PYTHONPATH=src python benchmarks/bench_families.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

from benchmarks.bench_train import count_flops, interleaved, matmul_peak  # noqa: E402
from benchmarks.common import fmt_flops, fmt_rate, fmt_time, machine, markdown, plain_table, row  # noqa: E402
from taskalign.models.families.convnextv2_3d import ConvNeXtV2Encoder, ConvNeXtV2Geometry  # noqa: E402
from taskalign.models.families.swin3d import Swin3dEncoder, Swin3dGeometry  # noqa: E402
from taskalign.models.families.vit2d import ViT2dEncoder, ViT2dGeometry  # noqa: E402

SECTION = "1b families"
LIMIT_S = 60.0


def convnext(size):
    return ConvNeXtV2Encoder(ConvNeXtV2Geometry(img_size=size)), 3


def swin(size):
    return Swin3dEncoder(Swin3dGeometry(in_channels=1, img_size=size)), 1


def vit2d(size):
    return ViT2dEncoder(ViT2dGeometry(img_size=size)), 1


# (label, builder, candidate sizes (D, H, W), largest first; the first is the paper geometry)
FAMILIES = (
    ("convnextv2_3d ConvNeXt V2 Tiny", convnext, [(64, 256, 256), (32, 256, 256), (32, 128, 128), (16, 128, 128)]),
    ("swin3d PRISM Swin-B (48, 2/2/2/2, v2)", swin, [(64, 256, 256), (32, 256, 256), (64, 128, 128), (32, 128, 128)]),
    ("vit2d DINOv2 ViT-S/14 reg4 (slices at 448^2)", vit2d, [(64, 256, 256), (32, 256, 256), (16, 256, 256),
                                                            (8, 256, 256)]),
)


def make_step(model, x):
    def step():
        levels = model(x)
        levels["final"].pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def one_family(label: str, build, sizes: list, repeats: int, peak_fn) -> list[dict]:
    probe_size = sizes[-1]
    model, channels = build(probe_size)
    step = make_step(model.train(), torch.randn(1, channels, *probe_size))
    step()  # warm-up
    start = time.perf_counter()
    step()
    probe = time.perf_counter() - start
    volume = lambda s: s[0] * s[1] * s[2]  # noqa: E731
    size = next((s for s in sizes if probe * volume(s) / volume(probe_size) < LIMIT_S), probe_size)
    del model, step
    model, channels = build(size)
    step = make_step(model.train(), torch.randn(1, channels, *size))
    flops, per_op = count_flops(step)  # also the warm-up step
    t_step, peak = interleaved(step, peak_fn, repeats)
    rate = flops / t_step
    where = "paper geometry" if size == sizes[0] else (
        f"NOT paper geometry {list(sizes[0])}: a step there was projected at "
        f"{fmt_time(probe * volume(sizes[0]) / volume(probe_size))} from a {list(probe_size)} probe (limit 60 s)")
    attention = sum(v for k, v in per_op.items() if "scaled_dot_product" in k or "bmm" in k)
    return [row(SECTION, f"CPU fp32 ({torch.get_num_threads()} threads), {label}, input {channels}x"
                         f"{'x'.join(map(str, size))} ({where}) train step (fwd+bwd, batch 1): achieved FLOP/s / fp32 "
                         f"2048^2 matmul peak [{fmt_flops(flops)} per step, attention/bmm {100 * attention / flops:.1f}%;"
                         f" step {fmt_time(t_step)}]",
                f"peak {fmt_rate(peak)}", f"step {fmt_rate(rate)}", rate / peak, "-", None, "{:.1%}")]


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    rows = []
    for label, build, sizes in FAMILIES:
        rows += one_family(label, build, sizes[-2:] if quick else sizes, 1 if quick else 2,
                           lambda: matmul_peak(cpu, torch.float32, 2048))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the two smallest candidates only, one timed step")
    args = parser.parse_args()
    info = machine()
    rows = run(quick=args.quick)
    print(plain_table(rows))
    print(markdown(rows, info, "Encoder families: train step against the fp32 peak"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
