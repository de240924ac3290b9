"""Paper tables (SPEC "Outputs"): a small table model, its CSV / Markdown / LaTeX writer and one builder per table.

Every table is written three ways from one object: `stem.csv` with the raw numbers (plus `stem.provenance.json`),
`stem.md` and `stem.tex` (booktabs) with bold best cells, significance stars and a provenance footer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import re
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.analysis.stats import delong_test, stars, wilcoxon_paired
from taskalign.runtime import atomic_path
from taskalign.tasks.spec import Task

MISSING = "–"
CHECK = "✓"
OBJECTIVES = ("reconstruction", "metadata", "translation", "contrastive")
PACKAGES = ("torch", "monai", "numpy", "pandas", "snakemake")
STAT_FIELDS = ("mean", "std", "ci_low", "ci_high", "n_seeds", "p_value", "stars")
STARS_LEGEND = "* p ≤ 0.05, ** p ≤ 0.01, *** p ≤ 0.001"
_AUC_GE = re.compile(r"auc_ge(\d+)$")
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
        "≥": r"$\geq$", "≤": r"$\leq$", "<": r"$<$", ">": r"$>$", "|": r"\textbar{}", "–": "--",
        "✓": r"\checkmark{}", "ρ": r"$\rho$", "²": r"$^2$"}
_OUTPUTS = {"classification": "{} class", "regression": "{}", "segmentation": "{} mask", "restoration": "{} image"}


@dataclass
class Table:
    """Display strings (index = row labels; columns flat or a (group, column) MultiIndex), per-cell bold flags
    and stars, the raw numbers behind them (one CSV row per display row), a caption, and the provenance that
    write_table puts into every file (set it with `table.provenance = provenance(config)`)."""

    cells: pd.DataFrame
    raw: pd.DataFrame
    caption: str
    bold: pd.DataFrame | None = None
    stars: pd.DataFrame | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bold is None:
            self.bold = pd.DataFrame(False, index=self.cells.index, columns=self.cells.columns)
        if self.stars is None:
            self.stars = pd.DataFrame("", index=self.cells.index, columns=self.cells.columns)


# --- provenance ---------------------------------------------------------------------------------------------------

def _code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def provenance(config: dict) -> dict:
    """Config hash (first 12 hex of the sha256 of the sorted-key JSON), code version, package versions, device."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return {"config_hash": digest, "code_version": _code_version(), "packages": _package_versions(),
            "device": _device()}


def _provenance_line(prov: Mapping) -> str:
    parts = []
    for key, value in prov.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return "; ".join(parts).replace("\n", " ")


# --- writers ------------------------------------------------------------------------------------------------------

def _headers(columns: pd.Index) -> list[str]:
    if isinstance(columns, pd.MultiIndex):
        return [f"{g} / {c}" if g else str(c) for g, c in columns]
    return [str(c) for c in columns]


def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def _md_cell(text: str, bold: bool, star: str) -> str:
    text = _md_escape(text)
    if bold and text:
        text = f"**{text}**"
    # A lone run of '*' between a space and the cell end is not emphasis in GFM, so stars stay plain.
    return f"{text} {star}" if star else text


def _to_markdown(table: Table) -> str:
    cells = table.cells
    header = [_md_escape(cells.index.name or "")] + [_md_escape(h) for h in _headers(cells.columns)]
    lines = [f"Table: {table.caption}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, label in enumerate(cells.index):
        row = [_md_escape(label)] + [_md_cell(cells.iat[i, j], table.bold.iat[i, j], table.stars.iat[i, j])
                                     for j in range(cells.shape[1])]
        lines.append("| " + " | ".join(row) + " |")
    prov = _provenance_line(table.provenance).replace("*", r"\*")
    return "\n".join(lines + ["", f"*provenance: {prov}*", ""])


def _tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_cell(text: str, bold: bool, star: str) -> str:
    text = _tex_escape(text)
    if bold and text:
        text = rf"\textbf{{{text}}}"
    return text + (rf"$^{{{star}}}$" if star else "")


def _to_latex(table: Table) -> str:
    cells, columns = table.cells, table.cells.columns
    lines = [r"% needs \usepackage{booktabs} (and amssymb for \checkmark)", r"\begin{table}[ht]", r"\centering",
             rf"\caption{{{_tex_escape(table.caption)}}}", rf"\begin{{tabular}}{{l{'c' * len(columns)}}}",
             r"\toprule"]
    leaves = list(columns)
    if isinstance(columns, pd.MultiIndex):
        head, rules, start = [""], [], 2
        for group, run in itertools.groupby(columns.get_level_values(0)):
            width = len(list(run))
            head.append(rf"\multicolumn{{{width}}}{{c}}{{{_tex_escape(group)}}}" if group else " & ".join([""] * width))
            if group:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(head) + r" \\", " ".join(rules)]
        leaves = list(columns.get_level_values(-1))
    lines += [" & ".join([_tex_escape(cells.index.name or "")] + [_tex_escape(c) for c in leaves]) + r" \\",
              r"\midrule"]
    for i, label in enumerate(cells.index):
        row = [_tex_escape(label)] + [_tex_cell(cells.iat[i, j], table.bold.iat[i, j], table.stars.iat[i, j])
                                      for j in range(cells.shape[1])]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", f"% provenance: {_provenance_line(table.provenance)}",
              ""]
    return "\n".join(lines)


