"""Patient leakage across cohorts by image content (rule `shared_studies`): every checked manifest's T2W voxels are
digested; a study found in two cohorts stops the run (`data.checks.shared_study: error`) or is logged (`warning`).
Writes the digests of every case, so a later cohort can be checked against them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifests", required=True, nargs="+", type=Path, help="results/manifests/<cohort>.csv")
    parser.add_argument("--level", choices=["error", "warning", "off"], default="error")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path, help="digest per case (CSV)")
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.shared_studies")
    import pandas as pd

    from taskalign.data.shared_studies import describe, shared_studies, study_digests

    manifests = {path.stem: pd.read_csv(path, dtype=str, keep_default_na=False) for path in args.manifests}
    digests = study_digests(manifests, args.workers) if args.level != "off" else pd.DataFrame()
    problems = describe(shared_studies(digests)) if len(digests) else []
    for line in problems:
        log.log(40 if args.level == "error" else 30, "%s [check shared_studies]", line)
    if problems and args.level == "error":
        log.error("%d stud%s shared between cohorts: patient leakage (a case in one cohort's train split and another's "
                  "test split, or pretrained on); remove the duplicates or set data.shared_studies",
                  len(problems), "y" if len(problems) == 1 else "ies")
        return 1
    with atomic_path(args.out) as tmp:
        digests.to_csv(tmp, index=False)
    log.info("%d cases of %d cohorts, %d shared studies", len(digests), len(manifests), len(problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
