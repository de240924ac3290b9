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
