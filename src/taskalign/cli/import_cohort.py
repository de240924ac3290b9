r"""Import a cohort from a layout users have and write its manifest CSV (rule `import_cohort`).

    python -m taskalign.cli.import_cohort --kind picai --source DIR --cohort NAME --out manifest.csv \
        [--option key=value ...]
    python -m taskalign.cli.import_cohort --spec '{"kind": ..., "source": ..., "options": {...}}' \
        --cohort NAME --out manifest.csv

The spec may also hold `mask_grid`, `checks` and `check_limits` (as for check_manifest): the import is checked by
the manifest route's integrity check before anything is written; a refused import leaves nothing behind and lists
every problem. Masks off the T2W grid are refused unless option resample_masks=true.

Option values: true/false, none, numbers and text. Dict-valued options take dotted keys
(--option patterns.t2w='t2_tse_tra$', --option mapping.t2w='(?P<case>.+)_t2w\.nii\.gz') or, for nifti
`mapping`, a YAML file path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from taskalign.runtime import mark_ready, setup_logging


def parse_value(text: str):
    """true/false/none, a number, else the text itself (regexes stay untouched; ids such as '0001' stay text)."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    if lowered in ("none", "null"):
        return None
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", stripped):
        return int(stripped)
    if re.fullmatch(r"-?(0|[1-9][0-9]*)?\.[0-9]+([eE][-+]?[0-9]+)?|-?[1-9][0-9]*[eE][-+]?[0-9]+", stripped):
        return float(stripped)
    return text


def parse_options(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; a dotted key fills a dict option: patterns.t2w=REGEX -> {"patterns": {"t2w": REGEX}}."""
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--option {pair!r}: expected key=value")
        name, dot, field = key.strip().partition(".")
        if dot:
            options.setdefault(name, {})[field] = parse_value(value)
        else:
            options[name] = parse_value(value)
    return options


def _help_epilog() -> str:
    from taskalign.data.importers import IMPORTERS, importer_options

    lines = ["importers and their options (defaults):"]
    for kind in IMPORTERS:
        options = ", ".join(f"{name}={default!r}" for name, default in importer_options(kind).items())
        lines.append(f"  {kind}: {options}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", help="picai, dicom, nifti, prostate158 or msd")
    parser.add_argument("--source", type=Path, help="source folder")
    parser.add_argument("--cohort", required=True, help="cohort name written to the manifest")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write; converted files go beside it")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="importer option")
    parser.add_argument("--spec", help='JSON {"kind", "source", "options"} (the Snakemake rule passes this)')
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.import_cohort")

    from taskalign.data.importers import CohortImportError, import_cohort
    from taskalign.data.sanity import sanity_config
    mark_ready()

    kind, source, options, spec = args.kind, args.source, {}, {}
    if args.spec:
        spec = json.loads(args.spec)
        kind = kind or spec.get("kind")
        source = source or (Path(spec["source"]) if spec.get("source") else None)
        options.update(spec.get("options") or {})
    options.update(parse_options(args.option))
    if not kind or source is None:
        parser.error("give --kind and --source (or --spec)")
    try:
        sanity = sanity_config(spec.get("checks"), spec.get("check_limits"))
        frame = import_cohort(kind, source, args.out, args.cohort, mask_grid=spec.get("mask_grid"), sanity=sanity,
                              **options)
    except (CohortImportError, ValueError) as error:
        log.error("%s", error)
        return 1
    log.info("wrote %s (%d cases)", args.out, len(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
