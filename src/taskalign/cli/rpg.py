"""Relative performance gain per compared model and task, and its correlation with D2R, D2P, D2S across tasks
with bootstrap intervals over seeds and cases (rule `rpg`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, type=Path, help="results/evaluate/metrics.csv (per seed)")
    parser.add_argument("--distances", required=True, type=Path, help="results/analysis/mmd.csv")
    parser.add_argument("--models", required=True,
                        help='JSON: compared models as [label, init, protocol], e.g. [["pretrained:mae/frozen", '
                             '"pretrained:mae", "frozen"]]')
    parser.add_argument("--tasks", required=True, help="JSON: the config's tasks (name -> type, cohort, inputs)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the correlation intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rpg", required=True, type=Path)
    parser.add_argument("--correlations", required=True, type=Path)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.rpg")
    import json

    import pandas as pd

    from taskalign.analysis.distances import rpg_correlations, rpg_rows, rpg_table
    from taskalign.tasks.spec import Task
    mark_ready()

    tasks = {name: Task.from_config(name, spec) for name, spec in json.loads(args.tasks).items()}
    entries = rpg_rows(pd.read_csv(args.metrics), pd.read_csv(args.distances), json.loads(args.models), tasks)
    table = rpg_table(entries)
    correlations = rpg_correlations(entries, args.bootstrap, args.seed)
    for row in correlations.itertuples():
        log.info("%s RPG vs %s (%s, %s): r %.3f [%.3f, %.3f] (p %.3f), rho %.3f (p %.3f), n %d", row.model,
                 row.distance, row.reference, row.estimator, row.pearson_r, row.pearson_ci_low, row.pearson_ci_high,
                 row.pearson_p, row.spearman_rho, row.spearman_p, row.n)
    with atomic_path(args.rpg) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(args.correlations) as tmp:
        correlations.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
