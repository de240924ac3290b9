"""Seed 001 Table 1: compute of fine-tuning against training from scratch."""

from __future__ import annotations

import pandas as pd

from taskalign.report.tables.model import MISSING, Table, finite


def compute_table(timings: pd.DataFrame) -> Table:
    """Seed 001 Table 1: per task the hours of fine-tuning (each pretrained:<variant> init, protocol full) and of
    training from scratch, mean over seeds, and the ratio scratch / fine-tune. Device hours are used when every
    run of the task has them (> 0), wall-clock hours otherwise; the basis column says which.

    timings: columns task, init, protocol, seed, wall_seconds, device_hours (one row per run, from timing.json).
    """
    timings = timings.assign(wall_hours=timings["wall_seconds"] / 3600.0)
    finetuned = timings["init"].str.startswith("pretrained:") & (timings["protocol"] == "full")
    variants = list(dict.fromkeys(timings.loc[finetuned, "init"]))
    if not variants:
        raise ValueError("no pretrained:<variant> full runs in the timings")
    columns = pd.MultiIndex.from_tuples([("", "basis")] + [(v, q) for v in variants
                                                           for q in ("FT h", "scratch h", "scratch/FT")])
    cell_rows, raw_rows = {}, []
    for task, runs in timings.groupby("task", sort=False):
        scratch = runs[runs["init"] == "scratch"]
        used = pd.concat([scratch, runs[finetuned.loc[runs.index]]])
        col = "device_hours" if len(used) and (used["device_hours"] > 0).all() else "wall_hours"
        basis = "device hours" if col == "device_hours" else "wall-clock hours"
        cells, raw = [basis], {"task": task, "basis": basis}
        for variant in variants:
            ft_h = runs.loc[(runs["init"] == variant) & (runs["protocol"] == "full"), col].mean()
            sc_h = scratch[col].mean()
            ratio = sc_h / ft_h if finite(ft_h) and ft_h > 0 else float("nan")
            cells += [f"{ft_h:.3g}" if finite(ft_h) else MISSING, f"{sc_h:.3g}" if finite(sc_h) else MISSING,
                      f"{ratio:.2f}×" if finite(ratio) else MISSING]
            raw.update({f"{variant}/ft_hours": ft_h, f"{variant}/scratch_hours": sc_h, f"{variant}/ratio": ratio})
        cell_rows[task] = cells
        raw_rows.append(raw)
    cells = pd.DataFrame.from_dict(cell_rows, orient="index", columns=columns).rename_axis("task")
    caption = ("Compute: hours for fine-tuning (FT, pretrained encoder, full protocol) and training from scratch, "
               "mean over seeds, and the ratio scratch/FT.")
    return Table(cells, pd.DataFrame(raw_rows), caption)

