"""taskalign.cli.imports: the entry points import MONAI without its optional extras, and nothing computed changes;
the library itself changes nothing in the interpreter when imported."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

# Every MONAI API the jobs call, each result printed as bytes in hex: a LoRA segmentation model (MONAI ViT
# blocks, PEFT LoRA, UperNet), the specialists (UNet, ResNet), the losses and metrics, the training augmentation.
PROGRAM = """
import sys
{first}
import torch
from taskalign.models.families.vit3d import ViT3dEncoder as Encoder, ViT3dGeometry as EncoderGeometry
print("extras after monai:", sorted(m for m in ("transformers", "scipy", "sklearn", "matplotlib") if m in sys.modules))
from monai.losses import DiceCELoss, SSIMLoss
from monai.metrics import DiceMetric, SSIMMetric
from taskalign.models.heads import specialist_model
from taskalign.tasks.samples import augmentation
from taskalign.tasks.spec import Task
from taskalign.train.continual import segmentation_model


def show(name, tensor):
    print(name, torch.as_tensor(tensor).detach().float().numpy().tobytes().hex())


torch.manual_seed(0)
encoder = Encoder(EncoderGeometry(3, (8, 32, 32), (4, 8, 8), 32, 64, 4, 2))
params = dict(rank=2, alpha=4, dropout=0.0, layers=[0, 1, 2, 3], decoder_channels=8)
model = segmentation_model(encoder, params).eval()
for name, p in model.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p)  # PEFT starts B at zero: make the LoRA path count
image = torch.randn(2, 3, 8, 32, 32)
with torch.no_grad():
    show("lora", model(image))
    for task in ("zone_seg", "sector_cls"):
        net = specialist_model(Task.from_config(task, {{"type": task, "cohort": "x", "inputs": ["t2w"]}}), ["t2w", "dwi", "adc"],
                               {{"channels": [4, 8, 8, 8]}}).eval()
        show(task, net(image))
logits, mask = torch.randn(2, 3, 8, 32, 32), torch.randint(0, 3, (2, 1, 8, 32, 32))
show("dice_ce", DiceCELoss(softmax=True, to_onehot_y=True)(logits, mask))
show("ssim_loss", SSIMLoss(spatial_dims=3, data_range=1.0, win_size=3)(image[:, :1].sigmoid(), image[:, 1:2].sigmoid()))
show("ssim_metric", SSIMMetric(spatial_dims=3, data_range=1.0, win_size=3)(image[:, :1].sigmoid(), image[:, 1:2].sigmoid()))
show("dice_metric", DiceMetric(include_background=False)((logits > 0).float(), (logits > 0.5).float()))
augment = {{"prob": 1.0, "flip_prob": 1.0, "rotate_deg": 10, "zoom": [0.9, 1.1], "intensity": 0.1}}
transform = augmentation(Task.from_config("lesion_seg", {{"type": "lesion_seg", "cohort": "x", "inputs": ["t2w"]}}), augment, ("lesion",))
transform.set_random_state(0)
item = transform({{"image": image[0].numpy(), "lesion": (image[0, :1] > 1).float().numpy()}})
show("augment_image", item["image"])
show("augment_mask", item["lesion"])
"""


def run(first: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(first=first)], capture_output=True, text=True,
                          cwd=REPO, check=True)
    return done.stdout.splitlines()


def test_monai_is_imported_without_extras_and_outputs_are_unchanged():
    guarded = run("import taskalign.cli")  # what `python -m taskalign.cli.<stage>` imports first
    plain = run("import monai")  # monai first: the finder is not installed, MONAI imports every extra
    assert guarded[0] == "extras after monai: []"
    assert plain[0] == "extras after monai: ['matplotlib', 'scipy', 'sklearn', 'transformers']"
    names = [line.split()[0] for line in guarded[1:]]
    assert names == ["lora", "zone_seg", "sector_cls", "dice_ce", "ssim_loss", "ssim_metric", "dice_metric",
                     "augment_image", "augment_mask"]
    assert all(len(line.split()[1]) >= 8 for line in guarded[1:])
    assert guarded[1:] == plain[1:]


def test_importing_the_library_leaves_the_import_system_alone():
    # Snakemake imports taskalign.tasks.spec while it builds the DAG, users import taskalign in notebooks
    program = ("import sys\nbefore = list(sys.meta_path)\nimport taskalign, taskalign.tasks.spec\n"
               "print(sys.meta_path == before, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["True", "False"]


def imported_after(modules: list[str]) -> set[str]:
    program = f"import sys\nimport {', '.join(modules)}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, check=True)
    return set(done.stdout.split())


def test_jobs_import_only_what_they_use():
    # CKA and MMD jobs read features files: torch and MONAI would add ~3 s to each job's start-up.
    readers = imported_after(["taskalign.cli.cka", "taskalign.cli.mmd", "taskalign.analysis.similarity",
                              "taskalign.analysis.distances"])
    assert not {"torch", "monai"} & readers
    # Feature extraction runs every task's dataset, but only the distortion task's warp needs scipy.ndimage.
    extraction = imported_after(["taskalign.cli", "taskalign.analysis.features"])
    assert {"torch", "monai"} <= extraction
    assert "scipy.ndimage" not in extraction
    # Only the classification and regression metrics need scikit-learn (and with it scipy.stats).
    training = imported_after(["taskalign.cli", "taskalign.train.finetune", "taskalign.evaluate.evaluate"])
    assert not {"sklearn", "scipy.stats"} & training