def write_table(table: Table, stem: Path) -> list[Path]:
    """Write stem.csv (+ stem.provenance.json), stem.md and stem.tex atomically; return the paths written."""
    if not table.provenance:
        raise ValueError("table has no provenance; set table.provenance = provenance(config) before writing")
    stem = Path(stem)
    texts = {".provenance.json": json.dumps(table.provenance, indent=2, sort_keys=True) + "\n",
             ".md": _to_markdown(table), ".tex": _to_latex(table)}
    paths = [stem.with_name(stem.name + ".csv")]
    with atomic_path(paths[0]) as tmp:
        table.raw.to_csv(tmp, index=False)
    for suffix, text in texts.items():
        paths.append(stem.with_name(stem.name + suffix))
        with atomic_path(paths[-1]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths


# --- formatting helpers -------------------------------------------------------------------------------------------

def _finite(x: float) -> bool:
    return bool(np.isfinite(x))


def _mean_std(mean: float, std: float, digits: int) -> str:
    if not _finite(mean):
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if _finite(std) else "")


def _best(values: pd.Series, lower: bool) -> pd.Series:
    """True where a value equals the column's best (ties all bold); NaN never wins, and a column where every
    value ties has no best."""
    values = values.astype(float)
    best = values.min() if lower else values.max()
    winners = pd.Series(np.isclose(values, best) & values.notna(), index=values.index)
    return winners if winners.sum() < values.notna().sum() else pd.Series(False, index=values.index)


