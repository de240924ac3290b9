"""Check a source manifest and write the checked manifest (rule `check_manifest`).

    python -m taskalign.cli.check_manifest --manifest IN.csv --out OUT.csv --params '{"split_fractions": ...}'

`--params` is a JSON object with `split_fractions`, `split_seed`, `stratify_by` and `require`; optional:
`mask_grid` (mask column -> image column it lies on, default t2w), `checks` (sanity check -> error/warning/off),
`check_limits` (sanity check -> number), see `taskalign.data.sanity`, and `split_needs` (split -> the problem if it
has no cases, from the plan: the tasks' cohorts need train, val and test cases before any training starts). Exit status 0 on success (warnings
logged), 1 when the manifest has problems (each printed to stderr), 2 for invalid arguments or params.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from taskalign.data.integrity import ManifestError, checked_table, split_problems, write_table
from taskalign.data.labels import SPLITS
from taskalign.data.sanity import sanity_config
from taskalign.runtime import mark_ready, setup_logging

log = logging.getLogger("taskalign.check_manifest")

REQUIRED_PARAMS = ("split_fractions", "split_seed", "stratify_by", "require")
OPTIONAL_PARAMS = ("mask_grid", "checks", "check_limits", "split_needs")


def parse_params(text: str) -> dict:
    """The params JSON (inline, or a path to a .json file), with exactly the known keys."""
    source = Path(text).read_text() if not text.lstrip().startswith("{") and Path(text).is_file() else text
    params = json.loads(source)
    if not isinstance(params, dict):
        raise ValueError("params must be a JSON object")
    unknown = sorted(set(params) - set(REQUIRED_PARAMS) - set(OPTIONAL_PARAMS))
    if unknown:
        raise ValueError(f"unknown params key(s) {unknown}; known: {list(REQUIRED_PARAMS + OPTIONAL_PARAMS)}")
    missing = [key for key in REQUIRED_PARAMS if key not in params]
    if missing:
        raise ValueError(f"missing params key(s) {missing}")
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskalign.cli.check_manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, type=Path, help="source manifest CSV")
    parser.add_argument("--out", required=True, type=Path, help="checked manifest CSV to write")
    parser.add_argument("--params", required=True, help="JSON object (or a path to one), see module docstring")
    args = parser.parse_args(argv)
    setup_logging("taskalign.check_manifest")
    mark_ready()

    try:
        params = parse_params(args.params)
        table = checked_table(
            args.manifest,
            split_fractions=params["split_fractions"],
            split_seed=int(params["split_seed"]),
            stratify_by=params["stratify_by"],
            require=params["require"],
            mask_grid=params.get("mask_grid"),
            sanity=sanity_config(params.get("checks"), params.get("check_limits")),
        )
        problems = split_problems(table, params.get("split_needs") or {})
        if problems:
            raise ManifestError(problems, args.manifest)
        write_table(table, args.out)
    except ManifestError as error:
        print(str(error), file=sys.stderr)
        return 1
    except (ValueError, TypeError) as error:  # invalid params: a configuration error, not a data one
        print(f"error: {error}", file=sys.stderr)
        return 2

    counts = table["split"].value_counts()
    per_split = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS)
    log.info("%s: %d cases checked from %s (%s)", args.out, len(table), args.manifest, per_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
