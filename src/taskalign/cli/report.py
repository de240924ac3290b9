"""Build one paper table or figure by name from the pipeline's results (rules `table` and `figure`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help="e.g. 000_table2_classification")
    what.add_argument("--figure", help="e.g. 001_fig2_rpg_vs_distance")
    parser.add_argument("--inputs", required=True, help="JSON: the output's input files by name (taskalign.plan.outputs)")
    parser.add_argument("--settings", required=True, help="JSON: tasks, runs, variant, objective_sets, style, ...")
    parser.add_argument("--out", required=True, type=Path, help="one of its files (stem.csv, stem.png); the rest share the stem")
    args = parser.parse_args(argv)
    setup_logging("taskalign.report")
    from taskalign.report.paper import draw_named_figure, write_named_table
    mark_ready()

    inputs, settings = json.loads(args.inputs), json.loads(args.settings)
    stem = args.out.with_name(args.out.name.split(".")[0])
    if args.table:
        write_named_table(args.table, inputs, settings, stem)
    else:
        draw_named_figure(args.figure, inputs, settings, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
