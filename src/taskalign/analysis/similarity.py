"""CKA stage: layer x layer CKA of encoder pairs on one task's images (000 Table 6), with the debiased estimator,
a shuffled-rows null and a subsampling interval beside the paper's biased linear CKA."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.analysis.cka import cka_matrix, debiased_cka, linear_cka, shuffled_null, subsample_ci
from taskalign.analysis.feature_files import joined

log = logging.getLogger(__name__)


def encoder_name(path: Path) -> str:
    """`results/features/<task>/pretrained-mae.npz` -> `pretrained-mae`; a fine-tuned run keeps its run path."""
    parts = Path(path).with_suffix("").parts
    return "/".join(parts[parts.index("features") + 2:]) if "features" in parts else Path(path).stem


def pair_table(pair: dict, settings: dict) -> pd.DataFrame:
    """Every layer pair's biased and debiased CKA; the null and the interval for matching layers (the diagonal),
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
                x, y = feats_a[layer_a], feats_b[layer_b]
                seed = settings["seed"]
                row["null_linear"] = float(np.mean(shuffled_null(x, y, linear_cka, settings["null_permutations"], seed)))
                row["null_debiased"] = float(np.nanmean(shuffled_null(x, y, debiased_cka,
                                                                      settings["null_permutations"], seed)))
                row["ci_low"], row["ci_high"] = subsample_ci(x, y, linear_cka, settings["subsamples"],
                                                             settings["subsample_fraction"], seed)
                # the unbiased HSIC needs 4 cases: small test splits subsample a larger share (none below 5)
                fraction = max(settings["subsample_fraction"], 4 / len(x))
                row["debiased_ci_low"], row["debiased_ci_high"] = (
                    subsample_ci(x, y, debiased_cka, settings["subsamples"], fraction, seed)
                    if len(x) >= 5 else (np.nan, np.nan))
            rows.append(row)
    table = pd.DataFrame(rows)
    meta = {"pair": pair["pair"], "protocol": pair["protocol"], "seed": pair["seed"],
            "encoder_a": encoder_name(pair["a"]), "encoder_b": encoder_name(pair["b"]), "n_cases": len(cases)}
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
