"""Patient leakage by image content, within and across cohorts (rule `shared_studies`): every checked manifest's
T2W is fingerprinted (taskalign.data.shared_studies); a study in two splits stops the run (`data.shared_studies:
error`), one repeated within a split is a warning; `warning` logs both, `off` skips reading the images. Writes the
fingerprint digest and study number of every case."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from taskalign.runtime import atomic_path, mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifests", required=True, nargs="+", type=Path, help="results/manifests/<cohort>.csv")
    parser.add_argument("--level", choices=["error", "warning", "off"], default="error")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path, help="digest and study per case (CSV)")
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.shared_studies")
    import pandas as pd

    from taskalign.data.shared_studies import describe, matching_studies, shared_studies, study_digests
    mark_ready()

    manifests = {path.stem: pd.read_csv(path, dtype=str, keep_default_na=False) for path in args.manifests}
    if args.level == "off":
        digests, found = pd.DataFrame(), []
    else:
        digests, prints = study_digests(manifests, args.workers)
        digests["study"] = matching_studies(prints)[0]
        found = describe(shared_studies(digests, prints))
    errors = [line for level, line in found if level == "error" and args.level == "error"]
    for level, line in found:
        log.log(logging.ERROR if line in errors else logging.WARNING, "%s [check shared_studies]", line)
    if errors:
        log.error("%d stud%s in two splits: patient leakage (one case trained on, its copy scored); remove the "
                  "duplicates or set data.shared_studies", len(errors), "y" if len(errors) == 1 else "ies")
        return 1
    with atomic_path(args.out) as tmp:
        digests.to_csv(tmp, index=False)
    log.info("%d cases of %d cohorts, %d repeated studies", len(digests), len(manifests), len(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
