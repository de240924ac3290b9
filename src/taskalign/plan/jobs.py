"""What each rule's job asks the scheduler for (threads, memory, wall-clock, GPUs, training switches) and the
wildcard constraints of its patterns: from the plan, so that no rule reads the config. The job's files come from
taskalign.plan.layout, its parameters from taskalign.plan.params."""

from __future__ import annotations

from taskalign.plan import layout
from taskalign.plan.experiment import Plan

# Memory (MB) and wall-clock minutes per job; rules not listed take Snakemake's defaults.
MEMORY_RUNTIME = {
    "cohort": (4000, 60), "import_cohort": (4000, 120), "check_manifest": (4000, 30), "preprocess": (8000, 120),
    "pretrain": (16000, 24 * 60), "continual": (16000, 24 * 60), "finetune": (16000, 12 * 60),
    "evaluate": (8000, 60), "features": (8000, 60), "finetuned_features": (8000, 60), "radiomics": (4000, 120),
}
# The config section (and key) whose threads a rule's job uses; rules not listed run on one thread.
THREADS = {
    "cohort": ("data", "threads"), "shared_studies": ("data", "threads"), "preprocess": ("data", "threads"),
    "pretrain": ("pretrain", "threads"), "continual": ("continual", "threads"), "finetune": ("finetune", "threads"),
    "evaluate": ("evaluate", "threads"), "features": ("analysis", "threads"),
    "finetuned_features": ("analysis", "threads"), "target_probe": ("analysis", "threads"),
    "radiomics": ("analysis", "radiomics", "processes"),
}
# The config section whose `gpu` count a rule's job asks for.
GPU = {"pretrain": "pretrain", "continual": "continual", "finetune": "finetune", "evaluate": "evaluate",
       "features": "analysis", "finetuned_features": "analysis"}
# Training jobs: their resume cadence and compile switch reach the job as resources, not params, because they say
# how the job trains, not what it computes (resources are no rerun trigger; params would be).
TRAINING = ("pretrain", "continual", "finetune")


def name_pattern(names) -> str:
    """A wildcard constraint matching exactly these names (never matches when there are none)."""
    return "|".join(names) if names else "(?!x)x"


def run_constraints(plan: Plan) -> dict[str, str]:
    """The wildcard constraints of a fine-tuning run's path components (layout.RUN_WILDCARDS)."""
    return {"task": name_pattern(plan.tasks), "init": name_pattern(plan.inits),
            "protocol": name_pattern(plan.protocols), "seed": r"\d+"}


def threads(plan: Plan, rule: str) -> int:
    if rule not in THREADS:
        return 1
    value = plan.config
    for key in THREADS[rule]:
        value = value[key]
    return value


def resources(plan: Plan, rule: str) -> dict:
    """The rule's `resources:`: training switches first, then memory, wall-clock and GPUs."""
    out = {}
    if rule in TRAINING:
        section = plan.config[rule]
        out.update(checkpoint_minutes=str(section["checkpoint_minutes"]), compile=section["compile"])
    if rule in MEMORY_RUNTIME:
        out.update(mem_mb=MEMORY_RUNTIME[rule][0], runtime=MEMORY_RUNTIME[rule][1])
    if rule in GPU:
        out["gpu"] = plan.config[GPU[rule]]["gpu"]
    return out


def analysis_parts(plan: Plan) -> dict[str, list[str]]:
    """Each collected analysis table (rule collect_analysis) and its per-task parts."""
    return {"cka": [layout.analysis_file(f"cka/{task}.csv") for task in plan.cka_tasks],
            "cka_deltas": [layout.analysis_file(f"cka/{task}_deltas.csv") for task in plan.cka_tasks],
            "lens": [layout.analysis_file(f"lens/{task}.csv") for task in plan.lens_tasks],
            "lens_summary": [layout.analysis_file(f"lens/{task}_summary.csv") for task in plan.lens_tasks]}
