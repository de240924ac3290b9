"""Training-step efficiency of every encoder family (vit3d, convnextv2_3d, swin3d, vit2d) against the fp32 peak.

One step = forward of every level + backward of a loss on `final` (batch 1, all parameters trainable), fp32 on
CPU. FLOPs from torch.utils.flop_counter.FlopCounterMode over that step, with the CPU fused-attention ops registered
as in bench_train and the convolution backward corrected for grouped (depthwise) convolutions (`_conv_backward`).
Peak: best-of-3 fp32 2048^2 matmuls sampled before and after each timed step; every row is divided by the best
peak of the whole run, the machine's (on a shared machine other jobs lower single samples and steps alike).

Paper geometry where a step takes under a minute here, else the largest size that does (the row says which):
- vit3d: the pipeline's ViT-B (768 / 12 blocks / 12 heads, config/paper.yaml), patch 16 x 32 x 32, 3 x 64 x 256 x 256;
- convnextv2_3d: ProFound's ConvNeXt V2 Tiny, 3 x 64 x 256 x 256;
- swin3d: PRISM's scale-B Swin (feature 48, depths 2/2/2/2, use_v2), 1 x 64 x 256 x 256 (one sequence);
- vit2d: DINOv2 ViT-S/14 + 4 registers, ProViCNet's 2.5D feed (each 256 x 256 slice resized to 448 x 448);
  the candidates shrink the slice count.
Steps are timed from the smallest candidate up while the next one is projected (linearly in voxels) under 60 s.

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

from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from benchmarks.bench_train import _custom_mapping, matmul_peak  # noqa: E402
from benchmarks.common import fmt_flops, fmt_rate, fmt_time, machine, markdown, plain_table, row, seconds  # noqa: E402
from taskalign.models.families.convnextv2_3d import ConvNeXtV2Encoder, ConvNeXtV2Geometry  # noqa: E402
from taskalign.models.families.swin3d import Swin3dEncoder, Swin3dGeometry  # noqa: E402
from taskalign.models.families.vit2d import ViT2dEncoder, ViT2dGeometry  # noqa: E402
from taskalign.models.families.vit3d import ViT3dEncoder, ViT3dGeometry  # noqa: E402

SECTION = "1b families"
LIMIT_S = 60.0


def vit3d(size):
    return ViT3dEncoder(ViT3dGeometry(3, size, (16, 32, 32), 768, 3072, 12, 12)), 3


def convnext(size):
    return ConvNeXtV2Encoder(ConvNeXtV2Geometry(img_size=size)), 3


def swin(size):
    return Swin3dEncoder(Swin3dGeometry(in_channels=1, img_size=size)), 1


def vit2d(size):
    return ViT2dEncoder(ViT2dGeometry(img_size=size)), 1


# (label, builder, candidate sizes (D, H, W), largest first; the first is the paper geometry)
FAMILIES = (
    ("vit3d ViT-B patch 16x32x32", vit3d, [(64, 256, 256), (32, 256, 256), (32, 128, 128), (16, 128, 128)]),
    ("convnextv2_3d ConvNeXt V2 Tiny", convnext, [(64, 256, 256), (32, 256, 256), (32, 128, 128), (16, 128, 128)]),
    ("swin3d PRISM Swin-B (48, 2/2/2/2, v2)", swin, [(64, 256, 256), (32, 256, 256), (64, 128, 128), (32, 128, 128)]),
    ("vit2d DINOv2 ViT-S/14 reg4 (slices at 448^2)", vit2d, [(64, 256, 256), (32, 256, 256), (16, 256, 256),
                                                            (8, 256, 256)]),
)


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """aten.convolution_backward: torch 2.13's formula counts the weight gradient as a dense convolution, `groups`
    times too many for ConvNeXt's depthwise 7^3 convs (x96..x768). The weight gradient costs what the forward
    convolution costs (each weight accumulates over the batch and the output positions), grouped or not."""
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


def count_flops(fn) -> tuple[int, dict[str, int]]:
    mapping = {**_custom_mapping(), torch.ops.aten.convolution_backward: _conv_backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def make_step(model, x):
    def step():
        levels = model(x)
        levels["final"].pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def one_family(build, sizes: list, repeats: int, peak_fn) -> dict:
    """Time steps from the smallest candidate up while the next one is projected (linearly in voxels, from the
    last measured step) under LIMIT_S; then count the FLOPs of the largest and time it `repeats` times, a peak
    sample before each."""
    volume = lambda s: s[0] * s[1] * s[2]  # noqa: E731
    ladder = sorted(sizes, key=volume)
    size, projected = ladder[0], None
    for smaller, larger in zip(ladder, ladder[1:]):
        model, channels = build(smaller)
        step = make_step(model.train(), torch.randn(1, channels, *smaller))
        step()  # warm-up
        projected = seconds(step) * volume(larger) / volume(smaller)
        del model, step
        if projected >= LIMIT_S:
            break
        size, projected = larger, None
    model, channels = build(size)
    step = make_step(model.train(), torch.randn(1, channels, *size))
    flops, per_op = count_flops(step)  # also the warm-up step
    times, peaks = [], []
    for _ in range(repeats):
        peaks.append(peak_fn())
        times.append(seconds(step))
    peaks.append(peak_fn())
    attention = sum(v for k, v in per_op.items() if "scaled_dot_product" in k or "bmm" in k)
    return {"size": size, "channels": channels, "flops": flops, "t_step": min(times), "peak": max(peaks),
            "attention": attention, "projected": projected}


def run(quick: bool = False) -> list[dict]:
    """One row per family against the best fp32 peak of the whole run (the machine's peak; other jobs on a shared
    machine lower single samples)."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    results = []
    for label, build, sizes in FAMILIES:
        results.append((label, sizes, one_family(build, sizes[-2:] if quick else sizes, 1 if quick else 2,
                                                 lambda: matmul_peak(cpu, torch.float32, 2048))))
    peak = max(r["peak"] for _, _, r in results)
    rows = []
    for label, sizes, r in results:
        rate = r["flops"] / r["t_step"]
        size = r["size"]
        where = "paper geometry" if size == sizes[0] else (
            f"NOT paper geometry {list(sizes[0])}: the next larger size was projected at "
            f"{fmt_time(r['projected'])} (limit {LIMIT_S:.0f} s)" if r["projected"] else
            f"NOT paper geometry {list(sizes[0])}: --quick")
        rows.append(row(SECTION, f"CPU fp32 ({torch.get_num_threads()} threads), {label}, input {r['channels']}x"
                                 f"{'x'.join(map(str, size))} ({where}) train step (fwd+bwd, batch 1): achieved "
                                 f"FLOP/s / best fp32 2048^2 matmul of the run [{fmt_flops(r['flops'])} per step, "
                                 f"attention/bmm {100 * r['attention'] / r['flops']:.1f}%; step {fmt_time(r['t_step'])}]",
                        f"peak {fmt_rate(peak)}", f"step {fmt_rate(rate)}", rate / peak, "-", None, "{:.1%}"))
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
