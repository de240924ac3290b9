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
