"""CKA stage: layer x layer CKA of encoder pairs on one task's images (000 Table 6), with the debiased estimator,
a shuffled-rows null and subsampling intervals beside the paper's biased linear CKA, and the paper's key quantity
Delta = CKA(continual, FT) - CKA(pretrained, FT), FT being ONE encoder fine-tuned from the pretrained weights.

Pair names (the `pair` of each --pairs entry): `pretrained-continual`; per fine-tuning (protocol, seed)
`pretrained-finetuned` and `continual-finetuned`, whose b must be the same features file (the paper's FT); other
names (e.g. `continual-finetuned_from_continual`) are computed as plain pairs (taskalign.analysis.cka_pairs). Each
entry names its encoders too (`encoder_a`, `encoder_b`: the plan's names, never parsed from the paths)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.analysis.cka import (cka_matrix, debiased_cka, jackknife_interval, jackknife_values, linear_cka,
                                    null_summary, shuffled_null, subsample_ci)
from taskalign.analysis.cka_pairs import CONTINUAL_FT, PRETRAINED_FT
from taskalign.analysis.feature_files import joined, load_features

log = logging.getLogger(__name__)

ESTIMATORS = {"linear": linear_cka, "debiased": debiased_cka}
AVERAGE_LAYER = "avg"  # Table 6's "Avg." column: the mean over the block layers (the final normed output left out)
DELTA_INTERVAL = "delete-1 jackknife, normal"
MIN_CASES_FOR_INTERVAL = 5  # a debiased subsample needs 4 cases; with 4 every subset is the whole sample


def _layer_context(x: np.ndarray, y: np.ndarray, observed: dict[str, float], settings: dict) -> dict:
    """Per estimator: the shuffled-rows null's mean, 95th percentile and permutation p, and the subsampling
    interval. Column names keep the old `ci_low`/`ci_high` for the linear estimator."""
    row = {}
    seed, n_perm, n_sub, fraction = (settings["seed"], settings["null_permutations"], settings["subsamples"],
                                     settings["subsample_fraction"])
    for name, estimator in ESTIMATORS.items():
        null = shuffled_null(x, y, estimator, n_perm, seed)
        row[f"null_{name}"] = float(np.nanmean(null))
        row[f"null_{name}_p95"], row[f"null_{name}_p"] = null_summary(observed[name], null)
        prefix = "" if name == "linear" else f"{name}_"
        row[f"{prefix}ci_low"], row[f"{prefix}ci_high"] = (
            subsample_ci(x, y, estimator, n_sub, fraction, seed) if len(x) >= MIN_CASES_FOR_INTERVAL
            else (np.nan, np.nan))
    return row


def pair_table(pair: dict, settings: dict) -> pd.DataFrame:
    """Every layer pair's biased and debiased CKA; the null and the intervals for matching layers (the diagonal),
    which is what the tables and the depth trend read."""
    cases, feats_a, feats_b = joined(Path(pair["a"]), Path(pair["b"]), tuple(settings["splits"]))
    linear = cka_matrix(feats_a, feats_b, linear_cka)
    debiased = cka_matrix(feats_a, feats_b, debiased_cka)
    rows = []
    for layer_a in linear.index:
        for layer_b in linear.columns:
            row = {"layer_a": layer_a, "layer_b": layer_b, "linear": linear.loc[layer_a, layer_b],
                   "debiased": debiased.loc[layer_a, layer_b]}
            if layer_a == layer_b:
                row.update(_layer_context(feats_a[layer_a], feats_b[layer_b], row, settings))
            rows.append(row)
    table = pd.DataFrame(rows)
    meta = {"pair": pair["pair"], "protocol": pair["protocol"], "seed": pair["seed"],
            "encoder_a": pair["encoder_a"], "encoder_b": pair["encoder_b"],
            "file_a": str(pair["a"]), "file_b": str(pair["b"]), "n_cases": len(cases)}
    for i, (key, value) in enumerate(meta.items()):
        table.insert(i, key, value)
    return table


def task_cka(task: str, pairs: list[dict], settings: dict) -> pd.DataFrame:
    tables = []
    for pair in pairs:
        table = pair_table(pair, settings)
        diagonal = table[table["layer_a"] == table["layer_b"]]
        log.info("%s %s (%s): linear CKA by layer %s", task, pair["pair"], table["encoder_b"].iloc[0],
                 " ".join(f"{v:.3f}" for v in diagonal["linear"]))
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "task", task)
    return out


# --- Delta = CKA(continual, FT) - CKA(pretrained, FT) -------------------------------------------------------------

def finetuned_triples(pairs: list[dict]) -> dict[str, list[tuple[str, str, str, str, str]]]:
    """protocol -> [(seed, pretrained file, continual file, FT file, FT encoder name)] for every (protocol, seed) that has both a
    pretrained-finetuned and a continual-finetuned pair. Raises when the two pairs of one (protocol, seed) do not
    compare with the same FT file: the paper's Delta is about ONE fine-tuned encoder."""
    by_run: dict[tuple[str, str], dict[str, dict]] = {}
    for pair in pairs:
        if pair["pair"] in (PRETRAINED_FT, CONTINUAL_FT):
            by_run.setdefault((str(pair["protocol"]), str(pair["seed"])), {})[pair["pair"]] = pair
    triples: dict[str, list] = {}
    for (protocol, seed), found in sorted(by_run.items()):
        if len(found) < 2:
            log.warning("protocol %s seed %s: only %s, no Delta", protocol, seed, ", ".join(found))
            continue
        pre, cont = found[PRETRAINED_FT], found[CONTINUAL_FT]
        if str(pre["b"]) != str(cont["b"]):
            raise ValueError(f"protocol {protocol} seed {seed}: {PRETRAINED_FT} compares with {pre['b']} but "
                             f"{CONTINUAL_FT} with {cont['b']}; both must use the same fine-tuned encoder")
        triples.setdefault(protocol, []).append((seed, str(pre["a"]), str(cont["a"]), str(pre["b"]),
                                                 pre["encoder_b"]))
    return triples


