"""Shared helpers: result rows, timers, machine description, markdown table."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("section", "measure", "baseline", "value", "ratio", "goal", "met")


def row(section: str, measure: str, baseline: str, value: str, ratio: float | None, goal: str = "-",
        met: bool | None = None, ratio_fmt: str = "{:.2f}x") -> dict:
    """One table row. `ratio` is numeric (None when the row is information only); `met` None = no goal."""
    return {
        "section": section,
        "measure": measure,
        "baseline": baseline,
        "value": value,
        "ratio": "-" if ratio is None else ratio_fmt.format(ratio),
        "ratio_value": ratio,
        "goal": goal,
        "met": "-" if met is None else ("yes" if met else "NO"),
    }


def skipped(section: str, measure: str, why: str) -> dict:
    return row(section, measure, "-", f"skipped: {why}", None)


def seconds(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Wall time of one call of `fn` (with `sync` before and after, e.g. torch.cuda.synchronize)."""
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (pool workers, subprocesses)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Smallest wall time over `repeats` calls: on a shared machine the minimum is the least disturbed run."""
    return min(seconds(fn, sync) for _ in range(max(1, repeats)))


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_flops(f: float) -> str:
    return f"{f / 1e9:.1f} GFLOP"


def fmt_rate(f: float) -> str:
    return f"{f / 1e9:.1f} GFLOP/s"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, str]:
    import numpy
    import torch

    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": str(cores()),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "load average (1/5/15 min) at start": " / ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if simd:
        info["cpu flags"] = ", ".join(simd)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], info: dict[str, str], title: str, notes: list[str] | None = None) -> str:
    lines = [f"## {title}", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def plain_table(rows: list[dict]) -> str:
    """The same table for the terminal (fixed-width columns, long cells wrapped at 60 characters)."""
    import textwrap

    widths = {"section": 10, "measure": 60, "baseline": 30, "value": 30, "ratio": 9, "goal": 9, "met": 4}
    out = []

    def emit(cells: dict) -> None:
        wrapped = {c: textwrap.wrap(str(cells[c]), widths[c]) or [""] for c in COLUMNS}
        for i in range(max(len(v) for v in wrapped.values())):
            out.append("  ".join((wrapped[c][i] if i < len(wrapped[c]) else "").ljust(widths[c]) for c in COLUMNS))

    emit({c: c for c in COLUMNS})
    out.append("  ".join("-" * widths[c] for c in COLUMNS))
    for r in rows:
        emit(r)
    return "\n".join(out)
