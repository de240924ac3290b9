"""Seed 000 Tables 2-5: performance per task and init, seed spread, an interval of the training procedure's mean and
significance marks between procedures. The unit of inference is the training procedure (init and protocol): its
training runs (seeds) and the test patients are both samples, so intervals and tests count both sources of
variance."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from taskalign.analysis.stats import (MIN_SEEDS, patient_bootstrap_weights, procedure_interval, procedure_test,
                                      stars, weighted_auc, weighted_macro_auc, weighted_mean)
from taskalign.report.tables.model import MISSING, STARS_LEGEND, Table, best_cells, finite

log = logging.getLogger(__name__)

STAT_FIELDS = ("mean", "std", "ci_low", "ci_high", "n_seeds", "p_value", "stars", "test")
_AUC_GE = re.compile(r"auc_ge(\d+)$")
PERCENT_DIGITS = 2  # 000 prints AUC as a percentage with two decimals (Table 2)
PROCEDURE_TEST = "Welch-Satterthwaite t over training runs and paired patient resamples"


def is_percent(metric: str) -> bool:
    """Metrics 000 prints as percentages (AUCs, Table 2) and their kin (accuracy, specificity)."""
    return metric in ("auc", "accuracy", "spec_at_sens90") or bool(_AUC_GE.match(metric))


def seed_stats(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds and the seed count, per (task, metric, init, protocol)."""
    aggs = {"mean": ("value", "mean"), "std": ("value", "std"), "n_seeds": ("seed", "nunique")}
    return metrics.groupby(["task", "metric", "init", "protocol"], sort=False).agg(**aggs)


def _task_metrics(metrics: pd.DataFrame, task: str) -> list[str]:
    rows = metrics[metrics["task"] == task]
    primary = rows.loc[rows["primary"].astype(bool), "metric"]
    return list(dict.fromkeys([*primary, *rows["metric"]]))


# --- per-case values and resampled metrics ------------------------------------------------------------------------

def _case_values(metric: str, cases: pd.DataFrame) -> np.ndarray | None:
    """The per-case quantity whose mean is `metric`; None for the ROC-curve metrics."""
    # dice, dice_<structure>, empty_correct, ssim, l1, spec_at_sens90 (1/0 per negative case at the validation
    # threshold, NaN for positives: taskalign.evaluate.metrics.specificity_cases)
    if metric in cases.columns:
        return cases[metric].to_numpy(float)
    if metric == "mse":
        return ((cases["pred_norm"] - cases["true_norm"]) ** 2).to_numpy(float)
    if metric == "mae_ml":
        return (cases["pred"] - cases["true"]).abs().to_numpy(float)
    if metric == "accuracy":
        return np.where(cases["true"].notna(), cases["true"] == cases["pred"], np.nan)
    return None


def metric_draws(metric: str, cases: pd.DataFrame, weights: np.ndarray) -> np.ndarray | None:
    """`metric` of the cases under each row of (B, n) case weights (a patient resample; a row of ones is the
    sample itself), shape (B,), as taskalign.evaluate.scoring.split_metrics defines it; None for a metric that
    cannot be recomputed from the per-case rows. Rows with no `true` (cases a run did not score) weigh nothing."""
    values = _case_values(metric, cases)
    if values is not None:
        return weighted_mean(values, weights)
    if "true" not in cases.columns:
        return None
    weights = weights * cases["true"].notna().to_numpy()
    prob_cols = [c for c in cases.columns if c.startswith("prob_")]
    classes = [int(c[5:]) for c in prob_cols]
    prob = cases[prob_cols].fillna(0.0).to_numpy(float)
    true = cases["true"].fillna(-1).to_numpy()
    if metric == "auc":
        index = np.array([classes.index(t) if t in classes else -1 for t in true])
        return weighted_macro_auc(index, prob, weights)
    ge = _AUC_GE.match(metric)
    if ge:
        return weighted_auc(true >= int(ge[1]), prob[:, [c >= int(ge[1]) for c in classes]].sum(axis=1), weights)
    return None


