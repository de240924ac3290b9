"""MMD stage (001 section 3.2): how far each compared model's fine-tuned encoder moved from the random-weight FM
(D2R), from its pretrained start (D2P) and from the same network trained from scratch (D2S); and the relative
performance gain (RPG) of fine-tuning correlated with those distances across tasks.

One sigma serves every task, model and distance, so that distances compare across tasks (001 correlates them
across tasks; a per-task median heuristic would rescale each task's distances by its own spread). Every
distance compares the same cases through two encoders (joined by case id): the unbiased paired MMD^2 is the
primary value, the paper's biased one stands beside it, each with a jackknife standard error over cases and a
sign-flip p that keeps each case's pair together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from taskalign.analysis.feature_files import load_features
from taskalign.analysis.mmd import median_sigma, normalise, paired_mmd_test
from taskalign.analysis.stats import correlation, rpg
from taskalign.tasks.spec import Task

log = logging.getLogger(__name__)

DISTANCES = {"d2r": "random", "d2p": "pretrained", "d2s": "scratch"}
ESTIMATORS = ("unbiased", "biased")  # the first is the primary estimate
# Rows pooled for the median heuristic: enough for a stable median, few enough for one distance matrix.
MEDIAN_ROWS = 2000
REFERENCES = {"random": ("random", "frozen"), "specialist": ("specialist", "full")}
Z95 = 1.959963984540054
CORRELATION_COLUMNS = ["model", "reference", "distance", "estimator", "pearson_r", "pearson_p", "spearman_rho",
                       "spearman_p", "n", "note", "pearson_ci_low", "pearson_ci_high", "spearman_ci_low",
                       "spearman_ci_high", "n_boot"]


def rpg_metric(task: Task) -> str:
    """001 scores PI-RADS by specificity at sensitivity 0.9 in RPG, Fig. 1b and Fig. 2, not by the table's AUC:
    the task kind says which metric."""
    return task.kind.rpg_metric


# --- distances ----------------------------------------------------------------------------------------------------

def case_features(path: Path, settings: dict) -> pd.DataFrame:
    """The configured layer of a features file, normalised, one row per case (index case_id)."""
    cases, layers = load_features(path, tuple(settings["splits"]))
    if settings["layer"] not in layers:
        raise ValueError(f"{path}: no layer {settings['layer']!r} (has {', '.join(layers)})")
    return pd.DataFrame(normalise(layers[settings["layer"]], settings["normalise"]), index=cases["case_id"].to_numpy())


def paired_rows(a: pd.DataFrame, b: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a and b for the cases both hold, in one order: the paired MMD needs case i in row i of both."""
    common = a.index.intersection(b.index).sort_values()
    if len(common) < max(len(a), len(b)):
        log.warning("%s: %d shared cases of %d and %d", what, len(common), len(a), len(b))
    return a.loc[common].to_numpy(), b.loc[common].to_numpy()


def shared_sigma(setting, feature_sets: Sequence[np.ndarray], seed: int) -> float:
    """A fixed sigma (a number, 001's 1.0) or "median": the median heuristic once over the pooled rows of every
    set (a seeded subsample of MEDIAN_ROWS), so that one bandwidth serves all tasks and models."""
    if setting != "median":
        return float(setting)
    widths = sorted({f.shape[1] for f in feature_sets})
    if len(widths) > 1:
        raise ValueError(f"analysis.mmd.sigma median pools every feature set, but their widths differ ({widths}: "
                         "compared models of several encoder families); give sigma a number")
    pooled = np.vstack(feature_sets)
    if len(pooled) > MEDIAN_ROWS:
        pooled = pooled[np.random.default_rng(seed).choice(len(pooled), MEDIAN_ROWS, replace=False)]
    return median_sigma(pooled)


