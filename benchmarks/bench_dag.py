"""Section 5: pipeline. Wall time of `snakemake -n` (DAG planning) for the paper config and the test config, each
in a fresh empty working directory, and of `snakemake --version` (process start-up, no workflow), so that
planning cost and start-up cost can be told apart. The default DAG is not rerun: the largest complete run logged in
`--run-dir` (.snakemake/log) gives its wall time and the job time of each stage (a stage = a workflow/rules file);
`--pipeline` runs the whole test config (`snakemake --cores 2 --configfile config/test.yaml`) in a temporary
directory and times it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import REPO, cores, cpu_seconds, fmt_time, row

SECTION = "5 pipeline"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
GOAL_S = 5.0


CPU = {}  # last CPU seconds (user + system) of each kind of call


def _snakemake(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cpu = cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    CPU[args[-1] if args[0] == "--version" else next(a for a in args if a.endswith(".yaml"))] = cpu_seconds() - cpu
    return wall, proc


def dry_run(config: str, repeats: int) -> tuple[float, int]:
    """Best wall time of a dry run of the real Snakefile in a fresh empty directory, and its job count."""
    best, jobs = float("inf"), -1
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="taskalign-dag-") as work:
            wall, proc = _snakemake("--snakefile", str(REPO / "Snakefile"), "-n", "--configfile",
                                    str(REPO / "config" / config), "-d", work, "--cores", "1", cwd=Path(work))
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake -n --configfile config/{config} failed:\n{proc.stderr[-3000:]}")
        best = min(best, wall)
        found = re.findall(r"^total\s+(\d+)", proc.stdout + proc.stderr, flags=re.M)
        jobs = int(found[-1]) if found else -1
    return best, jobs


def startup(repeats: int) -> float:
    with tempfile.TemporaryDirectory(prefix="taskalign-dag-") as work:
        return min(_snakemake("--version", cwd=Path(work))[0] for _ in range(repeats))


# What each kind of job imports before its work (the curves and montages import matplotlib.pyplot at the end)
JOB_IMPORTS = {
    "features job": "taskalign.analysis.features",
    "fine-tune and evaluate jobs": "taskalign.train.finetune, taskalign.evaluate.evaluate, matplotlib.pyplot",
}


def job_startup(imports: str, repeats: int) -> tuple[float, float]:
    """Best wall time of a fresh Python importing what a job imports: with `import monai` first
    (taskalign.cli.imports is then too late: MONAI imports transformers, scipy, scikit-learn and matplotlib, as it
    does by default) and as the jobs do (taskalign.cli first). Interleaved."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    best = {"monai": float("inf"), "taskalign.cli": float("inf")}
    for _ in range(repeats):
        for first in best:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {first}, {imports}"], env=env, check=True)
            best[first] = min(best[first], time.perf_counter() - start)
    return best["monai"], best["taskalign.cli"]


def slurm_probe() -> float | None:
    """Wall time of `scontrol show config`, which the SLURM executor plugin runs (10 s timeout) when snakemake
    loads its plugins; None when scontrol is not installed."""
    try:
        start = time.perf_counter()
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=15)
        return time.perf_counter() - start
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        return 15.0


LOG_TIME = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")
LOG_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) ([\w-]+):$")
LOG_JOBID = re.compile(r"^\s+jobid: (\d+)$")
LOG_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)")
DAG_GOAL_MIN = 25.0  # issue 32: the default run from nothing on 2 cores
SHARE_GOAL = 0.10


def rule_stages() -> dict[str, str]:
    """Rule name -> stage, the rules file that defines it (one .smk per stage)."""
    stages = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name in re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", smk.read_text(), re.M):
            stages[name] = smk.stem
    return stages


def job_times(log: Path) -> tuple[list[tuple[str, float]], float]:
    """([(rule, seconds)] of every finished job, wall seconds) of one Snakemake log: a job runs from the timestamp
    above its `rule X:` block to the one above `Finished jobid: N`."""
    now = first = None
    started, rule_of, jobs, rule = {}, {}, [], None
    for line in log.read_text(errors="replace").splitlines():
        if match := LOG_TIME.match(line):
            now = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
        elif match := LOG_RULE.match(line):
            rule = match.group(1)
        elif (match := LOG_JOBID.match(line)) and rule:
            started[match.group(1)], rule_of[match.group(1)], rule = now, rule, None
        elif (match := LOG_FINISHED.match(line)) and match.group(1) in started:
            jobs.append((match.group(2), (now - started[match.group(1)]).total_seconds()))
    return jobs, ((now - first).total_seconds() if first else 0.0)


