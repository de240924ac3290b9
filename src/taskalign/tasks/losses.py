"""The SPEC's loss per task, by the name in its `TaskType.loss` (or the task's `loss` option), from torch's and
MONAI's losses.

Every loss takes (model output, target) as the task's samples give them and returns a scalar tensor. Torch and
MONAI are imported when a loss is made: the plan checks a configured `loss` against `LOSSES` without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from taskalign.tasks.spec import Task

if TYPE_CHECKING:
    import torch

Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def cross_entropy(weights: torch.Tensor | None) -> Loss:
    import torch

    ce = torch.nn.CrossEntropyLoss(weight=weights)
    return lambda out, target: ce(out.float(), target)


def batch_dice_bce(weights: torch.Tensor | None) -> Loss:
    from monai.losses import DiceCELoss

    # lesions are ~0.1% of the crop and absent from some cases: a per-case Dice alone stalls at "predict
    # nothing", so Dice over the whole batch plus BCE (a Dice of 0.02 against 0.17 after 30 epochs here)
    return DiceCELoss(sigmoid=True, batch=True)


def l1_ssim(weights: torch.Tensor | None) -> Loss:
    """L1 plus SSIM on each target's [0, 1]-scaled range (translation: another contrast, another intensity scale)."""
    import torch.nn.functional as F
    from monai.losses import SSIMLoss

    ssim = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=3)  # 3^3 window: a third of the cost of 5^3

    def loss(out, target):
        low, high = target.amin(dim=(1, 2, 3, 4), keepdim=True), target.amax(dim=(1, 2, 3, 4), keepdim=True)
        scale = (high - low).clamp(min=1e-6)
        return F.l1_loss(out.float(), target) + ssim((out.float() - low) / scale, (target - low) / scale)
    return loss


def ssim_per_case(weights: torch.Tensor | None) -> Loss:
    """1 - SSIM of each case on its target's [0, 1]-scaled range, shape (B,): the DDPM translation weights it per
    case by its noise level (taskalign.tasks.kinds.DiffusionTranslation)."""
    from monai.losses import SSIMLoss

    ssim = SSIMLoss(spatial_dims=3, data_range=1.0, win_size=3, reduction="none")

    def loss(out, target):
        low, high = target.amin(dim=(1, 2, 3, 4), keepdim=True), target.amax(dim=(1, 2, 3, 4), keepdim=True)
        scale = (high - low).clamp(min=1e-6)
        return ssim(((out.float() - low) / scale).clamp(-1, 2), (target - low) / scale).flatten(1).mean(dim=1)
    return loss


def _functional():
    import torch.nn.functional as F

    return F


def _monai_losses():
    import monai.losses

    return monai.losses


# name -> factory taking the class weights (None unless the task is class-weighted)
LOSSES: dict[str, Callable[[torch.Tensor | None], Loss]] = {
    "cross_entropy": cross_entropy,
    "mse": lambda weights: lambda out, target: _functional().mse_loss(out.float(), target),
    "dice_ce": lambda weights: _monai_losses().DiceCELoss(softmax=True, to_onehot_y=True),
    "batch_dice_bce": batch_dice_bce,
    "l1": lambda weights: lambda out, target: _functional().l1_loss(out.float(), target),
    "l1_ssim": l1_ssim,
    "ssim_per_case": ssim_per_case,
    # 001's lesion segmentation: Tversky (alpha = beta = 0.5 is Dice; MONAI's defaults) on the sigmoid output
    "tversky": lambda weights: _monai_losses().TverskyLoss(sigmoid=True),
}


def class_weights(task: Task, rows) -> torch.Tensor | None:
    """Inverse-frequency weights of the class values over the training `rows` (weighted CE, SPEC); classes
    absent from training get weight 0. None for a task without class weighting."""
    if not task.type.class_weighted:
        return None
    import torch

    classes = task.type.classes
    counts = torch.tensor([(rows[task.type.target] == c).sum() for c in classes], dtype=torch.float32)
    return torch.where(counts > 0, counts.sum() / (len(classes) * counts.clamp(min=1)), torch.zeros(()))


def task_loss(task: Task, weights: torch.Tensor | None, device) -> Loss:
    """The task's loss; `weights` (from `class_weights`) go to `device`."""
    return LOSSES[task.loss](None if weights is None else weights.to(device))