def aligned_features(paths: list[str], splits: tuple[str, ...]) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """Features of several encoders on the cases all of them have, in one order (sorted case id); each file is
    read once."""
    loaded = {path: load_features(Path(path), splits) for path in dict.fromkeys(paths)}
    common = sorted(set.intersection(*(set(cases["case_id"]) for cases, _ in loaded.values())))
    aligned = {}
    for path, (cases, feats) in loaded.items():
        if len(common) < len(cases):
            log.warning("%s: %d of its %d cases are shared by all encoders of the Delta", path, len(common), len(cases))
        pos = pd.Series(range(len(cases)), index=cases["case_id"])[common].to_numpy()
        aligned[path] = {layer: x[pos] for layer, x in feats.items()}
    return common, [aligned[path] for path in paths]


def _delta_draws(pre: np.ndarray, cont: np.ndarray, ft: np.ndarray, estimator) -> np.ndarray:
    """Delta with each case left out in turn, shape (n,); both CKAs leave out the same case (paired)."""
    if len(ft) < MIN_CASES_FOR_INTERVAL:
        return np.full(len(ft), np.nan)
    return jackknife_values(cont, ft, estimator) - jackknife_values(pre, ft, estimator)


def _seed_layer_deltas(pre: dict, cont: dict, ft: dict, estimator) -> dict[str, dict]:
    """layer -> {cka_pretrained, cka_continual, delta, draws} for one FT encoder, plus the block average."""
    out = {}
    for layer in pre:
        cka_pre, cka_cont = estimator(pre[layer], ft[layer]), estimator(cont[layer], ft[layer])
        draws = _delta_draws(pre[layer], cont[layer], ft[layer], estimator)
        out[layer] = {"cka_pretrained": cka_pre, "cka_continual": cka_cont, "delta": cka_cont - cka_pre,
                      "draws": draws}
    blocks = [layer for layer in pre if layer.startswith("block")]
    if blocks:
        out[AVERAGE_LAYER] = {key: np.mean([out[b][key] for b in blocks], axis=0)
                              for key in ("cka_pretrained", "cka_continual", "delta", "draws")}
    return out