def past_run(run_dir: Path) -> list[dict]:
    """The largest complete Snakemake run logged in `run_dir` (not rerun): wall time, and job time by stage."""
    complete = [p for p in sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log"))
                if re.search(r"steps \(100%\) done", p.read_text(errors="replace"))]
    if not complete:
        return [row(SECTION, f"default DAG, past run in {run_dir}", "-", "skipped: no complete run in .snakemake/log "
                                                                            "(see --run-dir)", None)]
    runs = {p: job_times(p) for p in complete}
    log = max(complete, key=lambda p: len(runs[p][0]))
    jobs, wall = runs[log]
    stages, by_stage = rule_stages(), {}
    for rule, seconds in jobs:
        stage = stages.get(rule, "targets")
        by_stage[stage] = by_stage.get(stage, 0.0) + seconds
    total = sum(by_stage.values())
    detail = ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(by_stage.items(), key=lambda kv: -kv[1]))
    source = f"{log.relative_to(run_dir)} in {run_dir}, {len(jobs)} jobs, not rerun"
    analysis, features = by_stage.get("analysis", 0.0), by_stage.get("features", 0.0)
    return [
        row(SECTION, f"default DAG, past run ({source}): wall time; summed job time {total / 60:.1f} min", "-",
            f"{wall / 60:.1f} min wall", None, f"<= {DAG_GOAL_MIN:g} min", wall / 60 <= DAG_GOAL_MIN),
        row(SECTION, f"default DAG, past run: analysis stage (rules of workflow/rules/analysis.smk: CKA, MMD, RPG, "
                     f"radiomics, lens) / summed job time (by stage: {detail})", f"all {total / 60:.1f} min",
            f"analysis {analysis / 60:.1f} min", analysis / total, f"< {SHARE_GOAL:.0%}", analysis / total < SHARE_GOAL,
            "{:.1%}"),
        row(SECTION, "default DAG, past run: features and analysis stages together / summed job time",
            f"all {total / 60:.1f} min", f"features + analysis {(features + analysis) / 60:.1f} min",
            (features + analysis) / total, f"< {SHARE_GOAL:.0%}", (features + analysis) / total < SHARE_GOAL,
            "{:.1%}"),
        *startup_shares(run_dir, total),
    ]


STARTUP = re.compile(r"^\S+ INFO taskalign\.(\w+): start-up ([\d.]+) s of ([\d.]+) s$")


def startup_lines(run_dir: Path) -> list[tuple[str, float, float]]:
    """(job kind, start-up seconds, total seconds) of every job log under run_dir/results/logs that has the line."""
    return [(match.group(1), float(match.group(2)), float(match.group(3)))
            for path in sorted((run_dir / "results" / "logs").rglob("*.log"))
            for line in path.read_text(errors="replace").splitlines() if (match := STARTUP.match(line))]


def startup_shares(run_dir: Path, job_seconds: float) -> list[dict]:
    """Start-up (interpreter, imports, model build, opening data: everything before a job's first useful step,
    `taskalign.runtime.mark_ready`) by job kind, from the jobs' logs under results/logs, against the summed job time
    of the Snakemake log. A run made before the jobs logged it has no such lines."""
    kinds: dict[str, list[float]] = {}
    for name, startup, total in startup_lines(run_dir):
        kind = kinds.setdefault(name, [0, 0.0, 0.0])
        kind[0] += 1
        kind[1] += startup
        kind[2] += total
    if not kinds:
        return [row(SECTION, "default DAG, past run: start-up share by job kind", "-",
                    "skipped: the jobs' logs have no start-up lines (a run made before taskalign.runtime logged them)",
                    None)]
    startup = sum(k[1] for k in kinds.values())
    detail = ", ".join(f"{name} {n} jobs {up / n:.1f} s each ({up / total:.0%} of their time)"
                       for name, (n, up, total) in sorted(kinds.items(), key=lambda kv: -kv[1][1]))
    return [row(SECTION, f"default DAG, past run: start-up (before each job's first useful step) / summed job time; "
                         f"by kind: {detail}", f"all {job_seconds / 60:.1f} min", f"start-up {startup / 60:.1f} min",
                startup / job_seconds, f"<= {SHARE_GOAL:.0%}", startup / job_seconds <= SHARE_GOAL, "{:.1%}")]


