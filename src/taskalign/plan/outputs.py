"""The paper outputs (SPEC "Outputs"): which tables and figures a plan makes, from which files, with which settings.

Names are paper and number first: `000_table2_classification` is seed 000's Table 2; figures without a number in
the paper carry `fig_` and what they show. The report rules ask `table_inputs` / `figure_inputs` for named input
files and pass them to the builders, which open nothing else.
"""

from __future__ import annotations

from taskalign.plan import layout
from taskalign.plan.experiment import Plan

# seed 000 Tables 2-5 by the task kinds' table group; distortion and translation (001's restoration tasks, the DDPM
# one included) join super-resolution
PERFORMANCE_TABLES = {
    "000_table2_classification": "classification",
    "000_table3_regression": "regression",
    "000_table4_segmentation": "segmentation",
    "000_table5_restoration": "restoration",
}
OTHER_TABLES = ("000_table1_cohorts", "000_table6_cka", "000_table6_cka_supplementary", "001_table1_compute",
                "002_table5_ablation", "003_lens_summary")
FIGURES = ("001_fig1b_scratch_vs_finetuned", "001_fig2_rpg_vs_distance", "001_fig3_learning_curves",
           "000_fig_cka_heatmaps", "003_lens_heatmap", "003_lens_class_bars", "000_fig_segmentation_overlays")
PAPERS = ("000", "001", "002", "003")


def group_tasks(plan: Plan, group: str) -> list[str]:
    """The configured tasks whose kind reports in table group `group`."""
    return [t for t in plan.tasks if plan.task(t).kind.group == group]


def paper_tables(plan: Plan) -> list[str]:
    grouped = {name: plan.runs_of(group_tasks(plan, group)) for name, group in PERFORMANCE_TABLES.items()}
    names = ["000_table1_cohorts"]
    names += [name for name, runs in grouped.items() if runs]
    names += ["000_table6_cka", "000_table6_cka_supplementary"] if plan.cka_tasks else []
    names += ["001_table1_compute"] if plan.mmd_tasks else []
    names += ["002_table5_ablation"] if plan.ablation_steps else []
    names += ["003_lens_summary"] if plan.lens_tasks else []
    return names


def segmentation_overlay_runs(plan: Plan) -> list[layout.Run]:
    labelled = [t for t in plan.tasks if plan.task(t).kind.labels]
    return plan.runs_of(labelled, [f"pretrained:{plan.analysed}"], "full")


def paper_figures(plan: Plan) -> list[str]:
    names = []
    if plan.mmd_tasks:
        names += ["001_fig1b_scratch_vs_finetuned", "001_fig2_rpg_vs_distance", "001_fig3_learning_curves"]
    names += ["000_fig_cka_heatmaps"] if plan.cka_tasks else []
    names += ["003_lens_heatmap", "003_lens_class_bars"] if plan.lens_tasks else []
    names += ["000_fig_segmentation_overlays"] if segmentation_overlay_runs(plan) else []
    return names


def paper_outputs(plan: Plan, paper: str | None = None) -> list[str]:
    """Every file of the paper's (or every paper's) tables and figures."""
    tables = [n for n in paper_tables(plan) if paper is None or n.startswith(paper)]
    figures = [n for n in paper_figures(plan) if paper is None or n.startswith(paper)]
    return [f for n in tables for f in layout.table_files(n)] + [f for n in figures for f in layout.figure_files(n)]


def run_files(stage: str, runs: list[layout.Run], name: str) -> list[list]:
    """[[task, init, protocol, seed, path], ...]: per-run inputs as the builders receive them, sorted, so that the
    order of tasks in the config (a params value of the report rules) reruns nothing."""
    return [[*run, layout.run_file(stage, run, name)] for run in sorted(runs)]


def compared_runs(plan: Plan) -> list[layout.Run]:
    """001's runs: each compared model's fine-tuned runs and the scratch runs of the same tasks and seeds."""
    runs = []
    for model in plan.models:
        for task in plan.model_tasks(model):
            for seed in plan.mmd_seeds(task, model):
                runs += [layout.Run(task, plan.model_init(model), model["protocol"], seed),
                         layout.Run(task, "scratch", "full", seed)]
    return sorted(set(runs))


