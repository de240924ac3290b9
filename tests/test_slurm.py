"""The SLURM profile: a dry run shows each job's resources; a real single-node SLURM (Debian's slurm-wlm on
loopback, ../shared/tools/slurm) runs a slice of the test config through sbatch, GPU request included."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, run_snakemake

SLURM_UP = REPO.parent / "shared" / "tools" / "slurm" / "slurm_up.sh"


def slice_config(tmp_path, gpu: int):
    """The test config cut to one task and one run, fine-tuning on `gpu` GPUs: a short DAG with every kind of job."""
    cfg = yaml.safe_load((REPO / "config/test.yaml").read_text())
    cfg["tasks"] = {"volume_reg": cfg["tasks"]["volume_reg"]}
    cfg["finetune"].update(runs=[{"inits": ["random"], "protocols": ["frozen"]}], epochs=1, gpu=gpu)
    path = tmp_path / "slice.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_with_the_profile_shows_each_jobs_resources(tmp_path):
    config = slice_config(tmp_path, gpu=1)
    proc = run_snakemake("finetuned", "-n", "--profile", "slurm", "--configfile", str(config), "-d", str(tmp_path / "w"))
    finetune = proc.stdout.split("rule finetune:")[1].split("\n\n")[0]
    assert re.search(r"resources:.*mem_mb=16000.*runtime=720.*gpu=1", finetune), finetune
    preprocess = proc.stdout.split("rule preprocess:")[1].split("\n\n")[0]
    assert "gpu=" not in preprocess


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    """A running SLURM with 2 fake GPUs, brought up with the shared script when this machine can (root, Debian)."""
    if not slurm_is_up():
        if not SLURM_UP.exists():
            pytest.skip(f"no SLURM running and no {SLURM_UP} to start one")
        if os.geteuid() != 0:
            pytest.skip("no SLURM running and starting one needs root (apt-get, daemons)")
        proc = subprocess.run(["bash", str(SLURM_UP)], env={**os.environ, "FAKE_GPUS": "2"}, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0 or not slurm_is_up():
            pytest.skip(f"SLURM could not be started here: {proc.stdout[-500:]}{proc.stderr[-500:]}")


@pytest.mark.slurm
def test_test_config_runs_through_real_slurm_with_a_gpu_request(slurm, tmp_path):
    config = slice_config(tmp_path, gpu=1)
    work = tmp_path / "w"
    proc = run_snakemake("finetuned", "--profile", "slurm", "--configfile", str(config), "-d", str(work),
                         "--slurm-init-seconds-before-status-checks", "5", "--verbose")
    log = proc.stdout + proc.stderr
    calls = re.findall(r"sbatch call: (sbatch .*)", log)
    assert len(calls) >= 6, "every job passes through sbatch"
    finetune = next(c for c in calls if "rule_finetune" in c)
    assert "--gpus=1" in finetune and "--mem 16000" in finetune and "-t 720" in finetune
    assert all("--gpus" not in c for c in calls if "rule_finetune" not in c)
    assert (work / "results/evaluate/volume_reg/random/frozen/seed0/metrics.csv").exists()
    job_ids = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", log)
    states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(job_ids)], capture_output=True,
                            text=True).stdout.split()
    assert job_ids and states and set(states) == {"COMPLETED"}, states
