"""Paper figures on small hand-made inputs: real PNG/PDF files, the right number of data panels, atomic writes."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from taskalign.report import figures as F

FOOTER = "config 3fa2b1c0 | code 0.1.0 | device cpu"
TASKS = ["pirads", "lesion_seg", "gland_seg", "distortion", "superres"]


def _scores() -> pd.DataFrame:
    return pd.DataFrame({"task": TASKS, "scratch": [0.62, 0.40, 0.80, 4.1, 0.70],
                         "finetuned": [0.63, 0.45, 0.85, 3.2, 0.80], "d2s": [0.34, 0.2, 0.1, 0.05, 0.0],
                         "higher_is_better": [True, True, True, False, True]})


def _rpg(references: list[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frames, corrs = [], []
    for ref in references or [None]:
        f = pd.DataFrame({"task": TASKS, "rpg": rng.normal(10, 5, 5), "d2r": rng.random(5), "d2p": rng.random(5),
                          "d2s": rng.random(5)})
        c = pd.DataFrame({"distance": list(F.DISTANCES), "pearson_r": [-0.8, -0.3, -0.6],
                          "pearson_p": [0.03, 0.5, 0.2], "spearman_rho": [-0.7, -0.2, -0.5],
                          "spearman_p": [0.1, 0.7, 0.3], "n": [5, 5, 5]})
        if ref is not None:
            f["reference"] = ref
            c["reference"] = ref
        frames.append(f)
        corrs.append(c)
    return pd.concat(frames, ignore_index=True), pd.concat(corrs, ignore_index=True)


def _histories(n_tasks: int) -> tuple[dict, dict]:
    epochs = np.arange(1, 6)
    histories, metrics = {}, {}
    for t in range(n_tasks):
        metric = ["dice", "auc", "ssim"][t % 3]
        metrics[f"task{t}"] = metric
        histories[f"task{t}"] = {
            init: pd.DataFrame({"epoch": epochs, "train_total": 1.0 / (epochs + k),
                                f"val_{metric}": [np.nan, 0.5 + k / 10, np.nan, 0.6 + k / 10, 0.7 + k / 10]})
            for k, init in enumerate(["finetuned", "scratch", "random"])}
    return histories, metrics


def _cka(n: int) -> dict[str, pd.DataFrame]:
    layers = [f"block{i}" for i in range(4)]
    rng = np.random.default_rng(1)
    return {f"task{k} vs pretrained": pd.DataFrame(rng.random((4, 4)), index=layers, columns=layers) for k in range(n)}


def _change() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame(rng.normal(0, 1, (40, 3)), index=[f"feature_{i}" for i in range(40)],
                        columns=["pirads", "lesion_seg", "gland_seg"])


def _groups() -> pd.DataFrame:
    return pd.DataFrame([(t, g, v) for t in TASKS[:3] for g, v in zip(F.RADIOMIC_CLASSES, (0.3, -0.1, 0.5))],
                        columns=["task", "group", "change"])


def _cases(n: int) -> list[dict]:
    yy, xx = np.mgrid[:32, :32]
    truth = ((yy - 16) ** 2 + (xx - 16) ** 2 < 64).astype(int) + ((yy - 16) ** 2 + (xx - 16) ** 2 < 9)
    return [{"title": f"case{k}", "image": np.sin(xx / 4.0 + k) + yy / 32.0, "truth": truth,
             "prediction": np.roll(truth, k + 1, axis=1)} for k in range(n)]


# (public call, matching draw for inspection, expected panels)
CASES = {
    "scratch_vs_finetuned": (lambda stem, st: F.scratch_vs_finetuned(_scores(), stem, FOOTER, st),
                             lambda st: F._draw_scratch_vs_finetuned(_scores(), st), 1),
    "rpg_vs_distance": (lambda stem, st: F.rpg_vs_distance(*_rpg(None), stem, FOOTER, st),
                        lambda st: F._draw_rpg_vs_distance(*_rpg(None), st), 3),
    "rpg_vs_distance_2refs": (lambda stem, st: F.rpg_vs_distance(*_rpg(["random", "specialist"]), stem, FOOTER, st),
                              lambda st: F._draw_rpg_vs_distance(*_rpg(["random", "specialist"]), st), 6),
    "learning_curves": (lambda stem, st: F.learning_curves(_histories(3)[0], stem, FOOTER, st,
                                                           metrics=_histories(3)[1]),
                        lambda st: F._draw_learning_curves(*_histories(3), st), 6),
    "cka_heatmaps": (lambda stem, st: F.cka_heatmaps(_cka(4), stem, FOOTER, st),
                     lambda st: F._draw_cka_heatmaps(_cka(4), st), 4),
    "lens_heatmap": (lambda stem, st: F.lens_heatmap(_change(), stem, FOOTER, st),
                     lambda st: F._draw_lens_heatmap(_change(), st), 1),
    "lens_class_bars": (lambda stem, st: F.lens_class_bars(_groups(), stem, FOOTER, st),
                        lambda st: F._draw_lens_class_bars(_groups(), st), 1),
    "segmentation_overlays": (lambda stem, st: F.segmentation_overlays(_cases(2), stem, FOOTER, st),
                              lambda st: F._draw_segmentation_overlays(_cases(2), st), 6),
}


def _panels(fig: Figure) -> int:
    """Counted here, not with the module's helper: axes with plotted artists, colourbars excluded."""
    return sum(1 for ax in fig.axes
               if (ax.lines or ax.collections or ax.images or ax.patches) and ax.get_label() != "<colorbar>")


