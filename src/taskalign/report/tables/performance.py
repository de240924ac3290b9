"""Seed 000 Tables 2-5: performance per task and init, seed spread, intervals and paired significance marks."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from taskalign.analysis.stats import delong_test, stars, wilcoxon_paired
from taskalign.report.tables.model import MISSING, STARS_LEGEND, Table, best_cells, finite, mean_std

STAT_FIELDS = ("mean", "std", "ci_low", "ci_high", "n_seeds", "p_value", "stars")
_AUC_GE = re.compile(r"auc_ge(\d+)$")


def seed_stats(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds, seed count and (when given) the mean bootstrap CI, per (task, metric, init,
    protocol)."""
    aggs = {"mean": ("value", "mean"), "std": ("value", "std"), "n_seeds": ("seed", "nunique")}
    aggs.update({c: (c, "mean") for c in ("ci_low", "ci_high") if c in metrics.columns})
    return metrics.groupby(["task", "metric", "init", "protocol"], sort=False).agg(**aggs)


def _task_metrics(metrics: pd.DataFrame, task: str) -> list[str]:
    rows = metrics[metrics["task"] == task]
    primary = rows.loc[rows["primary"].astype(bool), "metric"]
    return list(dict.fromkeys([*primary, *rows["metric"]]))


# --- paired tests -------------------------------------------------------------------------------------------------

def _case_score(metric: str, cases: pd.DataFrame) -> np.ndarray | None:
    """The per-case quantity a paired test compares for `metric`; None when the metric has none
    (spec_at_sens90 is an operating point of the whole ROC curve)."""
    if metric in cases.columns:  # dice, dice_<structure>, empty_correct, ssim, l1
        return cases[metric].to_numpy(float)
    if metric == "mse":
        return ((cases["pred_norm"] - cases["true_norm"]) ** 2).to_numpy(float)
    if metric == "mae_ml":
        return (cases["pred"] - cases["true"]).abs().to_numpy(float)
    if metric == "accuracy":
        return (cases["true"] == cases["pred"]).to_numpy(float)
    prob_cols = [c for c in cases.columns if c.startswith("prob_")]
    classes = [int(c[5:]) for c in prob_cols]
    prob = cases[prob_cols].to_numpy(float)
    if metric == "auc":
        true = cases["true"].astype(int).map(classes.index).to_numpy()
        return prob[np.arange(len(cases)), true]
    ge = _AUC_GE.match(metric)
    if ge:
        return prob[:, [c >= int(ge[1]) for c in classes]].sum(axis=1)
    return None


