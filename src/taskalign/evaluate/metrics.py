"""Downstream metrics (SPEC "Tasks"), from scikit-learn and MONAI, plus a patient-level bootstrap.

NaN marks a metric that is undefined on the cases given (an AUC with one class present), so small splits and
bootstrap resamples report "undefined" instead of failing or inventing a value.

scikit-learn is imported by the metrics that use it: segmentation and restoration jobs never need it, and importing
it (with scipy.stats) costs ~1.3 s of every fine-tuning and evaluation job's start-up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from monai.metrics import SSIMMetric, compute_dice
from monai.networks.utils import one_hot


def _roc(y, score) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of scikit-learn's ROC curve; None when y holds one class only."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return None
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def _area(curve: tuple[np.ndarray, np.ndarray] | None) -> float:
    """The area under an ROC curve: what roc_auc_score returns for binary labels (it runs roc_curve and auc),
    without its label checks and binarisation, which cost half of each call in the bootstrap's thousands."""
    if curve is None:
        return float("nan")
    from sklearn.metrics import auc

    return float(auc(*curve))


def _binary_auc(y, score) -> float:
    return _area(_roc(y, score))


def multiclass_auc(y_true, prob, n_classes: int) -> float:
    """Macro one-vs-rest AUC over the classes that have positives and negatives in y_true (labels 0..n-1)."""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    aucs = [_binary_auc(y_true == c, prob[:, c]) for c in range(n_classes)]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def operating_threshold(positive, score, sensitivity: float) -> float:
    """The highest score threshold at which calling `score >= threshold` positive reaches `sensitivity` on these
    cases (scikit-learn's ROC thresholds), for use on other cases; NaN when a class is missing."""
    positive = np.asarray(positive).astype(bool)
    if positive.all() or not positive.any():
        return float("nan")
    from sklearn.metrics import roc_curve

    _, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
    return float(thresholds[np.argmax(tpr >= sensitivity - 1e-12)])


def specificity_cases(positive, score, threshold: float) -> np.ndarray:
    """Per case at a fixed threshold: 1.0 for a negative called negative (score < threshold), 0.0 for a negative
    called positive, NaN for a positive; their mean is the specificity. All NaN for a NaN threshold."""
    positive, score = np.asarray(positive).astype(bool), np.asarray(score, dtype=float)
    called_negative = (score < threshold).astype(float)
    return np.where(positive | ~np.isfinite(threshold), np.nan, called_negative)


PIRADS_POSITIVE_FROM, SPEC_SENSITIVITY = 3, 0.9  # spec_at_sens90: PI-RADS >= 3 called at 90% sensitivity


def pirads_positive_score(prob) -> np.ndarray:
    """P(PI-RADS >= 3) from (n, 4) probabilities over the classes [2, 3, 4, 5]."""
    return np.asarray(prob, dtype=float)[:, PIRADS_POSITIVE_FROM - 2:].sum(axis=1)


def pirads_metrics(y_true, prob, threshold: float = float("nan")) -> dict[str, float]:
    """PI-RADS 2-5: macro OvR AUC, AUC of P(>=3) and P(>=4), and the specificity for >=3 at `threshold` on P(>=3),
    the threshold that gave 90% sensitivity on the validation split (operating_threshold; NaN: no threshold, no
    specificity). prob columns are the classes [2, 3, 4, 5]."""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=float)
    ge3, ge4 = pirads_positive_score(prob), prob[:, 2:].sum(axis=1)
    spec = specificity_cases(y_true >= PIRADS_POSITIVE_FROM, ge3, threshold)
    return {"auc": multiclass_auc(y_true - 2, prob, 4),
            "auc_ge3": _binary_auc(y_true >= 3, ge3),
            "auc_ge4": _binary_auc(y_true >= 4, ge4),
            "spec_at_sens90": float(np.nanmean(spec)) if np.isfinite(spec).any() else float("nan")}


def regression_metrics(true_norm, pred_norm, scale: float, offset: float = 0.0) -> dict[str, float]:
    """MSE on the standardised target (the training loss's scale) and the mean absolute error in mL."""
    true_norm, pred_norm = np.asarray(true_norm, dtype=float), np.asarray(pred_norm, dtype=float)
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    return {"mse": float(mean_squared_error(true_norm, pred_norm)),
            "mae_ml": float(mean_absolute_error(true_norm * scale + offset, pred_norm * scale + offset))}


def dice_per_class(pred_labels, true_labels, n_classes: int) -> np.ndarray:
    """Dice of labels 1..n_classes (0 = background). MONAI's compute_dice with ignore_empty=False scores a class
    absent from both prediction and truth 1.0 and one absent from the truth only 0.0."""
    pred = torch.as_tensor(np.asarray(pred_labels, dtype=np.int64))[None, None]
    true = torch.as_tensor(np.asarray(true_labels, dtype=np.int64))[None, None]
    pred, true = one_hot(pred, n_classes + 1, dim=1), one_hot(true, n_classes + 1, dim=1)
    return compute_dice(pred, true, include_background=False, ignore_empty=False)[0].numpy().astype(float)


def ssim_3d(pred, target, data_range: float) -> float:
    """SSIM of two (D, H, W) volumes; the Gaussian window shrinks to fit thin volumes."""
    win = min(7, *np.shape(target))
    win -= 1 - win % 2
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=win)
    p = torch.as_tensor(np.asarray(pred, dtype=np.float32))[None, None]
    t = torch.as_tensor(np.asarray(target, dtype=np.float32))[None, None]
    return float(metric(p, t).mean())


def bootstrap_cis(frame: pd.DataFrame, metrics_fn, group_col: str = "patient_id", n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CI of every metric metrics_fn returns (a dict) over resamples of whole patients (their cases
    together); (nan, nan) for a metric with fewer than 10 finite resamples. Each resample is scored once for all
    metrics, and its rows are gathered by position (one `take`, not a concat of per-patient frames)."""
    rng = np.random.default_rng(seed)
    codes = frame.groupby(group_col, sort=True).ngroup().to_numpy()
    positions = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        picked = rng.integers(0, len(positions), len(positions))
        resample = frame.take(np.concatenate([positions[i] for i in picked])).reset_index(drop=True)
        for name, value in metrics_fn(resample).items():
            draws.setdefault(name, [])
            if np.isfinite(value):
                draws[name].append(value)
    return {name: (float(np.percentile(values, 100 * alpha / 2)), float(np.percentile(values, 100 * (1 - alpha / 2))))
            if len(values) >= 10 else (float("nan"), float("nan")) for name, values in draws.items()}


def bootstrap_ci(frame: pd.DataFrame, metric_fn, group_col: str = "patient_id", n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of one scalar metric_fn (see bootstrap_cis)."""
    return bootstrap_cis(frame, lambda f: {"value": metric_fn(f)}, group_col, n_boot, seed, alpha)["value"]
