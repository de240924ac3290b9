"""Where every stage writes (SPEC "Layout"): the one place a path pattern under results/ is spelt out.

The rules, the report and the tests ask these functions; nothing else builds a results path by hand. Names with a
colon (`pretrained:mae`, `partial:2`) become path components through `slug`.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

RESULTS = "results"
RUN_PATTERN = "{task}/{init}/{protocol}/seed{seed}"
TABLE_SUFFIXES = (".csv", ".md", ".tex", ".provenance.json", ".html")
FIGURE_SUFFIXES = (".png", ".pdf")


class Run(NamedTuple):
    """One fine-tuning run of the matrix: task x init x protocol x seed."""

    task: str
    init: str
    protocol: str
    seed: int


# The wildcard form of a run: the rules' patterns; layout fills in the real components for the requested files.
RUN_WILDCARDS = Run("{task}", "{init}", "{protocol}", "{seed}")


def slug(name: str) -> str:
    """`pretrained:mae` -> `pretrained-mae`, `partial:2` -> `partial-2`: names as path components."""
    return name.replace(":", "-")


def config_digest(config: dict) -> str:
    """First 12 hex digits of the sha256 of the config's sorted-key JSON: the config's name in provenance."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_record(config: dict) -> str:
    return f"{RESULTS}/provenance/config-{config_digest(config)}.json"


# --- data ----------------------------------------------------------------------------------------------------------

def cohort_manifest(cohort: str) -> str:
    """The manifest a phantom or importer writes (the manifest route names its own file instead)."""
    return f"{RESULTS}/cohorts/{cohort}/manifest.csv"


def phantom_truth(cohort: str) -> str:
    """The phantom's ground truth per case (what each case was generated with)."""
    return f"{RESULTS}/cohorts/{cohort}/truth.csv"


def phantom_cases(cohort: str) -> str:
    return f"{RESULTS}/cohorts/{cohort}/cases"


def checked_manifest(cohort: str) -> str:
    return f"{RESULTS}/manifests/{cohort}.csv"


def study_digests() -> str:
    """A digest of every case's T2W voxels, all cohorts (the cross-cohort leakage check)."""
    return f"{RESULTS}/manifests/study_digests.csv"


def cache_dir(cohort: str) -> str:
    return f"{RESULTS}/cache/{cohort}"


def cache_index(cohort: str) -> str:
    return f"{RESULTS}/cache/{cohort}.csv"


def qc_dir(cohort: str) -> str:
    return f"{RESULTS}/qc/{cohort}"


# --- encoders ------------------------------------------------------------------------------------------------------

def pretrain_file(variant: str, name: str) -> str:
    return f"{RESULTS}/pretrain/{variant}/{name}"


def continual_file(variant: str, name: str) -> str:
    return f"{RESULTS}/continual/{variant}/{name}"


def pretrained_encoder(variant: str) -> str:
    """A pretrain variant's encoder (its best weights); `random` is the seeded random-weight encoder."""
    return pretrain_file(variant, "encoder.safetensors")


def continual_encoder(variant: str) -> str:
    """A continual variant's encoder with its LoRA merged."""
    return continual_file(variant, "encoder.safetensors")


# --- fine-tuning, evaluation, features -------------------------------------------------------------------------------

def run_dir(stage: str, run: Run) -> str:
    """`results/{stage}/{task}/{init}/{protocol}/seed{seed}` for stage finetune or evaluate."""
    task, init, protocol, seed = run
    return f"{RESULTS}/{stage}/{task}/{slug(init)}/{slug(protocol)}/seed{seed}"


def run_file(stage: str, run: Run, name: str) -> str:
    return f"{run_dir(stage, run)}/{name}"


def collected_metrics() -> str:
    """Every run's test metrics in one table (rule collect_metrics)."""
    return f"{RESULTS}/evaluate/metrics.csv"


def metrics_summary() -> str:
    """Mean and spread over seeds per (task, init, protocol, metric)."""
    return f"{RESULTS}/evaluate/summary.csv"


def resume_dir(stage: str, name: str) -> str:
    """Resume state of a training job (outside its declared outputs, which Snakemake deletes before a rerun)."""
    return f"{RESULTS}/resume/{stage}/{name}"


def base_features(task: str, encoder: str) -> str:
    """Features of an encoder from before fine-tuning (`random`, `pretrained-mae`, `continual-mae`) on a task."""
    return f"{RESULTS}/features/{task}/{encoder}.npz"


def run_features_name(run: Run) -> str:
    """A fine-tuned run's encoder as the CKA tables name it: `pretrained-mae/full/seed0` (its features file's path
    below the task)."""
    _, init, protocol, seed = run
    return f"{slug(init)}/{slug(protocol)}/seed{seed}"


def run_features(run: Run) -> str:
    return f"{RESULTS}/features/{run.task}/{run_features_name(run)}.npz"


# --- analyses and paper outputs --------------------------------------------------------------------------------------

def analysis_file(name: str) -> str:
    """`results/analysis/{name}`: per-task parts (`cka/zone_seg.csv`) and collected tables (`cka.csv`)."""
    return f"{RESULTS}/analysis/{name}"


def radiomics_table(cohort: str) -> str:
    return f"{RESULTS}/radiomics/{cohort}.csv"


def table_files(name: str) -> list[str]:
    return [f"{RESULTS}/tables/{name}{suffix}" for suffix in TABLE_SUFFIXES]


def figure_files(name: str) -> list[str]:
    return [f"{RESULTS}/figures/{name}{suffix}" for suffix in FIGURE_SUFFIXES]


# --- each job's log and benchmark -------------------------------------------------------------------------------------

def log_file(stage: str, name: str) -> str:
    """`results/logs/{stage}/{name}.log`: a job's stderr (a Snakemake `log:`)."""
    return f"{RESULTS}/logs/{stage}/{name}.log"


def benchmark_file(stage: str, name: str) -> str:
    """`results/benchmarks/{stage}/{name}.tsv`: a job's time and memory (a Snakemake `benchmark:`)."""
    return f"{RESULTS}/benchmarks/{stage}/{name}.tsv"
