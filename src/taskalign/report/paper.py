"""Report stage: every paper table and figure by name, built from the files the plan names as its inputs.

Each output has a builder that gets its input files by name (`inputs`, from taskalign.plan.outputs through the
rule) and returns a `Table` or draws a figure; it opens nothing else. `settings` carries what the builders need
from the config: the tasks, the fine-tuning runs, the analysed variant, the pretraining objective sets and, for
figures, the style. Per-run inputs come as rows [task, init, protocol, seed, path].
"""

from __future__ import annotations

import functools
import html
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.analysis.cka_pairs import CONTINUAL_FT, PRETRAINED_CONTINUAL, PRETRAINED_FT
from taskalign.analysis.distances import rpg_metric
from taskalign.plan.experiment import ABLATION_BASELINE
from taskalign.plan.outputs import FIGURES, PERFORMANCE_TABLES, TABLES
from taskalign.report import figures
from taskalign.report.tables.ablation import ablation_table
from taskalign.report.tables.cka import cka_supplementary_table, cka_table
from taskalign.report.tables.cohorts import cohort_table
from taskalign.report.tables.compute import compute_table
from taskalign.report.tables.lens import FIXED as LENS_COLUMNS, lens_table
from taskalign.report.tables.model import Table, provenance, write_table
from taskalign.report.tables.performance import Resampling, performance_table
from taskalign.runtime import atomic_path, read_array, read_arrays
from taskalign.tasks.kinds import LOWER_IS_BETTER
from taskalign.tasks.spec import Task

log = logging.getLogger(__name__)


def run_config() -> dict:
    """The whole workflow config (for its hash): Snakemake's shell prefix names the file in TASKALIGN_CONFIG."""
    path = os.environ.get("TASKALIGN_CONFIG")
    if not path:
        return {}
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: the config record Snakemake writes when a run starts is missing "
                                "(was the run started with --no-hooks?)")
    return json.loads(Path(path).read_text())


def per_run(rows: list[list]) -> dict[tuple[str, str, str, int], Path]:
    """[[task, init, protocol, seed, path], ...] -> {(task, init, protocol, seed): path}, sorted by run (tables and
    figures do not depend on the order of tasks in the config)."""
    return dict(sorted(((t, i, p, int(s)), Path(path)) for t, i, p, s, path in rows))


def configured_tasks(settings: dict) -> dict[str, Task]:
    return {name: Task.from_config(name, spec) for name, spec in settings["tasks"].items()}


def tasks_with_runs(settings: dict, keep) -> list[str]:
    """The configured tasks with fine-tuned runs whose Task passes `keep` (its kind's table group, say)."""
    return [name for name, task in configured_tasks(settings).items()
            if keep(task) and any(r[0] == name for r in settings["runs"])]


# --- tables -------------------------------------------------------------------------------------------------------

def performance(name: str, inputs: dict, settings: dict) -> Table:
    tasks = tasks_with_runs(settings, lambda task: task.kind.group == PERFORMANCE_TABLES[name])
    metrics = pd.read_csv(inputs["metrics"])
    cases = {run: pd.read_csv(path) for run, path in per_run(inputs["cases"]).items()}
    return performance_table(metrics, cases, tasks, (settings["inits"]["pretrained"], "full"), LOWER_IS_BETTER,
                             resampling=Resampling(settings["bootstrap"], settings["seed"]))


def cohorts(inputs: dict, settings: dict) -> Table:
    """Cohorts used by tasks first (in task order), then the others, each from its checked manifest."""
    by_name = {Path(path).stem: path for path in inputs["manifests"]}
    used = list(dict.fromkeys(spec["cohort"] for spec in settings["tasks"].values()))
    manifests = {c: pd.read_csv(by_name[c]) for c in [*used, *settings["other_cohorts"]]}
    return cohort_table(manifests, settings["tasks"])


TABLE6_PAIRS = (PRETRAINED_CONTINUAL, PRETRAINED_FT, CONTINUAL_FT)


def read_cka(path: str) -> pd.DataFrame:
    """cka.csv with the pretrained-continual pair's empty protocol and seed as "" (not NaN)."""
    frame = pd.read_csv(path, dtype={"protocol": str, "seed": str})
    return frame.fillna({"protocol": "", "seed": ""})


