"""taskalign.imports: MONAI is imported without transformers, and nothing computed changes."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

# A LoRA segmentation model's output (MONAI ViT blocks, PEFT LoRA, UperNet), printed as bytes in hex
FORWARD = """
import sys
{first}
import torch
from taskalign.models.encoder import Encoder, EncoderGeometry
print("transformers after monai:", "transformers" in sys.modules)
from taskalign.train.continual import segmentation_model
torch.manual_seed(0)
encoder = Encoder(EncoderGeometry(3, (8, 32, 32), (4, 8, 8), 32, 64, 4, 2))
params = dict(rank=2, alpha=4, dropout=0.0, layers=[0, 1, 2, 3], decoder_channels=8)
model = segmentation_model(encoder, params).eval()
for name, p in model.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p)  # PEFT starts B at zero: make the LoRA path count
with torch.no_grad():
    out = model(torch.randn(1, 3, 8, 32, 32))
print("output:", out.numpy().tobytes().hex())
"""


def run(first: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", FORWARD.format(first=first)], capture_output=True, text=True,
                          cwd=REPO, check=True)
    return done.stdout.splitlines()


def test_monai_is_imported_without_transformers_and_outputs_are_unchanged():
    guarded = run("import taskalign")
    plain = run("import monai")  # monai first: the finder is not installed, transformers is imported
    assert guarded[0] == "transformers after monai: False"
    assert plain[0] == "transformers after monai: True"
    assert guarded[1].startswith("output:") and guarded[1] == plain[1]
