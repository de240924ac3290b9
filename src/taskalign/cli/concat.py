"""Concatenate per-task analysis tables into one (rule `collect_analysis`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tables", nargs="+", type=Path, help="CSV files with the same columns")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.concat")
    import pandas as pd
    mark_ready()

    frame = pd.concat([pd.read_csv(p) for p in args.tables], ignore_index=True)
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    log.info("%d tables, %d rows -> %s", len(args.tables), len(frame), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
