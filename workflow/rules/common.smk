# Config validation, path patterns and config look-ups shared by every stage.
import json
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

# Rules call the library as `python -m taskalign...`; the checkout's src/ is put on the path here (not
# in each command) so that moving the checkout does not change any command text and trigger reruns.
# Without --sdm conda, `python` is the interpreter running Snakemake (the project's .venv), activated or not.
# Snakemake's own default prefix (strict bash) is kept.
def job_environment():
    exports = [f"export PYTHONPATH='{workflow.basedir}/src'"]
    settings = workflow.deployment_settings
    if settings is None or DeploymentMethod.CONDA not in settings.deployment_method:
        exports.append(f"export PATH='{Path(sys.executable).parent}':\"$PATH\"")
    return "; ".join(exports)


shell.prefix(f"set -euo pipefail; {job_environment()}; ")

COHORTS = config["data"]["cohorts"]
IMPORTERS = ("picai", "dicom", "nifti", "prostate158", "msd")


def cohorts_from(*sources):
    return [name for name, spec in COHORTS.items() if spec["source"] in sources]


def name_pattern(names):
    """A wildcard constraint matching exactly these names (never matches when there are none)."""
    return "|".join(names) if names else "(?!x)x"


def as_json(value):
    """Config slices reach the CLIs as one JSON argument, so a change to them changes the command."""
    return json.dumps(value, sort_keys=True)


def source_manifest(wildcards):
    spec = COHORTS[wildcards.cohort]
    if spec["source"] == "manifest":
        return spec["path"]
    return f"results/cohorts/{wildcards.cohort}/manifest.csv"


def phantom_params(wildcards):
    train, val, test = COHORTS[wildcards.cohort]["splits"]
    return as_json(
        {
            "phantom": config["data"]["phantom"],
            "splits": {"train": train, "val": val, "test": test},
        }
    )


def import_params(wildcards):
    spec = COHORTS[wildcards.cohort]
    return as_json({"kind": spec["source"], "source": spec["path"], "options": spec.get("options", {})})


def check_params(wildcards):
    return as_json(
        {
            "split_fractions": config["data"]["split"]["fractions"],
            "split_seed": config["data"]["split"]["seed"],
            "stratify_by": config["data"]["split"]["stratify_by"],
            "require": config["data"]["require"],
        }
    )


def all_data_outputs():
    return expand(
        ["results/cache/{cohort}.csv", "results/qc/{cohort}"],
        cohort=list(COHORTS),
    )


# --- encoders -----------------------------------------------------------------------------------------
PRETRAIN = config["pretrain"]
CONTINUAL = config["continual"]
VARIANTS = PRETRAIN["variants"]
TRAINED_VARIANTS = [v for v, spec in VARIANTS.items() if spec["source"] == "train"]
IMPORTED_VARIANTS = [v for v, spec in VARIANTS.items() if spec["source"] == "checkpoint"]


def check_config_references():
    """Names that must refer to something defined elsewhere in the config (the schema cannot say this)."""
    problems = [
        f"pretrain.cohorts: unknown cohort '{c}'" for c in PRETRAIN["cohorts"] if c not in COHORTS
    ]
    if CONTINUAL["cohort"] not in COHORTS:
        problems.append(f"continual.cohort: unknown cohort '{CONTINUAL['cohort']}'")
    problems += [
        f"continual.variants: unknown encoder '{v}' (pretrain.variants or random)"
        for v in CONTINUAL["variants"]
        if v not in VARIANTS and v != "random"
    ]
    for name, spec in VARIANTS.items():
        needed = "objectives" if spec["source"] == "train" else "path"
        if needed not in spec:
            problems.append(f"pretrain.variants.{name}: source {spec['source']} needs '{needed}'")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


check_config_references()


def encoder_geometry():
    """EncoderGeometry fields from the config (taskalign.models.encoder)."""
    return {
        "in_channels": len(config["preprocess"]["channels"]),
        "img_size": config["preprocess"]["size"],
        "patch_size": config["encoder"]["patch_size"],
        "hidden_size": config["encoder"]["hidden_size"],
        "mlp_dim": config["encoder"]["mlp_dim"],
        "num_layers": config["encoder"]["num_layers"],
        "num_heads": config["encoder"]["num_heads"],
    }


def pretrain_params(wildcards):
    keys = ["mask_ratio", "weights", "decoder_layers", "epochs", "batch_size", "lr", "warmup_epochs",
            "weight_decay", "holdout_fraction"]
    return as_json(
        {
            **{k: PRETRAIN[k] for k in keys},
            "objectives": VARIANTS[wildcards.variant]["objectives"],
            "geometry": encoder_geometry(),
            "channels": config["preprocess"]["channels"],
            "seed": config["seed"],
        }
    )


def random_encoder_params(wildcards):
    return as_json({"geometry": encoder_geometry(), "seed": config["seed"]})


def import_encoder_params(wildcards):
    spec = VARIANTS[wildcards.variant]
    return as_json({"geometry": encoder_geometry(), "path": spec["path"], "layout": spec.get("layout", "timm")})


