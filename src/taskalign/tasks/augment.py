"""Training augmentation in two halves: the random draws per item in the loader worker, the operations on a batch
on the training device.

The draws are made by the MONAI transforms of `augmentation` themselves, seeded as `CacheDataset` seeds them, in the
order their `__call__` makes them, so an item gets the flips, angles and factors it got when MONAI transformed it
per item. The operations repeat MONAI's on a batch: flips and intensity as tensor ops, rotations through MONAI's
`AffineTransform` with one matrix per item, zooms through MONAI's `Zoom` per zoomed item (each has its own size
before the crop or pad back, which one interpolation call cannot batch; at paper geometry one item fills a GPU).
"""

from __future__ import annotations

import math

import torch
from monai.transforms import (Compose, RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd,
                              RandZoomd)

from taskalign.tasks.spec import Task

# draw_augmentation's keys per transform, in the order `augmentation` composes them (and apply_augmentation applies)
DRAW_KEYS = {RandFlipd: ("flip",), RandRotated: ("rotate", "angles"), RandZoomd: ("zoom", "zoom_factor"),
             RandScaleIntensityd: ("scale", "scale_factor"), RandShiftIntensityd: ("shift", "shift_offset")}


def augmentation(task: Task, augment: dict, masks: tuple[str, ...]):
    """MONAI transforms on the clean image and masks (nearest for masks); None when nothing is enabled."""
    keys = ["image", *masks]
    modes = ["bilinear"] + ["nearest"] * len(masks)
    prob = augment.get("prob", 0.0)
    transforms = []
    if augment.get("flip_prob", 0) > 0 and task.type.flips:
        transforms.append(RandFlipd(keys, prob=augment["flip_prob"], spatial_axis=2))
    if augment.get("rotate_deg", 0) > 0 and prob > 0:
        angle = math.radians(augment["rotate_deg"])
        transforms.append(RandRotated(keys, range_x=angle, prob=prob, mode=modes, padding_mode="border"))
    if augment.get("zoom") and prob > 0:
        low, high = augment["zoom"]
        transforms.append(RandZoomd(keys, min_zoom=low, max_zoom=high, prob=prob, mode=["trilinear"] + ["nearest"] * len(masks),
                                    padding_mode="edge", keep_size=True))
    if augment.get("intensity", 0) > 0 and prob > 0:
        transforms.append(RandScaleIntensityd("image", factors=augment["intensity"], prob=prob))
        transforms.append(RandShiftIntensityd("image", offsets=augment["intensity"], prob=prob))
    return Compose(transforms) if transforms else None


def draw_augmentation(transform: Compose, seed: int) -> dict[str, torch.Tensor]:
    """What `transform` would do to an item with this seed, without touching its arrays: `flip`, `rotate`, `zoom`,
    `scale`, `shift` (bool) and `angles` (3,) rad, `zoom_factor` (3,), `scale_factor`, `shift_offset` (float64),
    for the transforms `transform` has."""
    transform.set_random_state(seed=seed)
    drawn = {}
    for step in transform.transforms:
        step.randomize(None)  # whether it applies; then its parameters, as its __call__ draws them
        if isinstance(step, RandFlipd):
            drawn["flip"] = step._do_transform
        elif isinstance(step, RandRotated):
            step.rand_rotate.randomize()
            drawn["rotate"], drawn["angles"] = step._do_transform, (step.rand_rotate.x, step.rand_rotate.y,
                                                                    step.rand_rotate.z)
        elif isinstance(step, RandZoomd):
            step.rand_zoom.randomize(torch.empty(1, 1, 1, 1))  # reads the number of spatial dimensions only
            drawn["zoom"], drawn["zoom_factor"] = step._do_transform, tuple(step.rand_zoom._zoom)
        elif isinstance(step, RandScaleIntensityd):
            if step._do_transform:  # its factor is drawn only when it applies
                step.scaler.randomize(None)
            drawn["scale"], drawn["scale_factor"] = step._do_transform, step.scaler.factor if step._do_transform else 0.0
        elif isinstance(step, RandShiftIntensityd):
            if step._do_transform:
                step.shifter.randomize(None)
            drawn["shift"], drawn["shift_offset"] = step._do_transform, step.shifter._offset if step._do_transform else 0.0
        else:
            raise TypeError(f"no batched form of {type(step).__name__}")
    return {k: torch.tensor(v, dtype=torch.bool if isinstance(v, bool) else torch.float64) for k, v in drawn.items()}


