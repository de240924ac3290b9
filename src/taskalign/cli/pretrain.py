"""Pretrain one encoder variant (rule `pretrain`)."""

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
    parser.add_argument("--variant", required=True)
    parser.add_argument("--index", required=True, nargs="+", type=Path, help="cohort cache index CSVs")
    parser.add_argument("--params", required=True, help="JSON config slice (see taskalign.train.pretrain)")
    parser.add_argument("--encoder", required=True, type=Path, help="best encoder (.safetensors)")
    parser.add_argument("--last", required=True, type=Path, help="last-epoch encoder (.safetensors)")
    parser.add_argument("--history", required=True, type=Path)
    parser.add_argument("--curve", required=True, type=Path)
    parser.add_argument("--resume-dir", required=True, type=Path, help="epoch checkpoints (not a declared output)")
    parser.add_argument("--threads", type=int, default=None)
    add_training_options(parser)
    args = parser.parse_args(argv)
    setup_logging("taskalign.pretrain")
    from taskalign.train.pretrain import PretrainJob, run_pretraining

    with stop_signals_held():  # before loader workers fork: they inherit the blocked mask
        run_pretraining(PretrainJob(variant=args.variant, indexes=args.index, params=json.loads(args.params),
                                    encoder_out=args.encoder, last_out=args.last, history_csv=args.history,
                                    curve_png=args.curve, resume_dir=args.resume_dir, threads=args.threads,
                                    options=training_options(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
