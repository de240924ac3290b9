"""Seed 003: the radiomic lens summary per task."""

from __future__ import annotations

import numpy as np
import pandas as pd

from taskalign.analysis.stats import stars
from taskalign.report.tables.model import MISSING, STARS_LEGEND, Table, finite

FIXED = ["task", "r2_pre", "r2_ft", "total_change", "perm_p", "n_significant", "stability_spearman",
         "finetune_stability_spearman", "top_features", "interpretable", "note"]
FIT_COLUMNS = ("r2_pre", "r2_ft")  # shown for every task; the rest only where the fit clears the R² floor
NAMES = {"r2_pre": "R² pre", "r2_ft": "R² FT", "total_change": "total change", "perm_p": "perm. p",
         "n_significant": "features p_FWER ≤ 0.05", "stability_spearman": "stability ρ (MLP seeds)",
         "finetune_stability_spearman": "stability ρ (FT seeds)"}


def lens_table(summary: pd.DataFrame, digits: int = 3) -> Table:
    """One row per task of the radiomic-lens analysis: probe R² before and after fine-tuning, total change of the
    sensitivity shares (sum |change|) with its permutation p (starred), the number of features significant after
    the family-wise (max-statistic) correction, rank stability over MLP seeds and over fine-tuning seeds
    (Spearman), the change of share per feature group (every other numeric column, e.g. intensity, shape,
    texture) and the top features.

    A task whose `interpretable` is False (held-out R² below the lens's floor) keeps its R² and, instead of
    everything else, its `note` (why nothing more is shown).

    summary: columns of FIXED (n_significant, finetune_stability_spearman, interpretable and note may be absent)
    plus the numeric group-change columns.
    """
    groups = [c for c in summary.select_dtypes("number").columns if c not in FIXED]
    numeric = [c for c in FIXED[1:-3] if c in summary.columns] + groups
    shown = (summary["interpretable"].astype(bool).to_numpy() if "interpretable" in summary.columns
             else np.ones(len(summary), bool))
    cells = pd.DataFrame(index=pd.Index(summary["task"], name="task"))
    star_cells = pd.DataFrame(index=cells.index)
    for col in numeric:
        values = summary[col].to_numpy(float)
        if col == "perm_p":
            text = ["<0.001" if v < 0.001 else f"{v:.3f}" if finite(v) else MISSING for v in values]
        elif col == "n_significant":
            text = [f"{v:.0f}" if finite(v) else MISSING for v in values]
        else:
            text = [f"{v:.{digits}f}" if finite(v) else MISSING for v in values]
        hidden = ~shown if col not in FIT_COLUMNS else np.zeros(len(summary), bool)
        cells[NAMES.get(col, col)] = np.where(hidden, MISSING, text)
        star_cells[NAMES.get(col, col)] = ["" if h or col != "perm_p" else stars(v) for v, h in zip(values, hidden)]
    cells["top features"] = np.where(shown, summary["top_features"].fillna("").astype(str).to_numpy(), MISSING)
    star_cells["top features"] = ""
    if not shown.all():
        cells["why not shown"] = np.where(shown, "", summary["note"].fillna("").astype(str).to_numpy())
        star_cells["why not shown"] = ""
    raw = summary.assign(perm_stars=[stars(v) if h else "" for v, h in zip(summary["perm_p"].to_numpy(float), shown)])
    caption = ("Radiomic lens per task (003): probe R² before and after fine-tuning; change of each radiomic "
               "feature's share of the total sensitivity (a rescaling of the embeddings is no change), summed "
               f"|change| with its permutation p ({STARS_LEGEND}); features significant after a max-statistic "
               "family-wise correction; rank stability over MLP seeds and over fine-tuning seeds (Spearman); change "
               "of share per feature group (sums to 0 over groups); top features. Rankings and changes only for tasks "
               "whose held-out R² (variance-weighted, pretrained and fine-tuned fits) reaches the configured floor "
               "(`analysis.lens.min_r2`); below it the radiomics do not explain the embeddings and a ranking would "
               "read noise, so the row gives the R² and says so. The shares are unchanged by a rotation, "
               "translation or overall rescaling of either embedding space. See docs/deviations.md.")
    return Table(cells, raw, caption, stars=star_cells)
