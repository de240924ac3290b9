"""MMD stage (001 section 3.2): how far a fine-tuned encoder's features moved from the random-weight FM (D2R),
from its pretrained start (D2P) and from the same network trained from scratch (D2S); and the relative
performance gain (RPG) of fine-tuning correlated with those distances across tasks.

Sigma is fixed once per task (a number, or the median heuristic on the first seed's pooled features) and shared
by the three distances so that they stay comparable; both the paper's biased and the unbiased estimator are
reported with permutation p-values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.analysis.feature_files import load_features
from taskalign.analysis.mmd import median_sigma, mmd_test, normalise
from taskalign.analysis.stats import correlation, rpg
from taskalign.tasks.spec import TASK_TYPES

log = logging.getLogger(__name__)

DISTANCES = {"d2r": "random", "d2p": "pretrained", "d2s": "scratch"}
ESTIMATORS = ("biased", "unbiased")


def layer_features(path: Path, settings: dict) -> np.ndarray:
    _, layers = load_features(path, tuple(settings["splits"]))
    if settings["layer"] not in layers:
        raise ValueError(f"{path}: no layer {settings['layer']!r} (has {', '.join(layers)})")
    return normalise(layers[settings["layer"]], settings["normalise"])


def task_distances(task: str, random: Path, pretrained: Path, finetuned: list[Path], scratch: list[Path],
                   seeds: list[int], settings: dict) -> pd.DataFrame:
    references = {"random": layer_features(random, settings), "pretrained": layer_features(pretrained, settings)}
    sigma = None
    rows = []
    for seed, ft_path, scratch_path in zip(seeds, finetuned, scratch):
        ft = layer_features(ft_path, settings)
        sets = {**references, "scratch": layer_features(scratch_path, settings)}
        if sigma is None:
            sigma = (median_sigma(ft, *sets.values()) if settings["sigma"] == "median" else float(settings["sigma"]))
        for distance, reference in DISTANCES.items():
            for estimator in ESTIMATORS:
                result = mmd_test(ft, sets[reference], sigma, estimator, settings["permutations"],
                                  settings["seed"], logger=log)
                rows.append({"task": task, "seed": seed, "distance": distance, "reference": reference,
                             "estimator": estimator, "value": result["value"], "p_value": result["p_value"],
                             "sigma": sigma, "normalise": settings["normalise"], "layer": settings["layer"],
                             "n_finetuned": len(ft), "n_reference": len(sets[reference]),
                             "saturated": result["saturated"],
                             "median_d2_over_sigma2": result["median_d2_over_sigma2"]})
        log.info("%s seed %d: %s", task, seed, ", ".join(
            f"{r['distance']} {r['value']:.4f} (p {r['p_value']:.3f})" for r in rows[-6:] if r["estimator"] == "biased"))
    return pd.DataFrame(rows)


def primary_mean(summary: pd.DataFrame, task: str, init: str, protocol: str) -> float:
    row = summary[(summary["task"] == task) & (summary["init"] == init) & (summary["protocol"] == protocol)
                  & summary["primary"]]
    return float(row["mean"].iloc[0]) if len(row) else np.nan


REFERENCES = {"random": ("random", "frozen"), "specialist": ("specialist", "full")}


def rpg_tables(summary: pd.DataFrame, distances: pd.DataFrame, variant: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RPG per task and reference with the task's distances (mean over seeds), and the correlation of RPG with
    each distance across tasks, per reference and estimator."""
    summary = summary.assign(primary=summary["primary"].astype(str).str.lower() == "true")
    mean_distance = distances.groupby(["task", "distance", "estimator"])["value"].mean().unstack(["distance", "estimator"])
    rows = []
    for task in mean_distance.index:
        p_ft = primary_mean(summary, task, f"pretrained:{variant}", "full")
        for reference, (init, protocol) in REFERENCES.items():
            p_ref = primary_mean(summary, task, init, protocol)
            if np.isnan(p_ft) or np.isnan(p_ref):
                continue
            if p_ref == 0:  # e.g. a lesion Dice of 0: no relative gain exists, so the task is left out
                log.warning("%s: the %s reference scores %s = 0, RPG is undefined; left out of the RPG table "
                            "and its correlations", task, reference, TASK_TYPES[task].metric)
                continue
            row = {"task": task, "metric": TASK_TYPES[task].metric, "reference": reference, "p_finetuned": p_ft,
                   "p_reference": p_ref, "rpg": rpg(p_ft, p_ref, TASK_TYPES[task].higher_is_better)}
            for distance in DISTANCES:
                for estimator in ESTIMATORS:
                    suffix = "" if estimator == "biased" else "_unbiased"
                    row[distance + suffix] = mean_distance.loc[task, (distance, estimator)]
            rows.append(row)
    table = pd.DataFrame(rows)
    correlations = []
    for reference, group in table.groupby("reference", sort=False) if len(table) else []:
        for distance in DISTANCES:
            for estimator in ESTIMATORS:
                column = distance + ("" if estimator == "biased" else "_unbiased")
                stats = correlation(group[column].to_numpy(), group["rpg"].to_numpy())
                correlations.append({"reference": reference, "distance": distance, "estimator": estimator, **stats})
    return table, pd.DataFrame(correlations)
