"""Write an encoder file without training: the seeded random-init encoder, or a checkpoint another project wrote,
imported strictly through its family's key layout (rules `random_encoder`, `import_encoder`).

--params JSON: {"family", "geometry", "input", "seed"} with --random; {"family", "layout", "geometry", "input",
"path", "checkpoint_size"} to import. A refused import exits 1 with the reason on stderr (the job's log)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import mark_ready, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help="JSON, see above")
    parser.add_argument("--random", action="store_true", help="random init from the seed instead of importing")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.encoder_file")

    import torch

    from taskalign.models.checkpoint_io import build_encoder, import_checkpoint, save_encoder
    from taskalign.models.families import family
    from taskalign.models.families.base import ImportRefused, InputContract, geometry_from_json
    from taskalign.models.family_names import DEFAULT_FAMILY
    mark_ready()

    params = json.loads(args.params)
    name = params.get("family", DEFAULT_FAMILY)
    geometry = geometry_from_json(family(name).encoder_cls.geometry_cls, params["geometry"])
    contract = InputContract.from_json(params["input"]) if params.get("input") else None
    if args.random:
        torch.manual_seed(params["seed"])
        save_encoder(build_encoder(name, geometry), args.out, {"variant": "random", "seed": params["seed"]},
                     contract=contract)
    else:
        try:
            encoder, report = import_checkpoint(Path(params["path"]), name, params["layout"], geometry,
                                                {"checkpoint_size": params.get("checkpoint_size")})
        except ImportRefused as err:
            log.error("%s", err)
            return 1
        save_encoder(encoder, args.out, {"variant": "imported", "source": params["path"], "layout": params["layout"]},
                     contract=contract, report=report)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
