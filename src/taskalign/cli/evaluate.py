"""Evaluate one fine-tuned model on its task's test split (rule `evaluate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True, type=Path, help="fine-tuned model (.safetensors)")
    parser.add_argument("--index", required=True, type=Path, nargs="+")
    parser.add_argument("--params", required=True, help="JSON (taskalign.evaluate.evaluate)")
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--cases", required=True, type=Path)
    parser.add_argument("--predictions", required=True, type=Path)
    parser.add_argument("--montage", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    setup_logging("taskalign.evaluate")
    from taskalign.evaluate.evaluate import EvaluationJob, run_evaluation
    from taskalign.tasks.spec import Task

    params = json.loads(args.params)
    run_evaluation(EvaluationJob(task=Task.from_config(args.task, params["task"]), model_path=args.model,
                                 indexes=args.index, params=params, metrics_csv=args.metrics, cases_csv=args.cases,
                                 predictions_npz=args.predictions, montage_png=args.montage, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
