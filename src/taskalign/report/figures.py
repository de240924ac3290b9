"""Paper figures (001 Fig. 1b, 2, 3; CKA; 003 lens; segmentation overlays) as PNG and PDF with a provenance footer.

Every public function draws one figure, writes `<stem>.png` and `<stem>.pdf` atomically (both or neither are
replaced) and returns the number of data panels drawn, counted from the figure itself.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from taskalign.runtime import atomic_path

# Headless cluster nodes have no display; this matters only if pyplot gets imported after us.
matplotlib.use("Agg")

DEFAULT_STYLE: dict[str, Any] = {"dpi": 150, "font_size": 9, "cmap": "viridis", "top_features": 30}
DISTANCES = ("d2r", "d2p", "d2s")
CORRELATION_COLUMNS = ("distance", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "n")
RADIOMIC_CLASSES = ("intensity", "shape", "texture")
_FOOTER_IN = 0.22  # inches reserved per footer line below the panels
_COLORBAR_LABEL = "<colorbar>"  # the label matplotlib gives colourbar axes


def _style(style: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_STYLE, **(style or {})}


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{what}: no rows to draw")


def _figure(nrows: int, ncols: int, panel_in: tuple[float, float] = (3.4, 3.0)) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with an (nrows, ncols) array of axes, not registered with pyplot.

    Plain Figure objects leave no global figure behind when a draw fails and are safe in worker threads.
    """
    fig = Figure(figsize=(ncols * panel_in[0], nrows * panel_in[1] + _FOOTER_IN), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _data_axes(fig: Figure) -> list[Axes]:
    """Axes that hold plotted data (lines, markers, bars, images); colourbars and empty axes are not panels."""
    return [ax for ax in fig.axes if ax.has_data() and ax.get_label() != _COLORBAR_LABEL]


def _colours(keys: Sequence[Any]) -> dict[Any, Any]:
    """One categorical colour per key, in order of first appearance."""
    unique = list(dict.fromkeys(keys))
    palette = matplotlib.colormaps["tab10" if len(unique) <= 10 else "tab20"].colors
    return {k: palette[i % len(palette)] for i, k in enumerate(unique)}


def _render(stem: str | Path, footer: str, style: Mapping[str, Any] | None, draw: Callable[[dict], Figure]) -> int:
    """Draw, stamp the footer, write PNG and PDF; a failure anywhere leaves the previous outputs untouched."""
    st = _style(style)
    stem = Path(stem)
    # fonttype 42 embeds TrueType so journal editors can edit PDF text.
    with matplotlib.rc_context({"font.size": st["font_size"], "pdf.fonttype": 42}):
        fig = draw(st)
        lines = footer.count("\n") + 1
        frac = min(0.3, lines * _FOOTER_IN / fig.get_figheight())
        fig.get_layout_engine().set(rect=(0, frac, 1, 1 - frac))
        fig.text(0.005, 0.005, footer, fontsize=max(5, st["font_size"] - 3), color="0.4", ha="left", va="bottom")
        # Both temp files are written before either is moved into place, so PNG and PDF never disagree.
        with ExitStack() as stack:
            for fmt in ("png", "pdf"):
                tmp = stack.enter_context(atomic_path(stem.with_name(f"{stem.name}.{fmt}")))
                # No CreationDate: reruns on the same inputs give byte-identical PDFs.
                metadata = {"CreationDate": None} if fmt == "pdf" else None
                fig.savefig(tmp, format=fmt, dpi=st["dpi"], metadata=metadata)
    return len(_data_axes(fig))


# --- 001 Fig. 1b -----------------------------------------------------------------------------------------------


def _groups(frame: pd.DataFrame, column: str) -> list[Any]:
    """The values of an optional grouping column in order of appearance, [None] when the column is absent."""
    return list(pd.unique(frame[column])) if column in frame.columns else [None]


def _part(frame: pd.DataFrame, **where: Any) -> pd.DataFrame:
    for column, value in where.items():
        if value is not None:
            frame = frame[frame[column] == value]
    return frame


def _scatter_panel(ax: Axes, frame: pd.DataFrame, colours: dict, d2s_max: float, st: dict) -> np.ndarray:
    # Negating lower-is-better metrics puts every task's better result up/right, so above y=x means pretraining helps.
    sign = np.where(frame["higher_is_better"].astype(bool), 1.0, -1.0)
    x = frame["scratch"].to_numpy(float) * sign
    y = frame["finetuned"].to_numpy(float) * sign
    sizes = 30 + 370 * np.nan_to_num(frame["d2s"].to_numpy(float)).clip(min=0) / d2s_max
    for xi, yi, si, task, s in zip(x, y, sizes, frame["task"], sign):
        ax.scatter(xi, yi, s=si, color=colours[task], alpha=0.8, edgecolors="k", linewidths=0.5,
                   label=f"{task}{' (−)' if s < 0 else ''}")
    # a legend, not labels at the points: tasks that barely move sit on top of each other near the diagonal
    legend = ax.legend(fontsize=st["font_size"] - 2, loc="upper left", frameon=False)
    for handle in legend.legend_handles:
        handle.set_sizes([30])
    lo, hi = np.nanmin(np.r_[x, y]), np.nanmax(np.r_[x, y])
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.5", linewidth=0.8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("trained from scratch")
    ax.set_ylabel("fine-tuned from pretrained")
    return sign


def _draw_scratch_vs_finetuned(frame: pd.DataFrame, st: dict) -> Figure:
    _require(frame, ("task", "scratch", "finetuned", "d2s", "higher_is_better"), "scratch_vs_finetuned")
    models = _groups(frame, "model")
    colours = _colours(frame["task"])
    d2s = np.nan_to_num(frame["d2s"].to_numpy(float)).clip(min=0)
    d2s_max = float(d2s.max()) if d2s.max() > 0 else 1.0  # one scale for every panel
    fig, axes = _figure(1, len(models), (4.6, 4.2))
    for ax, model in zip(axes[0], models):
        sign = _scatter_panel(ax, _part(frame, model=model), colours, d2s_max, st)
        note = f"marker area ∝ D2S (max {d2s.max():.3g})"
        if (sign < 0).any():
            note += "; (−): lower-is-better metric negated"
        ax.set_title(note if model is None else f"{model}\n{note}", fontsize=st["font_size"] - 1)
    return fig


def scratch_vs_finetuned(frame: pd.DataFrame, stem: str | Path, footer: str,
                         style: Mapping[str, Any] | None = None) -> int:
    """001 Fig. 1b: fine-tuned (y) vs scratch (x) metric per task, marker area proportional to D2S, y=x line; one
    panel per compared model.

    frame columns: task, scratch, finetuned, d2s (unbiased MMD², negative estimates drawn as 0),
    higher_is_better, and optionally model. Tasks whose metric is lower-is-better are drawn with both values
    negated and labelled "(−)", so for every task a point above the diagonal is a gain.
    """
    return _render(stem, footer, style, lambda st: _draw_scratch_vs_finetuned(frame, st))


# --- 001 Fig. 2 ------------------------------------------------------------------------------------------------


def _correlation_row(correlations: pd.DataFrame, distance: str, reference: Any, model: Any = None) -> pd.Series:
    sel = correlations["distance"].astype(str).str.lower() == distance
    for column, value in (("reference", reference), ("model", model)):
        if value is not None and column in correlations.columns:
            sel &= correlations[column] == value
    if sel.sum() != 1:
        where = f"distance={distance}" + "".join(f", {c}={v}" for c, v in (("reference", reference), ("model", model))
                                                 if v is not None)
        raise ValueError(f"rpg_vs_distance: expected one correlations row for {where}, found {int(sel.sum())}")
    return correlations[sel].iloc[0]


def _interval(c: pd.Series, name: str) -> str:
    low, high = c.get(f"{name}_ci_low", np.nan), c.get(f"{name}_ci_high", np.nan)
    return f" [{low:.2f}, {high:.2f}]" if np.isfinite(low) and np.isfinite(high) else ""


def _draw_rpg_vs_distance(frame: pd.DataFrame, correlations: pd.DataFrame, st: dict) -> Figure:
    _require(frame, ("task", "rpg", *DISTANCES), "rpg_vs_distance")
    _require(correlations, CORRELATION_COLUMNS, "rpg_vs_distance correlations")
    drawn = frame[np.isfinite(frame["rpg"].to_numpy(float))]
    if drawn.empty:
        raise ValueError("rpg_vs_distance: no task has an RPG to draw")
    rows = [(m, r) for m in _groups(drawn, "model") for r in _groups(_part(drawn, model=m), "reference")]
    colours = _colours(drawn["task"])
    fig, axes = _figure(len(rows), len(DISTANCES))
    for row, (model, reference) in zip(axes, rows):
        part = _part(drawn, model=model, reference=reference)
        for ax, distance in zip(row, DISTANCES):
            for _, r in part.iterrows():
                # error bars: the seeds' spread of RPG, the distance's standard error over cases
                ax.errorbar(r[distance], r["rpg"], xerr=r.get(f"{distance}_se", np.nan),
                            yerr=r.get("rpg_seed_sd", np.nan), fmt="o", color=colours[r["task"]], mec="k", mew=0.5,
                            elinewidth=0.8, capsize=2, label=str(r["task"]))
            c = _correlation_row(correlations, distance, reference, model)
            prefix = ": ".join(str(v) for v in (model, reference) if v is not None)
            ax.set_title(f"{prefix + ': ' if prefix else ''}RPG vs {distance.upper()}\n"
                         f"r={c['pearson_r']:.2f}{_interval(c, 'pearson')} (p={c['pearson_p']:.2g})\n"  # 3 lines:
                         f"ρ={c['spearman_rho']:.2f} (p={c['spearman_p']:.2g}), n={int(c['n'])}",  # no overlap
                         fontsize=st["font_size"] - 1)
            ax.set_xlabel(f"{distance.upper()} (unbiased MMD²)")
            ax.set_ylabel("RPG (%)")
    # one legend of task colours instead of a text label at each point: labels cannot overlap
    handles = {t: h for ax in fig.axes for h, t in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=st["font_size"] - 1,
               title="task")
    left_out = frame[~np.isfinite(frame["rpg"].to_numpy(float))]
    if not left_out.empty:
        notes = dict.fromkeys(f"{r['task']} ({r['reference']}): {r.get('note') or 'no RPG'}"
                              if "reference" in left_out.columns else f"{r['task']}: {r.get('note') or 'no RPG'}"
                              for _, r in left_out.iterrows())
        fig.suptitle("\n".join(notes), fontsize=st["font_size"] - 1, color="0.3")
    return fig


def rpg_vs_distance(frame: pd.DataFrame, correlations: pd.DataFrame, stem: str | Path, footer: str,
                    style: Mapping[str, Any] | None = None) -> int:
    """001 Fig. 2: RPG (y) against D2R, D2P and D2S (x, unbiased MMD²), one point per task with error bars (y: the
    fine-tuned seeds' std of RPG, `rpg_seed_sd`; x: the distance's standard error over cases, `<distance>_se`;
    either column may be absent), tasks told apart by colour in one legend, r with its bootstrap interval (when
    given), p, rho and n in each title; rows whose rpg is NaN (e.g. a reference scoring 0) are not drawn and are
    named, with their `note`, above the panels.

    frame columns: task, rpg, d2r, d2p, d2s and optionally model, reference, rpg_seed_sd, d2r_se, d2p_se, d2s_se,
    note: one row of three panels per (model, reference), as 001 gives each foundation model a row. correlations
    columns: distance, pearson_r, pearson_p, spearman_rho, spearman_p, n, optionally pearson_ci_low /
    pearson_ci_high, and model / reference when frame has them; exactly one row per (model, reference, distance)
    drawn.
    """
    return _render(stem, footer, style, lambda st: _draw_rpg_vs_distance(frame, correlations, st))


# --- 001 Fig. 3 ------------------------------------------------------------------------------------------------


def _val_column(task: str, runs: Mapping[str, pd.DataFrame], metrics: Mapping[str, str] | None) -> str:
    """The validation column for a task: given by `metrics` (as "dice" or "val_dice"), else the only val_ column."""
    if metrics and task in metrics:
        metric = metrics[task]
        return metric if metric.startswith("val_") else f"val_{metric}"
    found = sorted({c for h in runs.values() for c in h.columns if str(c).startswith("val_")})
    if len(found) != 1:
        raise ValueError(f"learning_curves: give metrics[{task!r}]; validation columns found: {found}")
    return found[0]


def _draw_learning_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]], metrics: Mapping[str, str] | None,
                          st: dict) -> Figure:
    if not histories:
        raise ValueError("learning_curves: no tasks to draw")
    colours = _colours([init for runs in histories.values() for init in runs])
    fig, axes = _figure(2, len(histories), (3.2, 2.6))
    for col, (task, runs) in enumerate(histories.items()):
        if not runs:
            raise ValueError(f"learning_curves: task {task!r} has no runs")
        val = _val_column(task, runs, metrics)
        loss_ax, val_ax = axes[0, col], axes[1, col]
        for init, h in runs.items():
            _require(h, ("epoch", "train_total", val), f"learning_curves[{task!r}][{init!r}]")
            loss_ax.plot(h["epoch"], h["train_total"], color=colours[init], label=init)
            # Validation may run every k epochs; drop the empty epochs so the line joins the measured ones.
            v = h[["epoch", val]].dropna()
            val_ax.plot(v["epoch"], v[val], color=colours[init], marker="o", markersize=2.5, label=init)
        loss_ax.set_title(str(task))
        loss_ax.set_ylabel("training loss")
        val_ax.set_ylabel(val.removeprefix("val_"))
        val_ax.set_xlabel("epoch")
        for ax in (loss_ax, val_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=st["font_size"] - 2)
    return fig