def _patient_of(frames: list[pd.DataFrame], patients: Mapping | None) -> pd.Series:
    """case_id -> patient_id over every case of the task's runs: `patients` if given, else the cases' patient_id
    column, else the case itself."""
    ids = pd.Index(sorted(set().union(*(f["case_id"] for f in frames))), name="case_id")
    if patients is not None:
        missing = ids.difference(list(patients))
        if len(missing):
            raise ValueError(f"no patient for cases {list(missing[:5])}")
        return pd.Series([patients[c] for c in ids], index=ids)
    known = pd.concat([f.set_index("case_id")["patient_id"] for f in frames if "patient_id" in f.columns])
    known = known[~known.index.duplicated()]
    return pd.Series(ids, index=ids).where(~ids.isin(known.index), known.reindex(ids))


def _seed_frames(cases: Mapping, task: str, run: tuple[str, str], case_ids: pd.Index) -> list[pd.DataFrame]:
    """The run's per-seed case frames, each reindexed to the task's case order (unscored cases: NaN rows)."""
    seeds = sorted(s for t, i, p, s in cases if t == task and (i, p) == run)
    return [cases[(task, *run, s)].set_index("case_id").reindex(case_ids).reset_index() for s in seeds]


def _seed_draws(metric: str, frames: list[pd.DataFrame], weights: np.ndarray) -> np.ndarray | None:
    """(S, B) the metric of every seed on the same patient resamples (rows of `weights`)."""
    draws = [metric_draws(metric, f, weights) for f in frames]
    return np.stack(draws) if draws and draws[0] is not None else None


def _check_recomputed(label: str, metric: str, frames: list[pd.DataFrame], mean: float) -> None:
    """The intervals recompute the metric from cases.csv: warn when that disagrees with metrics.csv."""
    full = _seed_draws(metric, frames, np.ones((1, len(frames[0]))))
    if full is not None and finite(mean) and not np.isclose(np.nanmean(full), mean, rtol=1e-6, atol=1e-9):
        log.warning("%s %s: recomputed from cases %.6g, metrics.csv %.6g", label, metric, np.nanmean(full), mean)


# --- builder ------------------------------------------------------------------------------------------------------

def _cell(s: pd.Series, low: float, high: float, metric: str, digits: int) -> str:
    scale, digits = (100.0, PERCENT_DIGITS) if is_percent(metric) else (1.0, digits)
    if not finite(s["mean"]):
        return MISSING
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["n_seeds"] > 1 and finite(s["std"]):
        text += f" ± {s['std'] * scale:.{digits}f}"
    if finite(low) and finite(high):
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def _too_few_seeds_note(short: list[str]) -> str:
    if not short:
        return ""
    return (f" {', '.join(short)}: fewer than {MIN_SEEDS} training runs, so no interval and no mark: one run "
            "says nothing about how much training runs differ, and an interval or test without that spread "
            "speaks for these seeds, not for the procedure.")


@dataclass(frozen=True)
class Resampling:
    """The patient bootstrap behind the intervals and marks: `bootstrap` resamples from `seed` (config
    `report.bootstrap`, `report.seed`), intervals at `level`."""

    bootstrap: int
    seed: int
    level: float = 0.95


