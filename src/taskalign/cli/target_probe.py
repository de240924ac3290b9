"""Linear probe of the continual-pretraining target in each encoder's patch tokens (rule `target_probe`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoders", required=True, help="JSON: {name: encoder .safetensors}")
    parser.add_argument("--index", required=True, type=Path, help="cache index of the cohort with the target masks")
    parser.add_argument("--params", required=True, help="JSON: target, layers, batch_size, bootstrap, seed")
    parser.add_argument("--out", required=True, type=Path, help="table (.csv)")
    parser.add_argument("--figure", required=True, type=Path, help="R^2 per block (.png)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging("taskalign.target_probe")
    from taskalign.analysis.target_probe import run
    mark_ready()

    params = json.loads(args.params)
    run(encoders={name: Path(p) for name, p in json.loads(args.encoders).items()}, index=args.index,
        settings=params, out_csv=args.out, out_png=args.figure, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