def all_distances(inputs: Mapping[str, Mapping[str, Mapping]], settings: dict) -> pd.DataFrame:
    """D2R, D2P and D2S of every compared model, task and seed, both estimators, one shared sigma.

    inputs: {model label: {task: {"random": path, "pretrained": path, "finetuned": [path per seed],
    "scratch": [path per seed], "seeds": [int]}}}; a frozen model lists its pretrained features as "finetuned".
    settings: splits, layer, normalise (l2 | none), sigma (number | "median"), permutations, seed.
    Columns: model, task, seed, distance, reference, estimator, value, se, p_value, sigma, normalise, layer,
    n_cases, saturated, median_d2_over_sigma2.
    """
    loaded: dict[Path, pd.DataFrame] = {}

    def features(path) -> pd.DataFrame:
        path = Path(path)
        if path not in loaded:  # the random and pretrained files are shared by models and seeds
            loaded[path] = case_features(path, settings)
        return loaded[path]

    jobs = []
    for model, tasks in inputs.items():
        for task, files in tasks.items():
            seeds = files["seeds"]
            if not len(files["finetuned"]) == len(files["scratch"]) == len(seeds):
                raise ValueError(f"{model} {task}: finetuned, scratch and seeds need one entry per seed")
            for seed, ft, scratch in zip(seeds, files["finetuned"], files["scratch"]):
                references = {"random": files["random"], "pretrained": files["pretrained"], "scratch": scratch}
                # a model of another architecture than the random-weight and scratch references (the pipeline's
                # own encoder) has features in another space, even at the same width: D2R / D2S undefined
                own = files.get("own_references", True)
                jobs += [(model, task, seed, distance, ft, references[ref], own or ref == "pretrained")
                         for distance, ref in DISTANCES.items()]
    defined = [job for job in jobs if job[6] and features(job[4]).shape[1] == features(job[5]).shape[1]]
    sigma = shared_sigma(settings["sigma"], [features(p).to_numpy() for p in
                                             dict.fromkeys(p for job in defined for p in job[4:6])], settings["seed"])
    log.info("sigma %.4g for %d distances", sigma, len(jobs))
    rows = []
    for model, task, seed, distance, ft_path, ref_path, comparable in jobs:
        width_ft, width_ref = features(ft_path).shape[1], features(ref_path).shape[1]
        if not comparable or width_ft != width_ref:
            log.warning("%s %s seed %s %s: undefined (NaN): the %s reference is the pipeline's own encoder, %s is "
                        "another architecture (%d-d against %d-d features)", model, task, seed, distance,
                        DISTANCES[distance], model, width_ft, width_ref)
            result = dict.fromkeys(["unbiased", "biased", "se_unbiased", "se_biased", "p_value",
                                    "median_d2_over_sigma2"], np.nan) | {"n": 0, "saturated": False}
        else:
            ft, ref = paired_rows(features(ft_path), features(ref_path), f"{model} {task} seed {seed} {distance}")
            result = paired_mmd_test(ft, ref, sigma, settings["permutations"], settings["seed"], logger=log)
        for estimator in ESTIMATORS:
            rows.append({"model": model, "task": task, "seed": seed, "distance": distance,
                         "reference": DISTANCES[distance], "estimator": estimator, "value": result[estimator],
                         "se": result[f"se_{estimator}"], "p_value": result["p_value"], "sigma": sigma,
                         "normalise": settings["normalise"], "layer": settings["layer"], "n_cases": result["n"],
                         "saturated": result["saturated"], "median_d2_over_sigma2": result["median_d2_over_sigma2"]})
        log.info("%s %s seed %s %s: %.4f ± %.4f (biased %.4f, p %.3f)", model, task, seed, distance,
                 result["unbiased"], result["se_unbiased"], result["biased"], result["p_value"])
    return pd.DataFrame(rows)


# --- RPG ----------------------------------------------------------------------------------------------------------

