# Config validation, the shell prefix and the experiment plan every stage asks (taskalign.plan).
import json
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from taskalign.plan import layout
import taskalign.plan.outputs as paper
from taskalign.plan import params
from taskalign.plan.params import as_json
from taskalign.plan.config_check import checked_plan


# Every schema violation and plan problem in one report (PlanError), defaults filled in.
PLAN = checked_plan(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
TASKS = config["tasks"]
ANALYSIS = config["analysis"]


def shell_word(path):
    """A path as one shell word that runs nothing (an apostrophe or `$(...)` in a folder name stays text), with
    its braces doubled: shell.prefix formats its text as a Snakemake pattern."""
    return shlex.quote(str(path)).replace("{", "{{").replace("}", "}}")


# Rules call the library as `python -m taskalign...`; the checkout's src/ is put on the path here (not
# in each command) so that moving the checkout does not change any command text and trigger reruns.
# Without --sdm conda, `python` is the interpreter running Snakemake (the project's .venv), activated or not.
# Snakemake's own default prefix (strict bash) is kept.
def job_environment():
    exports = [f"export PYTHONPATH={shell_word(Path(workflow.basedir) / 'src')}"]
    settings = workflow.deployment_settings
    if settings is None or DeploymentMethod.CONDA not in settings.deployment_method:
        exports.append(f"export PATH={shell_word(Path(sys.executable).parent)}:\"$PATH\"")
    return "; ".join(exports)


# Scheduling: every fine-tuning run from a pretrained or continual encoder waits for pretraining, the longest
# jobs of the DAG, which wait for every cohort's cache. Snakemake otherwise picks among ready jobs without
# regard to what they hold up, so the data stage, pretraining and continual pretraining go first.
CRITICAL_PATH = 10

# The whole config as JSON, named by its hash: the tables and figures cite it. Its path reaches jobs through the
# shell prefix, which (unlike params) is no rerun trigger; `onstart` writes it, so dry runs write nothing.
CONFIG_RECORD = Path(layout.config_record(config)).resolve()


onstart:
    if not CONFIG_RECORD.exists():
        CONFIG_RECORD.parent.mkdir(parents=True, exist_ok=True)
        CONFIG_RECORD.write_text(json.dumps(config, sort_keys=True, default=str))


shell.prefix(
    f"set -euo pipefail; {job_environment()}; export TASKALIGN_CONFIG={shell_word(CONFIG_RECORD)}; "
    f"export TASKALIGN_DETERMINISTIC={int(config['deterministic'])}; "
)


def name_pattern(names):
    """A wildcard constraint matching exactly these names (never matches when there are none)."""
    return "|".join(names) if names else "(?!x)x"



def task_index(wildcards):
    return PLAN.task_index(wildcards.task)


def from_workdir_or_repository(name):
    """A relative path is taken from the working directory, else from the repository (which ships defaults and
    the test config's example checkpoint)."""
    path = Path(name)
    return str(path if path.is_absolute() or path.exists() else Path(workflow.basedir) / path)


def radiomics_params_file():
    return from_workdir_or_repository(ANALYSIS["radiomics"]["params"])


def imported_encoder_spec(variant):
    spec = params.imported_encoder(PLAN, variant)
    return as_json({**spec, "path": from_workdir_or_repository(spec["path"])})