def _rotation_matrices(angles: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, 4, 4) float64: MONAI's `rotate` matrix per item, a rotation about the volume's centre."""
    import numpy as np
    from monai.transforms.utils import create_rotate, create_translate

    centre = (np.asarray(shape) - 1) / 2
    matrices = [create_translate(3, centre.tolist()) @ create_rotate(3, tuple(a)) @ create_translate(3, (-centre).tolist())
                for a in angles.tolist()]
    return torch.from_numpy(np.stack(matrices))


def _rotate(volumes: torch.Tensor, matrices: torch.Tensor, mode: str) -> torch.Tensor:
    from monai.networks.layers import AffineTransform

    resample = AffineTransform(normalized=False, mode=mode, padding_mode="border", align_corners=False,
                               reverse_indexing=True)
    return resample(volumes, matrices.to(volumes), spatial_size=tuple(volumes.shape[2:]))


def _zoom(volume: torch.Tensor, factor: tuple[float, ...], mode: str) -> torch.Tensor:
    from monai.data import get_track_meta, set_track_meta
    from monai.transforms import Zoom

    tracking = get_track_meta()
    set_track_meta(False)
    try:
        return Zoom(factor, mode=mode, padding_mode="edge", keep_size=True)(volume)
    finally:
        set_track_meta(tracking)


def apply_augmentation(image: torch.Tensor, masks: dict[str, torch.Tensor], drawn: dict[str, torch.Tensor]):
    """`draw_augmentation`'s batch of draws applied to (B, C, D, H, W) float32 images and (B, 1, D, H, W) masks
    (nearest) on their device, in `augmentation`'s order. Returns (image, masks, reshaped) with `reshaped` (B,)
    bool, the items whose geometry changed beyond a flip (rotated or zoomed)."""
    device = image.device
    drawn = {k: v.to(device) for k, v in drawn.items()}
    reshaped = torch.zeros(image.shape[0], dtype=torch.bool, device=device)
    volumes = {"image": image, **masks}
    if "flip" in drawn:  # RandFlipd's spatial_axis 2: left-right
        flip = drawn["flip"].view(-1, 1, 1, 1, 1)
        volumes = {k: torch.where(flip, v.flip(-1), v) for k, v in volumes.items()}
    if "rotate" in drawn and drawn["rotate"].any():
        rows = drawn["rotate"].nonzero()[:, 0]
        matrices = _rotation_matrices(drawn["angles"][rows].cpu(), tuple(image.shape[2:]))
        volumes = {k: v.index_put((rows,), _rotate(v[rows], matrices, "bilinear" if k == "image" else "nearest"))
                   for k, v in volumes.items()}
        reshaped |= drawn["rotate"]
    if "zoom" in drawn and drawn["zoom"].any():
        volumes = {k: v.clone() for k, v in volumes.items()}
        for r in drawn["zoom"].nonzero()[:, 0].tolist():
            factor = tuple(drawn["zoom_factor"][r].tolist())
            for k, v in volumes.items():
                v[r] = _zoom(v[r], factor, "trilinear" if k == "image" else "nearest")
        reshaped |= drawn["zoom"]
    image = volumes.pop("image")
    if "scale" in drawn:  # ScaleIntensity: x * (1 + factor), the factor rounded to float32 as torch rounds a scalar
        factor = torch.where(drawn["scale"], 1 + drawn["scale_factor"], 1.0).float().view(-1, 1, 1, 1, 1)
        image = image * factor
    if "shift" in drawn:
        offset = torch.where(drawn["shift"], drawn["shift_offset"], 0.0).float().view(-1, 1, 1, 1, 1)
        image = image + offset
    return image, volumes, reshaped