def _seed_stats(metrics: pd.DataFrame) -> pd.DataFrame:
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
    stats = _seed_stats(rows)
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
            text = _mean_std(s["mean"], s["std"], digits)
            if _finite(s["ci_low"]) and _finite(s["ci_high"]):
                text += f" [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"
            cells.loc[label, (task, metric)] = text
            star_cells.loc[label, (task, metric)] = star
            means[label] = s["mean"]
            values = {**s[["mean", "std", "ci_low", "ci_high"]].to_dict(), "n_seeds": int(s["n_seeds"]),
                      "p_value": p, "stars": star}
            raw[label].update({f"{task}/{metric}/{name}": values[name] for name in STAT_FIELDS})
        bold[(task, metric)] = _best(means, metric in lower_is_better)
    caption = (f"Performance on {', '.join(tasks)}: mean ± std over seeds and mean 95% CI; best per column in bold; "
               f"stars: paired test against {baseline_init} ({baseline_protocol}), {STARS_LEGEND}.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold, star_cells)


def cohort_table(manifests: Mapping[str, pd.DataFrame], tasks_config: Mapping[str, dict]) -> Table:
    """Seed 000 Table 1: per cohort the tasks using it, train/val/test case counts, inputs (union of its tasks'
    input channels) and outputs (its tasks' targets).

    manifests: cohort -> manifest frame (case_id, split, ...). tasks_config: the config's `tasks` section.
    """
    tasks = [Task.from_config(name, spec) for name, spec in tasks_config.items()]
    rows = []
    for cohort, manifest in manifests.items():
        used = [t for t in tasks if t.cohort == cohort]
        counts = manifest["split"].value_counts()
        inputs = dict.fromkeys(ch.upper() for t in used for ch in t.inputs)
        outputs = dict.fromkeys(_OUTPUTS[t.kind].format(t.type.target.upper() if t.kind == "restoration"
                                                        else t.type.target) for t in used)
        rows.append({"cohort": cohort, "tasks": ", ".join(t.name for t in used) or MISSING,
                     "train": int(counts.get("train", 0)), "val": int(counts.get("val", 0)),
                     "test": int(counts.get("test", 0)), "inputs": ", ".join(inputs) or MISSING,
                     "outputs": ", ".join(outputs) or MISSING})
    raw = pd.DataFrame(rows)
    cells = raw.set_index("cohort").astype(str)
    return Table(cells, raw, "Cohorts: tasks, case counts per split (train, val, test), input channels and outputs.")


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
            ratio = sc_h / ft_h if _finite(ft_h) and ft_h > 0 else float("nan")
            cells += [f"{ft_h:.3g}" if _finite(ft_h) else MISSING, f"{sc_h:.3g}" if _finite(sc_h) else MISSING,
                      f"{ratio:.2f}×" if _finite(ratio) else MISSING]
            raw.update({f"{variant}/ft_hours": ft_h, f"{variant}/scratch_hours": sc_h, f"{variant}/ratio": ratio})
        cell_rows[task] = cells
        raw_rows.append(raw)
    cells = pd.DataFrame.from_dict(cell_rows, orient="index", columns=columns).rename_axis("task")
    caption = ("Compute: hours for fine-tuning (FT, pretrained encoder, full protocol) and training from scratch, "
               "mean over seeds, and the ratio scratch/FT.")
    return Table(cells, pd.DataFrame(raw_rows), caption)


def cka_table(cka: pd.DataFrame, digits: int = 3) -> Table:
    """Seed 000 Table 6: rows = encoder layer plus the average over layers, columns = (task, encoder pair),
    cell = linear CKA with the debiased CKA and the permutation-null linear CKA beside it. Repeated rows of one
    (task, pair, layer), e.g. several seeds, are averaged.

    cka: columns task, pair, layer, linear, debiased, null_linear, ci_low, ci_high.
    """
    values = ["linear", "debiased", "null_linear", "ci_low", "ci_high"]
    mean = cka.groupby(["task", "pair", "layer"], sort=False)[values].mean()
    groups = list(dict.fromkeys(zip(cka["task"], cka["pair"])))
    layers = sorted(cka["layer"].unique())
    labels = [f"L{layer}" for layer in layers] + ["Avg."]
    columns = pd.MultiIndex.from_tuples(groups, names=["task", "pair"])
    cells = pd.DataFrame(MISSING, index=pd.Index(labels, name="layer"), columns=columns)
    raw = {label: {"layer": label} for label in labels}
    for task, pair in groups:
        block = mean.loc[(task, pair)].reindex(layers)
        block.loc["Avg."] = block.mean()
        block.index = labels
        for label, row in block.iterrows():
            if _finite(row["linear"]):
                cells.loc[label, (task, pair)] = (f"{row['linear']:.{digits}f} (d {row['debiased']:.{digits}f}, "
                                                  f"null {row['null_linear']:.{digits}f})")
            raw[label].update({f"{task}/{pair}/{name}": row[name] for name in values})
    caption = ("Linear CKA between encoder pairs by layer and averaged over layers; in brackets the debiased CKA (d) "
               "and the linear CKA of the permutation null.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption)


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
    stats = _seed_stats(primary)
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
            cells.loc[label, (task, metric)] = _mean_std(s["mean"], s["std"], digits)
            means[label] = s["mean"]
            raw[label].update({f"{task}/{metric}/{name}": s[name] for name in ("mean", "std", "n_seeds")})
        bold[(task, metric)] = _best(means, metric in lower_is_better)
    caption = ("Ablation over pretraining objectives: primary metric per task (mean ± std over seeds) of encoders "
               "pretrained with the checked objectives and fine-tuned with the full protocol; best in bold.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold)


def lens_table(summary: pd.DataFrame, digits: int = 3) -> Table:
    """One row per task of the radiomic-lens analysis: probe R² before and after fine-tuning, total weight change
    with its permutation p (starred), stability (Spearman), the change per feature group (every other numeric
    column, e.g. intensity, shape, texture) and the top features.

    summary: columns task, r2_pre, r2_ft, total_change, perm_p, stability_spearman, top_features, plus the
    numeric group-change columns.
    """
    fixed = ["task", "r2_pre", "r2_ft", "total_change", "perm_p", "stability_spearman", "top_features"]
    groups = [c for c in summary.select_dtypes("number").columns if c not in fixed]
    names = {"r2_pre": "R² pre", "r2_ft": "R² FT", "total_change": "total change", "perm_p": "perm. p",
             "stability_spearman": "stability ρ"}
    cells = pd.DataFrame(index=pd.Index(summary["task"], name="task"))
    star_cells = pd.DataFrame(index=cells.index)
    for col in ["r2_pre", "r2_ft", "total_change", "perm_p", "stability_spearman", *groups]:
        values = summary[col].to_numpy(float)
        if col == "perm_p":
            text = ["<0.001" if v < 0.001 else f"{v:.3f}" if _finite(v) else MISSING for v in values]
        else:
            text = [f"{v:.{digits}f}" if _finite(v) else MISSING for v in values]
        cells[names.get(col, col)] = text
        star_cells[names.get(col, col)] = [stars(v) if col == "perm_p" else "" for v in values]
    cells["top features"] = summary["top_features"].fillna("").astype(str).to_numpy()
    star_cells["top features"] = ""
    raw = summary.assign(perm_stars=[stars(v) for v in summary["perm_p"].to_numpy(float)])
    caption = ("Radiomic lens per task: probe R² before and after fine-tuning, total weight change with its "
               f"permutation p ({STARS_LEGEND}), stability across seeds (Spearman), change per feature group, "
               "top features.")
    return Table(cells, raw, caption, stars=star_cells)
