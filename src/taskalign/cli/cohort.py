"""Generate one built-in phantom cohort: NIfTI files, manifest.csv and truth.csv (rule `cohort`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import available_cores, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", required=True, help="cohort name, e.g. risk")
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV to write; files go beside it")
    parser.add_argument("--params", required=True, help='JSON: {"phantom": {...}, "splits": {"train": n, ...}, "labelled": true}'
                        ' (labelled false: images and metadata only, no masks or labels)')
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.cohort")

    from taskalign.data.phantom import write_cohort
    mark_ready()

    params = json.loads(args.params)
    phantom = dict(params["phantom"])
    seed = phantom.pop("seed", 0)
    labelled = bool(params.get("labelled", True))
    log.info("phantom cohort %s: splits %s, seed %d, %s", args.cohort, params["splits"], seed,
             "labelled" if labelled else "unlabelled")
    manifest = write_cohort(
        args.cohort, params["splits"], phantom, seed, args.manifest.parent, workers=available_cores(args.workers),
        labelled=labelled,
    )
    if manifest.resolve() != args.manifest.resolve():
        raise SystemExit(f"phantom wrote {manifest}, expected {args.manifest}")
    log.info("wrote %s", manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