def _assert_outputs(folder: Path, stem: str) -> None:
    png, pdf = folder / f"{stem}.png", folder / f"{stem}.pdf"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.pdf", f"{stem}.png"]  # no temp files left


@pytest.mark.parametrize("name", list(CASES))
def test_figure_files_and_panel_count(tmp_path, name):
    call, draw, expected = CASES[name]
    assert call(tmp_path / name, {"dpi": 60}) == expected
    _assert_outputs(tmp_path, name)
    assert _panels(draw(F._style(None))) == expected


def test_colourbar_is_not_a_panel():
    fig = F._draw_cka_heatmaps(_cka(2), F._style(None))
    assert len(fig.axes) == 3  # two heatmaps + one shared colourbar; unused grid cells removed
    assert len(F._data_axes(fig)) == 2


def test_cka_shared_scale_and_annotations():
    fig = F._draw_cka_heatmaps(_cka(2), F._style(None))
    for ax in F._data_axes(fig):
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert len(ax.texts) == 16 and all(len(t.get_text()) == 4 for t in ax.texts)  # "0.xx" per cell


def test_table6_picture_draws_each_pair_by_level_with_its_interval():
    rows = [{"pair": pair, "layer_a": level, "linear": value, "ci_low": value - 0.01, "ci_high": min(value + 0.01, 1)}
            for pair, drop in (("pretrained-continual", 0.0), ("pretrained-finetuned", 0.05))
            for level, value in zip(("block3", "final"), (1.0 - drop / 2, 1.0 - drop))]
    curves = {"lesion_seg": pd.DataFrame(rows), "zone_seg": pd.DataFrame(rows)}
    fig = F._draw_cka_by_level(curves, F._style(None))
    panels = F._data_axes(fig)
    assert len(panels) == 2 and [t.get_text() for t in panels[0].get_xticklabels()] == ["block3", "final"]
    lines = [line for line in panels[0].lines if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    drawn = sorted(tuple(np.round(np.asarray(line.get_ydata(), float), 3)) for line in lines)
    assert drawn == [(0.975, 0.95), (1.0, 1.0)]


def test_lower_is_better_metric_is_negated():
    fig = F._draw_scratch_vs_finetuned(_scores(), F._style(None))
    points = np.vstack([c.get_offsets() for c in fig.axes[0].collections])
    assert np.allclose(points[3], [-4.1, -3.2])  # distortion (lower is better)
    assert np.allclose(points[0], [0.62, 0.63])
    assert "distortion (−)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_marker_area_grows_with_d2s():
    fig = F._draw_scratch_vs_finetuned(_scores(), F._style(None))
    sizes = [c.get_sizes()[0] for c in fig.axes[0].collections]
    assert sizes[0] == max(sizes) and sizes[4] == min(sizes)


def test_rpg_titles_carry_statistics():
    fig = F._draw_rpg_vs_distance(*_rpg(["random", "specialist"]), F._style(None))
    titles = [ax.get_title() for ax in F._data_axes(fig)]
    assert titles[0].startswith("random: RPG vs D2R") and "r=-0.80" in titles[0] and "n=5" in titles[0]
    assert titles[3].startswith("specialist: RPG vs D2R")


def test_rpg_points_have_error_bars_a_legend_and_name_the_left_out_task():
    frame, corr = _rpg(["random"])
    frame["rpg_seed_sd"] = 2.0
    frame[["d2r_se", "d2p_se", "d2s_se"]] = 0.05
    frame["note"] = ""
    frame.loc[4, ["rpg", "note"]] = [np.nan, "left out: the random reference scores spec_at_sens90 = 0"]
    fig = F._draw_rpg_vs_distance(frame, corr, F._style(None))
    ax = F._data_axes(fig)[0]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 4  # one per drawn task; the left-out one is not drawn
    _, (xerr, yerr) = bars[0].lines[0], bars[0].lines[2]
    assert np.ptp(yerr.get_segments()[0][:, 1]) == pytest.approx(4.0)  # ± the seeds' spread of RPG
    assert np.ptp(xerr.get_segments()[0][:, 0]) == pytest.approx(0.1)  # ± the distance's standard error
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(TASKS[:4])
    assert not ax.texts  # no per-point labels to overlap
    assert f"{TASKS[4]} (random): left out: the random reference scores" in fig._suptitle.get_text()


def test_rpg_missing_correlation_row_is_an_error():
    frame, corr = _rpg(None)
    with pytest.raises(ValueError, match="distance=d2s"):
        F._draw_rpg_vs_distance(frame, corr[corr["distance"] != "d2s"], F._style(None))


def test_learning_curves_metric_inferred_or_ambiguous(tmp_path):
    histories, _ = _histories(2)
    assert F.learning_curves(histories, tmp_path / "lc", FOOTER) == 4
    histories["task0"]["scratch"]["val_other"] = 0.0
    with pytest.raises(ValueError, match="task0"):
        F.learning_curves(histories, tmp_path / "lc2", FOOTER)


def test_learning_curves_one_line_per_init():
    fig = F._draw_learning_curves(*_histories(1), F._style(None))
    loss_ax, val_ax = fig.axes
    assert len(loss_ax.lines) == 3 and len(val_ax.lines) == 3
    assert len(val_ax.lines[0].get_xdata()) == 3  # epochs without validation are skipped


def test_lens_heatmap_keeps_top_features():
    change = _change()
    fig = F._draw_lens_heatmap(change, F._style({"top_features": 5}))
    ax = F._data_axes(fig)[0]
    assert ax.images[0].get_array().shape == (5, 3)
    expected = change.abs().max(axis=1).nlargest(5).index
    assert [t.get_text() for t in ax.get_yticklabels()] == list(expected)


def test_lens_class_bars_grouped():
    fig = F._draw_lens_class_bars(_groups(), F._style(None))
    assert len(fig.axes[0].patches) == 9  # 3 tasks x 3 classes


def test_segmentation_shape_mismatch_names_the_case():
    cases = _cases(1)
    cases[0]["prediction"] = cases[0]["prediction"][:16]
    with pytest.raises(ValueError, match="case0.*prediction"):
        F._draw_segmentation_overlays(cases, F._style(None))


def test_footer_is_drawn(tmp_path, monkeypatch):
    seen: list[str] = []
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        seen.extend(t.get_text() for t in self.texts)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    F.lens_class_bars(_groups(), tmp_path / "bars", FOOTER)
    assert FOOTER in seen


def test_failed_draw_writes_nothing(tmp_path):
    bad = _scores().drop(columns="d2s")
    with pytest.raises(ValueError, match="d2s"):
        F.scratch_vs_finetuned(bad, tmp_path / "fig1b", FOOTER)
    assert list(tmp_path.iterdir()) == []


def test_failed_draw_keeps_previous_outputs(tmp_path):
    F.lens_class_bars(_groups(), tmp_path / "bars", FOOTER)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="change"):
        F.lens_class_bars(_groups().drop(columns="change"), tmp_path / "bars", FOOTER)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failed_pdf_replaces_neither_file(tmp_path, monkeypatch):
    save = Figure.savefig

    def fail_pdf(self, fname, *args, format=None, **kwargs):
        if format == "pdf":
            Path(fname).write_bytes(b"%PDF-half")
            raise OSError("disk full")
        return save(self, fname, *args, format=format, **kwargs)

    monkeypatch.setattr(Figure, "savefig", fail_pdf)
    with pytest.raises(OSError):
        F.lens_class_bars(_groups(), tmp_path / "bars", FOOTER)
    assert list(tmp_path.iterdir()) == []


def _two_models(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame.assign(model="pretrained:mae/frozen"), frame.assign(model="pretrained:mt/partial:2")],
                     ignore_index=True)


def test_fig1b_one_panel_per_model():
    fig = F._draw_scratch_vs_finetuned(_two_models(_scores()), F._style(None))
    axes = F._data_axes(fig)
    assert len(axes) == 2 and axes[1].get_title().startswith("pretrained:mt/partial:2")


def test_fig2_one_row_per_model_and_reference_with_interval():
    frame, corr = _rpg(["random", "specialist"])
    corr = corr.assign(pearson_ci_low=-0.95, pearson_ci_high=-0.1)
    fig = F._draw_rpg_vs_distance(_two_models(frame), _two_models(corr), F._style(None))
    titles = [ax.get_title() for ax in F._data_axes(fig)]
    assert len(titles) == 12
    assert titles[0].startswith("pretrained:mae/frozen: random: RPG vs D2R") and "[-0.95, -0.10]" in titles[0]
    assert titles[9].startswith("pretrained:mt/partial:2: specialist: RPG vs D2R")
