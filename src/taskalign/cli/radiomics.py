"""pyradiomics features of one cohort's cached cases within the prostate (rule `radiomics`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", required=True, type=Path, help="cache index CSV of the cohort")
    parser.add_argument("--params", required=True, type=Path, help="pyradiomics parameter YAML")
    parser.add_argument("--channels", nargs="+", default=["t2w", "adc"], help="cache channels to extract from")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (1: in this process)")
    parser.add_argument("--log-every", type=int, default=10, help="log progress every this many cases")
    parser.add_argument("--out", required=True, type=Path, help="one row per case")
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.radiomics")
    import radiomics
    import SimpleITK as sitk

    from taskalign.analysis.radiomics import META_COLUMNS, cohort_features, load_params
    mark_ready()

    log.info("pyradiomics %s, SimpleITK %s; params %s: %s", radiomics.__version__, sitk.Version.VersionString(),
             args.params, load_params(args.params))
    start = time.perf_counter()
    table = cohort_features(args.index, args.params, args.channels, max(1, args.processes), args.log_every)
    seconds = time.perf_counter() - start
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%d cases x %d features in %.1f s (%.2f s per case, %d processes) -> %s", len(table),
             table.shape[1] - len(META_COLUMNS), seconds, seconds / len(table), args.processes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
