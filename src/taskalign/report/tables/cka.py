"""Seed 000 Table 6: layer-wise CKA between the pretrained, the continual and ONE fine-tuned encoder (fine-tuned
from the pretrained weights), Delta = CKA(continual, FT) - CKA(pretrained, FT), and its correlation across tasks
with the performance gain of fine-tuning from the continual encoder."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import pandas as pd

from taskalign.analysis.cka_pairs import CONTINUAL_FT, FROM_CONTINUAL, PRETRAINED_CONTINUAL, PRETRAINED_FT
from taskalign.analysis.stats import correlation
from taskalign.report.tables.model import MISSING, Table, finite

ROW_LABELS = {PRETRAINED_CONTINUAL: "Pretrained–Continual", PRETRAINED_FT: "Pretrained–Finetuned",
              CONTINUAL_FT: "Continual–Finetuned", FROM_CONTINUAL: "Continual–Finetuned from continual"}
DELTA_LABEL = "Δ (Continual − Pretrained, same FT)"
ESTIMATORS = {"linear": "linear CKA (000 eq. 7)", "debiased": "debiased CKA"}
AVG = "Avg."
PERF = ("", "performance gain")
NOT_ABOVE_NULL = "†"
MIN_PERFORMANCE_DIFFERENCE = 0.002  # 000 section 2.5: tasks whose performance differs by ~0.2% or more

DIGITS = 3  # decimals of the CKA values, Deltas and performance gains


def performance_gains(metrics: pd.DataFrame, inits: Mapping[str, str], protocol: str = "full",
                      lower_is_better: Collection[str] = ()) -> pd.DataFrame:
    """Per task: primary metric of FT from continual minus FT from pretrained (`protocol`, seed means), sign flipped
    for lower-is-better metrics so that positive means fine-tuning from the continual encoder is better. Columns
    task, metric, pretrained, continual, gain; tasks without both runs are left out. inits: the plan's
    {"pretrained": init, "continual": init} of the analysed variant (`pretrained:mae`, `continual:mae`)."""
    rows = metrics[metrics["primary"].astype(bool) & (metrics["protocol"] == protocol)]
    inits = {k: inits[k] for k in ("pretrained", "continual")}
    means = rows[rows["init"].isin(inits.values())].groupby(["task", "metric", "init"])["value"].mean().unstack("init")
    means = means.reindex(columns=list(inits.values())).dropna().rename(columns={v: k for k, v in inits.items()})
    means["gain"] = means["continual"] - means["pretrained"]
    lower = means.index.get_level_values("metric").isin(list(lower_is_better))
    means.loc[lower, "gain"] *= -1
    return means.reset_index()[["task", "metric", "pretrained", "continual", "gain"]]


def _diagonal(cka: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Matching levels of the pairs Table 6 shows (FT pairs of `protocol` only): every named level of the encoder's
    family but `final` (vit3d: its blocks), as `layer`."""
    frame = cka.assign(protocol=cka["protocol"].fillna("").astype(str),
                       seed=cka["seed"].fillna("").astype(str).str.removesuffix(".0"))
    frame = frame[(frame["layer_a"] == frame["layer_b"]) & (frame["layer_a"] != "final")
                  & ((frame["pair"] == PRETRAINED_CONTINUAL) | (frame["protocol"] == protocol))]
    return frame.assign(layer=frame["layer_a"])


def level_order(names) -> list[str]:
    """Level names shallow to deep: by their trailing number (block2 before block10), names without one last."""
    def key(name: str):
        digits = re.search(r"(\d+)$", name)
        return (0, name[: digits.start()], int(digits.group(1))) if digits else (1, name, 0)
    return sorted(names, key=key)


def column_label(level: str) -> str:
    """Table 6's column of a level: L<n> for vit3d's block<n> (the paper's), the level's own name otherwise."""
    return f"L{level[5:]}" if re.fullmatch(r"block\d+", level) else level


def check_same_finetuned(diagonal: pd.DataFrame) -> None:
    """The Pretrained- and Continual-Finetuned rows of one (task, protocol, seed) must compare with the same
    fine-tuned encoder file: otherwise Delta compares two different models (what the table got wrong before)."""
    ft = diagonal[diagonal["pair"].isin([PRETRAINED_FT, CONTINUAL_FT])]
    column = "file_b" if "file_b" in ft.columns else "encoder_b"
    files = ft.groupby(["task", "protocol", "seed"])[column].nunique()
    if (files > 1).any():
        raise ValueError(f"{PRETRAINED_FT} and {CONTINUAL_FT} must use the same fine-tuned encoder; they differ "
                         f"for (task, protocol, seed) {list(files[files > 1].index)}")