def protocol_deltas(pre: dict, cont: dict, fts: dict[str, dict]) -> pd.DataFrame:
    """Per seed, layer (plus the block average `avg`) and estimator: CKA(pretrained, FT), CKA(continual, FT),
    Delta and its interval over cases (jackknife_interval: Delta ± z x the delete-1 jackknife standard error, both
    CKAs leaving out the same case); then the seed mean (seed "mean") whose interval comes from the seed-mean Delta
    with each case left out, and whose spread is the std over seeds. The jackknife replaced half-sample
    subsampling: at 113 cases x 768 features a subset's biased CKA carries a larger bias than the full sample's and
    moved the interval off its centre (benchmarks/results.md, "Calibration").

    pre, cont: {layer: (n, d)}; fts: seed -> {layer: (n, d)}; all on the same n cases in the same order."""
    rows = []
    for name, estimator in ESTIMATORS.items():
        by_seed = {seed: _seed_layer_deltas(pre, cont, ft, estimator) for seed, ft in fts.items()}
        for layer in next(iter(by_seed.values())):
            values = [by_seed[seed][layer] for seed in fts]
            for seed, v in zip(fts, values):
                rows.append({"seed": seed, "layer": layer, "estimator": name, "cka_pretrained": v["cka_pretrained"],
                             "cka_continual": v["cka_continual"], "delta": v["delta"],
                             **dict(zip(("ci_low", "ci_high"), jackknife_interval(v["delta"], v["draws"]))),
                             "seed_std": np.nan, "n_seeds": 1})
            deltas = np.array([v["delta"] for v in values])
            rows.append({"seed": "mean", "layer": layer, "estimator": name,
                         "cka_pretrained": np.mean([v["cka_pretrained"] for v in values]),
                         "cka_continual": np.mean([v["cka_continual"] for v in values]), "delta": deltas.mean(),
                         **dict(zip(("ci_low", "ci_high"),
                                    jackknife_interval(deltas.mean(), np.mean([v["draws"] for v in values], axis=0)))),
                         "seed_std": deltas.std(ddof=1) if len(deltas) > 1 else np.nan, "n_seeds": len(deltas)})
    return pd.DataFrame(rows)


def task_deltas(task: str, pairs: list[dict], settings: dict) -> pd.DataFrame:
    """Delta rows of every protocol with paired pretrained-/continual-finetuned pairs (see protocol_deltas);
    columns task, protocol, seed, finetuned, layer, estimator, cka_pretrained, cka_continual, delta, ci_low,
    ci_high, seed_std, n_seeds, n_cases, interval. Empty (with these columns) when no pair qualifies."""
    tables = []
    for protocol, triples in finetuned_triples(pairs).items():
        pre_path, cont_path = triples[0][1], triples[0][2]
        if any((p, c) != (pre_path, cont_path) for _, p, c, _, _ in triples):
            raise ValueError(f"protocol {protocol}: the seeds' pairs name different pretrained/continual files")
        cases, (pre, cont, *fts) = aligned_features([pre_path, cont_path, *(t[3] for t in triples)],
                                                   tuple(settings["splits"]))
        table = protocol_deltas(pre, cont, {seed: ft for (seed, *_), ft in zip(triples, fts)})
        names = {seed: name for seed, _, _, _, name in triples}
        table.insert(0, "finetuned", table["seed"].map(names).fillna(""))
        table.insert(0, "protocol", protocol)
        table["n_cases"], table["interval"] = len(cases), DELTA_INTERVAL
        tables.append(table)
        last = table[(table["seed"] == "mean") & (table["estimator"] == "linear")]
        log.info("%s %s: Delta (linear, seed mean) by layer %s", task, protocol,
                 " ".join(f"{r.layer} {r.delta:+.4f}" for r in last.itertuples()))
    columns = ["task", "protocol", "seed", "finetuned", "layer", "estimator", "cka_pretrained", "cka_continual",
               "delta", "ci_low", "ci_high", "seed_std", "n_seeds", "n_cases", "interval"]
    if not tables:
        return pd.DataFrame(columns=columns)
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "task", task)
    return out[columns]
