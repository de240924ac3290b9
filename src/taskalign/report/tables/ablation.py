"""Seed 002 Table 5: the ablation over pretraining objectives."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from taskalign.report.tables.model import CHECK, MISSING, Table, best_cells, mean_std
from taskalign.report.tables.performance import seed_stats

OBJECTIVES = ("reconstruction", "metadata", "translation", "contrastive")


def ablation_table(metrics: pd.DataFrame, objective_sets: Mapping[str, list[str]], *,
                   lower_is_better: Collection[str] = (), reference_init: str | None = "scratch",
                   digits: int = 3) -> Table:
    """Seed 002 Table 5: one row per pretraining variant (its objectives as check marks), then per task the
    primary metric of the `pretrained:<variant>` full runs, mean ± std over seeds; best per task column bold
    (lowest for metrics in `lower_is_better`). The reference init (scratch, 002's Swin-B row) comes first
    when present.

    metrics: columns task, init, protocol, seed, metric, value, primary (metrics.csv).
    objective_sets: variant -> its objectives (config pretrain.variants.<v>.objectives).
    """
    primary = metrics[metrics["primary"].astype(bool) & (metrics["protocol"] == "full")]
    stats = seed_stats(primary)
    rows = [(reference_init, reference_init, [])] if reference_init in set(primary["init"]) else []
    rows += [(v, f"pretrained:{v}", objs) for v, objs in objective_sets.items()
             if f"pretrained:{v}" in set(primary["init"])]
    if not rows:
        raise ValueError("none of the ablation variants has full-protocol metrics")
    tasks = list(dict.fromkeys(primary["task"]))
    task_cols = [(t, primary.loc[primary["task"] == t, "metric"].iloc[0]) for t in tasks]
    columns = pd.MultiIndex.from_tuples([("objectives", o) for o in OBJECTIVES] + task_cols)
    index = pd.Index([label for label, _, _ in rows], name="variant")
    cells = pd.DataFrame("", index=index, columns=columns)
    bold = pd.DataFrame(False, index=index, columns=columns)
    raw = {label: {"variant": label, "init": init, **{o: o in objectives for o in OBJECTIVES}}
           for label, init, objectives in rows}
    for label, _, objectives in rows:
        for objective in OBJECTIVES:
            cells.loc[label, ("objectives", objective)] = CHECK if objective in objectives else ""
    for task, metric in task_cols:
        means = pd.Series(np.nan, index=index)
        for label, init, _ in rows:
            key = (task, metric, init, "full")
            if key not in stats.index:
                cells.loc[label, (task, metric)] = MISSING
                continue
            s = stats.loc[key]
            cells.loc[label, (task, metric)] = mean_std(s["mean"], s["std"], digits)
            means[label] = s["mean"]
            raw[label].update({f"{task}/{metric}/{name}": s[name] for name in ("mean", "std", "n_seeds")})
        bold[(task, metric)] = best_cells(means, metric in lower_is_better)
    caption = ("Ablation over pretraining objectives: primary metric per task (mean ± std over seeds) of encoders "
               "pretrained with the checked objectives and fine-tuned with the full protocol; best in bold.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold)

