"""D2R, D2P and D2S of every compared model and task, one shared sigma (rule `mmd`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def json_argument(text: str):
    """A JSON value given inline, or the path of a .json file holding it (long input maps)."""
    path = Path(text)
    return json.loads(path.read_text() if not text.lstrip().startswith(("{", "[")) and path.is_file() else text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", required=True, type=json_argument,
                        help='JSON (or a .json file): {model: {task: {"random": npz, "pretrained": npz, '
                             '"finetuned": [npz per seed], "scratch": [npz per seed], "seeds": [int]}}}; model '
                             'labels are <init>/<protocol>, e.g. pretrained:mae/frozen')
    parser.add_argument("--settings", required=True, type=json_argument,
                        help="JSON: splits, layer, normalise (l2 | none), sigma (number | median), permutations, seed")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging("taskalign.mmd")
    from taskalign.analysis.distances import all_distances
    mark_ready()

    table = all_distances(args.inputs, args.settings)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
