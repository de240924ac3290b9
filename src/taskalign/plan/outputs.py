"""The paper outputs (SPEC "Outputs"): which tables and figures a plan makes, from which files, with which settings.

Names are paper and number first: `000_table2_classification` is seed 000's Table 2; figures without a number in
the paper carry `fig_` and what they show. The report rules ask `table_inputs` / `figure_inputs` for named input
files and pass them to the builders, which open nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from taskalign.plan import layout
from taskalign.plan.experiment import Plan

# seed 000 Tables 2-5 by the task kinds' table group; distortion and translation (001's restoration tasks, the DDPM
# one included) join super-resolution
PERFORMANCE_TABLES = {
    "000_table2_classification": (
        "classification"
    ),
    "000_table3_regression": (
        "regression"
    ),
    "000_table4_segmentation": (
        "segmentation"
    ),
    "000_table5_restoration": (
        "restoration"
    ),
}
PAPERS = ("000", "001", "002", "003")


@dataclass(frozen=True)
class Output:
    """One paper table or figure, declared once: its name (`{paper}_{what}`), whether it is a figure, when a plan
    makes it, its named input files, and its caption (the Snakemake report's). Its builder is the function of the
    same name in taskalign.report.paper (TABLE_BUILDERS, FIGURE_BUILDERS), which the report checks against these
    declarations."""

    name: str
    figure: bool
    applies: Callable[[Plan], bool]
    inputs: Callable[[Plan], dict]
    caption: str

    @property
    def paper(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def what(self) -> str:
        return self.name.split("_", 1)[1]


def group_tasks(plan: Plan, group: str) -> list[str]:
    """The configured tasks whose kind reports in table group `group`."""
    return [t for t in plan.tasks if plan.task(t).kind.group == group]


def segmentation_overlay_runs(plan: Plan) -> list[layout.Run]:
    labelled = [t for t in plan.tasks if plan.task(t).kind.labels]
    return plan.runs_of(labelled, [f"pretrained:{plan.analysed}"], "full")


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


def _performance(name: str) -> Output:
    group = PERFORMANCE_TABLES[name]
    return Output(name, False, lambda plan: bool(plan.runs_of(group_tasks(plan, group))),
                  lambda plan: {"metrics": layout.collected_metrics(),
                                "cases": run_files("evaluate", plan.runs_of(group_tasks(plan, group)), "cases.csv")},
                  CAPTIONS[name])


def _cka_inputs(plan: Plan) -> dict:
    return {"cka": layout.analysis_file("cka.csv"), "deltas": layout.analysis_file("cka_deltas.csv"),
            "metrics": layout.collected_metrics()}


def _overlay_inputs(plan: Plan) -> dict:
    runs = segmentation_overlay_runs(plan)
    return {"predictions": run_files("evaluate", runs, "predictions.npz"),
            "indexes": {t: plan.task_index(t) for t in dict.fromkeys(r.task for r in runs)}}


def _always(plan: Plan) -> bool:
    return True


def _has_cka(plan: Plan) -> bool:
    return bool(plan.cka_tasks)


def _has_mmd(plan: Plan) -> bool:
    return bool(plan.mmd_tasks)


def _has_lens(plan: Plan) -> bool:
    return bool(plan.lens_tasks)


CAPTIONS = {
    "000_table1_cohorts": (
        "Seed 000 Table 1: cohorts, their split sizes, the inputs the tasks read and the outputs they "
        "predict."
    ),
    "000_table2_classification": (
        "Seed 000 Table 2: classification (PI-RADS 2-5, 20-sector) per init, AUC and specificity in %; mean ±"
        " std over seeds, 95% patient-bootstrap CI of the seed mean, best in bold, stars: paired patient "
        "bootstrap of the AUC difference against the pretrained row (docs/deviations.md)."
    ),
    "000_table3_regression": (
        "Seed 000 Table 3: prostate volume regression per init (MSE on the standardised target, mean absolute"
        " error in mL); lower is better; stars: Wilcoxon on seed-averaged per-patient errors against the "
        "pretrained row."
    ),
    "000_table4_segmentation": (
        "Seed 000 Table 4: lesion and zone segmentation per init (Dice; per structure for the zones)."
    ),
    "000_table5_restoration": (
        "Seed 000 Table 5 with 001's restoration tasks: super-resolution x4 in depth, rectal-air distortion "
        "correction, T2W to DWI translation (SSIM)."
    ),
    "000_table6_cka": (
        "Seed 000 Table 6: CKA by layer of Pretrained-Continual, Pretrained-Finetuned and Continual-Finetuned"
        " (one FT: fine-tuned from the pretrained encoder, full protocol), Delta = CKA(continual, FT) - "
        "CKA(pretrained, FT) with a paired interval, debiased CKA beside; tasks whose performance differs by "
        "the configured threshold (docs/deviations.md)."
    ),
    "000_table6_cka_supplementary": (
        "Seed 000 Table 6, supplementary: every task, and the encoders fine-tuned from the continual encoder "
        "under their own label."
    ),
    "001_table1_compute": (
        "Seed 001 Table 1: GPU hours (wall-clock hours without a GPU) of fine-tuning each compared model with"
        " its protocol (FT) and of training from scratch, summed over resumed attempts, mean over seeds, and "
        "FT/Scratch."
    ),
    "002_table5_ablation": (
        "Seed 002 Table 5: cumulative pretraining objectives (reconstruction, +metadata, +translation, "
        "+contrastive), each encoder fine-tuned with the ablation protocol; primary metric per task and its "
        "change from the row before."
    ),
    "003_lens_summary": (
        "Seed 003 radiomic lens per task: held-out R² of the lens on pretrained and fine-tuned embeddings, "
        "total change of the normalised radiomic sensitivities with its permutation p, features significant "
        "after a family-wise (max-statistic) correction, rank stability across lens and fine-tuning seeds, "
        "change per feature group."
    ),
    "001_fig1b_scratch_vs_finetuned": (
        "Seed 001 Fig. 1b: one panel per compared model: test metric (PI-RADS: specificity at sensitivity "
        "0.9) trained from scratch (x) against the model fine-tuned with its protocol (y) per task; marker "
        "area is the unbiased D2S. Above the diagonal pretraining helped (lower-is-better metrics negated)."
    ),
    "001_fig2_rpg_vs_distance": (
        "Seed 001 Fig. 2: relative performance gain (RPG) of each compared model against D2R, D2P and D2S "
        "(unbiased MMD², one sigma for every task), against the random-weight FM and the specialist; Pearson "
        "r with its bootstrap interval over seeds and cases, Spearman rho, n per panel."
    ),
    "001_fig3_learning_curves": (
        "Seed 001 Fig. 3: training loss (top) and validation metric (bottom) per epoch of each compared "
        "model's fine-tuned run against training from scratch, per task (first seed)."
    ),
    "000_fig_cka_heatmaps": (
        "Seed 000: layer x layer linear CKA between encoder pairs (pretrained-continual, pretrained-finetuned"
        " and continual-finetuned with the same FT, continual-finetuned_from_continual) per task."
    ),
    "000_fig_table6_cka": (
        "Seed 000 Table 6 as a picture: per task, the linear CKA of Pretrained-Continual, Pretrained-Finetuned and"
        " Continual-Finetuned (one FT, full protocol, first seed) at each level, with the subsampling interval"
        " over the test cases."
    ),
    "003_lens_heatmap": (
        "Seed 003: change of each radiomic feature's share of the lens's sensitivity after fine-tuning "
        "(features x tasks; a rescale of the embeddings is no change), top features by largest change."
    ),
    "003_lens_class_bars": (
        "Seed 003: change of the sensitivity share per feature class (intensity, shape, texture) and task."
    ),
    "000_fig_segmentation_overlays": (
        "Test cases of each segmentation task: T2W slice, ground truth and the fine-tuned model's prediction."
    ),
}

# Every paper output, tables first, each in its paper's order.
OUTPUTS = (
    Output("000_table1_cohorts", False, _always,
           lambda plan: {"manifests": sorted(layout.checked_manifest(c) for c in plan.cohorts)},
           CAPTIONS["000_table1_cohorts"]),
    *(_performance(name) for name in PERFORMANCE_TABLES),
    Output("000_table6_cka", False, _has_cka, _cka_inputs, CAPTIONS["000_table6_cka"]),
    Output("000_table6_cka_supplementary", False, _has_cka, _cka_inputs, CAPTIONS["000_table6_cka_supplementary"]),
    Output("001_table1_compute", False, _has_mmd,
           lambda plan: {"timings": run_files("finetune", compared_runs(plan), "timing.json")},
           CAPTIONS["001_table1_compute"]),
    Output("002_table5_ablation", False, lambda plan: bool(plan.ablation_steps),
           lambda plan: {"metrics": layout.collected_metrics()}, CAPTIONS["002_table5_ablation"]),
    Output("003_lens_summary", False, _has_lens, lambda plan: {"summary": layout.analysis_file("lens_summary.csv")},
           CAPTIONS["003_lens_summary"]),
    Output("001_fig1b_scratch_vs_finetuned", True, _has_mmd,
           lambda plan: {"metrics": layout.collected_metrics(), "mmd": layout.analysis_file("mmd.csv")},
           CAPTIONS["001_fig1b_scratch_vs_finetuned"]),
    Output("001_fig2_rpg_vs_distance", True, _has_mmd,
           lambda plan: {"rpg": layout.analysis_file("rpg.csv"),
                         "correlations": layout.analysis_file("rpg_correlations.csv")},
           CAPTIONS["001_fig2_rpg_vs_distance"]),
    Output("001_fig3_learning_curves", True, _has_mmd,
           lambda plan: {"histories": run_files("finetune", compared_runs(plan), "history.csv")},
           CAPTIONS["001_fig3_learning_curves"]),
    Output("000_fig_cka_heatmaps", True, _has_cka, lambda plan: {"cka": layout.analysis_file("cka.csv")},
           CAPTIONS["000_fig_cka_heatmaps"]),
    Output("000_fig_table6_cka", True, _has_cka, lambda plan: {"cka": layout.analysis_file("cka.csv")},
           CAPTIONS["000_fig_table6_cka"]),
    Output("003_lens_heatmap", True, _has_lens, lambda plan: {"lens": layout.analysis_file("lens.csv")},
           CAPTIONS["003_lens_heatmap"]),
    Output("003_lens_class_bars", True, _has_lens, lambda plan: {"lens": layout.analysis_file("lens.csv")},
           CAPTIONS["003_lens_class_bars"]),
    Output("000_fig_segmentation_overlays", True, lambda plan: bool(segmentation_overlay_runs(plan)),
           _overlay_inputs, CAPTIONS["000_fig_segmentation_overlays"]),
)
BY_NAME = {output.name: output for output in OUTPUTS}
TABLES = tuple(o.name for o in OUTPUTS if not o.figure)
FIGURES = tuple(o.name for o in OUTPUTS if o.figure)


def declared(name: str, figure: bool) -> Output:
    output = BY_NAME.get(name)
    if output is None or output.figure != figure:
        known = FIGURES if figure else TABLES
        raise ValueError(f"unknown {'figure' if figure else 'table'} {name!r}; known: {', '.join(known)}")
    return output


def paper_tables(plan: Plan) -> list[str]:
    return [o.name for o in OUTPUTS if not o.figure and o.applies(plan)]


def paper_figures(plan: Plan) -> list[str]:
    return [o.name for o in OUTPUTS if o.figure and o.applies(plan)]


def paper_outputs(plan: Plan, paper: str | None = None) -> list[str]:
    """Every file of the paper's (or every paper's) tables and figures."""
    tables = [n for n in paper_tables(plan) if paper is None or n.startswith(paper)]
    figures = [n for n in paper_figures(plan) if paper is None or n.startswith(paper)]
    return [f for n in tables for f in layout.table_files(n)] + [f for n in figures for f in layout.figure_files(n)]


def whats(figure: bool) -> list[str]:
    """The `{what}` of every declared table (or figure): the report rules' wildcard constraint."""
    return sorted({o.what for o in OUTPUTS if o.figure == figure})


