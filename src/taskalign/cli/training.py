"""What the three training entry points (pretrain, continual, finetune) share: the options that say how a job
trains (`TrainingOptions`), and stop signals recorded from the first line of the job on."""

from __future__ import annotations

import argparse


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0,
                        help="resume state every this many minutes while the job runs (0: after every epoch)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                        help="torch.compile the training step (auto: on CUDA only)")


def training_options(args: argparse.Namespace):
    from taskalign.train.loop import TrainingOptions

    return TrainingOptions(checkpoint_minutes=args.checkpoint_minutes, compile=args.compile)