def learning_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]], stem: str | Path, footer: str,
                    style: Mapping[str, Any] | None = None, metrics: Mapping[str, str] | None = None) -> int:
    """001 Fig. 3: per task, training loss (top row) and validation metric (bottom row) per epoch, one line per init.

    histories: {task: {init label (e.g. finetuned, scratch): DataFrame with epoch, train_total, val_<metric>}}.
    metrics: {task: metric name}; a task left out must have exactly one val_ column. Panels: 2 x n_tasks.
    """
    return _render(stem, footer, style, lambda st: _draw_learning_curves(histories, metrics, st))


# --- CKA -------------------------------------------------------------------------------------------------------


def _draw_cka_heatmaps(matrices: Mapping[str, pd.DataFrame], st: dict) -> Figure:
    if not matrices:
        raise ValueError("cka_heatmaps: no matrices to draw")
    n = len(matrices)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    side = max(3.2, 0.38 * max(max(m.shape) for m in matrices.values()))
    fig, axes = _figure(nrows, ncols, (side, side))
    cmap = matplotlib.colormaps[st["cmap"]]
    image = None
    for ax, (title, m) in zip(axes.flat, matrices.items()):
        if m.empty:
            raise ValueError(f"cka_heatmaps: matrix {title!r} is empty")
        values = m.to_numpy(float)
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                # Pick black or white text by the cell's luminance so every value stays readable.
                r, g, b, _ = cmap(v)
                ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=ink, fontsize=max(4, st["font_size"] - 3))
        ax.set_xticks(range(m.shape[1]), [str(c) for c in m.columns], rotation=90)
        ax.set_yticks(range(m.shape[0]), [str(i) for i in m.index])
        ax.set_xlabel(str(m.columns.name or "layer"))
        ax.set_ylabel(str(m.index.name or "layer"))
        ax.set_title(str(title))
    for ax in axes.flat[n:]:
        ax.remove()
    # Below the panels: on the right the long "task: pair" titles of the last column ran under it.
    fig.colorbar(image, ax=list(axes.flat[:n]), label="CKA", location="bottom", shrink=0.6, aspect=40)
    return fig


