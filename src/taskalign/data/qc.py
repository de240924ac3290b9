"""QC montages of cached cases: every channel through the gland and its lesions, mask outlines on top, cases with
warnings framed in red (results/qc/{cohort}/)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from scipy import ndimage  # noqa: E402

from taskalign.data.labels import MASK_COLUMNS, ZONE_LABELS  # noqa: E402
from taskalign.runtime import atomic_path, read_array  # noqa: E402

# Outline colours: distinct from each other and visible on grey images. The whole gland is drawn dashed
# on top, since its outline coincides with the zones' outer boundary.
MASK_COLOURS = {"prostate": "#ffd700", "lesion": "#ff2020", "rectum": "#ff69b4"}
ZONE_COLOURS = {
    "tz": "#3b6cff",
    "pz": "#32cd32",
    "bladder": "#00e5ff",
    "rectum": "#ff69b4",
    "seminal_vesicles": "#b266ff",
    "bone": "#f0f0f0",
    "obturator_internus": "#ff8c00",
    "nvb": "#d2691e",
}
DASHED = {"prostate"}
WARNING_COLOUR = "#ff5050"  # title and frame of a case with warnings
# Outlines drawn later lie on top. The TZ's border is the PZ's inner border, so the TZ goes after the PZ (else its
# blue never shows), and the dashed gland goes last.
DRAW_LAST = ("zone tz", "prostate")
# The zones that tile the gland share every border with each other or with the gland's dashes, so outlines alone
# hide them (the PZ's green never showed); they are also tinted.
FILLED = {"zone pz": 0.25, "zone tz": 0.2}


def _outlines(masks: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """(legend label, colour, binary (D, H, W) mask) for every structure to outline, in drawing order."""
    out = []
    zones = masks.get("zones")
    for name, mask in masks.items():
        if name == "zones":
            for zone, label in ZONE_LABELS.items():
                if (mask == label).any():
                    out.append((f"zone {zone}", ZONE_COLOURS[zone], mask == label))
        elif name == "rectum" and zones is not None and (zones == ZONE_LABELS["rectum"]).any():
            continue  # the same structure as zone rectum
        elif mask.any():
            out.append((name, MASK_COLOURS.get(name, "#ffffff"), mask > 0))
    return sorted(out, key=lambda item: DRAW_LAST.index(item[0]) + 1 if item[0] in DRAW_LAST else 0)


def _gland(masks: dict[str, np.ndarray]) -> np.ndarray | None:
    for name in ("prostate", "zones"):
        if name in masks and masks[name].any():
            return masks[name] > 0
    return None


def _slices_through(gland: np.ndarray | None, lesion: np.ndarray | None, depth: int, height: int, width: int,
                    n_axial: int) -> tuple[list[int], int, int]:
    """Axial slice indices and the (y, x) of the sagittal/coronal cuts. With a lesion: every lesion's largest
    slice first (a small lesion falls between evenly spaced slices), the rest spread over the gland, and the cuts
    through the largest lesion; without one: evenly over the gland (or the middle of the crop)."""
    if gland is not None:
        zs, ys, xs = np.nonzero(gland)
        spread = np.round(np.linspace(zs.min(), zs.max(), n_axial)).astype(int)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    else:
        spread = np.round(np.linspace(0.2 * (depth - 1), 0.8 * (depth - 1), n_axial)).astype(int)
        cy, cx = height // 2, width // 2
    if lesion is None or not lesion.any():
        return sorted(set(spread.tolist())), cy, cx
    components, n = ndimage.label(lesion > 0)
    sizes = ndimage.sum_labels(np.ones_like(components), components, range(1, n + 1))
    chosen = []
    for label in np.argsort(-sizes)[:n_axial] + 1:
        area_per_slice = (components == label).sum(axis=(1, 2))
        chosen.append(int(np.argmax(area_per_slice)))
    _, ly, lx = np.nonzero(components == int(np.argmax(sizes)) + 1)
    cy, cx = int(round(ly.mean())), int(round(lx.mean()))
    for z in spread:  # fill up with the gland's evenly spaced slices
        if len(set(chosen)) >= n_axial:
            break
        if min(abs(int(z) - c) for c in chosen) > 0:
            chosen.append(int(z))
    return sorted(set(chosen)), cy, cx


def _grey_window(volume: np.ndarray, gland: np.ndarray | None) -> tuple[float, float]:
    """Grey levels span the gland's own values (1st to 99th percentile, widened by a quarter each way): over the
    whole crop the bladder's urine sets the top and the contrast inside the gland, a lesion on ADC, is lost."""
    if not volume.any():
        return 0.0, 1.0
    if gland is None:
        return tuple(np.percentile(volume, [1, 99]))
    low, high = np.percentile(volume[gland], [1, 99])
    margin = 0.25 * (high - low)
    return low - margin, high + margin


