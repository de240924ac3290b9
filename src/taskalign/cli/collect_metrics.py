"""Gather every run's test metrics into one table and summarise over seeds (rule `collect_metrics`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics", nargs="+", type=Path, help="per-run metrics.csv files")
    parser.add_argument("--out", required=True, type=Path, help="all rows")
    parser.add_argument("--summary", required=True, type=Path, help="mean and std over seeds")
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.collect_metrics")
    import pandas as pd
    mark_ready()

    frame = pd.concat([pd.read_csv(p) for p in args.metrics], ignore_index=True)
    keys = ["task", "metric", "init", "protocol"]
    summary = (frame.groupby(keys, sort=False)
               .agg(mean=("value", "mean"), std=("value", "std"), n_seeds=("seed", "nunique"),
                    ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"), primary=("primary", "first"))
               .reset_index())
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(args.summary) as tmp:
        summary.to_csv(tmp, index=False)
    log.info("%d runs, %d metric rows", len(args.metrics), len(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
