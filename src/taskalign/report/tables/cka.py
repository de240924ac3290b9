"""Seed 000 Table 6: layer-wise CKA between encoders."""

from __future__ import annotations

import pandas as pd

from taskalign.report.tables.model import MISSING, Table, finite


def cka_table(cka: pd.DataFrame, digits: int = 3) -> Table:
    """Seed 000 Table 6: rows = encoder layer plus the average over layers, columns = (task, encoder pair),
    cell = linear CKA with the debiased CKA and the permutation-null linear CKA beside it. Repeated rows of one
    (task, pair, layer), e.g. several seeds, are averaged.

    cka: columns task, pair, layer, linear, debiased, null_linear, ci_low, ci_high.
    """
    values = ["linear", "debiased", "null_linear", "ci_low", "ci_high"]
    mean = cka.groupby(["task", "pair", "layer"], sort=False)[values].mean()
    groups = list(dict.fromkeys(zip(cka["task"], cka["pair"])))
    layers = sorted(cka["layer"].unique())
    labels = [f"L{layer}" for layer in layers] + ["Avg."]
    columns = pd.MultiIndex.from_tuples(groups, names=["task", "pair"])
    cells = pd.DataFrame(MISSING, index=pd.Index(labels, name="layer"), columns=columns)
    raw = {label: {"layer": label} for label in labels}
    for task, pair in groups:
        block = mean.loc[(task, pair)].reindex(layers)
        block.loc["Avg."] = block.mean()
        block.index = labels
        for label, row in block.iterrows():
            if finite(row["linear"]):
                cells.loc[label, (task, pair)] = (f"{row['linear']:.{digits}f} (d {row['debiased']:.{digits}f}, "
                                                  f"null {row['null_linear']:.{digits}f})")
            raw[label].update({f"{task}/{pair}/{name}": row[name] for name in values})
    caption = ("Linear CKA between encoder pairs by layer and averaged over layers; in brackets the debiased CKA (d) "
               "and the linear CKA of the permutation null.")
    return Table(cells, pd.DataFrame(list(raw.values())), caption)

