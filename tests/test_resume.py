"""Preemption: a fine-tuning job stopped with SIGTERM (what SLURM sends before a time limit or preemption) writes
its resume state after the current step and exits non-zero; rerun, it ends with exactly the model and history of
an uninterrupted run. Resume state exists only while a job runs (CPU)."""

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
from test_finetune import GEOMETRY, TASKS, SeededItems, params
from taskalign.data.dataset import read_index
from taskalign.models.checkpoint_io import load_encoder, save_encoder
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder

EPOCHS = 6


def command(tiny_cache, encoder, out, resume):
    # 4 steps per epoch
    run_params = {**params(epochs=EPOCHS), "task": {"type": "zone_seg", **TASKS["zone_seg"]}, "batch_size": 2}
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


def test_stopped_run_resumes_and_ends_identical_to_an_uninterrupted_run(tiny_cache, tmp_path):
    torch.manual_seed(0)
    encoder = tmp_path / "encoder.safetensors"
    save_encoder(Encoder(GEOMETRY), encoder)

    plain, interrupted = tmp_path / "plain", tmp_path / "interrupted"
    subprocess.run(command(tiny_cache, encoder, plain, tmp_path / "resume_plain"), check=True, env=environment(),
                   capture_output=True)
    assert not (tmp_path / "resume_plain").exists(), "no state written at the 10-minute cadence, none left"

    log = tmp_path / "stopped.log"
    with open(log, "w") as handle:
        job = subprocess.Popen(command(tiny_cache, encoder, interrupted, tmp_path / "resume"), env=environment(),
                               stderr=handle, start_new_session=True)
        deadline = time.time() + 300
        while "epoch 2/" not in log.read_text() and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 3's steps
        os.killpg(job.pid, signal.SIGTERM)  # as SLURM does: every process of the step, loader workers included
        job.wait(timeout=120)
    text = log.read_text()
    assert job.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "stopped by signal 15 after" in text and f"epoch {EPOCHS}/" not in text, text[-3000:]
    assert (tmp_path / "resume" / "last.pt").exists() and not (interrupted / "model.safetensors").exists()

    rerun = subprocess.run(command(tiny_cache, encoder, interrupted, tmp_path / "resume"), check=True,
                           env=environment(), capture_output=True, text=True)
    assert "resuming from" in rerun.stderr and "epoch 1/" not in rerun.stderr
    assert not (tmp_path / "resume").exists(), "the state is removed once the outputs are written"
    timing = json.loads((interrupted / "timing.json").read_text())
    assert timing["wall_seconds"] > timing["wall_seconds_this_run"], "wall time summed over both attempts"

    (model_a, history_a), (model_b, history_b) = finished(plain), finished(interrupted)
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a), "bit-identical weights"
    pd.testing.assert_frame_equal(history_a, history_b)

    from taskalign.evaluate.evaluate import EvaluationJob, run_evaluation
    from test_finetune import task

    tables = []
    for run in (plain, interrupted):
        tables.append(run_evaluation(EvaluationJob(
            task=task("zone_seg"), model_path=run / "model.safetensors", indexes=[tiny_cache["anatomy"]],
            params={**params(), "task": {"type": "zone_seg", **TASKS["zone_seg"]}, "bootstrap": 50, "save_volumes": 0},
            metrics_csv=run / "metrics.csv", cases_csv=run / "cases.csv", predictions_npz=run / "pred.npz",
            montage_png=run / "montage.png")))
    pd.testing.assert_frame_equal(*tables)
    assert (plain / "cases.csv").read_text() == (interrupted / "cases.csv").read_text()


