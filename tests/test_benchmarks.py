"""The benchmarks' correctness checks, nothing timed: the plain numpy baselines (benchmarks/baselines.py) agree with
the library's CKA, MMD and bootstrap CIs, the FLOP counter used for the training-step efficiency counts a known case,
and the default-run stage shares are read correctly from a Snakemake log."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import baselines  # noqa: E402
from benchmarks.bench_dag import job_times, past_run, rule_stages, startup_shares  # noqa: E402
from benchmarks.bench_train import count_flops  # noqa: E402
from taskalign.analysis.cka import debiased_cka, linear_cka  # noqa: E402
from taskalign.analysis.mmd import median_sigma, mmd2, normalise  # noqa: E402
from taskalign.evaluate.metrics import bootstrap_cis, multiclass_auc, pirads_metrics  # noqa: E402

TOL = 1e-8


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 20))
    y = 0.7 * x @ rng.standard_normal((20, 20)) + rng.standard_normal((60, 20)) + 0.3
    return x, y


@pytest.mark.parametrize("space", ["gram", "feature"])
def test_plain_linear_cka_matches_library(features, space):
    x, y = features
    plain = baselines.plain_linear_cka(x, y)
    assert 0.05 < plain < 0.99  # a non-trivial value, so the comparison means something
    assert abs(linear_cka(x, y, space=space) - plain) < TOL


@pytest.mark.parametrize("estimator", ["linear", "debiased"])
def test_pairwise_loop_grams_give_the_same_cka(features, estimator):
    plain = {"linear": baselines.plain_linear_cka, "debiased": baselines.plain_debiased_cka}[estimator]
    x, y = features
    assert abs(plain(x, y, gram=baselines.loop_gram) - plain(x, y)) < TOL
    partial = baselines.loop_gram(x, rows=5)
    assert np.array_equal(partial[:5], baselines.loop_gram(x)[:5]) and not partial[5:].any()


@pytest.mark.parametrize("space", ["gram", "feature"])
def test_plain_debiased_cka_matches_library(features, space):
    x, y = features
    plain = baselines.plain_debiased_cka(x, y)
    assert abs(plain - baselines.plain_linear_cka(x, y)) > 1e-3  # the debiased estimator is a different number
    assert abs(debiased_cka(x, y, space=space) - plain) < TOL


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_plain_mmd_matches_library(features, estimator):
    x, y = features
    x, y = normalise(x, "l2"), normalise(y[:50], "l2")  # unequal sizes exercise n != m
    sigma = median_sigma(x, y)
    plain = baselines.plain_mmd2(x, y, sigma, estimator)
    assert abs(plain) > 1e-4
    assert abs(mmd2(x, y, sigma, estimator) - plain) < TOL


def test_plain_mmd_of_identical_sets_is_zero_when_biased(features):
    x, _ = features
    assert abs(baselines.plain_mmd2(x, x, 2.0, "biased")) < TOL


def test_flop_counter_counts_a_linear_layer():
    batch, n_in, n_out = 8, 32, 16
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in)
    flops, per_op = count_flops(lambda: layer(x))
    assert flops == 2 * n_in * n_out * batch
    assert sum(per_op.values()) == flops


def test_flop_counter_counts_cpu_fused_attention():
    q = torch.randn(1, 2, 10, 8)
    flops, _ = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 2 * 10 * 10 * 8)  # QK^T and (softmax) V, 2 FLOPs per multiply-add


def test_all_metrics_in_one_pass_equal_one_metric_at_a_time():
    """The speed-up (each resample scored once, rows taken by position) keeps every interval bit-identical."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"patient_id": [f"p{i % 13:02d}" for i in rng.permutation(30)],  # interleaved patients
                          "value": rng.normal(size=30)})
    frame["label"] = (frame["value"] > 0.8).astype(int)   # rare positives: some resamples leave the AUC undefined

    def metrics(f: pd.DataFrame) -> dict:
        return {"mean": float(f["value"].mean()), "auc": multiclass_auc(f["label"], np.c_[-f["value"], f["value"]], 2),
                "first": float(f["value"].iloc[0])}

    together = bootstrap_cis(frame, metrics, n_boot=200, seed=4)
    for name in ("mean", "auc", "first"):
        assert together[name] == baselines.plain_bootstrap_ci(frame, lambda f: metrics(f)[name], 200, 4), name


