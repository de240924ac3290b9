"""Preemption: a fine-tuning job killed with SIGKILL mid-run and rerun resumes from its last epoch and ends with
exactly the model and history of an uninterrupted run; two runs with the same seed are identical (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from conftest import REPO
from test_finetune import GEOMETRY, TASKS, params
from taskalign.data.dataset import read_index
from taskalign.models.checkpoint_io import load_encoder, save_encoder
from taskalign.models.encoder import Encoder

EPOCHS = 6


def command(tiny_cache, encoder, out, resume):
    run_params = {**params(epochs=EPOCHS), "task": TASKS["zone_seg"]}
    return [sys.executable, "-m", "taskalign.cli.finetune", "--task", "zone_seg", "--init", "pretrained:mae",
            "--protocol", "full", "--encoder", str(encoder), "--index", str(tiny_cache["anatomy"]),
            "--params", json.dumps(run_params), "--model", str(out / "model.safetensors"),
            "--history", str(out / "history.csv"), "--curve", str(out / "curve.png"),
            "--timing", str(out / "timing.json"), "--resume-dir", str(resume), "--threads", "1"]


def environment():
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def finished(run):
    history = pd.read_csv(run / "history.csv").drop(columns=["seconds"])
    return load_file(str(run / "model.safetensors")), history


def test_killed_run_resumes_and_ends_identical_to_an_uninterrupted_run(tiny_cache, tmp_path):
    torch.manual_seed(0)
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(Encoder(GEOMETRY), encoder)

    plain, interrupted = tmp_path / "plain", tmp_path / "interrupted"
    subprocess.run(command(tiny_cache, encoder, plain, tmp_path / "resume_plain"), check=True, env=environment(),
                   capture_output=True)

    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        job = subprocess.Popen(command(tiny_cache, encoder, interrupted, tmp_path / "resume"), env=environment(),
                               stderr=handle, start_new_session=True)
        deadline = time.time() + 300
        while "epoch 3/" not in log.read_text() and job.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert "epoch 3/" in log.read_text() and f"epoch {EPOCHS}/" not in log.read_text(), "killed mid-run"
    assert not (interrupted / "model.safetensors").exists()

    rerun = subprocess.run(command(tiny_cache, encoder, interrupted, tmp_path / "resume"), check=True,
                           env=environment(), capture_output=True, text=True)
    assert "resuming from" in rerun.stderr and "epoch 1/" not in rerun.stderr

    (model_a, history_a), (model_b, history_b) = finished(plain), finished(interrupted)
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a), "bit-identical weights"
    pd.testing.assert_frame_equal(history_a, history_b)

    from taskalign.evaluate.evaluate import run_evaluation
    from test_finetune import task

    tables = []
    for run in (plain, interrupted):
        tables.append(run_evaluation(
            task=task("zone_seg"), model_path=run / "model.safetensors", indexes=[tiny_cache["anatomy"]],
            params={**params(), "task": TASKS["zone_seg"], "bootstrap": 50, "save_volumes": 0},
            metrics_csv=run / "metrics.csv", cases_csv=run / "cases.csv", predictions_npz=run / "pred.npz",
            montage_png=run / "montage.png"))
    pd.testing.assert_frame_equal(*tables)
    assert (plain / "cases.csv").read_text() == (interrupted / "cases.csv").read_text()


def test_resume_files_belong_to_the_inputs_content_not_their_paths(tiny_cache, tmp_path, caplog):
    """Snakemake reruns a job with the same paths when an upstream rule reran: a resume file written with the old
    encoder or cache must then be ignored, while the same content resumes."""
    from taskalign.train.resume import index_digest
    from taskalign.train.finetune import run_finetune
    from test_finetune import task

    encoder, resume = tmp_path / "encoder.safetensors", tmp_path / "resume"
    run_params = {**params(epochs=2), "task": TASKS["volume_reg"]}

    def run(out):
        caplog.clear()
        with caplog.at_level("INFO", logger="taskalign.train.resume"):
            run_finetune(task=task("volume_reg"), init="pretrained:mae", protocol="full", encoder_path=encoder,
                         indexes=[tiny_cache["anatomy"]], params=run_params, model_out=out / "model.safetensors",
                         history_csv=out / "history.csv", curve_png=out / "curve.png",
                         timing_json=out / "timing.json", resume_dir=resume)
        return "resuming from" in caplog.text

    torch.manual_seed(0)
    save_encoder(Encoder(GEOMETRY), encoder)
    assert not run(tmp_path / "first")
    save_encoder(load_encoder(encoder), encoder)  # the same weights, written again
    assert run(tmp_path / "same_encoder"), "the same content resumes"
    torch.manual_seed(1)
    save_encoder(Encoder(GEOMETRY), encoder)
    assert not run(tmp_path / "new_encoder"), "another encoder at the same path trains afresh"

    before = index_digest(tiny_cache["anatomy"])
    array = next(Path(read_index([tiny_cache["anatomy"]])["cache_dir"].iloc[0]).glob("*.npy"))
    os.utime(array, ns=(array.stat().st_atime_ns, array.stat().st_mtime_ns + 1_000_000))
    assert index_digest(tiny_cache["anatomy"]) != before, "a rewritten cached array changes the index digest"
