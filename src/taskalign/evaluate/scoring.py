"""Predictions and scores of a task model: per case (for paired statistics) and per split (the task's metrics).

Used by fine-tuning (the validation metric that selects the best epoch) and by evaluation (test metrics with
bootstrap CIs), so both score a model the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from taskalign.data.labels import ZONE_LABELS
from taskalign.evaluate.metrics import dice_per_class, multiclass_auc, pirads_metrics, regression_metrics, ssim_3d
from taskalign.models.device import autocast, to_device
from taskalign.tasks.spec import Task


def output_to_prediction(task: Task, output: torch.Tensor) -> np.ndarray:
    """Model output of one case -> prediction: class probabilities, a de-normalised value later, a label
    volume (D, H, W), or an image (D, H, W), as the task's kind makes it."""
    return task.kind.prediction(task, output)


@torch.no_grad()
def predict(model, loader, task: Task, device, trivial: bool = False):
    """Yield (dataset index, prediction, target) per case, model in eval mode; with `trivial`, also the kind's
    trivial prediction from the case's model input (after the task's degradation)."""
    model.eval()
    for batch in loader:
        batch = loader.dataset.on_device(to_device(batch, device))  # a TaskDataset's inputs and targets
        with autocast(device):
            outputs = task.kind.infer(task, model, batch["image"])
        for j in range(outputs.shape[0]):
            target = batch["target"][j].cpu()
            found = (int(batch["index"][j]), output_to_prediction(task, outputs[j].cpu()), target)
            yield (*found, task.kind.trivial_prediction(task, batch["image"][j])) if trivial else found


def class_cases(task: Task, prediction: np.ndarray, target: torch.Tensor, norm: dict) -> dict:
    classes = task.type.classes
    row = {"true": classes[int(target)], "pred": classes[int(prediction.argmax())]}
    row.update({f"prob_{c}": float(p) for c, p in zip(classes, prediction)})
    return row


def class_metrics(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    prob = cases[[f"prob_{c}" for c in task.type.classes]].to_numpy()
    metrics = {"auc": multiclass_auc(cases["true"].to_numpy(), prob, task.type.n_outputs)}
    metrics["accuracy"] = float((cases["true"] == cases["pred"]).mean())
    return metrics


def ordinal_metrics(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    """Graded classes, also scored as ">= 3" and ">= 4" (evaluate.metrics.pirads_metrics); the specificity is the
    mean of the per-case calls at the validation split's threshold (column `spec_at_sens90`, see
    taskalign.evaluate.evaluate), so a bootstrap resample of the cases resamples it too."""
    metrics = pirads_metrics(cases["true"].to_numpy(), cases[[f"prob_{c}" for c in task.type.classes]].to_numpy())
    calls = cases["spec_at_sens90"].to_numpy(float) if "spec_at_sens90" in cases else np.array([np.nan])
    metrics["spec_at_sens90"] = float(np.nanmean(calls)) if np.isfinite(calls).any() else float("nan")
    metrics["accuracy"] = float((cases["true"] == cases["pred"]).mean())
    return metrics


def regression_cases(task: Task, prediction: np.ndarray, target: torch.Tensor, norm: dict) -> dict:
    value = float(prediction[0])
    return {"true_norm": float(target[0]), "pred_norm": value,
            "true": float(target[0]) * norm["scale"] + norm["offset"], "pred": value * norm["scale"] + norm["offset"]}


def regression_split(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    return regression_metrics(cases["true_norm"].to_numpy(), cases["pred_norm"].to_numpy(), norm["scale"],
                              norm["offset"])


def segmentation_cases(task: Task, prediction: np.ndarray, target: torch.Tensor, norm: dict) -> dict:
    n = task.type.n_outputs
    true = target[0].numpy().astype(np.uint8)
    dice = dice_per_class(prediction, true, n)
    if n == 1:  # Dice on cases with a lesion; a lesion-free case scores whether nothing was predicted
        if true.any():
            return {"dice": float(dice[0]), "empty_correct": float("nan")}
        return {"dice": float("nan"), "empty_correct": float(not np.any(prediction))}
    row = {"dice": float(np.mean(dice))}
    row.update({f"dice_{name}": float(d) for name, d in zip(ZONE_LABELS, dice)})
    return row


def segmentation_split(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    # means skip NaN: Dice over the cases with a lesion, empty_correct over those without
    return {c: float(cases[c].mean()) for c in cases.columns if c.startswith("dice") or c == "empty_correct"}


def image_cases(task: Task, prediction: np.ndarray, target: torch.Tensor, norm: dict) -> dict:
    true = target[0].numpy()
    data_range = float(true.max() - true.min()) or 1.0
    return {"ssim": ssim_3d(prediction, true, data_range), "l1": float(np.abs(prediction - true).mean())}


def image_split(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    return {"ssim": float(cases["ssim"].mean()), "l1": float(cases["l1"].mean())}


# a kind's `scorer` -> (per-case columns, the metrics of a set of cases)
SCORERS = {
    "classes": (class_cases, class_metrics),
    "ordinal": (class_cases, ordinal_metrics),
    "values": (regression_cases, regression_split),
    "masks": (segmentation_cases, segmentation_split),
    "images": (image_cases, image_split),
}


def case_scores(task: Task, prediction: np.ndarray, target: torch.Tensor, norm: dict) -> dict:
    """The per-case columns: probabilities and label, value and truth, Dice per class, or SSIM and L1."""
    return SCORERS[task.kind.scorer][0](task, prediction, target, norm)


def split_metrics(task: Task, cases: pd.DataFrame, norm: dict) -> dict[str, float]:
    """The task's metrics over a set of per-case rows (a split or a bootstrap resample)."""
    return SCORERS[task.kind.scorer][1](task, cases, norm)


def score_loader(model, loader, task: Task, device, norm: dict) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-case rows (with the dataset index) and the split's metrics."""
    rows = [{"index": i, **case_scores(task, pred, target, norm)} for i, pred, target in predict(model, loader, task, device)]
    cases = pd.DataFrame(rows)
    return cases, split_metrics(task, cases, norm)
