"""Write the example foundation-model checkpoints the test config imports (config/test.yaml), byte-identically.

config/checkpoints/profound_fcmae_tiny.pth: a tiny ProFound ConvNeXt V2 (3 channels, depths 1/1/2/1, dims
4/8/8/16) saved exactly as ProFound's FCMAE pretraining saves it (`util/misc.save_model`: `model` in the sparse
FCMAE layout with its decoder, `mask_token`, `proj` and `pred`, `optimizer`, `epoch`, `scaler` and `args`, an
argparse.Namespace). The weights are seeded random: the file exists so that a fresh clone's test run imports a
second family through the `profound_fcmae` layout, not to be a meaningful model.

    PYTHONPATH=src python tools/make_example_checkpoints.py [--out config/checkpoints]

tests/test_encoders.py checks that running it again gives the committed bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from taskalign.models.families.convnextv2_3d import Block, ConvNeXtV2Encoder, ConvNeXtV2Geometry, fcmae_encoder_state

TINY = ConvNeXtV2Geometry(in_channels=3, depths=(1, 1, 2, 1), dims=(4, 8, 8, 16), img_size=(16, 32, 32))
DECODER_DIM = 2  # FCMAE's decoder width; `pred` maps it to patch^3 x channels (patch = the encoder's stride, 16)
SEED = 0


def profound_fcmae_checkpoint(geometry: ConvNeXtV2Geometry = TINY, seed: int = SEED) -> dict:
    """The dict ProFound's FCMAE training passes to torch.save, with seeded random weights (norms and GRN moved
    off their init so that every tensor's import matters)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = ConvNeXtV2Encoder(geometry)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model = fcmae_encoder_state(encoder.state_dict())
    decoder = Block(DECODER_DIM, geometry.eps, 0.0).state_dict()
    model.update({f"decoder.0.{k}": torch.randn(v.shape, generator=gen) for k, v in decoder.items()})
    patch = 16  # stem 4 x downsampling 2 x 2 (the last downsample keeps the stride)
    model.update({
        "proj.weight": torch.randn(DECODER_DIM, geometry.dims[-1], 1, 1, 1, generator=gen),
        "proj.bias": torch.randn(DECODER_DIM, generator=gen),
        "mask_token": torch.randn(1, DECODER_DIM, 1, 1, 1, generator=gen),
        "pred.weight": torch.randn(patch ** 3 * geometry.in_channels, DECODER_DIM, 1, 1, 1, generator=gen),
        "pred.bias": torch.randn(patch ** 3 * geometry.in_channels, generator=gen),
    })
    optimizer = torch.optim.AdamW([torch.nn.Parameter(v) for v in model.values()], lr=1.5e-4)
    args = argparse.Namespace(model="convnextv2_tiny_example", input_size=list(geometry.img_size), mask_ratio=0.6,
                              depths=list(geometry.depths), dims=list(geometry.dims), decoder_embed_dim=DECODER_DIM,
                              seed=seed)
    return {"model": model, "optimizer": optimizer.state_dict(), "epoch": 0, "scaler": {"scale": 65536.0},
            "args": args}


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "profound_fcmae_tiny.pth"
    torch.save(profound_fcmae_checkpoint(), path)
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "config" / "checkpoints")
    for path in write(parser.parse_args(argv).out):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