def full_pipeline() -> dict:
    n = min(2, cores())
    with tempfile.TemporaryDirectory(prefix="taskalign-pipeline-") as work:
        wall, proc = _snakemake("--snakefile", str(REPO / "Snakefile"), "--cores", str(n), "--configfile",
                                str(REPO / "config" / "test.yaml"), "-d", work, cwd=Path(work))
    ok = proc.returncode == 0
    return row(SECTION, f"test config, full run now (--pipeline): snakemake --cores {n} --configfile config/test.yaml"
                        f"{'' if ok else ' (FAILED: ' + proc.stderr.strip().splitlines()[-1][:120] + ')'}",
               "-", f"{wall / 60:.1f} min wall", None)


def run(quick: bool = False, pipeline: bool = False, run_dir: Path = REPO) -> list[dict]:
    repeats = 1 if quick else 2
    t_paper, jobs_paper = dry_run("paper.yaml", repeats)
    t_test, jobs_test = dry_run("test.yaml", repeats)
    rows = [
        row(SECTION, f"DAG planning: snakemake -n, paper config ({jobs_paper} jobs) / test config ({jobs_test} jobs), "
                     "fresh empty working directory each; goal on the paper wall time (CPU: paper "
                     f"{CPU.get(str(REPO / 'config' / 'paper.yaml'), float('nan')):.1f} s, test "
                     f"{CPU.get(str(REPO / 'config' / 'test.yaml'), float('nan')):.1f} s)",
            f"test {fmt_time(t_test)}", f"paper {fmt_time(t_paper)}", t_paper / t_test, f"<= {GOAL_S:g} s",
            t_paper <= GOAL_S),
    ]
    if quick:
        rows.append(row(SECTION, "start-up vs planning split (snakemake --version, scontrol probe)", "-",
                        "skipped in --quick (each costs ~10 s here)", None))
    else:
        t_start = startup(repeats)
        rows += [
            row(SECTION, "start-up: snakemake --version (no workflow) / paper dry run: the share of the dry run that "
                         f"is not planning (--version CPU {CPU.get('--version', float('nan')):.1f} s)",
                f"paper {fmt_time(t_paper)}", f"--version {fmt_time(t_start)}",
                t_start / t_paper, "-", None, "{:.0%}"),
            row(SECTION, "DAG planning proper: paper dry run - start-up (test config: "
                         f"{fmt_time(max(t_test - t_start, 0))})", "-", f"{fmt_time(max(t_paper - t_start, 0))}",
                None, f"<= {GOAL_S:g} s", (t_paper - t_start) <= GOAL_S),
        ]
        probe = slurm_probe()
        if probe is not None:
            state = ("no SLURM controller reachable: it waits for its timeout" if probe > 2.0
                     else "a SLURM controller answered: no wait")
            rows.append(row(SECTION, "of which: `scontrol show config`, run by snakemake-executor-plugin-slurm when "
                                     f"snakemake loads its plugins ({state})",
                            f"--version {fmt_time(t_start)}", f"scontrol {fmt_time(probe)}", probe / t_start, "-",
                            None, "{:.0%}"))
    for kind, imports in JOB_IMPORTS.items():
        plain, guarded = job_startup(imports, repeats + 1)
        rows.append(row(SECTION, f"job start-up, {kind}: a fresh Python importing {imports}, MONAI with its "
                                 "optional transformers, scipy, scikit-learn and matplotlib imports (plain) / without "
                                 "(taskalign.cli.imports); every job pays it once", f"plain {fmt_time(plain)}",
                        f"taskalign {fmt_time(guarded)}", plain / guarded, "-", None))
    rows += past_run(run_dir)
    if pipeline:
        rows.append(full_pipeline())
    return rows