def run_values(metrics: pd.DataFrame, task: Task, init: str, protocol: str) -> pd.DataFrame:
    """Per seed the task's RPG metric and its case-level standard error (the evaluation's 95% patient-bootstrap
    interval / (2 x 1.96); 0 where it has none). Columns seed, value, se."""
    rows = metrics[(metrics["task"] == task.name) & (metrics["init"] == init) & (metrics["protocol"] == protocol)
                   & (metrics["metric"] == rpg_metric(task))].dropna(subset=["value"])
    se = ((rows["ci_high"] - rows["ci_low"]) / (2 * Z95)).fillna(0.0)
    return pd.DataFrame({"seed": rows["seed"].to_numpy(), "value": rows["value"].to_numpy(float),
                         "se": se.to_numpy(float)}).sort_values("seed", kind="mergesort")


def rpg_rows(metrics: pd.DataFrame, distances: pd.DataFrame, models: Sequence[Sequence[str]],
             tasks: Mapping[str, Task]) -> list[dict]:
    """One entry per (model, task, reference) with the per-seed values the table and the bootstrap need; `models`
    as the plan gives them, [label, init, protocol] (the label names the model in mmd.csv and the tables); `tasks`
    (by name) say each task's RPG metric and its direction."""
    entries = []
    for model, init, protocol in models:
        own = distances[distances["model"] == model]
        for name in dict.fromkeys(own["task"]):
            if name not in tasks:
                raise ValueError(f"mmd.csv names task {name!r}, which is not configured (tasks: {', '.join(tasks)})")
            task = tasks[name]
            ft = run_values(metrics, task, init, protocol)
            per_seed = own[own["task"] == name].pivot_table(index="seed", columns=["distance", "estimator"],
                                                             values=["value", "se"], dropna=False)  # NaN: undefined
            for reference, (ref_init, ref_protocol) in REFERENCES.items():
                ref = run_values(metrics, task, ref_init, ref_protocol)
                if ft.empty or ref.empty:
                    continue
                entry = {"model": model, "task": name, "reference": reference, "ft": ft, "ref": ref,
                         "distances": per_seed, "metric": rpg_metric(task),
                         "higher_is_better": task.type.higher_is_better, "note": ""}
                if ref["value"].mean() == 0:  # e.g. a lesion Dice of 0: no relative gain exists
                    log.warning("%s %s: the %s reference scores %s = 0, RPG is undefined; left out", model, name,
                                reference, rpg_metric(task))
                    entry["note"] = (f"left out: the {reference} reference scores {rpg_metric(task)} = 0, so the "
                                     "relative gain is undefined")
                entries.append(entry)
    return entries


def _rpg_of(entry: dict, p_ft: float, p_ref: float) -> float:
    return rpg(p_ft, p_ref, entry["higher_is_better"])


def _column(distance: str, estimator: str) -> str:
    return distance if estimator == ESTIMATORS[0] else f"{distance}_{estimator}"


def rpg_table(entries: list[dict]) -> pd.DataFrame:
    """Columns model, task, metric, reference, p_finetuned, p_reference, rpg (%), rpg_seed_sd (sample std over
    the fine-tuned seeds of each seed's RPG against the reference's seed mean), n_seeds, the mean over seeds of
    each distance (d2r, d2p, d2s unbiased, primary; d2r_biased, ...) and its standard error (d2r_se, ...: the
    jackknife over cases, averaged over seeds), and note (why a task has no RPG: rpg NaN)."""
    rows = []
    for e in entries:
        p_ft, p_ref = e["ft"]["value"].mean(), e["ref"]["value"].mean()
        defined = not e.get("note")
        seed_rpg = [_rpg_of(e, v, p_ref) for v in e["ft"]["value"]] if defined else []
        row = {"model": e["model"], "task": e["task"], "metric": e["metric"], "reference": e["reference"],
               "p_finetuned": p_ft, "p_reference": p_ref, "rpg": _rpg_of(e, p_ft, p_ref) if defined else np.nan,
               "rpg_seed_sd": float(np.std(seed_rpg, ddof=1)) if len(seed_rpg) > 1 else np.nan,
               "n_seeds": len(e["ft"])}
        for distance in DISTANCES:
            for estimator in ESTIMATORS:
                row[_column(distance, estimator)] = e["distances"][("value", distance, estimator)].mean()
            row[f"{distance}_se"] = e["distances"][("se", distance, ESTIMATORS[0])].mean()
        rows.append({**row, "note": e.get("note", "")})
    return pd.DataFrame(rows)


