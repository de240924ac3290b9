"""Downstream metrics against hand-computed answers, so a wrong wrapper around sklearn/MONAI fails here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from taskalign.evaluate.metrics import (bootstrap_ci, dice_per_class, multiclass_auc, operating_threshold,
                                        pirads_metrics, regression_metrics, specificity_cases, ssim_3d)


def _pirads_rows(y_true, ge3_score):
    """prob rows over [2, 3, 4, 5] whose P(>=3) is ge3_score (all of it on PI-RADS 3)."""
    s = np.asarray(ge3_score, dtype=float)
    return np.asarray(y_true), np.stack([1 - s, s, np.zeros_like(s), np.zeros_like(s)], axis=1)


def test_pirads_perfect_prediction():
    y = np.array([2, 3, 4, 5, 2, 5])
    prob = np.eye(4)[y - 2]
    m = pirads_metrics(y, prob, operating_threshold(y >= 3, prob[:, 1:].sum(axis=1), 0.9))
    assert m == {"auc": 1.0, "auc_ge3": 1.0, "auc_ge4": 1.0, "spec_at_sens90": 1.0}


def test_pirads_hand_computed_aucs():
    # P(>=3): negatives 0.1, 0.4; positives 0.3, 0.8 -> 3 of 4 pairs ordered -> 0.75.
    y = np.array([2, 2, 3, 4])
    prob = np.array([[0.9, 0.1, 0.0, 0.0],
                     [0.6, 0.4, 0.0, 0.0],
                     [0.7, 0.3, 0.0, 0.0],
                     [0.2, 0.0, 0.8, 0.0]])
    m = pirads_metrics(y, prob)
    assert m["auc_ge3"] == 0.75
    assert m["auc_ge4"] == 1.0
    # OvR over present classes (5 absent): class 2 = 3/4, class 3 = 2/3, class 4 = 1.
    assert m["auc"] == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)


def test_pirads_auc_matches_sklearn_ovr_when_all_classes_present():
    rng = np.random.default_rng(1)
    y = np.tile([2, 3, 4, 5], 10)
    prob = rng.dirichlet(np.ones(4), size=len(y))
    expected = roc_auc_score(y, prob, multi_class="ovr", labels=[2, 3, 4, 5], average="macro")
    assert pirads_metrics(y, prob)["auc"] == pytest.approx(expected)


def test_spec_at_sens90_threshold_from_validation_applied_to_test():
    # Validation: catching 9/10 positives needs threshold 0.55 (the lowest positive, 0.2, is given up).
    pos = [0.2, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    neg = [0.1, 0.3, 0.4, 0.5, 0.58]
    val_y, val_prob = _pirads_rows([3] * len(pos) + [2] * len(neg), pos + neg)
    threshold = operating_threshold(val_y >= 3, val_prob[:, 1:].sum(axis=1), 0.9)
    assert threshold == pytest.approx(0.55)
    assert pirads_metrics(val_y, val_prob, threshold)["spec_at_sens90"] == pytest.approx(0.8)
    # Test: all positives at 0.9 (the test ROC would allow any threshold up to 0.9, specificity 1.0); at the
    # validation threshold the negatives at 0.56 and 0.6 are called positive -> 2 of 4.
    test_y, test_prob = _pirads_rows([3] * 5 + [2] * 4, [0.9] * 5 + [0.1, 0.5, 0.56, 0.6])
    assert pirads_metrics(test_y, test_prob, threshold)["spec_at_sens90"] == pytest.approx(0.5)
    cases = specificity_cases(test_y >= 3, test_prob[:, 1:].sum(axis=1), threshold)
    assert np.isnan(cases[:5]).all() and cases[5:].tolist() == [1.0, 1.0, 0.0, 0.0]
    # no validation threshold, no specificity
    assert np.isnan(pirads_metrics(test_y, test_prob)["spec_at_sens90"])
    assert np.isnan(operating_threshold(np.zeros(4, bool), np.arange(4.0), 0.9))


def test_pirads_single_class_is_nan():
    y, prob = _pirads_rows([4, 4, 5], [0.9, 0.8, 0.95])
    m = pirads_metrics(y, prob)
    assert np.isnan(m["auc_ge3"]) and np.isnan(m["spec_at_sens90"])


def test_multiclass_auc_ignores_absent_classes():
    y = np.array([0, 0, 3, 3])
    prob = np.zeros((4, 20))
    prob[:, 0] = [0.6, 0.2, 0.4, 0.1]  # class 0: 3 of 4 pairs ordered -> 0.75
    prob[:, 3] = [0.1, 0.3, 0.5, 0.6]  # class 3: perfectly separated -> 1.0
    assert multiclass_auc(y, prob, 20) == pytest.approx(0.875)
    assert multiclass_auc(y, np.eye(20)[y], 20) == 1.0


def test_multiclass_auc_one_class_is_nan():
    assert np.isnan(multiclass_auc(np.array([5, 5, 5]), np.full((3, 20), 0.05), 20))


def test_regression_metrics():
    assert regression_metrics(np.array([0.3, -1.0]), np.array([0.3, -1.0]), 20.0, 40.0) == {"mse": 0.0, "mae_ml": 0.0}
    # True 40 and 60 mL, predicted 50 and 60 mL.
    m = regression_metrics(np.array([0.0, 1.0]), np.array([0.5, 1.0]), scale=20.0, offset=40.0)
    assert m["mse"] == pytest.approx(0.125)
    assert m["mae_ml"] == pytest.approx(5.0)


def test_dice_perfect_and_partial_overlap():
    a = np.zeros((2, 2, 8), dtype=np.uint8)
    b = a.copy()
    a[0, 0, :] = 1            # |A| = 8
    b[0, 0, 4:] = 1           # |B| = 8, |A & B| = 4
    b[1, 0, :4] = 1
    assert dice_per_class(a, a, 1).tolist() == [1.0]
    assert dice_per_class(a, b, 1) == pytest.approx([0.5])


def test_dice_zones_one_perfect_one_missing():
    true = np.zeros((2, 4, 4), dtype=np.uint8)
    true[0, :2] = 1
    true[1, 2:] = 2
    pred = np.where(true == 1, 1, 0).astype(np.uint8)  # zone 2 not predicted at all
    assert dice_per_class(pred, true, 2).tolist() == [1.0, 0.0]
    # Zone 2 absent from both: counts as perfect, not NaN.
    assert dice_per_class(pred, pred, 2).tolist() == [1.0, 1.0]


def test_dice_empty_conventions():
    empty = np.zeros((3, 4, 4), dtype=np.uint8)
    lesion = empty.copy()
    lesion[1, 1:3, 1:3] = 1
    assert dice_per_class(empty, empty, 1).tolist() == [1.0]
    assert dice_per_class(empty, lesion, 1).tolist() == [0.0]
    assert dice_per_class(lesion, empty, 1).tolist() == [0.0]  # false positive on an empty truth


def test_lesion_dice_counts_cases_with_a_lesion_and_scores_the_others_apart():
    """Predicting nothing must not score: Dice is over cases with a lesion; lesion-free cases give empty_correct."""
    import torch

    from taskalign.evaluate.scoring import case_scores, split_metrics
    from taskalign.tasks.spec import Task

    task = Task.from_config("lesion_seg", {"type": "lesion_seg", "cohort": "x", "inputs": ["t2w"]})
    empty = np.zeros((3, 4, 4), dtype=np.uint8)
    lesion = empty.copy()
    lesion[1, 1:3, 1:3] = 1  # 4 voxels
    half = empty.copy()
    half[1, 1, 1:3] = 1  # 2 of them: Dice 2 * 2 / (2 + 4)
    cases = [(lesion, lesion), (half, lesion), (empty, empty), (lesion, empty)]  # (prediction, truth)
    rows = pd.DataFrame([case_scores(task, p, torch.as_tensor(t)[None], {}) for p, t in cases])
    assert rows["dice"].tolist()[:2] == pytest.approx([1.0, 2 / 3]) and rows["dice"][2:].isna().all()
    assert rows["empty_correct"][:2].isna().all() and rows["empty_correct"].tolist()[2:] == [1.0, 0.0]
    assert split_metrics(task, rows, {}) == pytest.approx({"dice": 5 / 6, "empty_correct": 0.5})
    nothing = pd.DataFrame([case_scores(task, empty, torch.as_tensor(t)[None], {}) for _, t in cases])
    assert split_metrics(task, nothing, {}) == {"dice": 0.0, "empty_correct": 1.0}


def test_ssim_identical_and_degraded():
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16)).astype(np.float32)
    assert ssim_3d(x, x, data_range=1.0) == pytest.approx(1.0, abs=1e-5)
    assert ssim_3d(x + rng.normal(0, 0.3, x.shape).astype(np.float32), x, data_range=1.0) < 0.9


def test_ssim_thin_volume_shrinks_window():
    x = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)  # window 7 would not fit
    assert ssim_3d(x, x, data_range=1.0) == pytest.approx(1.0, abs=1e-5)
    assert ssim_3d(0.5 * x, x, data_range=1.0) < 1.0


def _patients(n_patients: int = 30) -> pd.DataFrame:
    """Patient i has 1-3 cases, so whole-patient draws are visible in the row counts."""
    rng = np.random.default_rng(3)
    sizes = {f"p{i:02d}": i % 3 + 1 for i in range(n_patients)}
    rows = [{"patient_id": p, "value": rng.normal()} for p, k in sizes.items() for _ in range(k)]
    return pd.DataFrame(rows)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    frame = _patients()
    mean = lambda f: float(f["value"].mean())  # noqa: E731
    low, high = bootstrap_ci(frame, mean, n_boot=300, seed=7)
    assert low < mean(frame) < high
    assert bootstrap_ci(frame, mean, n_boot=300, seed=7) == (low, high)
    assert bootstrap_ci(frame, mean, n_boot=300, seed=8) != (low, high)


def test_bootstrap_resamples_whole_patients():
    frame = _patients()
    sizes = frame.groupby("patient_id").size()
    draws = []

    def record(resampled: pd.DataFrame) -> float:
        counts = resampled.groupby("patient_id").size()
        draws.append((counts / sizes[counts.index]).to_numpy())
        return 0.0

    bootstrap_ci(frame, record, n_boot=50, seed=0)
    assert len(draws) == 50
    for times_drawn in draws:
        assert np.all(times_drawn == np.round(times_drawn))  # every patient came with all of its cases
        assert times_drawn.sum() == len(sizes)                # as many patient draws as patients


def test_bootstrap_undefined_metric_gives_nan():
    low, high = bootstrap_ci(_patients(), lambda f: float("nan"), n_boot=50)
    assert np.isnan(low) and np.isnan(high)


@pytest.mark.parametrize("name", ["pirads_cls", "sector_cls", "volume_reg", "lesion_seg", "zone_seg", "super_res"])
def test_every_metric_written_has_the_direction_the_tables_bold(name):
    """A perfect prediction beats a poor one on every metric the evaluation writes, in the direction of
    spec.LOWER_IS_BETTER (the tables bold the lowest of those, the highest of the rest)."""
    import torch

    from taskalign.evaluate.scoring import case_scores, split_metrics
    from taskalign.tasks.kinds import LOWER_IS_BETTER
    from taskalign.tasks.spec import Task

    task = Task.from_config(name, {"type": name, "cohort": "x", "inputs": ["t2w"],
                                   **({"factor": 2} if name == "super_res" else {})})
    rng = np.random.default_rng(0)
    n, norm = 12, {"scale": 10.0, "offset": 40.0}
    if task.kind.group == "classification":
        k = task.type.n_outputs
        labels = np.arange(n) % k
        truths = [torch.tensor(y) for y in labels]
        perfect = [np.eye(k)[y] * 0.9 + 0.1 / k for y in labels]
        poor = [np.eye(k)[(y + 1) % k] * 0.9 + 0.1 / k for y in labels]
    elif task.kind.group == "regression":
        truths = [torch.tensor([v]) for v in rng.normal(size=n)]
        perfect = [t.numpy() for t in truths]
        poor = [t.numpy() + rng.normal(size=1) for t in truths]
    else:
        shape = (8, 16, 16)
        if task.kind.group == "segmentation":
            classes = task.type.n_outputs + (task.type.n_outputs == 1)  # a binary mask has 2 labels
            truths = [torch.as_tensor(rng.integers(0, classes, shape) * (i % 2 or classes > 2))[None]
                      for i in range(n)]  # binary: every other case lesion-free
            perfect = [t[0].numpy() for t in truths]
            poor = [(classes - 1 - t[0].numpy()) for t in truths]  # labels flipped: empty cases get a mask
        else:
            truths = [torch.as_tensor(rng.random(shape), dtype=torch.float32)[None] for _ in range(n)]
            perfect = [t[0].numpy() for t in truths]
            poor = [p + rng.normal(0, 0.3, shape) for p in perfect]
    scores = {label: split_metrics(task, pd.DataFrame([case_scores(task, p, t, norm) for p, t in zip(preds, truths)]),
                                   norm) for label, preds in (("perfect", perfect), ("poor", poor))}
    for metric, best in scores["perfect"].items():
        if metric == "spec_at_sens90" or metric.startswith("dice_"):
            continue  # an operating point / classes a random volume may lack: covered by their own tests
        worse = scores["poor"][metric]
        assert (best < worse) if metric in LOWER_IS_BETTER else (best > worse), (metric, best, worse)