def cka_frames(inputs: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    deltas = pd.read_csv(inputs["deltas"])
    return read_cka(inputs["cka"]), deltas, pd.read_csv(inputs["metrics"])


def cka(inputs: dict, settings: dict) -> Table:
    """000 Table 6: the configured tasks (analysis.cka.tasks), else those whose FT-from-continual and
    FT-from-pretrained differ by the configured threshold."""
    return cka_table(*cka_frames(inputs), inits=settings["inits"],
                     threshold=settings["min_performance_difference"], lower_is_better=LOWER_IS_BETTER,
                     tasks=settings["cka_tasks"])


def cka_supplementary(inputs: dict, settings: dict) -> Table:
    """Table 6 for every task, with the encoders fine-tuned from the continual one."""
    return cka_supplementary_table(*cka_frames(inputs), inits=settings["inits"], lower_is_better=LOWER_IS_BETTER)


def compute(inputs: dict, settings: dict) -> Table:
    """001 Table 1 from every compared model's and scratch's timing.json (totals over resumed attempts)."""
    rows = []
    for (t, i, p, s), path in per_run(inputs["timings"]).items():
        timing = json.loads(path.read_text())
        rows.append({"task": t, "init": i, "protocol": p, "seed": s, "wall_seconds": timing["wall_seconds"],
                     "device_hours": timing["device_hours"]})
    return compute_table(pd.DataFrame(rows), [label for label, _, _ in settings["models"]])


def ablation(inputs: dict, settings: dict) -> Table:
    metrics = pd.read_csv(inputs["metrics"])
    init, protocol = ABLATION_BASELINE  # the plan fine-tunes it on every ablation task and seed
    return ablation_table(metrics, settings["ablation"]["steps"], protocol=settings["ablation"]["protocol"],
                          lower_is_better=LOWER_IS_BETTER, baseline=(f"{init} (no pretraining)", init, protocol))


def lens(inputs: dict, settings: dict) -> Table:
    summary = pd.read_csv(inputs["summary"])
    groups = {c: c.removeprefix("change_") for c in summary.columns if c.startswith("change_")}
    return lens_table(summary[[c for c in LENS_COLUMNS if c in summary] + list(groups)].rename(columns=groups))


# Each declared table's builder (taskalign.plan.outputs.OUTPUTS declares its name, inputs and caption).
TABLE_BUILDERS = {"000_table1_cohorts": cohorts,
                  **{name: functools.partial(performance, name) for name in PERFORMANCE_TABLES},
                  "000_table6_cka": cka, "000_table6_cka_supplementary": cka_supplementary,
                  "001_table1_compute": compute, "002_table5_ablation": ablation, "003_lens_summary": lens}


def build_table(name: str, inputs: dict, settings: dict) -> Table:
    if name not in TABLE_BUILDERS:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLE_BUILDERS)}")
    table = TABLE_BUILDERS[name](inputs, settings)
    table.provenance = provenance(run_config())
    return table


def table_html(table: Table) -> str:
    """The table as a small HTML page (bold best cells, stars, caption, provenance) for the Snakemake report."""
    cells = table.cells.copy()
    for column in cells.columns:
        for row in cells.index:
            text = html.escape(str(cells.loc[row, column])) + html.escape(str(table.stars.loc[row, column]))
            cells.loc[row, column] = f"<b>{text}</b>" if table.bold.loc[row, column] else text
    prov = "; ".join(f"{k}={v}" for k, v in table.provenance.items())
    return (f"<html><head><meta charset='utf-8'><style>body{{font-family:sans-serif;font-size:13px}}"
            f"td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head><body>"
            f"<p>{html.escape(table.caption)}</p>{cells.to_html(escape=False)}"
            f"<p style='color:#888;font-size:11px'>{html.escape(prov)}</p></body></html>")


