"""Run every benchmark section and print one table of ratios; also written to benchmarks/results.md.

    python benchmarks/run.py             # full run (~5-8 minutes on 2 cores)
    python benchmarks/run.py --quick     # smaller sizes, about a minute or two
    python benchmarks/run.py --pipeline  # also run the whole test-config pipeline (~10 minutes)
    python benchmarks/run.py --only train analysis
    python benchmarks/run.py --only scale        # the paper config's projected disk use (~1 minute)
    python benchmarks/run.py --only dag --run-dir ../fresh   # stage shares of the default run made there

Every ratio compares two measurements taken side by side in this run (best of N each), so a shared, busy machine
moves both sides; absolute times are shown for context only. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from benchmarks.common import machine, markdown, plain_table, row  # noqa: E402

SECTIONS = ("train", "loading", "datapath", "analysis", "radiomics", "dag", "packing", "scale")


def _section(name: str, quick: bool, pipeline: bool, run_dir: Path) -> list[dict]:
    if name == "train":
        from benchmarks import bench_train

        return bench_train.run(quick=quick)
    if name == "loading":
        from benchmarks import bench_loading

        return bench_loading.run(quick=quick)
    if name == "datapath":
        from benchmarks import bench_datapath

        return bench_datapath.run(quick=quick)
    if name == "analysis":
        from benchmarks import bench_analysis

        return bench_analysis.run(quick=quick)
    if name == "radiomics":
        from benchmarks import bench_radiomics

        return bench_radiomics.run(quick=quick)
    if name == "dag":
        from benchmarks import bench_dag

        return bench_dag.run(quick=quick, pipeline=pipeline, run_dir=run_dir)
    if name == "packing":
        from benchmarks import bench_packing

        return bench_packing.run(quick=quick)
    if name == "scale":
        from benchmarks import bench_scale

        return bench_scale.run(quick=quick)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about a minute)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also run `snakemake --cores 2 --configfile config/test.yaml` in a temp dir (~10 min)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--run-dir", type=Path, default=REPO,
                        help="working directory of a default run whose .snakemake/log the dag section reads")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    info = machine()
    info["mode"] = ("--quick" if args.quick else "full") + (" --pipeline" if args.pipeline else "")
    started = time.perf_counter()
    rows: list[dict] = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"[{name}] running ...", file=sys.stderr, flush=True)
        try:
            rows += _section(name, args.quick, args.pipeline, args.run_dir.resolve())
        except Exception as err:  # noqa: BLE001 - one failing section must not hide the others
            traceback.print_exc()
            rows.append(row(name, "section failed", "-", f"{type(err).__name__}: {err}"[:200], None))
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    info["benchmark wall time"] = f"{time.perf_counter() - started:.0f} s"

    notes = [
        "ratio: value / baseline for rates and speed-ups (higher is better), a share or % of peak where marked; "
        "goal and met refer to the ratio, except the DAG rows whose goal is a wall time (as asked).",
        "Each side is the best of several interleaved runs; the load average at the start says how busy the machine "
        "was.",
    ]
    text = markdown(rows, info, "taskalign benchmarks", notes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    for k, v in info.items():
        print(f"{k}: {v}")
    print()
    print(plain_table(rows))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