def _with_average(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (pair, seed): the block layers plus their average (layer AVG), as Table 6's last column."""
    avg = frame.groupby(["pair", "seed"], sort=False)[["linear", "debiased"]].mean().reset_index().assign(layer=AVG)
    return pd.concat([frame.assign(layer=frame["layer"].map(column_label)), avg], ignore_index=True)


def _cka_cells(frame: pd.DataFrame, columns: list[str], digits: int) -> tuple[dict, dict, dict]:
    """cells, daggers and raw values of one pair's row: the mean over seeds (± std over seeds when several)."""
    cells, marks, raw = {}, {}, {}
    for estimator, group in ESTIMATORS.items():
        for column in columns:
            values = frame[frame["layer"] == column]
            mean, std, n = values[estimator].mean(), values[estimator].std(), values["seed"].nunique()
            text = MISSING if not finite(mean) else f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")
            p95, p = (values.get(f"null_{estimator}_{name}", pd.Series(dtype=float)) for name in ("p95", "p"))
            cells[(group, column)] = text
            marks[(group, column)] = NOT_ABOVE_NULL if (values[estimator] <= p95).any() else ""
            raw.update({f"{estimator}/{column}": mean, f"{estimator}/{column}/seed_std": std,
                        f"{estimator}/{column}/n_seeds": n,
                        f"{estimator}/{column}/null_p95_max": p95.max(), f"{estimator}/{column}/null_p_max": p.max()})
    return cells, marks, raw


def _delta_cells(deltas: pd.DataFrame, layers: list[str], digits: int) -> tuple[dict, dict]:
    cells, raw = {}, {}
    names = {n: column_label(n) for n in layers} | {"avg": AVG}
    for estimator, group in ESTIMATORS.items():
        for name, column in names.items():
            row = deltas[(deltas["estimator"] == estimator) & (deltas["layer"] == name)]
            if row.empty:
                cells[(group, column)] = MISSING
                continue
            r = row.iloc[0]
            text = f"{r['delta']:+.{digits}f}" + (f" ± {r['seed_std']:.{digits}f}" if r["n_seeds"] > 1 else "")
            if finite(r["ci_low"]):
                text += f" [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
            cells[(group, column)] = text
            raw.update({f"{estimator}/{column}": r["delta"], f"{estimator}/{column}/seed_std": r["seed_std"],
                        f"{estimator}/{column}/n_seeds": r["n_seeds"], f"{estimator}/{column}/ci_low": r["ci_low"],
                        f"{estimator}/{column}/ci_high": r["ci_high"]})
    return cells, raw


def _build(cka: pd.DataFrame, deltas: pd.DataFrame, metrics: pd.DataFrame, *, inits: Mapping[str, str], threshold: float | None,
           lower_is_better: Collection[str], protocol: str, chosen: Sequence[str] | None = None) -> Table:
    diagonal = _diagonal(cka, protocol)
    check_same_finetuned(diagonal)
    layers = level_order(diagonal["layer"].unique())
    columns = [column_label(n) for n in layers] + [AVG]
    gains = performance_gains(metrics, inits, protocol, lower_is_better).set_index("task")
    tasks = list(dict.fromkeys(diagonal["task"]))
    meets = [t for t in tasks if t in gains.index and abs(gains.loc[t, "gain"]) >= (threshold or 0.0)]
    if chosen is not None:
        missing = [t for t in chosen if t not in tasks]
        if missing:
            raise ValueError(f"analysis.cka.tasks: no Table 6 CKA results for {missing} (computed for {tasks})")
        tasks = list(chosen)
    elif threshold is not None:
        tasks = meets
    pairs = [PRETRAINED_CONTINUAL, PRETRAINED_FT, CONTINUAL_FT] + ([] if threshold is not None else [FROM_CONTINUAL])
    means = deltas.assign(seed=deltas["seed"].astype(str), protocol=deltas["protocol"].fillna("").astype(str))
    means = means[(means["seed"] == "mean") & (means["protocol"] == protocol)]
    table_columns = [(group, c) for group in ESTIMATORS.values() for c in columns] + [PERF]
    rows, marks, raw = {}, {}, []
    for task in tasks:
        frame = _with_average(diagonal[diagonal["task"] == task])
        for pair in pairs:
            if pair in set(frame["pair"]):
                label = f"{task}: {ROW_LABELS[pair]}"
                rows[label], marks[label], values = _cka_cells(frame[frame["pair"] == pair], columns, DIGITS)
                raw.append({"task": task, "row": ROW_LABELS[pair], "pair": pair, **values})
        label = f"{task}: {DELTA_LABEL}"
        rows[label], values = _delta_cells(means[means["task"] == task], layers, DIGITS)
        gain = gains.loc[task] if task in gains.index else None
        rows[label][PERF] = MISSING if gain is None else f"{gain['gain']:+.{DIGITS}f} ({gain['metric']})"
        raw.append({"task": task, "row": DELTA_LABEL, "pair": "delta", **values,
                    **({} if gain is None else {"metric": gain["metric"], "performance_pretrained": gain["pretrained"],
                                                 "performance_continual": gain["continual"],
                                                 "performance_gain": gain["gain"]})})
    last = column_label(layers[-1]) if layers else None
    label = f"Correlation across tasks: Δ {last} vs performance gain"
    rows[label], values = {}, {"row": "correlation", "layer": last}
    for estimator, group in ESTIMATORS.items():
        x = [means[(means["task"] == t) & (means["estimator"] == estimator) & (means["layer"] == layers[-1])]
             ["delta"].mean() for t in tasks if t in gains.index] if layers else []
        y = [gains.loc[t, "gain"] for t in tasks if t in gains.index]
        r = correlation(x, y)
        rows[label][(group, last)] = (MISSING if not finite(r["pearson_r"]) else
                                      f"r {r['pearson_r']:+.2f} (p {r['pearson_p']:.3f}), "
                                      f"ρ {r['spearman_rho']:+.2f} (p {r['spearman_p']:.3f}), n {r['n']}")
        values.update({f"{estimator}/{key}": value for key, value in r.items()})
    raw.append(values)
    index = pd.Index(list(rows), name="encoder pair")
    cells = pd.DataFrame([[rows[r].get(c, "") for c in table_columns] for r in rows], index=index,
                         columns=pd.MultiIndex.from_tuples(table_columns, names=["estimator", "layer"]))
    stars = pd.DataFrame([[marks.get(r, {}).get(c, "") for c in table_columns] for r in rows], index=index,
                         columns=cells.columns)
    if chosen is not None:
        below = [t for t in tasks if t not in meets]
        selection = (f"the configured tasks {', '.join(tasks)} (analysis.cka.tasks, as 000's Table 6 chose them; "
                     + (f"{', '.join(below)} differ by less than {threshold:g}; " if below else "")
                     + "all tasks: supplementary table)")
    elif threshold is not None:
        selection = (f"tasks whose primary metric differs by at least {threshold:g} between FT from continual and FT "
                     "from pretrained (000 analyses tasks differing by ~0.2% or more; all tasks: supplementary table)")
    else:
        selection = ("all tasks (the main table keeps those whose performance differs by at least the configured "
                     "threshold, or the configured tasks)")
    caption = (f"Layer-wise and average CKA between encoder pairs on each task's test images, {selection}. "
               f"Finetuned = ONE encoder fine-tuned from the pretrained weights ({protocol} protocol), the same "
               "file in both Finetuned rows; cells: mean ± std over fine-tuning seeds (no ± for one seed). "
               "Left: the paper's biased linear CKA; right: debiased CKA (unbiased HSIC). "
               f"{NOT_ABOVE_NULL}: not above the 95th percentile of the shuffled-rows null (biased CKA of unrelated "
               "features is about d/(n+d)). Δ = CKA(continual, FT) − CKA(pretrained, FT): seed mean ± std over seeds "
               "[95% interval over the test cases: Δ ± 1.96 × the delete-1 jackknife standard error, both CKAs and "
               "all seeds leaving out the same case; it covers Δ's expectation for these encoders, not the spread "
               "between fine-tuning runs, which the ± gives]. Performance gain: primary metric of FT from continual "
               "minus FT from pretrained, seed means, "
               "on the metric's own scale, sign flipped where lower is better. Correlation: Pearson r and Spearman ρ "
               f"across the tasks shown between Δ at {last} and the gain, permutation p (exact over all orderings "
               "for up to 8 tasks, else 10000 random orderings). See docs/deviations.md.")
    return Table(cells, pd.DataFrame(raw), caption, stars=stars)


def cka_table(cka: pd.DataFrame, deltas: pd.DataFrame, metrics: pd.DataFrame, *, inits: Mapping[str, str],
              threshold: float = MIN_PERFORMANCE_DIFFERENCE, lower_is_better: Collection[str] = (),
              protocol: str = "full", tasks: Sequence[str] | None = None) -> Table:
    """Seed 000 Table 6 for `tasks` (in that order, e.g. 000's lesion_seg and pirads_cls), else for the tasks whose
    performance gain (see performance_gains) is at least `threshold` in absolute value: per task the rows
    Pretrained–Continual, Pretrained–Finetuned, Continual–Finetuned (the same FT encoder, fine-tuned from the pretrained weights with `protocol`) and Δ, columns L<n> for the block layers
    present and their average, linear CKA beside debiased CKA, and the correlation row.

    cka: the CKA stage's CSV (results/analysis/cka.csv: task, pair, protocol, seed, file_b, layer_a, layer_b,
    linear, debiased, null_<estimator>_p95, ...); deltas: its --deltas-out CSV; metrics: metrics.csv rows (task,
    init, protocol, seed, metric, value, primary)."""
    return _build(cka, deltas, metrics, inits=inits, threshold=threshold, lower_is_better=lower_is_better,
                  protocol=protocol, chosen=tasks)


def cka_supplementary_table(cka: pd.DataFrame, deltas: pd.DataFrame, metrics: pd.DataFrame, *, inits: Mapping[str, str],
                            lower_is_better: Collection[str] = (), protocol: str = "full") -> Table:
    """cka_table for every task, with the encoder fine-tuned from continual (its own row) where computed."""
    return _build(cka, deltas, metrics, inits=inits, threshold=None, lower_is_better=lower_is_better,
                  protocol=protocol)