def cka_heatmaps(matrices: Mapping[str, pd.DataFrame], stem: str | Path, footer: str,
                 style: Mapping[str, Any] | None = None) -> int:
    """Layer x layer CKA heatmaps, one panel per {title: DataFrame (index/columns = layer names)}, shared 0..1 scale."""
    return _render(stem, footer, style, lambda st: _draw_cka_heatmaps(matrices, st))


def _draw_cka_by_level(curves: Mapping[str, pd.DataFrame], st: dict) -> Figure:
    if not curves:
        raise ValueError("cka_by_level: no tasks to draw")
    ncols = min(len(curves), 4)
    nrows = -(-len(curves) // ncols)
    fig, axes = _figure(nrows, ncols, (2.8, 2.4))
    colours = matplotlib.colormaps["tab10"]
    pairs = list(dict.fromkeys(p for frame in curves.values() for p in frame["pair"]))
    for ax, (task, frame) in zip(axes.flat, curves.items()):
        for k, pair in enumerate(pairs):
            part = frame[frame["pair"] == pair]
            if part.empty:
                continue
            x = np.arange(len(part))
            # the subsampling interval need not hold the full-sample estimate (CKA's bias grows as n shrinks)
            below = (part["linear"] - part["ci_low"]).clip(lower=0)
            above = (part["ci_high"] - part["linear"]).clip(lower=0)
            ax.errorbar(x, part["linear"], yerr=[below, above],
                        fmt="o-", color=colours(k), capsize=2, ms=3, lw=1, label=pair)
            ax.set_xticks(x, [str(level) for level in part["layer_a"]], rotation=45)
        ax.set_title(str(task))
        ax.set_ylabel("linear CKA")
        ax.ticklabel_format(axis="y", useOffset=False)  # CKA near 1: values, not "+1" and tiny offsets
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_axis_off()
    handles = {t: h for ax in fig.axes for h, t in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside upper center", ncols=len(handles), frameon=False)
    return fig


def cka_by_level(curves: Mapping[str, pd.DataFrame], stem: str | Path, footer: str,
                 style: Mapping[str, Any] | None = None) -> int:
    """000 Table 6 as a picture: per task (panel), the linear CKA of each encoder pair by level, with its interval.
    `curves`: {task: rows with pair, layer_a, linear, ci_low, ci_high, in level order}."""
    return _render(stem, footer, style, lambda st: _draw_cka_by_level(curves, st))


# --- 003 lens --------------------------------------------------------------------------------------------------


def _draw_lens_heatmap(change: pd.DataFrame, st: dict) -> Figure:
    if change.empty:
        raise ValueError("lens_heatmap: no features or tasks to draw")
    values = change.astype(float)
    top = values.abs().max(axis=1).sort_values(ascending=False).index[: int(st["top_features"])]
    shown = values.loc[top]
    fig, axes = _figure(1, 1, (max(3.0, 0.7 * shown.shape[1] + 2.5), max(2.5, 0.2 * len(shown) + 1.2)))
    ax = axes[0, 0]
    finite_values = np.abs(shown.to_numpy())[np.isfinite(shown.to_numpy())]
    # tasks below the lens's R² floor arrive blank (NaN); all blank: an empty, labelled map
    vmax = float(finite_values.max()) if finite_values.size and finite_values.max() > 0 else 1.0
    # Signed changes need a diverging map centred on zero; magnitudes use the configured map.
    signed = bool((shown.to_numpy() < 0).any())
    image = ax.imshow(shown.to_numpy(), aspect="auto", interpolation="nearest",
                      cmap="RdBu_r" if signed else st["cmap"], vmin=-vmax if signed else 0.0, vmax=vmax)
    blank = [c for c in shown.columns if not np.isfinite(shown[c].to_numpy(float)).any()]
    ax.set_xticks(range(shown.shape[1]), [f"{c} (R² below floor)" if c in blank else str(c) for c in shown.columns],
                  rotation=45, ha="right")
    ax.set_yticks(range(len(shown)), [str(i) for i in shown.index], fontsize=max(4, st["font_size"] - 2))
    ax.set_title(f"radiomic weight change (top {len(shown)} features)")
    fig.colorbar(image, ax=ax, label="weight change")
    return fig


def lens_heatmap(change: pd.DataFrame, stem: str | Path, footer: str, style: Mapping[str, Any] | None = None) -> int:
    """003: heatmap of radiomic weight change, features (index) x tasks (columns), top-N rows by max |change|.

    N is style["top_features"] (default 30).
    """
    return _render(stem, footer, style, lambda st: _draw_lens_heatmap(change, st))


def _draw_lens_class_bars(groups: pd.DataFrame, st: dict) -> Figure:
    _require(groups, ("task", "group", "change"), "lens_class_bars")
    dup = groups[groups.duplicated(["task", "group"], keep=False)]
    if not dup.empty:
        raise ValueError(f"lens_class_bars: duplicate (task, group) rows: {dup[['task', 'group']].values.tolist()}")
    table = groups.pivot(index="task", columns="group", values="change")
    table = table.loc[list(dict.fromkeys(groups["task"]))]
    # The three paper classes first, in their fixed order; any other group after them.
    order = [g for g in RADIOMIC_CLASSES if g in table.columns]
    order += [g for g in table.columns if g not in RADIOMIC_CLASSES]
    colours = _colours(order)
    fig, axes = _figure(1, 1, (max(3.5, 1.1 * len(table) + 1.5), 3.2))
    ax = axes[0, 0]
    width = 0.8 / len(order)
    x = np.arange(len(table))
    for k, group in enumerate(order):
        ax.bar(x + (k - (len(order) - 1) / 2) * width, table[group].to_numpy(float), width, label=str(group),
               color=colours[group])
    ax.set_xticks(x, [str(t) for t in table.index], rotation=30, ha="right")
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set_ylabel("weight change")
    ax.legend(fontsize=st["font_size"] - 2)
    return fig


def lens_class_bars(groups: pd.DataFrame, stem: str | Path, footer: str, style: Mapping[str, Any] | None = None) -> int:
    """003: grouped bars of weight change per radiomic class (intensity, shape, texture) per task.

    groups columns: task, group, change; one row per (task, group).
    """
    return _render(stem, footer, style, lambda st: _draw_lens_class_bars(groups, st))


# --- segmentation overlays -------------------------------------------------------------------------------------


def _labels(case: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(case[key])
    if labels.shape != shape:
        raise ValueError(f"segmentation_overlays: case {case['title']!r}: {key} shape {labels.shape} != image {shape}")
    if not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"segmentation_overlays: case {case['title']!r}: {key} holds non-integer labels")
    return labels.astype(int)


def _overlay(ax: Axes, image: np.ndarray, labels: np.ndarray | None) -> None:
    ax.imshow(image, cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    if labels is None:
        return
    palette = np.asarray(matplotlib.colormaps["tab10"].colors)
    fg = labels > 0
    rgba = np.zeros((*labels.shape, 4))
    rgba[fg, :3] = palette[(labels[fg] - 1) % len(palette)]
    rgba[fg, 3] = 0.35
    ax.imshow(rgba, interpolation="nearest")
    for k in np.unique(labels[fg]):
        ax.contour((labels == k).astype(float), levels=[0.5], colors=[palette[(k - 1) % len(palette)]],
                   linewidths=0.8)


def _draw_segmentation_overlays(cases: Sequence[Mapping[str, Any]], st: dict) -> Figure:
    if not cases:
        raise ValueError("segmentation_overlays: no cases to draw")
    fig, axes = _figure(len(cases), 3, (2.6, 2.6))
    for row, case in zip(axes, cases):
        missing = [k for k in ("title", "image", "truth", "prediction") if k not in case]
        if missing:
            raise ValueError(f"segmentation_overlays: case {case.get('title', '?')!r} lacks {missing}")
        image = np.asarray(case["image"], dtype=float)
        if image.ndim != 2:
            raise ValueError(f"segmentation_overlays: case {case['title']!r}: image must be 2-D, got {image.shape}")
        for ax, (name, labels) in zip(row, (("image", None), ("truth", _labels(case, "truth", image.shape)),
                                             ("prediction", _labels(case, "prediction", image.shape)))):
            _overlay(ax, image, labels)
            ax.set_title(f"{case['title']}: {name}", fontsize=st["font_size"] - 1)
    return fig


def segmentation_overlays(cases: Sequence[Mapping[str, Any]], stem: str | Path, footer: str,
                          style: Mapping[str, Any] | None = None) -> int:
    """Test cases of a segmentation task, one row each: image, image + truth, image + prediction (3 x n_cases).

    cases: dicts with title, image (2-D array, e.g. a mid slice), truth and prediction (2-D integer labels,
    0 = background), all the same shape.
    """
    return _render(stem, footer, style, lambda st: _draw_segmentation_overlays(cases, st))
