"""A training stage's history on disk: the per-epoch CSV and a curve PNG drawn from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from taskalign.runtime import atomic_path


def write_history(history: list[dict], csv_path: Path, png_path: Path, title: str) -> None:
    """Per-epoch CSV and its curve PNG."""
    frame = pd.DataFrame(history)
    with atomic_path(Path(csv_path)) as tmp:
        frame.to_csv(tmp, index=False)
    draw_curves(frame, Path(png_path), title)


def draw_curves(frame: pd.DataFrame, png_path: Path, title: str) -> None:
    """Training losses (left axis) and validation values (right axis) per epoch."""
    import matplotlib  # imported here: a job draws at its end, and its start-up need not wait for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for column in [c for c in frame.columns if c.startswith("train_")]:
        ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if (frame.filter(like="train_") > 0).all().all() else "linear")
    val_columns = [c for c in frame.columns if c.startswith("val_")]
    if val_columns:
        ax2 = ax.twinx()
        for k, column in enumerate(val_columns):  # dashed, in colours after the training losses'
            ax2.plot(frame["epoch"], frame[column], ls="--", marker="s", ms=3, label=column, color=f"C{k + 5}")
        ax2.set_ylabel("validation")
        ax2.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