def test_pirads_metrics_equal_their_first_implementation():
    """ROC curves scored by sklearn's auc (the evaluation's speed-up) give roc_auc_score's every bit, with ties,
    absent classes and one-class resamples among the cases."""
    rng = np.random.default_rng(5)
    for n in (5, 10, 48):
        for _ in range(40):
            y = rng.choice([2, 3, 4, 5], n, p=[0.5, 0.3, 0.15, 0.05])
            prob = rng.dirichlet(np.ones(4), n).round(int(rng.integers(1, 3)))
            threshold = float(rng.choice([np.nan, 0.3, 0.5]))  # no validation threshold, or one
            plain, fast = baselines.plain_pirads_metrics(y, prob, threshold), pirads_metrics(y, prob, threshold)
            assert plain.keys() == fast.keys()
            for name in plain:
                assert plain[name] == fast[name] or (np.isnan(plain[name]) and np.isnan(fast[name])), name


SNAKEMAKE_LOG = """Building DAG of jobs...
[Mon Nov 23 23:31:05 2026]
localrule cohort:
    output: results/cohorts/risk/manifest.csv
    jobid: 7
    reason: Missing output files
[Mon Nov 23 23:31:05 2026]
localrule cka:
    input: results/features/zone_seg/random.npz
    jobid: 3
[Mon Nov 23 23:31:20 2026]
Finished jobid: 7 (Rule: cohort)
1 of 3 steps (33%) done
[Mon Nov 23 23:32:05 2026]
Finished jobid: 3 (Rule: cka)
2 of 3 steps (67%) done
[Mon Nov 23 23:32:05 2026]
localrule all:
    jobid: 0
[Mon Nov 23 23:32:05 2026]
Finished jobid: 0 (Rule: all)
3 of 3 steps (100%) done
"""


def test_stage_shares_come_from_the_snakemake_log(tmp_path):
    log = tmp_path / ".snakemake" / "log" / "2026-11-23T233104.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text(SNAKEMAKE_LOG)
    assert job_times(log) == ([("cohort", 15.0), ("cka", 60.0), ("all", 0.0)], 60.0)
    stages = rule_stages()
    assert stages["cohort"] == "data" and stages["cka"] == "analysis" and stages["finetuned_features"] == "features"
    wall, analysis, _, startup = past_run(tmp_path)
    assert "skipped" in startup["value"]  # no job logs with start-up lines in this run
    assert wall["value"] == "1.0 min wall" and wall["met"] == "yes"
    assert analysis["ratio_value"] == pytest.approx(60 / 75) and analysis["met"] == "NO"