def montage(
    image: np.ndarray,
    masks: dict[str, np.ndarray],
    channel_names,
    out_png: Path,
    title: str,
    spacing_zyx=(1.0, 1.0, 1.0),
    n_axial: int = 5,
    warned: bool = False,
) -> None:
    """Write a PNG: one row per channel; columns = `n_axial` axial slices through the gland (and through every
    lesion), a sagittal and a coronal view through the largest lesion (else the gland's centre); mask outlines on
    every panel and a legend. `warned`: the case has warnings; a red frame and title mark it.

    image: (C, D, H, W) float; masks: name -> (D, H, W) int (zones drawn per label); spacing_zyx: mm, sets the
    aspect ratios. Radiological display: patient right on the image left, anterior up (axial), superior up.
    """
    n_channels, depth, height, width = image.shape
    sz, sy, sx = (float(s) for s in spacing_zyx)
    gland = _gland(masks)
    z_slices, cy, cx = _slices_through(gland, masks.get("lesion"), depth, height, width, n_axial)
    outlines = _outlines(masks)

    # (label, 2D slicer, (row spacing, col spacing), origin, which outline slice)
    views = [(f"axial z={z}", lambda v, z=z: v[z], (sy, sx), "upper") for z in z_slices]
    views.append((f"sagittal x={cx}", lambda v: v[:, :, cx], (sz, sy), "lower"))
    views.append((f"coronal y={cy}", lambda v: v[:, cy, :], (sz, sx), "lower"))
    widths = [width * sx] * len(z_slices) + [height * sy, width * sx]
    row_height = max(height * sy, depth * sz)
    panel = 2.3 / max(widths)  # inches per mm
    fig, axes = plt.subplots(
        n_channels,
        len(views),
        figsize=(panel * sum(widths) + 0.8, panel * row_height * n_channels + 1.3),
        gridspec_kw={"width_ratios": widths, "wspace": 0.04, "hspace": 0.08},
        squeeze=False,
        facecolor="black",
    )
    for c in range(n_channels):
        volume = image[c]
        absent = not volume.any()
        vmin, vmax = _grey_window(volume, gland)
        for v, (label, cut, (rs, cs), origin) in enumerate(views):
            ax = axes[c, v]
            ax.imshow(cut(volume), cmap="gray", vmin=vmin, vmax=vmax, origin=origin, aspect=rs / cs,
                      interpolation="nearest")
            for label_name, colour, mask in outlines:
                piece = cut(mask)
                if piece.any() and label_name in FILLED:
                    ax.contourf(piece.astype(np.float32), levels=[0.5, 1.5], colors=[colour],
                                alpha=FILLED[label_name])
            for label_name, colour, mask in outlines:
                piece = cut(mask)
                if piece.any():
                    dashed = label_name in DASHED
                    ax.contour(piece.astype(np.float32), levels=[0.5], colors=[colour],
                               linewidths=1.3 if dashed else 0.9, linestyles="--" if dashed else "-")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():  # frame the crop: padding is as dark as the page
                spine.set_color("#606060")
            if c == 0:
                ax.set_title(label, color="white", fontsize=8)
            if v == 0:
                name = channel_names[c] + (" (absent)" if absent else "")
                ax.set_ylabel(name, color="white", fontsize=10)
    handles = [Line2D([], [], color=colour, lw=2, ls="--" if label in DASHED else "-", label=label,
                      marker="s" if label in FILLED else None, markersize=8, markerfacecolor=colour)
               for label, colour, _ in outlines]
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.08), ncol=min(len(handles), 6), frameon=False,
                   fontsize=8, labelcolor="white")
    fig.suptitle(title, color=WARNING_COLOUR if warned else "white", fontsize=9)
    if warned:
        fig.patch.set_edgecolor(WARNING_COLOUR)
        fig.patch.set_linewidth(6)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110, facecolor="black", edgecolor=fig.patch.get_edgecolor(),
                    bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def montage_case(case_dir: Path, out_png: Path) -> None:
    """Montage of one cache folder (image.npy, masks, meta.json; docs/data-contract.md, section 3)."""
    case_dir = Path(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text())
    image = read_array(case_dir / "image.npy", mmap_mode="r")
    masks = {m: read_array(case_dir / f"{m}.npy") for m in MASK_COLUMNS if (case_dir / f"{m}.npy").exists()}
    spacing = meta["spacing_mm"]
    volume = meta.get("volume_ml_native")
    title = (
        f"{meta['case_id']}  ({meta.get('cohort') or '?'}, {meta.get('split') or '?'})   "
        f"spacing z,y,x {spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} mm   "
        f"size {' x '.join(str(s) for s in meta['shape'])}"
    )
    if volume is not None:
        title += f"\nprostate {volume:.1f} mL native, {meta['volume_ml_cache']:.1f} mL cache"
    if meta.get("warnings"):
        title += "\nWARNING: " + "; ".join(meta["warnings"])
    montage(np.asarray(image), masks, meta["channels"], out_png, title, spacing_zyx=spacing,
            warned=bool(meta.get("warnings")))
