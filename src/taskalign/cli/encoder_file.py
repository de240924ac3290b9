"""Write an encoder checkpoint without training: the seeded random-init encoder, or a published one imported
through an explicit key map (rules `random_encoder`, `import_encoder`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskalign.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", required=True, help='JSON: {"geometry": {...}, "seed": n} or {..., "path", "layout"}')
    parser.add_argument("--random", action="store_true", help="random init from the seed instead of importing")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    log = setup_logging("taskalign.encoder_file")

    import torch

    from taskalign.models.checkpoint_io import load_external_encoder, save_encoder
    from taskalign.models.encoder import Encoder, EncoderGeometry

    params = json.loads(args.params)
    geometry = EncoderGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["geometry"].items()})
    if args.random:
        torch.manual_seed(params["seed"])
        encoder, meta = Encoder(geometry), {"variant": "random", "seed": params["seed"]}
    else:
        encoder, report = load_external_encoder(Path(params["path"]), geometry, layout=params["layout"])
        meta = {"variant": "imported", "source": params["path"], "layout": params["layout"]}
    save_encoder(encoder, args.out, meta)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