def bootstrap_replicate(entry: dict, rng: np.random.Generator) -> dict[str, float]:
    """One bootstrap draw of an entry's RPG and distances over seeds and cases.

    Seeds: the fine-tuned model's seeds are drawn with replacement, and each drawn seed brings its own metric
    and distances (the fine-tuned run and the scratch run of that seed); the reference's seeds are drawn on their
    own. Cases: every test case is shared by all seeds, so the case sampling error is one normal draw per
    quantity, with the per-seed standard error averaged over the drawn seeds (the evaluation's patient-bootstrap
    interval for metrics, the jackknife over cases for distances); drawing the fine-tuned and the reference
    metric independently ignores their positive correlation on shared cases, which widens the interval."""
    def draw(values: np.ndarray, se: np.ndarray, pick: np.ndarray) -> float:
        return float(values[pick].mean() + rng.standard_normal() * se[pick].mean())

    ft, ref = entry["ft"], entry["ref"]
    ft_pick = rng.integers(len(ft), size=len(ft))
    ref_pick = rng.integers(len(ref), size=len(ref))
    p_ft = draw(ft["value"].to_numpy(), ft["se"].to_numpy(), ft_pick)
    p_ref = draw(ref["value"].to_numpy(), ref["se"].to_numpy(), ref_pick)
    out = {"rpg": _rpg_of(entry, p_ft, p_ref) if p_ref != 0 else np.nan}
    per_seed = entry["distances"].reindex(ft["seed"].to_numpy())  # row k: the distances of the k-th ft seed
    for distance in DISTANCES:
        for estimator in ESTIMATORS:
            values = per_seed[("value", distance, estimator)].to_numpy(float)
            ses = np.nan_to_num(per_seed[("se", distance, estimator)].to_numpy(float))
            out[_column(distance, estimator)] = draw(values, ses, ft_pick)
    return out


def pearson_spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and Spearman rho without p-values (the bootstrap needs only the statistics); NaN if undefined."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 or not np.isfinite(np.r_[x, y]).all():
        return np.nan, np.nan
    return float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def rpg_correlations(entries: list[dict], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model, reference, distance and estimator: Pearson r and Spearman rho of RPG with the distance across
    tasks (permutation p, see stats.correlation) and 95% percentile intervals of both from `n_boot` draws of
    bootstrap_replicate for every task at once; tasks without an RPG (an entry's note) are left out. Columns
    CORRELATION_COLUMNS."""
    entries = [e for e in entries if not e.get("note")]
    table = rpg_table(entries)
    rng = np.random.default_rng(seed)
    rows = []
    if table.empty:
        return pd.DataFrame(columns=CORRELATION_COLUMNS)
    for (model, reference), index in table.groupby(["model", "reference"], sort=False).groups.items():
        group = [entries[i] for i in index]
        draws = [pd.DataFrame([bootstrap_replicate(e, rng) for e in group]) for _ in range(n_boot)]
        for distance in DISTANCES:
            for estimator in ESTIMATORS:
                column = _column(distance, estimator)
                stats = correlation(table.loc[index, column].to_numpy(), table.loc[index, "rpg"].to_numpy())
                boot = np.array([pearson_spearman(d[column].to_numpy(), d["rpg"].to_numpy()) for d in draws])
                row = {"model": model, "reference": reference, "distance": distance, "estimator": estimator, **stats}
                for k, name in enumerate(("pearson", "spearman")):
                    values = boot[np.isfinite(boot[:, k]), k] if len(boot) else boot
                    low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
                    row[f"{name}_ci_low"], row[f"{name}_ci_high"] = float(low), float(high)
                rows.append({**row, "n_boot": n_boot})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
