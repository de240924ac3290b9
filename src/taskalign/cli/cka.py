"""CKA of the configured encoder pairs on one task's images (rule `cka`), and 000 Table 6's Delta =
CKA(continual, FT) - CKA(pretrained, FT) with a paired interval."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--pairs", required=True,
                        help="JSON list of {pair, protocol, seed, a, b} (feature files); pretrained-finetuned and "
                             "continual-finetuned of one (protocol, seed) must share b (the fine-tuned encoder)")
    parser.add_argument("--settings", required=True,
                        help="JSON: splits, null_permutations, subsamples, subsample_fraction, seed")
    parser.add_argument("--out", required=True, type=Path, help="per pair and layer pair CKA (CSV)")
    parser.add_argument("--deltas-out", type=Path, help="per protocol, seed and layer Delta (CSV)")
    args = parser.parse_args(argv)
    setup_logging("taskalign.cka")
    from taskalign.analysis.similarity import finetuned_triples, task_cka, task_deltas
    mark_ready()

    pairs, settings = json.loads(args.pairs), json.loads(args.settings)
    finetuned_triples(pairs)  # a pair spec with two different FT encoders fails before any CKA is computed
    table = task_cka(args.task, pairs, settings)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    if args.deltas_out:
        deltas = task_deltas(args.task, pairs, settings)
        with atomic_path(args.deltas_out) as tmp:
            deltas.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