def caption(name: str) -> str:
    return BY_NAME[name].caption


def table_inputs(plan: Plan, name: str) -> dict:
    """Named inputs of a table: a path, a list of paths, or per-run rows [task, init, protocol, seed, path]."""
    return declared(name, figure=False).inputs(plan)


def figure_inputs(plan: Plan, name: str) -> dict:
    return declared(name, figure=True).inputs(plan)


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
        # the analysed variant's inits: the report compares with them by these names, never by building them
        "inits": {"pretrained": f"pretrained:{plan.analysed}", "continual": f"continual:{plan.analysed}"},
        "min_performance_difference": plan.analysis["cka"]["min_performance_difference"],
        "cka_tasks": plan.analysis["cka"]["tasks"],
        # each compared model as [label, init, protocol]: the label names it in the analysis tables
        "models": [[plan.model_label(m), plan.model_init(m), m["protocol"]] for m in plan.models],
        "ablation": {"steps": [[f"{label} ({v})", f"pretrained:{v}", objs] for label, v, objs in plan.ablation_steps],
                     "protocol": (plan.pretrain.get("ablation") or {}).get("protocol")},
        "objective_sets": {v: spec["objectives"] for v, spec in plan.variants.items() if spec["source"] == "train"},
        "other_cohorts": sorted(c for c in plan.cohorts if c not in task_cohorts),
        "bootstrap": plan.config["report"]["bootstrap"], "seed": plan.config["report"]["seed"],
    }
    if figure:
        settings.update(style=plan.config["report"]["style"], overlay_cases=plan.config["report"]["overlay_cases"])
    return settings
