"""Section 1: training-step efficiency of the paper-geometry encoder against the machine's matmul peak.

FLOPs come from torch.utils.flop_counter.FlopCounterMode over one step (forward + backward, batch 1). On CPU,
PyTorch's fused attention runs as `aten._scaled_dot_product_flash_attention_for_cpu(_backward)`, which the stock
FLOP registry (torch 2.13) does not know: it would count the attention as 0 FLOPs. The same formulas the registry
uses for the CUDA kernels are registered for the CPU ops here (custom_mapping), and the row says how much they add.

Peak: best-of-N torch.matmul of two n x n matrices (2 n^3 FLOPs), measured between the steps (interleaved), so
that load from other jobs hits both sides alike; the best step and the best matmul are compared.

Extra rows: the library's patch embedding (PatchConv3d: patchify + matmul) forward + backward against torch's
Conv3d on the same parameters (the speed-up it made); the per-operator share of the step (full run only; the patch
embedding is a matmul now); and, when the CPU has bf16 instructions, bf16 autocast on CPU (the library runs fp32 on
CPU).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import best_of, cpu_flags, fmt_flops, fmt_rate, fmt_time, row, seconds
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry

SECTION = "1 training"
PAPER = EncoderGeometry(3, (64, 256, 256), (16, 32, 32), 768, 3072, 12, 12)

warnings.filterwarnings("ignore", message=".*TypedStorage.*")


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _custom_mapping() -> dict:
    ops = torch.ops.aten
    mapping = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward
    return mapping


def count_flops(fn, with_cpu_attention: bool = True) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call of `fn` and the count per aten op."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping() if with_cpu_attention else None) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Best FLOP/s of torch.matmul of two n x n matrices."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (allocations, BLAS thread pool)
    return 2.0 * n**3 / best_of(lambda: a @ b, repeats, _sync(device))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_step(model, x, device, amp: torch.dtype | None):
    def step():
        with _autocast(device, amp):
            out = model(x)["final"]
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def make_forward(model, x, device, amp: torch.dtype | None):
    def forward():
        with torch.no_grad(), _autocast(device, amp):
            model(x)

    return forward


def interleaved(fn, peak_fn, repeats: int, sync=None) -> tuple[float, float]:
    """(best time of fn, best peak) with one peak sample taken before each timed call."""
    times, peaks = [], []
    for _ in range(repeats):
        peaks.append(peak_fn())
        times.append(seconds(fn, sync))
    peaks.append(peak_fn())
    return min(times), max(peaks)


def efficiency_rows(model, x, device, amp, label: str, peak_fn, repeats: int, peak_label: str,
                    goal: float | None = None) -> list[dict]:
    """Train step and forward FLOP/s over the peak; `goal` (a share of the peak) applies to the train step."""
    sync = _sync(device)
    step, forward = make_step(model, x, device, amp), make_forward(model, x, device, amp)
    flops, per_op = count_flops(step)  # doubles as the warm-up step
    attention = sum(v for k, v in per_op.items() if "scaled_dot_product" in k)
    t_step, peak = interleaved(step, peak_fn, repeats, sync)
    rate = flops / t_step
    f_flops, _ = count_flops(forward)
    t_fwd, peak_f = interleaved(forward, peak_fn, repeats, sync)
    peak = max(peak, peak_f)
    f_rate = f_flops / t_fwd
    return [
        row(SECTION, f"{label} train step (fwd+bwd, batch 1): achieved FLOP/s / {peak_label} peak "
                     f"[{fmt_flops(flops)} per step, attention {100 * attention / flops:.1f}% of it; "
                     f"step {fmt_time(t_step)}]",
            f"peak {fmt_rate(peak)}", f"step {fmt_rate(rate)}", rate / peak,
            "-" if goal is None else f">= {goal:.0%}", None if goal is None else rate / peak >= goal, "{:.1%}"),
        row(SECTION, f"{label} forward only (no_grad, batch 1): achieved FLOP/s / {peak_label} peak "
                     f"[{fmt_flops(f_flops)}; forward {fmt_time(t_fwd)}]",
            f"peak {fmt_rate(peak)}", f"forward {fmt_rate(f_rate)}", f_rate / peak, "-", None, "{:.1%}"),
    ], {"flops": flops, "t_step": t_step, "peak": peak, "per_op": per_op}


def patch_embedding_rows(model, x, repeats: int, t_step: float, device) -> list[dict]:
    """The library's PatchConv3d (patchify + matmul) against torch's Conv3d on the same parameters."""
    patch = model.patch_embedding.patch_embeddings
    sync = _sync(device)

    def conv(inputs):
        return torch.nn.Conv3d.forward(patch, inputs)

    with torch.no_grad():
        ref, alt = conv(x), patch(x)
    diff = float((ref - alt).abs().max() / ref.abs().max())
    grad = torch.randn_like(ref)

    def step(fn):
        fn(x).flatten(2).transpose(1, 2).backward(grad.flatten(2).transpose(1, 2))
        patch.zero_grad(set_to_none=True)

    step(conv), step(patch)
    t_conv, t_mm = [], []
    for _ in range(repeats):
        t_conv.append(seconds(lambda: step(conv), sync))
        t_mm.append(seconds(lambda: step(patch), sync))
    t_conv, t_mm = min(t_conv), min(t_mm)
    return [
        row(SECTION, f"patch embedding {tuple(patch.kernel_size)} fwd+bwd: torch Conv3d / the library's PatchConv3d "
                     f"(patchify + matmul, same parameters; rel. max diff {diff:.1e}); PatchConv3d is "
                     f"{100 * t_mm / t_step:.0f}% of the train step",
            f"Conv3d {fmt_time(t_conv)}", f"PatchConv3d {fmt_time(t_mm)}", t_conv / t_mm, "-", None),
    ]


CATEGORIES = (
    ("matmul (Linear: mm/addmm/bmm)", ("aten::mm", "aten::addmm", "aten::bmm"), ("aten.mm", "aten.addmm", "aten.bmm")),
    ("attention (SDPA fwd+bwd)", ("scaled_dot_product",), ("scaled_dot_product",)),
)


def breakdown_rows(step, per_op: dict[str, int], peak: float) -> list[dict]:
    """Self CPU time per operator category of one profiled step, with the FLOP/s each category reaches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    rows, used = [], set()
    for label, names, flop_keys in CATEGORIES:
        t = sum(tt for k, tt in events if any(n in k for n in names) and k not in used)
        used |= {k for k, _ in events if any(n in k for n in names)}
        flops = sum(v for k, v in per_op.items() if any(f in k for f in flop_keys))
        rate = flops / t if t > 0 else float("nan")
        rows.append(row(SECTION, f"profiled step share: {label} [{fmt_flops(flops)}]", f"peak {fmt_rate(peak)}",
                        f"{fmt_time(t)} ({100 * t / total:.0f}% of step), {fmt_rate(rate)}", rate / peak, "-", None,
                        "{:.1%}"))
    other = total - sum(tt for k, tt in events if k in used)
    top = sorted(((k, tt) for k, tt in events if k not in used), key=lambda kv: -kv[1])[:4]
    rows.append(row(SECTION, "profiled step share: everything else (top: "
                    + ", ".join(f"{k.replace('aten::', '')} {fmt_time(tt)}" for k, tt in top) + ")",
                    "-", f"{fmt_time(other)} ({100 * other / total:.0f}% of step)", None))
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    geometry = PAPER
    label = "paper ViT-B 3x64x256x256 / 16x32x32"
    if quick:  # same shapes per block, fewer blocks
        geometry = EncoderGeometry(3, (64, 256, 256), (16, 32, 32), 768, 3072, 4, 12)
        label = "paper ViT-B (4 of 12 blocks, --quick)"
    repeats = 1 if quick else 4
    rows: list[dict] = []

    cpu = torch.device("cpu")
    model = Encoder(geometry).to(cpu).train()
    x = torch.randn(1, *((geometry.in_channels,) + geometry.img_size))
    threads = torch.get_num_threads()
    fp32_rows, info = efficiency_rows(model, x, cpu, None, f"CPU fp32 ({threads} threads), {label}",
                                      lambda: matmul_peak(cpu, torch.float32, 2048), repeats, "fp32 2048^2 matmul",
                                      goal=0.5)
    rows += fp32_rows
    counted_without = count_flops(make_step(model, x, cpu, None), with_cpu_attention=False)[0] if not quick else None
    if counted_without is not None:
        missed = info["flops"] - counted_without
        rows.append(row(SECTION, "FLOPs the stock FlopCounterMode misses on CPU (fused SDPA ops unregistered); "
                                 "added via custom_mapping above", f"stock {fmt_flops(counted_without)}",
                        f"with SDPA {fmt_flops(info['flops'])}", info["flops"] / counted_without, "-", None, "{:.3f}x"))
    rows += patch_embedding_rows(model, x, 1 if quick else 5, info["t_step"], cpu)
    if not quick:
        rows += breakdown_rows(make_step(model, x, cpu, None), info["per_op"], info["peak"])
        if {"avx512_bf16", "amx_bf16"} & cpu_flags():
            bf16_rows, bf16 = efficiency_rows(model, x, cpu, torch.bfloat16, "CPU bf16 autocast (not used by the "
                                              "library on CPU)", lambda: matmul_peak(cpu, torch.bfloat16, 2048),
                                              2, "bf16 2048^2 matmul")
            rows += bf16_rows
            rows.append(row(SECTION, "CPU train step: fp32 step time / bf16-autocast step time (same FLOPs)",
                            f"fp32 {fmt_time(info['t_step'])}", f"bf16 {fmt_time(bf16['t_step'])}",
                            info["t_step"] / bf16["t_step"], "-", None))
    del model

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        model = Encoder(geometry).to(gpu).train()
        xg = x.to(gpu)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
        fp32_gpu, _ = efficiency_rows(model, xg, gpu, None, f"CUDA fp32 ({torch.cuda.get_device_name(0)})",
                                      lambda: matmul_peak(gpu, torch.float32, 8192), repeats + 2, "fp32 8192^2 matmul")
        bf16_gpu, _ = efficiency_rows(model, xg, gpu, torch.bfloat16, "CUDA bf16 autocast (the library's GPU mode)",
                                      lambda: matmul_peak(gpu, torch.bfloat16, 8192), repeats + 2, "bf16 8192^2 matmul",
                                      goal=0.4)
        rows += fp32_gpu + bf16_gpu
    else:
        rows.append(row(SECTION, "CUDA fp32 and bf16-autocast train step / matmul peak", "-",
                        "skipped: no CUDA device on this machine", None))
    return rows
