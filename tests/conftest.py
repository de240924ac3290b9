from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TEST_CONFIG = yaml.safe_load((REPO / "config/test.yaml").read_text())


def write_checked(manifest, out, **checks):
    """The check_manifest rule's two steps (taskalign.cli.check_manifest): the checked table, written."""
    from taskalign.data.integrity import checked_table, write_table

    table = checked_table(manifest, **checks)
    write_table(table, out)
    return table


def plan_of(config: dict):
    """The experiment plan of a config, validated (schema defaults filled) as the Snakefile does."""
    import copy

    from snakemake.utils import validate

    from taskalign.plan import Plan

    config = copy.deepcopy(config)
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    return Plan(config)


def run_snakemake(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real Snakefile with this interpreter's snakemake; output captured for assertions."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI samples not found at {SHARED_DATA} (the repository's sibling shared/data)")
    return SHARED_DATA


def preprocess_settings(overrides: dict | None = None) -> dict:
    """The preprocess section as the pipeline passes it: the schema's defaults (the one place they are written)
    with `overrides`."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    section = schema["properties"]["preprocess"]["properties"]
    return {**{key: spec["default"] for key, spec in section.items()}, **(overrides or {})}


TINY_PREPROCESS = {"spacing_mm": [4.0, 3.0, 3.0], "size": [16, 32, 32], "channels": ["t2w", "dwi", "adc"],
                   "clip_percentiles": [0.5, 99.5], "qc_cases": 0, "cache_dtype": "float32"}
TINY_PHANTOM = {"matrix": [64, 64], "fov_mm": [140, 140], "slices": [12, 16], "slice_thickness_mm": [4.0, 5.0],
                "dwi_matrix": [32, 32]}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> dict[str, Path]:
    """A small phantom cohort through the real check and preprocessing: {cohort: cache index CSV}.

    Cohorts: `corpus` (12 unlabelled train cases) and `anatomy` (8 train, 4 val, 4 test, all masks).
    Geometry: 3 channels x 16 x 32 x 32 at 4 x 3 x 3 mm."""
    from taskalign.data.phantom import write_cohort
    from taskalign.data.preprocess import preprocess_cohort

    root = tmp_path_factory.mktemp("tiny_cache")
    out = {}
    for cohort, splits in {"corpus": {"train": 12, "val": 0, "test": 0},
                           "anatomy": {"train": 8, "val": 4, "test": 4}}.items():
        manifest = write_cohort(cohort, splits, TINY_PHANTOM, 0, root / "cohorts" / cohort,
                                labelled=cohort != "corpus")
        checked = root / "manifests" / f"{cohort}.csv"
        write_checked(manifest, checked, split_fractions={"train": 0.7, "val": 0.1, "test": 0.2},
                               split_seed=0)
        index = root / "cache" / f"{cohort}.csv"
        fields = ["rectum_distance"] if cohort == "anatomy" else []  # the distortion task's cohort, as the plan says
        preprocess_cohort(checked, {**TINY_PREPROCESS, "fields": fields}, root / "cache" / cohort, index,
                          root / "qc" / cohort)
        out[cohort] = index
    return out
