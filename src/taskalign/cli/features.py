"""Extract layer-wise token-mean features of one encoder on one task's images (rule `features`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True, type=Path, help="encoder or fine-tuned model (.safetensors)")
    parser.add_argument("--source", required=True, choices=["encoder", "finetuned"], help="what --model holds")
    parser.add_argument("--index", required=True, type=Path, nargs="+")
    parser.add_argument("--params", required=True, help="JSON: task, channels, layers, batch_size, seed")
    parser.add_argument("--out", required=True, type=Path, help="features (.npz)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging("taskalign.features")
    from taskalign.analysis.features import extract
    from taskalign.tasks.spec import Task

    params = json.loads(args.params)
    extract(task=Task.from_config(args.task, params["task"]), model_path=args.model, source=args.source,
            indexes=args.index, params=params, out_npz=args.out, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
