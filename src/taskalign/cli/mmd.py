"""D2R, D2P and D2S of one task's fine-tuned encoders (rule `mmd`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--random", required=True, type=Path, help="features of the random-weight FM")
    parser.add_argument("--pretrained", required=True, type=Path, help="features of the pretrained encoder")
    parser.add_argument("--finetuned", required=True, type=Path, nargs="+", help="per seed")
    parser.add_argument("--scratch", required=True, type=Path, nargs="+", help="per seed, same order")
    parser.add_argument("--seeds", required=True, type=int, nargs="+")
    parser.add_argument("--settings", required=True, help="JSON: splits, layer, normalise, sigma, permutations, seed")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging("taskalign.mmd")
    from taskalign.analysis.distances import task_distances

    if not len(args.finetuned) == len(args.scratch) == len(args.seeds):
        parser.error("--finetuned, --scratch and --seeds need one entry per seed")
    table = task_distances(args.task, args.random, args.pretrained, args.finetuned, args.scratch, args.seeds,
                           json.loads(args.settings))
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