def table_inputs(plan: Plan, name: str) -> dict:
    """Named inputs of a table: a path, a list of paths, or per-run rows [task, init, protocol, seed, path]."""
    if name in PERFORMANCE_TABLES:
        tasks = group_tasks(plan, PERFORMANCE_TABLES[name])
        return {"metrics": layout.collected_metrics(), "cases": run_files("evaluate", plan.runs_of(tasks), "cases.csv")}
    if name == "000_table1_cohorts":
        return {"manifests": sorted(layout.checked_manifest(c) for c in plan.cohorts)}
    if name == "001_table1_compute":
        return {"timings": run_files("finetune", compared_runs(plan), "timing.json")}
    cka = {"cka": layout.analysis_file("cka.csv"), "deltas": layout.analysis_file("cka_deltas.csv"),
           "metrics": layout.collected_metrics()}
    return {"000_table6_cka": cka, "000_table6_cka_supplementary": cka,
            "002_table5_ablation": {"metrics": layout.collected_metrics()},
            "003_lens_summary": {"summary": layout.analysis_file("lens_summary.csv")}}[name]


def figure_inputs(plan: Plan, name: str) -> dict:
    if name == "001_fig3_learning_curves":
        return {"histories": run_files("finetune", compared_runs(plan), "history.csv")}
    if name == "000_fig_segmentation_overlays":
        runs = segmentation_overlay_runs(plan)
        return {"predictions": run_files("evaluate", runs, "predictions.npz"),
                "indexes": {t: plan.task_index(t) for t in dict.fromkeys(r.task for r in runs)}}
    return {
        "001_fig1b_scratch_vs_finetuned": {"metrics": layout.collected_metrics(), "mmd": layout.analysis_file("mmd.csv")},
        "001_fig2_rpg_vs_distance": {"rpg": layout.analysis_file("rpg.csv"),
                                     "correlations": layout.analysis_file("rpg_correlations.csv")},
        "000_fig_cka_heatmaps": {"cka": layout.analysis_file("cka.csv")},
        "003_lens_heatmap": {"lens": layout.analysis_file("lens.csv")},
        "003_lens_class_bars": {"lens": layout.analysis_file("lens.csv")},
    }[name]


def input_paths(inputs: dict) -> list[str]:
    """Every path in a named-inputs mapping, for the rule's `input:` (the DAG's edges)."""
    paths = []
    for value in inputs.values():
        if isinstance(value, str):
            paths.append(value)
        elif isinstance(value, dict):
            paths += list(value.values())
        else:
            paths += [item[-1] if isinstance(item, list) else item for item in value]
    return paths


def report_settings(plan: Plan, figure: bool = False) -> dict:
    """What the builders read from the config; the figure style only reaches figures, so a style change reruns
    figures alone."""
    task_cohorts = {spec["cohort"] for spec in plan.tasks.values()}
    settings = {
        "tasks": {t: plan.task_spec(t) for t in plan.tasks},
        "runs": [list(r) for r in sorted(plan.runs)],  # sorted: the order of tasks in the config is no setting
        "variant": plan.analysed,
        "min_performance_difference": plan.analysis["cka"]["min_performance_difference"],
        "cka_tasks": plan.analysis["cka"]["tasks"],
        "models": [plan.model_label(m) for m in plan.models],
        "ablation": {"steps": [[f"{label} ({v})", f"pretrained:{v}", objs] for label, v, objs in plan.ablation_steps],
                     "protocol": (plan.pretrain.get("ablation") or {}).get("protocol")},
        "objective_sets": {v: spec["objectives"] for v, spec in plan.variants.items() if spec["source"] == "train"},
        "other_cohorts": sorted(c for c in plan.cohorts if c not in task_cohorts),
        "bootstrap": plan.config["report"]["bootstrap"], "seed": plan.config["report"]["seed"],
    }
    if figure:
        settings.update(style=plan.config["report"]["style"], overlay_cases=plan.config["report"]["overlay_cases"])
    return settings