def continual_params(wildcards):
    keys = ["target", "layers", "rank", "alpha", "dropout", "decoder_channels", "epochs", "batch_size", "lr",
            "warmup_epochs", "weight_decay"]
    return as_json({**{k: CONTINUAL[k] for k in keys}, "seed": config["seed"]})


def pretrain_inputs(wildcards):
    return expand("results/cache/{cohort}.csv", cohort=PRETRAIN["cohorts"])


def all_encoder_outputs():
    return expand(
        ["results/pretrain/{variant}/encoder.safetensors"], variant=[*VARIANTS, "random"]
    ) + expand(["results/continual/{variant}/encoder.safetensors"], variant=CONTINUAL["variants"])


# --- fine-tuning matrix --------------------------------------------------------------------------------
from taskalign.tasks.spec import check_combination

TASKS = config["tasks"]
FINETUNE = config["finetune"]
EVALUATE = config["evaluate"]


def slug(name):
    """`pretrained:mae` -> `pretrained-mae`, `partial:2` -> `partial-2`: names as path components."""
    return name.replace(":", "-")


def finetune_runs():
    """Every (task, init, protocol, seed) that config `finetune.runs` lists, once, in config order."""
    runs, problems = [], []
    for n, block in enumerate(FINETUNE["runs"]):
        tasks = list(TASKS) if block.get("tasks", "all") == "all" else block["tasks"]
        problems += [f"finetune.runs[{n}].tasks: unknown task '{t}' (not in tasks)" for t in tasks if t not in TASKS]
        for init in block["inits"]:
            kind, _, variant = init.partition(":")
            if kind == "pretrained" and variant not in VARIANTS:
                problems.append(f"finetune.runs[{n}]: init {init}: no pretrain variant '{variant}'")
            if kind == "continual" and variant not in CONTINUAL["variants"]:
                problems.append(f"finetune.runs[{n}]: init {init}: '{variant}' is not in continual.variants")
            for protocol in block.get("protocols", ["full"]):
                try:
                    check_combination(init, protocol)
                except ValueError as err:
                    problems.append(f"finetune.runs[{n}]: {err}")
                    continue
                for task in tasks:
                    for seed in block.get("seeds", [0]):
                        if (task, init, protocol, seed) not in runs:
                            runs.append((task, init, protocol, seed))
    for name, spec in TASKS.items():
        if spec["cohort"] not in COHORTS:
            problems.append(f"tasks.{name}.cohort: unknown cohort '{spec['cohort']}'")
        required = {"super_res": ["factor"], "distortion": ["amplitude_mm", "decay_mm"]}.get(name, [])
        problems += [f"tasks.{name}: needs '{key}'" for key in required if key not in spec]
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))
    return runs


RUNS = finetune_runs()
INITS = {slug(init): init for _, init, _, _ in RUNS}
PROTOCOLS = {slug(protocol): protocol for _, _, protocol, _ in RUNS}
RUN_PATTERN = "{task}/{init}/{protocol}/seed{seed}"


def run_paths(prefix, names):
    """Output paths of every configured run under `prefix` (results/finetune or results/evaluate)."""
    return [
        f"{prefix}/{task}/{slug(init)}/{slug(protocol)}/seed{seed}/{name}"
        for task, init, protocol, seed in RUNS
        for name in names
    ]


def finetune_encoder(wildcards):
    """The encoder file an init starts from (none for the specialist)."""
    kind, _, variant = INITS[wildcards.init].partition(":")
    if kind in ("random", "scratch"):
        return "results/pretrain/random/encoder.safetensors"
    if kind == "pretrained":
        return f"results/pretrain/{variant}/encoder.safetensors"
    if kind == "continual":
        return f"results/continual/{variant}/encoder.safetensors"
    return []


def task_index(wildcards):
    return f"results/cache/{TASKS[wildcards.task]['cohort']}.csv"


def finetune_params(wildcards):
    """Only what the run depends on: a head change does not rerun specialists and vice versa."""
    keys = ["epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "augment"]
    architecture = "specialist" if INITS[wildcards.init] == "specialist" else "head"
    return as_json(
        {
            **{k: FINETUNE[k] for k in keys},
            architecture: FINETUNE[architecture],
            "task": TASKS[wildcards.task],
            "channels": config["preprocess"]["channels"],
            "seed": int(wildcards.seed),
        }
    )


def evaluate_params(wildcards):
    from taskalign.tasks.spec import TASK_TYPES

    return as_json(
        {
            "task": TASKS[wildcards.task],
            "channels": config["preprocess"]["channels"],
            "seed": int(wildcards.seed),
            "batch_size": FINETUNE["batch_size"][TASK_TYPES[wildcards.task].kind],
            "bootstrap": EVALUATE["bootstrap"],
            "save_volumes": EVALUATE["save_volumes"],
        }
    )


def all_finetune_outputs():
    return ["results/evaluate/metrics.csv"] if RUNS else []
