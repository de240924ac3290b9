"""What a finished default run can see (issue 32), read from its results/ and written to benchmarks/results.md.

    python benchmarks/default_run.py RUN_DIR [--label "at 1a2b3c4, 2 cores"] [--wall-minutes 49.5]

Per task, the best init's primary metric (over the test patients, 95% bootstrap interval) against the kind's
trivial baseline on the same cases, with the paired interval of the gain (evaluation's `trivial`, `gain_low`,
`gain_high`; a run made before evaluation scored the baseline shows "-"); the Pretrained-Continual linear CKA at
the last level with its subsampling interval, per task; the lens's held-out R^2 against its floor and whether the
report interprets it. Not a timing: the numbers are the run's own, collected.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from taskalign.tasks.kinds import LOWER_IS_BETTER  # noqa: E402

SECTION = "## The default run: what it can see"


def best_against_trivial(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per task: its best init (seeds averaged) on the primary metric, and that run's trivial baseline."""
    primary = metrics[metrics["primary"].astype(str) == "True"].copy()
    rows = []
    for task, frame in primary.groupby("task"):
        metric = frame["metric"].iloc[0]
        by_init = frame.groupby(["init", "protocol"])["value"].mean()
        best = by_init.idxmin() if metric in LOWER_IS_BETTER else by_init.idxmax()
        run = frame[(frame["init"] == best[0]) & (frame["protocol"] == best[1])].iloc[0]
        row = {"task": task, "metric": metric, "best init": f"{best[0]} / {best[1]}", "value": run["value"],
               "95% CI": f"[{run['ci_low']:.3f}, {run['ci_high']:.3f}]", "n test": int(run["n_cases"])}
        if "trivial" in run and pd.notna(run.get("trivial")):
            low, high = run["gain_low"], run["gain_high"]
            beats = high < 0 if metric in LOWER_IS_BETTER else low > 0
            row.update({"trivial": run["trivial"], "gain 95% CI": f"[{low:.3f}, {high:.3f}]",
                        "beats trivial": "yes" if beats else "no"})
        else:
            row.update({"trivial": float("nan"), "gain 95% CI": "-", "beats trivial": "- (not scored by this run)"})
        if metric == "auc" and "spec_at_sens90" in set(frame["metric"]) | set(metrics["metric"]):
            spec = metrics[(metrics["task"] == task) & (metrics["init"] == best[0]) &
                           (metrics["protocol"] == best[1]) & (metrics["metric"] == "spec_at_sens90")]
            if not spec.empty:
                row["metric"] += f" (spec@sens90 {spec['value'].mean():.3f})"
        rows.append(row)
    return pd.DataFrame(rows)


def continual_cka(cka: pd.DataFrame) -> pd.DataFrame:
    """Pretrained-Continual linear CKA at the last level shared by both encoders, per task."""
    pairs = cka[(cka["pair"] == "pretrained-continual") & (cka["layer_a"] == cka["layer_b"])]
    rows = []
    for task, frame in pairs.groupby("task"):
        last = frame.iloc[-1]
        rows.append({"task": task, "level": last["layer_a"], "linear CKA": last["linear"],
                     "95% interval": f"[{last['ci_low']:.4f}, {last['ci_high']:.4f}]",
                     "debiased": last["debiased"], "n cases": int(last["n_cases"])})
    return pd.DataFrame(rows)


def lens_fits(summary: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in ("task", "r2_pre", "r2_ft", "r2_floor", "interpretable", "note") if c in summary.columns]
    return summary[keep]


def job_time_by_rule(run: Path) -> pd.DataFrame | None:
    """Jobs, summed and mean job seconds per rule of the run's largest complete Snakemake log (bench_dag's reading),
    with the summed start-up the jobs logged where they did (taskalign.runtime)."""
    from benchmarks.bench_dag import job_times, startup_lines

    logs = [p for p in sorted((run / ".snakemake" / "log").glob("*.snakemake.log"))
            if re.search(r"steps \(100%\) done", p.read_text(errors="replace"))]
    if not logs:
        return None
    jobs, _ = max((job_times(p) for p in logs), key=lambda found: len(found[0]))
    frame = pd.DataFrame(jobs, columns=["rule", "seconds"]).groupby("rule")["seconds"].agg(["count", "sum", "mean"])
    frame = frame.sort_values("sum", ascending=False)
    frame.columns = ["jobs", "summed min", "s per job"]
    frame["summed min"] /= 60
    startup = [seconds for _, seconds, _ in startup_lines(run)]
    if len(startup) >= len(jobs) / 2:  # a run whose jobs logged it (a few redrawn figures do not count)
        frame.loc["(start-up, all kinds)"] = [len(startup), sum(startup) / 60, sum(startup) / len(startup)]
    frame["jobs"] = frame["jobs"].astype(int)
    return frame.reset_index()


def section(run: Path, label: str, wall: float | None, heading: str = SECTION) -> str:
    results = run / "results"
    parts = [heading, "", f"`python benchmarks/default_run.py {run}`: the default run {label}"
             + (f", {wall:.1f} min wall" if wall else "") + "."]
    metrics = results / "evaluate" / "metrics.csv"
    if metrics.exists():
        parts += ["", "Each task's best init against its trivial baseline (docs/phantom.md); the gain's interval is "
                      "paired over the test patients:", "",
                  best_against_trivial(pd.read_csv(metrics)).to_markdown(index=False, floatfmt=".3f")]
    cka = results / "analysis" / "cka.csv"
    if cka.exists():
        parts += ["", "Pretrained-Continual CKA at the last level (000 Table 6's first row; subsampling interval):", "",
                  continual_cka(pd.read_csv(cka)).to_markdown(index=False, floatfmt=".4f")]
    lens = results / "analysis" / "lens_summary.csv"
    if lens.exists():
        parts += ["", "The lens's held-out R^2 and whether the report interprets it:", "",
                  lens_fits(pd.read_csv(lens)).to_markdown(index=False, floatfmt=".3f")]
    times = job_time_by_rule(run)
    if times is not None:
        parts += ["", "Job time by rule (the Snakemake log's job spans; the 25-minute goal on 2 cores needs the summed "
                      "time at about 50 minutes):", "", times.to_markdown(index=False, floatfmt=".1f")]
    return "\n".join(parts) + "\n"


def write(text: str, path: Path = REPO / "benchmarks" / "results.md") -> None:
    """Replace the section of the same heading (up to the next `## ` heading) or append it."""
    old = path.read_text() if path.exists() else ""
    heading = text.split("\n", 1)[0]
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="checkout the default run was made in (its results/)")
    parser.add_argument("--label", default="", help="what run this is (commit, machine)")
    parser.add_argument("--wall-minutes", type=float, default=None)
    parser.add_argument("--heading", default="", help="words after the section's heading (a second run's section)")
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args(argv)
    heading = f"{SECTION} ({args.heading})" if args.heading else SECTION
    text = section(args.run, args.label, args.wall_minutes, heading)
    print(text)
    if not args.print_only:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
