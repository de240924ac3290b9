"""Relative performance gain per task and its correlation with D2R, D2P, D2S across tasks (rule `rpg`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--summary", required=True, type=Path, help="results/evaluate/summary.csv")
    parser.add_argument("--distances", required=True, type=Path, help="results/analysis/mmd.csv")
    parser.add_argument("--variant", required=True, help="pretraining variant of the fine-tuned runs")
    parser.add_argument("--rpg", required=True, type=Path)
    parser.add_argument("--correlations", required=True, type=Path)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.rpg")
    import pandas as pd

    from taskalign.analysis.distances import rpg_tables

    table, correlations = rpg_tables(pd.read_csv(args.summary), pd.read_csv(args.distances), args.variant)
    for row in correlations.itertuples():
        log.info("RPG vs %s (%s, %s): r %.3f (p %.3f), rho %.3f (p %.3f), n %d", row.distance, row.reference,
                 row.estimator, row.pearson_r, row.pearson_p, row.spearman_rho, row.spearman_p, row.n)
    with atomic_path(args.rpg) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(args.correlations) as tmp:
        correlations.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
