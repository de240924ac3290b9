"""The names of the encoder families and of the checkpoint layouts each imports, without importing torch.

The plan validates `pretrain.variants.<name>.family/layout` against this table before any job runs (the plan must
not import torch); each family module registers exactly these layouts (tests/test_encoders.py checks that the
registry and this table agree)."""

FAMILY_LAYOUTS: dict[str, tuple[str, ...]] = {
    "vit3d": ("taskalign", "profound", "timm", "monai"),  # timm: the old name of profound
    "convnextv2_3d": ("taskalign", "profound", "profound_fcmae"),
    "swin3d": ("taskalign", "monai", "prism"),
    "vit2d": ("taskalign", "dinov2", "provicnet"),
}
DEFAULT_FAMILY = "vit3d"  # encoder files written before families existed are vit3d's
