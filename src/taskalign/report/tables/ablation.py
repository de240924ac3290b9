"""Seed 002 Table 5: the cumulative ablation over pretraining objectives, each row with its change from the row
before."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from taskalign.report.tables.model import CHECK, MISSING, Table, best_cells, finite, mean_std

OBJECTIVES = ("reconstruction", "metadata", "translation", "contrastive")  # 002 Table 5's order
CHANGE = "Δ prev."


def _change(value: float, previous: float, digits: int) -> str:
    if not (finite(value) and finite(previous)):
        return MISSING
    delta = value - previous
    arrow = "↑" if delta > 0 else "↓" if delta < 0 else "="
    return f"{arrow}{abs(delta):.{digits}f}"


def ablation_table(metrics: pd.DataFrame, steps: Sequence[tuple[str, str, Sequence[str]]], *,
                   protocol: str = "frozen", lower_is_better: Collection[str] = (),
                   baseline: tuple[str, str, str] | None = None, digits: int = 3) -> Table:
    """Seed 002 Table 5: rows in the order of `steps` ((label, init, objectives), cumulative as in the paper, see
    taskalign.plan's Plan.ablation_steps), each the pretrained variant fine-tuned with `protocol`; per task the primary metric, mean ±
    std over seeds, and in its own column the change from the previous row (arrow = direction of the value, as
    in 002). An optional `baseline` (label, init, protocol), e.g. ("scratch", "scratch", "full") for 002's Swin-B
    row, comes first. Best per task bold (lowest for metrics in `lower_is_better`).

    metrics: columns task, init, protocol, seed, metric, value, primary (metrics.csv).
    """
    primary = metrics[metrics["primary"].astype(str).str.lower() == "true"]
    stats = primary.groupby(["task", "metric", "init", "protocol"], sort=False)["value"].agg(["mean", "std", "count"])
    rows = ([(baseline[0], baseline[1], baseline[2], [])] if baseline else [])
    rows += [(label, init, protocol, list(objectives)) for label, init, objectives in steps]
    if not rows:
        raise ValueError("ablation table: no steps")
    swept = pd.MultiIndex.from_tuples([(init, protocol) for _, init, protocol, _ in rows[1 if baseline else 0:]])
    # the tasks the sweep fine-tuned: other runs of the same encoders (other protocols), and the baseline's runs of
    # other tasks, are not part of this table
    in_sweep = pd.MultiIndex.from_frame(primary[["init", "protocol"]]).isin(swept)
    tasks = list(dict.fromkeys(primary.loc[in_sweep, "task"]))
    task_cols = [f"{t} ({primary.loc[primary['task'] == t, 'metric'].iloc[0]})" for t in tasks]
    columns = pd.MultiIndex.from_tuples([("objectives", o) for o in OBJECTIVES]
                                        + [(c, q) for c in task_cols for q in ("mean ± std", CHANGE)])
    index = pd.Index([label for label, *_ in rows], name="pretraining")
    cells = pd.DataFrame("", index=index, columns=columns)
    bold = pd.DataFrame(False, index=index, columns=columns)
    raw = {label: {"row": label, "init": init, "protocol": prot, **{o: o in objs for o in OBJECTIVES}}
           for label, init, prot, objs in rows}
    for label, _, _, objectives in rows:
        for objective in OBJECTIVES:
            cells.loc[label, ("objectives", objective)] = CHECK if objective in objectives else ""
    for task, column in zip(tasks, task_cols):
        metric = primary.loc[primary["task"] == task, "metric"].iloc[0]
        means = pd.Series(np.nan, index=index)
        previous = np.nan
        for label, init, prot, _ in rows:
            key = (task, metric, init, prot)
            s = stats.loc[key] if key in stats.index else pd.Series({"mean": np.nan, "std": np.nan, "count": 0})
            cells.loc[label, (column, "mean ± std")] = mean_std(s["mean"], s["std"], digits)
            cells.loc[label, (column, CHANGE)] = _change(s["mean"], previous, digits)
            raw[label].update({f"{task}/{metric}/mean": s["mean"], f"{task}/{metric}/std": s["std"],
                               f"{task}/{metric}/n_seeds": int(s["count"]),
                               f"{task}/{metric}/change": s["mean"] - previous})
            means[label] = s["mean"]
            previous = s["mean"] if finite(s["mean"]) else previous
        bold[(column, "mean ± std")] = best_cells(means, metric in lower_is_better)
    first = (f"the first from the {baseline[0]} row ({baseline[1]}, {baseline[2]} protocol: 002's Swin-B baseline)"
             if baseline else "the first without a baseline row (–)")
    caption = (f"Ablation over pretraining objectives (002 Table 5): cumulative rows, each variant fine-tuned with "
               f"the {protocol} protocol; primary metric per task, mean ± std over seeds, and the change from the "
               f"previous row (↑/↓: the value rose/fell), {first}; best in bold. See docs/deviations.md.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold)
