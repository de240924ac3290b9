"""Seed 003: the radiomic lens summary per task."""

from __future__ import annotations

import pandas as pd

from taskalign.analysis.stats import stars
from taskalign.report.tables.model import MISSING, STARS_LEGEND, Table, finite


def lens_table(summary: pd.DataFrame, digits: int = 3) -> Table:
    """One row per task of the radiomic-lens analysis: probe R² before and after fine-tuning, total weight change
    with its permutation p (starred), stability (Spearman), the change per feature group (every other numeric
    column, e.g. intensity, shape, texture) and the top features.

    summary: columns task, r2_pre, r2_ft, total_change, perm_p, stability_spearman, top_features, plus the
    numeric group-change columns.
    """
    fixed = ["task", "r2_pre", "r2_ft", "total_change", "perm_p", "stability_spearman", "top_features"]
    groups = [c for c in summary.select_dtypes("number").columns if c not in fixed]
    names = {"r2_pre": "R² pre", "r2_ft": "R² FT", "total_change": "total change", "perm_p": "perm. p",
             "stability_spearman": "stability ρ"}
    cells = pd.DataFrame(index=pd.Index(summary["task"], name="task"))
    star_cells = pd.DataFrame(index=cells.index)
    for col in ["r2_pre", "r2_ft", "total_change", "perm_p", "stability_spearman", *groups]:
        values = summary[col].to_numpy(float)
        if col == "perm_p":
            text = ["<0.001" if v < 0.001 else f"{v:.3f}" if finite(v) else MISSING for v in values]
        else:
            text = [f"{v:.{digits}f}" if finite(v) else MISSING for v in values]
        cells[names.get(col, col)] = text
        star_cells[names.get(col, col)] = [stars(v) if col == "perm_p" else "" for v in values]
    cells["top features"] = summary["top_features"].fillna("").astype(str).to_numpy()
    star_cells["top features"] = ""
    raw = summary.assign(perm_stars=[stars(v) for v in summary["perm_p"].to_numpy(float)])
    caption = ("Radiomic lens per task: probe R² before and after fine-tuning, total weight change with its "
               f"permutation p ({STARS_LEGEND}), stability across seeds (Spearman), change per feature group, "
               "top features.")
    return Table(cells, raw, caption, stars=star_cells)