def tiny_fit(tmp_path, stop_at_step: int | None, minutes: float = 10.0):
    """`fit` on a small model (dropout, so the RNG matters) and a seeded loader, 3 epochs of 3 steps; SIGTERM sent
    to this process during global step `stop_at_step`. Returns (Fitted or the exit code, model state)."""
    from taskalign.tasks.loader import make_loader
    from taskalign.train.loop import Schedule, adamw_warmup_cosine, fit, train_one_epoch
    from taskalign.train.preemption import Stopped, stop_signals_held
    from taskalign.train.resume import ResumeFile

    cpu, steps = torch.device("cpu"), []
    torch.manual_seed(0)
    loader = make_loader(SeededItems(), 4, shuffle=True, seed=0, device=cpu, workers=0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    optimizer, scheduler = adamw_warmup_cosine(model.parameters(), lr=1e-2, weight_decay=0.0, warmup_steps=1,
                                               total_steps=9)
    resume = ResumeFile(tmp_path / "resume", "x", minutes)
    if not resume.path.exists():
        loader.start_first_epoch()

    def loss_fn(net, batch):
        steps.append(len(steps))
        if len(steps) - 1 == stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"total": ((net(batch["x"]) - batch["y"]) ** 2).mean()}

    with stop_signals_held():
        try:
            fitted = fit(model=model, schedule=Schedule(optimizer, scheduler, 3, "val_draw", "max"), loader=loader,
                         train_epoch=lambda progress: train_one_epoch(model, loader, optimizer, scheduler, cpu,
                                                                      loss_fn, progress),
                         validate=lambda: {"draw": float(torch.rand(()))}, resume=resume, stage="test")
        except Stopped as stop:
            return stop.code, resume
    return fitted, resume


def test_a_stop_mid_epoch_resumes_exactly_after_the_step_it_followed(tmp_path):
    plain, _ = tiny_fit(tmp_path / "plain", None)
    for stop_at in (1, 3, 8):  # mid-epoch 1, the first step of epoch 2, the last step of the run
        code, resume = tiny_fit(tmp_path / f"stop{stop_at}", stop_at)
        assert code == 128 + signal.SIGTERM and resume.path.exists()
        state = torch.load(resume.path, weights_only=True)
        assert (state["epoch"], state["progress"]["step"]) == (stop_at // 3, stop_at % 3 + 1), "after that step"
        resumed, resume = tiny_fit(tmp_path / f"stop{stop_at}", None)
        assert resumed.history[0]["epoch"] == 1 and len(resumed.history) == 3
        for a, b in zip(plain.history, resumed.history):
            assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        assert resumed.best == plain.best
        assert all(torch.equal(plain.best_state[k], resumed.best_state[k]) for k in plain.best_state)


def test_the_resume_state_is_written_on_its_cadence_only(tmp_path):
    _, resume = tiny_fit(tmp_path / "never", None, minutes=10.0)
    assert not resume.path.exists(), "a short run at a 10-minute cadence writes none"
    _, resume = tiny_fit(tmp_path / "every", None, minutes=0.0)
    state = torch.load(resume.path, weights_only=True)
    assert state["epoch"] == 2 and state["progress"] is None, "written after every epoch but the last"
    assert state["totals"]["wall_seconds"] > 0


def test_resume_files_belong_to_the_inputs_content_not_their_paths(tiny_cache, tmp_path, caplog, monkeypatch):
    """Snakemake reruns a job with the same paths when an upstream rule reran: a resume file written with the old
    encoder or cache must then be ignored, while the same content resumes. (The state written after epoch 1 is
    kept here as if the job had been stopped before its outputs.)"""
    from taskalign.train.finetune import FinetuneJob, run_finetune
    from taskalign.train.loop import TrainingOptions
    from taskalign.train.resume import ResumeFile, index_digest

    monkeypatch.setattr(ResumeFile, "remove", lambda self: None)
    from test_finetune import task

    encoder, resume = tmp_path / "encoder.safetensors", tmp_path / "resume"
    run_params = {**params(epochs=2), "task": {"type": "volume_reg", **TASKS["volume_reg"]}}

    def run(out):
        caplog.clear()
        with caplog.at_level("INFO", logger="taskalign.train"):
            run_finetune(FinetuneJob(task=task("volume_reg"), init="pretrained:mae", protocol="full",
                                     encoder_path=encoder, indexes=[tiny_cache["anatomy"]], params=run_params,
                                     model_out=out / "model.safetensors", history_csv=out / "history.csv",
                                     curve_png=out / "curve.png", timing_json=out / "timing.json", resume_dir=resume,
                                     options=TrainingOptions(checkpoint_minutes=0)))
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
