"""Fine-tune one task x init x protocol x seed (rule `finetune`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.cli.training import add_training_options, training_options
from taskalign.runtime import setup_logging
from taskalign.train.preemption import stop_signals_held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--init", required=True, help="random, scratch, specialist, pretrained:<v>, continual:<v>")
    parser.add_argument("--protocol", required=True, help="full, frozen or partial:<k>")
    parser.add_argument("--encoder", type=Path, default=None, help="encoder file (.safetensors); not for specialist")
    parser.add_argument("--index", required=True, type=Path, nargs="+", help="cache index(es) of the task's cohort")
    parser.add_argument("--params", required=True, help='JSON: {"task": {...}, "seed": n, ...} (taskalign.train.finetune)')
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--history", required=True, type=Path)
    parser.add_argument("--curve", required=True, type=Path)
    parser.add_argument("--timing", required=True, type=Path)
    parser.add_argument("--resume-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    add_training_options(parser)
    args = parser.parse_args(argv)
    setup_logging("taskalign.finetune")
    from taskalign.tasks.spec import Task
    from taskalign.train.finetune import FinetuneJob, run_finetune

    params = json.loads(args.params)
    with stop_signals_held():  # before loader workers fork: they inherit the blocked mask
        run_finetune(FinetuneJob(task=Task.from_config(args.task, params["task"]), init=args.init,
                                 protocol=args.protocol, encoder_path=args.encoder, indexes=args.index, params=params,
                                 model_out=args.model, history_csv=args.history, curve_png=args.curve,
                                 timing_json=args.timing, resume_dir=args.resume_dir, threads=args.threads,
                                 options=training_options(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