def test_disk_projection_adds_up_on_the_test_configs_plan():
    """bench_scale on config/test.yaml's plan (small models): every folder's bytes are counted once in the final
    figure, the new peak adds the resume state of two running jobs, and the new policy's changes are the ones
    the issue asks for (no resume state kept, frozen runs without the encoder, the config's cache dtype)."""
    from benchmarks import bench_scale

    plan = bench_scale.paper_plan(REPO / "config" / "test.yaml")
    measured = bench_scale.measure(plan)
    projection = bench_scale.project(plan, measured)
    today, new = projection["today"], projection["new"]
    for policy in (today, new):
        assert set(policy["folders"]) == set(bench_scale.FOLDERS)
        assert policy["final"] == sum(policy["folders"].values())
    jobs = bench_scale.training_jobs(plan, measured)
    assert len(jobs) == len(plan.trained_variants) + len(plan.continual["variants"]) + len(plan.runs)
    largest = max(m.resume_state for m in jobs.values())
    assert new["peak"] - new["final"] == 2 * largest and today["peak"] == today["final"]
    assert today["folders"]["resume"] == sum(m.resume_state for m in jobs.values()) and new["folders"]["resume"] == 0
    frozen = [r for r in plan.runs if r.protocol == "frozen"]
    not_full = [r for r in plan.runs if r.protocol != "full" and r.init != "specialist"]
    saved = sum(m.file - m.trained_file for m in (measured.finetune[bench_scale.run_kind(r)] for r in not_full))
    assert frozen and 0 < saved == today["folders"]["finetune"] - new["folders"]["finetune"]
    # test.yaml keeps the float32 cache; the new policy adds the distance field of distortion's cohort (anatomy)
    anatomy = sum(plan.split_sizes("anatomy").values())
    assert new["folders"]["cache"] - today["folders"]["cache"] == anatomy * measured.cache_field
    cases, labelled = bench_scale.cases_of(plan)
    assert measured.cache_image["float16"] < measured.cache_image["float32"]
    assert today["folders"]["cache"] == cases * measured.cache_image["float32"] + labelled * 4 * measured.cache_mask
    model = measured.finetune[bench_scale.run_kind(frozen[0])]
    assert model.resume_state == 2 * model.weights + 2 * model.trainable and model.trainable < model.weights
    rows = bench_scale.report(plan, measured, projection)
    assert [r["measure"].split(":")[0] for r in rows[:len(bench_scale.FOLDERS)]] == \
        [f"results/{f}" for f in bench_scale.FOLDERS]


def test_a_job_logs_its_start_up_and_the_benchmark_sums_it_by_kind(tmp_path):
    """The line taskalign.runtime writes at a job's exit is the one bench_dag reads; start-up ends at mark_ready."""
    import subprocess

    code = ("import time; from taskalign.runtime import mark_ready, setup_logging; setup_logging('taskalign.demo');"
            " time.sleep(0.3); mark_ready(); time.sleep(0.5)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    logs = tmp_path / "results" / "logs" / "demo"
    logs.mkdir(parents=True)
    (logs / "one.log").write_text(done.stderr)
    (logs / "two.log").write_text("12:00:00 INFO taskalign.demo: start-up 1.00 s of 9.00 s\n")
    (share,) = startup_shares(tmp_path, job_seconds=100.0)
    first = float(done.stderr.split("start-up ")[1].split(" s of ")[0])
    total = float(done.stderr.split(" s of ")[1].split(" s")[0])
    assert 0.3 <= first < total and total - first >= 0.5
    assert share["ratio"] == f"{(first + 1.0) / 100.0:.1%}"
    assert "demo 2 jobs" in share["measure"]


def test_default_run_summary_picks_the_best_init_and_reads_its_gain_over_the_trivial_baseline():
    from benchmarks.default_run import best_against_trivial

    rows = [("volume_reg", "scratch", "mse", 0.5, 0.9, -0.6, -0.2), ("volume_reg", "specialist", "mse", 0.2, 0.9, -0.8, -0.5),
            ("pirads_cls", "scratch", "auc", 0.55, 0.5, -0.05, 0.15), ("pirads_cls", "specialist", "auc", 0.52, 0.5, 0.01, 0.04)]
    metrics = pd.DataFrame([{"task": t, "init": i, "protocol": "full", "seed": 0, "metric": m, "value": v,
                             "ci_low": v - 0.1, "ci_high": v + 0.1, "n_cases": 10, "primary": True, "trivial": b,
                             "gain_low": lo, "gain_high": hi} for t, i, m, v, b, lo, hi in rows])
    summary = best_against_trivial(metrics).set_index("task")
    assert summary.loc["volume_reg", "best init"] == "specialist / full"  # lower is better
    assert summary.loc["volume_reg", "beats trivial"] == "yes"
    assert summary.loc["pirads_cls", "best init"] == "scratch / full"
    assert summary.loc["pirads_cls", "beats trivial"] == "no"  # its gain interval holds 0