def performance_table(metrics: pd.DataFrame, cases: Mapping[tuple[str, str, str, int], pd.DataFrame],
                      tasks: list[str], baseline: tuple[str, str], lower_is_better: Collection[str], *,
                      resampling: Resampling, digits: int = 3, patients: Mapping[str, str] | None = None) -> Table:
    """Seed 000 Tables 2-5: one row per init (with its protocol when the init ran several), per task its metrics
    (primary first). Cell = mean ± sample std over seeds (no ± for one seed) [`level` interval of the training
    procedure's mean]. AUCs, accuracy and specificity in percent (000 Table 2), the rest as fractions / in their
    units. The best mean per column is bold (lowest for metrics in `lower_is_better`).

    The unit of inference is the training procedure (init, protocol): both its training runs (seeds) and the test
    patients are samples. Interval: taskalign.analysis.stats.procedure_interval (seed spread + patient bootstrap,
    `resampling`'s patient resamples, every seed's metric recomputed on each resample). Marks:
    two-sided taskalign.analysis.stats.procedure_test of each run against `baseline` (init, protocol), the
    patient resamples shared (paired); `patients`: case_id -> patient_id, else the cases' patient_id column.
    Runs with fewer than MIN_SEEDS seeds get neither (the caption says why); the baseline row and runs without
    cases get no mark.

    metrics: columns task, init, protocol, seed, metric, value, primary (metrics.csv).
    cases: (task, init, protocol, seed) -> that run's cases.csv frame (case_id and the per-case columns).
    """
    rows = metrics[metrics["task"].isin(tasks)]
    if rows.empty:
        raise ValueError(f"no metrics for tasks {tasks}")
    stats = seed_stats(rows)
    runs = list(dict.fromkeys(zip(rows["init"], rows["protocol"])))
    n_protocols = pd.Series([i for i, _ in runs]).value_counts()
    labels = [init if n_protocols[init] == 1 else f"{init} ({protocol})" for init, protocol in runs]
    base = baseline_init, baseline_protocol = baseline
    bootstrap, seed, level = resampling.bootstrap, resampling.seed, resampling.level
    columns = pd.MultiIndex.from_tuples([(t, m) for t in tasks for m in _task_metrics(rows, t)],
                                        names=["task", "metric"])
    index = pd.Index(labels, name="init")
    cells = pd.DataFrame(MISSING, index=index, columns=columns)
    bold = pd.DataFrame(False, index=index, columns=columns)
    star_cells = pd.DataFrame("", index=index, columns=columns)
    raw = {label: {"init": init, "protocol": protocol} for label, (init, protocol) in zip(labels, runs)}
    short = set()
    for task in tasks:
        task_frames = [frame for key, frame in cases.items() if key[0] == task]
        patient = _patient_of(task_frames, patients) if task_frames else pd.Series(dtype=str)
        weights = patient_bootstrap_weights(patient.to_numpy(), bootstrap, seed) if task_frames else None
        ones = np.ones((1, len(patient)))
        n_patients = int(patient.nunique())
        frames = {run: _seed_frames(cases, task, run, patient.index) for run in runs}
        for metric in _task_metrics(rows, task):
            draws = {run: _seed_draws(metric, f, weights) if f else None for run, f in frames.items()}
            per_seed = {run: _seed_draws(metric, f, ones)[:, 0] if draws[run] is not None else None
                        for run, f in frames.items()}
            means = pd.Series(np.nan, index=index)
            for label, run in zip(labels, runs):
                if (task, metric, *run) not in stats.index:
                    continue
                s = stats.loc[(task, metric, *run)]
                if frames[run]:
                    _check_recomputed(f"{task} {label}", metric, frames[run], s["mean"])
                if min(s["n_seeds"], len(frames[run]) or s["n_seeds"]) < MIN_SEEDS:  # seeds with cases count
                    short.add(label)
                low, high, p, test = np.nan, np.nan, float("nan"), ""
                if draws[run] is not None:
                    low, high = procedure_interval(per_seed[run], draws[run].mean(axis=0), n_patients, level)
                    if run != base and draws.get(base) is not None:
                        p, _ = procedure_test(per_seed[run], per_seed[base],
                                              draws[run].mean(axis=0) - draws[base].mean(axis=0), n_patients)
                        test = PROCEDURE_TEST if finite(p) else ""
                star = stars(p)
                cells.loc[label, (task, metric)] = _cell(s, low, high, metric, digits)
                star_cells.loc[label, (task, metric)] = star
                means[label] = s["mean"]
                values = {"mean": s["mean"], "std": s["std"], "ci_low": low, "ci_high": high,
                          "n_seeds": int(s["n_seeds"]), "p_value": p, "stars": star, "test": test}
                raw[label].update({f"{task}/{metric}/{name}": values[name] for name in STAT_FIELDS})
            bold[(task, metric)] = best_cells(means, metric in lower_is_better)
    caption = (f"Performance on {', '.join(tasks)}: mean ± sample std over fine-tuning seeds (no ± for one seed). "
               "Unit of inference: the training procedure (init and protocol), with its training runs (seeds) and "
               f"the test patients both as samples. In brackets, the {level:.0%} interval of the procedure's mean: "
               "seed mean ± sqrt(t²(seeds − 1 df) × seed variance / seeds + t²(patients − 1 df) × "
               f"patient-bootstrap variance of the seed mean), {bootstrap} resamples of patients (seed {seed}), "
               "every seed's metric recomputed on each resample. AUC, accuracy and specificity in %, other metrics as fractions or in "
               "their units; specificity at 90% sensitivity uses the threshold read off the validation split; best "
               f"mean per column in bold. Marks: two-sided tests against {baseline_init} ({baseline_protocol}), "
               "a t of the seed-mean difference over both procedures' seed variances and the paired "
               "patient-bootstrap variance of their difference (Welch-Satterthwaite df); "
               f"{STARS_LEGEND}.{_too_few_seeds_note(sorted(short))} See docs/deviations.md.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption, bold, star_cells)