def write_named_table(name: str, inputs: dict, settings: dict, stem: Path) -> list[Path]:
    """Every file of the table: stem.csv, .md, .tex, .provenance.json and .html."""
    table = build_table(name, inputs, settings)
    paths = write_table(table, stem)
    html_path = stem.with_name(f"{stem.name}.html")
    with atomic_path(html_path) as tmp:
        tmp.write_text(table_html(table))
    paths.append(html_path)
    log.info("%s: %s", name, ", ".join(p.name for p in paths))
    return paths


# --- figures ------------------------------------------------------------------------------------------------------

def footer() -> str:
    prov = provenance(run_config())
    return f"config {prov['config_hash']} · code {prov['code_version']} · device {prov['device']}"


def scratch_vs_finetuned_frame(inputs: dict, settings: dict) -> pd.DataFrame:
    """Per compared model and task: the RPG metric (PI-RADS: specificity at sensitivity 0.9) of its fine-tuned
    runs and of scratch, seed means, and the unbiased D2S."""
    metrics = pd.read_csv(inputs["metrics"])
    means = metrics.groupby(["task", "init", "protocol", "metric"])["value"].mean()
    distances = pd.read_csv(inputs["mmd"])
    d2s = distances[(distances["distance"] == "d2s") & (distances["estimator"] == "unbiased")]
    rows = []
    tasks = configured_tasks(settings)
    runs = {label: (init, protocol) for label, init, protocol in settings["models"]}
    for (model, task), group in d2s.groupby(["model", "task"], sort=False):
        init, protocol = runs[model]
        metric = rpg_metric(tasks[task])
        rows.append({"model": model, "task": task, "scratch": means.get((task, "scratch", "full", metric), np.nan),
                     "finetuned": means.get((task, init, protocol, metric), np.nan), "d2s": group["value"].mean(),
                     "higher_is_better": metric not in LOWER_IS_BETTER})
    return pd.DataFrame(rows).dropna()


def fig_scratch_vs_finetuned(stem: Path, inputs: dict, settings: dict) -> int:
    return figures.scratch_vs_finetuned(scratch_vs_finetuned_frame(inputs, settings), stem, footer(),
                                        settings["style"])


def fig_rpg(stem: Path, inputs: dict, settings: dict) -> int:
    correlations = pd.read_csv(inputs["correlations"])
    return figures.rpg_vs_distance(pd.read_csv(inputs["rpg"]),
                                   correlations[correlations["estimator"] == "unbiased"], stem, footer(),
                                   settings["style"])


def fig_learning_curves(stem: Path, inputs: dict, settings: dict) -> int:
    """001 Fig. 3: per task the validation curve of scratch and of each compared model's fine-tuned run, first
    seed each."""
    labels = {(init, protocol): f"FT {label}" for label, init, protocol in settings["models"]}
    labels[("scratch", "full")] = "scratch"
    histories: dict[str, dict[str, pd.DataFrame]] = {}
    for (t, i, p, s), path in per_run(inputs["histories"]).items():
        label = labels.get((i, p))
        if label and label not in histories.get(t, {}):  # runs come sorted: the first seed
            histories.setdefault(t, {})[label] = pd.read_csv(path)
    histories = {t: h for t, h in histories.items() if len(h) > 1}
    return figures.learning_curves(histories, stem, footer(), settings["style"],
                                   metrics={t: configured_tasks(settings)[t].type.metric for t in histories})


def fig_cka(stem: Path, inputs: dict, settings: dict) -> int:
    frame = read_cka(inputs["cka"])
    frame = frame[frame["protocol"].isin(["", "full"])]
    matrices = {}
    for (task, pair), group in frame.groupby(["task", "pair"], sort=False):
        group = group[group["seed"].astype(str) == str(group["seed"].iloc[0])]
        matrix = group.pivot(index="layer_a", columns="layer_b", values="linear")
        order = list(dict.fromkeys(group["layer_a"]))
        matrices[f"{task}: {pair}"] = matrix.loc[order, order]
    return figures.cka_heatmaps(matrices, stem, footer(), settings["style"])


