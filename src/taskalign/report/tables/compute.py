"""Seed 001 Table 1: GPU-hours of fine-tuning (FT) against training from scratch, per compared model."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from taskalign.report.tables.model import MISSING, Table, finite

QUANTITIES = ("FT", "Scratch", "FT/Scratch")  # 001 Table 1's columns, per model


def _hours(runs: pd.DataFrame, column: str) -> float:
    return float(runs[column].mean()) if len(runs) else float("nan")


def compute_table(timings: pd.DataFrame, models: Sequence[str]) -> Table:
    """Seed 001 Table 1: per task and compared model the hours of fine-tuning (the model's own init and protocol)
    and of training from scratch (scratch, full), each the mean over seeds of a run's hours summed across its
    resumed attempts, and the ratio FT/Scratch; one column group per model, as 001 sets ProFound beside ProViCNet.
    Device hours where every run of the task's row ran on a GPU (device_hours > 0), wall-clock hours otherwise;
    the basis column says which.

    timings: one row per run with columns task, init, protocol, seed, device_hours and wall_seconds (both totals
    over attempts). models: labels <init>/<protocol>, e.g. pretrained:mae/frozen.
    """
    timings = timings.assign(wall_hours=timings["wall_seconds"] / 3600.0)
    if not models:
        raise ValueError("compute table: no compared models")
    split = {m: tuple(m.rsplit("/", 1)) for m in models}
    columns = pd.MultiIndex.from_tuples([("", "basis")] + [(m, q) for m in models for q in QUANTITIES])
    cell_rows, raw_rows = {}, []
    for task, runs in timings.groupby("task", sort=False):
        scratch = runs[(runs["init"] == "scratch") & (runs["protocol"] == "full")]
        finetuned = {m: runs[(runs["init"] == i) & (runs["protocol"] == p)] for m, (i, p) in split.items()}
        used = pd.concat([scratch, *finetuned.values()])
        if used.empty:
            continue
        on_gpu = bool((used["device_hours"] > 0).all())
        column = "device_hours" if on_gpu else "wall_hours"
        basis = "GPU hours" if on_gpu else "wall-clock hours"
        cells, raw = [basis], {"task": task, "basis": basis}
        sc_h = _hours(scratch, column)
        for model, runs_ft in finetuned.items():
            ft_h = _hours(runs_ft, column)
            ratio = ft_h / sc_h if finite(sc_h) and sc_h > 0 else float("nan")
            cells += [f"{ft_h:.3g}" if finite(ft_h) else MISSING, f"{sc_h:.3g}" if finite(sc_h) else MISSING,
                      f"{ratio:.2f}" if finite(ratio) else MISSING]
            raw.update({f"{model}/ft_hours": ft_h, f"{model}/scratch_hours": sc_h, f"{model}/ft_over_scratch": ratio,
                        f"{model}/n_seeds": len(runs_ft)})
        cell_rows[task] = cells
        raw_rows.append(raw)
    if not cell_rows:
        raise ValueError("compute table: no scratch or compared-model runs in the timings")
    cells = pd.DataFrame.from_dict(cell_rows, orient="index", columns=columns).rename_axis("task")
    caption = ("Compute (001 Table 1): hours of fine-tuning (FT: each compared model with its own protocol) and of "
               "training from scratch, mean over seeds of each run's hours summed over resumed attempts, and the "
               "ratio FT/Scratch; GPU (device) hours where the runs used a GPU, wall-clock hours otherwise (basis "
               "column). See docs/deviations.md.")
    return Table(cells, pd.DataFrame(raw_rows), caption)
