"""Write a config that runs the whole pipeline on your cohort (every cohort reference rewritten; README "Your data").

python -m taskalign.cli.retarget_config --base config/config.yaml --name mine --source picai --path /data/picai \
    --tasks pirads_cls lesion_seg --out my.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from taskalign.plan.retarget import retarget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("config/config.yaml"), help="config to start from")
    parser.add_argument("--name", required=True, help="cohort name ([A-Za-z0-9_]+)")
    parser.add_argument("--source", required=True, help="manifest, picai, dicom, nifti, prostate158 or msd")
    parser.add_argument("--path", required=True, help="manifest CSV or source folder")
    parser.add_argument("--options", default="{}", help="importer options as JSON")
    parser.add_argument("--tasks", nargs="+", help="keep only these tasks (those your labels support)")
    parser.add_argument("--keep-cohorts", action="store_true", help="keep the base config's other cohorts")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = {"source": args.source, "path": args.path}
    if json.loads(args.options):
        spec["options"] = json.loads(args.options)
    config = retarget(yaml.safe_load(args.base.read_text()), args.name, spec, tasks=args.tasks,
                      keep_cohorts=args.keep_cohorts)
    args.out.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{args.out}: every cohort reference is now '{args.name}'; check it with "
          f"`snakemake -n --configfile {args.out}`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