def fig_table6(stem: Path, inputs: dict, settings: dict) -> int:
    """Table 6's pairs at matching levels (the first fine-tuning seed, full protocol), one panel per task."""
    frame = read_cka(inputs["cka"])
    frame = frame[(frame["layer_a"] == frame["layer_b"]) & frame["protocol"].isin(["", "full"])
                  & frame["pair"].isin(TABLE6_PAIRS)]
    curves = {}
    for task, group in frame.groupby("task", sort=False):
        seeds = group["seed"].astype(str)
        first = sorted(s for s in seeds.unique() if s != "")[:1]
        curves[task] = group[seeds.isin(["", *first])]
    return figures.cka_by_level(curves, stem, footer(), settings["style"])


def lens_shown(path: str) -> pd.DataFrame:
    """lens.csv with the change of tasks below the lens's R² floor blanked (NaN; `interpretable` False)."""
    table = pd.read_csv(path)
    if "interpretable" in table.columns:
        table.loc[~table["interpretable"].astype(bool), "change"] = np.nan
    return table


def fig_lens_heatmap(stem: Path, inputs: dict, settings: dict) -> int:
    table = lens_shown(inputs["lens"])
    return figures.lens_heatmap(table.pivot(index="feature", columns="task", values="change"), stem, footer(),
                                settings["style"])


def fig_lens_bars(stem: Path, inputs: dict, settings: dict) -> int:
    table = lens_shown(inputs["lens"])
    groups = table.groupby(["task", "group"], sort=False)["change"].sum(min_count=1).reset_index()
    return figures.lens_class_bars(groups, stem, footer(), settings["style"])


def overlay_cases(inputs: dict, settings: dict) -> list[dict]:
    """A few test cases per segmentation task: the slice with the most target, from the runs the plan names
    (the analysed variant's fine-tuned runs, full protocol), first seed, tasks in config order."""
    cases = []
    first: dict[str, Path] = {}
    for (task, _, _, _), path in per_run(inputs["predictions"]).items():  # sorted: the first seed first
        first.setdefault(task, path)
    for task in [t for t in settings["tasks"] if t in first]:
        predictions = read_arrays(first[task])
        index = pd.read_csv(inputs["indexes"][task]).set_index("case_id")
        target = configured_tasks(settings)[task].type.target
        for case_id in list(predictions)[: settings["overlay_cases"]]:
            cache = Path(index.loc[case_id, "cache_dir"])
            channels = json.loads((cache / "meta.json").read_text())["channels"]
            image = read_array(cache / "image.npy", mmap_mode="r")[channels.index("t2w")]
            truth = read_array(cache / f"{target}.npy").astype(int)
            z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
            prediction = np.asarray(predictions[case_id]).reshape(truth.shape).astype(int)
            cases.append({"title": f"{task} {case_id} (slice {z})", "image": np.asarray(image[z]),
                          "truth": truth[z], "prediction": prediction[z]})
    return cases


def fig_overlays(stem: Path, inputs: dict, settings: dict) -> int:
    return figures.segmentation_overlays(overlay_cases(inputs, settings), stem, footer(), settings["style"])


# Each declared figure's drawing function.
DRAW = {
    "001_fig1b_scratch_vs_finetuned": fig_scratch_vs_finetuned,
    "001_fig2_rpg_vs_distance": fig_rpg,
    "001_fig3_learning_curves": fig_learning_curves,
    "000_fig_cka_heatmaps": fig_cka,
    "000_fig_table6_cka": fig_table6,
    "003_lens_heatmap": fig_lens_heatmap,
    "003_lens_class_bars": fig_lens_bars,
    "000_fig_segmentation_overlays": fig_overlays,
}


def draw_named_figure(name: str, inputs: dict, settings: dict, stem: Path) -> int:
    """The figure as stem.png and stem.pdf."""
    if name not in DRAW:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(DRAW)}")
    panels = DRAW[name](stem, inputs, settings)
    log.info("%s: %d panels", name, panels)
    return panels


# A declared output without a builder, or a builder of no declared output, fails at import (every report job).
if set(TABLE_BUILDERS) != set(TABLES) or set(DRAW) != set(FIGURES):
    raise ImportError(f"taskalign.report.paper: builders {sorted(set(TABLE_BUILDERS) ^ set(TABLES))} and drawers "
                      f"{sorted(set(DRAW) ^ set(FIGURES))} do not match taskalign.plan.outputs.OUTPUTS")
