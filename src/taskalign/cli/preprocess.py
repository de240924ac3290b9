"""Preprocess one cohort into the cache, its index CSV and QC montages (rule `preprocess`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import available_cores, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True, type=Path, help="checked manifest CSV")
    parser.add_argument("--cache-dir", required=True, type=Path, help="cache folder: one sub-folder per case")
    parser.add_argument("--index", required=True, type=Path, help="index CSV to write (manifest + cache_dir)")
    parser.add_argument("--qc-dir", required=True, type=Path, help="folder for the QC montages")
    parser.add_argument("--params", default="{}", help="JSON: the preprocess config slice, plus optional `checks`"
                        " and `check_limits` (data.checks, data.check_limits: the anatomical sanity checks)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.preprocess")

    from taskalign.data.preprocess import PreprocessError, preprocess_cohort
    from taskalign.data.sanity import sanity_config
    mark_ready()

    try:
        params = json.loads(args.params)
        sanity = sanity_config(params.pop("checks", None), params.pop("check_limits", None))
        preprocess_cohort(
            args.manifest,
            params,
            args.cache_dir,
            args.index,
            args.qc_dir,
            workers=available_cores(args.workers),
            sanity=sanity,
        )
    except (PreprocessError, ValueError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
