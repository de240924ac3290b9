"""Evaluation stage: a fine-tuned model on its task's test split.

Outputs: the task's metrics with a 95% bootstrap CI over patients; per-case rows (case id, patient id, scores,
predicted values and probabilities) that join the manifest by case id, for paired statistics later; predicted
masks (segmentation) or the first volumes (restoration) as compressed arrays; a montage of test predictions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.data.dataset import read_index
from taskalign.evaluate.metrics import (PIRADS_POSITIVE_FROM, SPEC_SENSITIVITY, bootstrap_cis, operating_threshold,
                                        pirads_positive_score, specificity_cases)
from taskalign.evaluate.scoring import case_scores, predict, split_metrics
from taskalign.models.device import select_device
from taskalign.models.task_model import load_task_model
from taskalign.runtime import atomic_path, mark_ready
from taskalign.tasks.loader import make_loader
from taskalign.tasks.samples import TaskDataset, usable_rows
from taskalign.tasks.spec import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationJob:
    """One evaluation (rule `evaluate`): the task, the fine-tuned model, the cache indexes and params, where it
    writes, and threads."""

    task: Task
    model_path: Path
    indexes: list[Path]
    params: dict
    metrics_csv: Path
    cases_csv: Path
    predictions_npz: Path
    montage_png: Path
    threads: int | None = None


def run_evaluation(job: EvaluationJob) -> pd.DataFrame:
    device = select_device(job.threads)
    model, meta = load_task_model(job.model_path, job.task, job.params["channels"], device)
    rows = usable_rows(read_index(job.indexes, splits=["test"]), job.task)
    test = TaskDataset(rows, job.task, job.params["channels"], train=False, seed=job.params["seed"], norm=meta["norm"],
                       contract=meta.get("input"))
    loader = make_loader(test, job.params["batch_size"], shuffle=False, seed=job.params["seed"], device=device)

    records, trivial, volumes, shown = [], [], {}, []
    mark_ready()  # the model is built and the data open: start-up ends (runtime)
    for i, prediction, target, baseline in predict(model, loader, job.task, device, trivial=True):
        row = test.index.iloc[i]
        records.append({"case_id": row["case_id"], "patient_id": row["patient_id"], "cohort": row["cohort"],
                        **case_scores(job.task, prediction, target, meta["norm"])})
        trivial.append(case_scores(job.task, baseline, target, meta["norm"]))
        kept = job.task.kind.kept_prediction(prediction, len(volumes), job.params["save_volumes"])
        if kept is not None:
            volumes[row["case_id"]] = kept
        if job.task.kind.pictured and len(shown) < 4:
            shown.append((row["case_id"], test.sample(i)["image"].numpy(), target.numpy(), prediction))
    cases = pd.DataFrame(records)
    if cases.empty:
        raise ValueError(f"task {job.task.name}: no test cases with a {job.task.type.target} label")

    trivial = pd.DataFrame(trivial)
    if job.task.kind.operating_point:
        threshold = validation_threshold(model, job.task, job.indexes, job.params, meta["norm"], device)
        # per case, so the tables can resample it: a negative called negative at the validation threshold
        cases["spec_at_sens90"] = specificity_cases(cases["true"] >= PIRADS_POSITIVE_FROM,
                                                    positive_scores(job.task, cases), threshold)
        # one score for every case: the threshold that reaches the sensitivity is that score, every case positive
        constant = positive_scores(job.task, trivial)
        trivial["spec_at_sens90"] = specificity_cases(trivial["true"] >= PIRADS_POSITIVE_FROM, constant, constant[0])
    point, base = split_metrics(job.task, cases, meta["norm"]), split_metrics(job.task, trivial, meta["norm"])
    # one patient resample scores the model and the trivial baseline on the same cases: the gain's interval is paired
    paired = pd.concat([cases, trivial.add_prefix(TRIVIAL)], axis=1)
    intervals = bootstrap_cis(paired, lambda frame: with_gains(job.task, frame, cases.columns, meta["norm"]),
                              n_boot=job.params["bootstrap"], seed=job.params["seed"])
    summary = []
    for name, value in point.items():
        low, high = intervals[name]
        gain_low, gain_high = intervals[f"gain_{name}"]
        summary.append({"task": job.task.name, "init": meta["init"], "protocol": meta["protocol"], "seed": meta["seed"],
                        "metric": name, "value": value, "ci_low": low, "ci_high": high, "n_cases": len(cases),
                        "n_patients": cases["patient_id"].nunique(), "primary": name == job.task.type.metric,
                        "trivial": base[name], "gain_low": gain_low, "gain_high": gain_high})
    frame = pd.DataFrame(summary)
    with atomic_path(job.metrics_csv) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(job.cases_csv) as tmp:
        cases.to_csv(tmp, index=False)
    with atomic_path(job.predictions_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **volumes)
    prediction_montage(job.task, shown, job.montage_png,
                       f"{job.task.name} {meta['init']} {meta['protocol']} seed {meta['seed']}")
    primary = point[job.task.type.metric]
    log.info("%s %s %s: test %s %.4f (%d cases)", job.task.name, meta["init"], meta["protocol"], job.task.type.metric,
             primary, len(cases))
    return frame


TRIVIAL = "trivial_"  # column prefix of the trivial baseline's per-case scores in the paired resamples


def positive_scores(task: Task, cases: pd.DataFrame) -> np.ndarray:
    return pirads_positive_score(cases[[f"prob_{c}" for c in task.type.classes]].to_numpy())


def with_gains(task: Task, frame: pd.DataFrame, columns, norm: dict) -> dict[str, float]:
    """The model's metrics on a resample and, as `gain_<metric>`, their difference to the trivial baseline's
    (the kind's trivial prediction, scored on the same cases)."""
    model = split_metrics(task, frame[list(columns)], norm)
    trivial = frame[[c for c in frame.columns if c.startswith(TRIVIAL)]]
    base = split_metrics(task, trivial.rename(columns=lambda c: c[len(TRIVIAL):]), norm)
    return {**model, **{f"gain_{name}": value - base[name] for name, value in model.items()}}


def validation_threshold(model, task: Task, indexes: list[Path], params: dict, norm: dict, device) -> float:
    """The P(PI-RADS >= 3) threshold that reaches SPEC_SENSITIVITY on the validation split, for the test's
    specificity (chosen on test, the operating point would flatter every model); NaN with a warning when the
    validation split lacks positives or negatives."""
    rows = usable_rows(read_index(indexes, splits=["val"]), task)
    if rows.empty:
        log.warning("%s: no validation cases, so no operating threshold and no spec_at_sens90", task.name)
        return float("nan")
    val = TaskDataset(rows, task, params["channels"], train=False, seed=params["seed"], norm=norm)
    loader = make_loader(val, params["batch_size"], shuffle=False, seed=params["seed"], device=device)
    true, score = [], []
    for _, prediction, target in predict(model, loader, task, device):
        true.append(task.type.classes[int(target)])
        score.append(float(pirads_positive_score(prediction[None])[0]))
    threshold = operating_threshold(np.array(true) >= PIRADS_POSITIVE_FROM, score, SPEC_SENSITIVITY)
    if not np.isfinite(threshold):
        log.warning("%s: the %d validation cases hold one class only (PI-RADS >= %d or below), so no operating "
                    "threshold and no spec_at_sens90", task.name, len(true), PIRADS_POSITIVE_FROM)
    else:
        log.info("%s: P(PI-RADS >= %d) threshold %.4f for sensitivity %.2f on %d validation cases", task.name,
                 PIRADS_POSITIVE_FROM, threshold, SPEC_SENSITIVITY, len(true))
    return threshold


def prediction_montage(task: Task, shown: list, path: Path, title: str) -> None:
    """Mid-slice input (first used channel), target and prediction of a few test cases; a text panel for
    classification and regression, whose predictions are in the per-case table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(shown), 1)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for r, (case_id, image, target, prediction) in enumerate(shown):
        mid = image.shape[1] // 2
        channel = next(i for i in range(image.shape[0]) if np.any(image[i]))
        panels = [(image[channel, mid], "input"), (target[0, mid], "target"), (prediction[mid], "prediction")]
        for c, (panel, label) in enumerate(panels):
            seg = task.kind.labels and c > 0
            axes[r, c].imshow(panel, cmap="tab10" if seg else "gray", vmin=0 if seg else None,
                              vmax=9 if seg else None, interpolation="nearest")
            axes[r, c].set_title(f"{case_id} {label}" if c == 0 else label, fontsize=8)
    if not shown:
        axes[0, 1].text(0.5, 0.5, "per-case predictions:\ncases.csv", ha="center", va="center")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
