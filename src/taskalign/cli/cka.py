"""CKA of the configured encoder pairs on one task's images (rule `cka`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--pairs", required=True, help="JSON list of {pair, protocol, seed, a, b} (feature files)")
    parser.add_argument("--settings", required=True, help="JSON: splits, null_permutations, subsamples, ...")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging("taskalign.cka")
    from taskalign.analysis.similarity import task_cka

    table = task_cka(args.task, json.loads(args.pairs), json.loads(args.settings))
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