def _seed_matched(cases: Mapping, task: str, run: tuple[str, str],
                  base: tuple[str, str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-case rows of `run` and `base` on the cases both scored, stacked over the seeds both have, so row k of
    one frame pairs with row k of the other."""
    seeds = sorted(s for t, i, p, s in cases if t == task and (i, p) == run and (task, *base, s) in cases)
    parts_a, parts_b = [], []
    for seed in seeds:
        a = cases[(task, *run, seed)].set_index("case_id")
        b = cases[(task, *base, seed)].set_index("case_id")
        common = a.index.intersection(b.index)
        parts_a.append(a.loc[common])
        parts_b.append(b.loc[common])
    if not parts_a or sum(len(p) for p in parts_a) < 2:
        return None
    return pd.concat(parts_a), pd.concat(parts_b)


def _paired_p(metric: str, a: pd.DataFrame, b: pd.DataFrame) -> float:
    score_a, score_b = _case_score(metric, a), _case_score(metric, b)
    if score_a is None or score_b is None:
        return float("nan")
    ge = _AUC_GE.match(metric)
    if ge:
        return float(delong_test(a["true"].to_numpy() >= int(ge[1]), score_a, score_b)["p_value"])
    scored = np.isfinite(score_a) & np.isfinite(score_b)  # lesion Dice: cases with a lesion only
    return float(wilcoxon_paired(score_a[scored], score_b[scored])) if scored.sum() >= 2 else float("nan")


# --- builders -----------------------------------------------------------------------------------------------------

def performance_table(metrics: pd.DataFrame, cases: Mapping[tuple[str, str, str, int], pd.DataFrame],
                      tasks: list[str], baseline_init: str, lower_is_better: Collection[str], *,
                      baseline_protocol: str = "full", digits: int = 3) -> Table:
    """Seed 000 Tables 2-5: one row per init (with its protocol when the init ran several), per task its metrics
    (primary first); cell = mean ± sample std over seeds (std left out for one seed) and the seeds' mean 95% CI.
    The best mean per column is bold (lowest for metrics in `lower_is_better`).

    Stars: two-sided paired test of each run against (baseline_init, baseline_protocol), on per-case values of
    seed-matched runs joined on case_id and pooled over all seeds both runs have (so with 2 seeds a case gives 2
    pairs). auc_ge<k> (PI-RADS binarised at >= k): DeLong on the score sum(prob_c, c >= k). The multiclass
    one-vs-rest `auc` has no per-case DeLong form, so it is Wilcoxon on the probability of the true class; accuracy
    is Wilcoxon on per-case correctness, mse on the squared standardised error, mae_ml on the absolute error in mL,
    and any metric that is a per-case column (dice, dice_<structure>, ssim, l1) on that column. spec_at_sens90 has
    no per-case value and gets no test. The baseline row and runs without seed-matched cases get no stars.

    metrics: columns task, init, protocol, seed, metric, value, ci_low, ci_high, primary (metrics.csv).
    cases: (task, init, protocol, seed) -> that run's cases.csv frame (case_id and the per-case columns).
    """
    rows = metrics[metrics["task"].isin(tasks)]
    if rows.empty:
        raise ValueError(f"no metrics for tasks {tasks}")
    stats = seed_stats(rows)
    runs = list(dict.fromkeys(zip(rows["init"], rows["protocol"])))
    n_protocols = pd.Series([i for i, _ in runs]).value_counts()
    labels = [init if n_protocols[init] == 1 else f"{init} ({protocol})" for init, protocol in runs]
    base = (baseline_init, baseline_protocol)
    columns = pd.MultiIndex.from_tuples([(t, m) for t in tasks for m in _task_metrics(rows, t)],
                                        names=["task", "metric"])
    index = pd.Index(labels, name="init")
    cells = pd.DataFrame(MISSING, index=index, columns=columns)
    bold = pd.DataFrame(False, index=index, columns=columns)
    star_cells = pd.DataFrame("", index=index, columns=columns)
    raw = {label: {"init": init, "protocol": protocol} for label, (init, protocol) in zip(labels, runs)}
    for task, metric in columns:
        means = pd.Series(np.nan, index=index)
        for label, run in zip(labels, runs):
            if (task, metric, *run) not in stats.index:
                continue
            s = stats.loc[(task, metric, *run)]
            paired = None if run == base else _seed_matched(cases, task, run, base)
            p = _paired_p(metric, *paired) if paired else float("nan")
            star = stars(p)
            text = mean_std(s["mean"], s["std"], digits)
            if finite(s["ci_low"]) and finite(s["ci_high"]):
                text += f" [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"
            cells.loc[label, (task, metric)] = text
            star_cells.loc[label, (task, metric)] = star
            means[label] = s["mean"]
            values = {**s[["mean", "std", "ci_low", "ci_high"]].to_dict(), "n_seeds": int(s["n_seeds"]),
                      "p_value": p, "stars": star}
            raw[label].update({f"{task}/{metric}/{name}": values[name] for name in STAT_FIELDS})
        bold[(task, metric)] = best_cells(means, metric in lower_is_better)
    caption = (f"Performance on {', '.join(tasks)}: mean ± std over seeds and mean 95% CI; best per column in bold; "
               f"stars: paired test against {baseline_init} ({baseline_protocol}), {STARS_LEGEND}.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold, star_cells)

