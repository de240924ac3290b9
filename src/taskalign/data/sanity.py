"""Anatomical sanity checks: named, each an error, a warning or off by config (`data.checks`, `data.check_limits`).

The integrity check runs them on the native masks (a wrong geometry or a label that contradicts the mask is
caught before anything is computed); preprocessing runs them again with the cache, where the lesion's volume change
is known, and writes every warning into meta.json, so the QC montage marks the case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taskalign.data.grid import Grid
from taskalign.data.labels import ZONE_LABELS

LEVELS = ("error", "warning", "off")
# name -> default level. A lesion mostly outside the gland means its geometry is wrong (an error); the others can
# be true of sound data (PI-CAI delineates csPCa, ISUP >= 2, only; a report's volume is an ellipsoid estimate).
DEFAULT_LEVELS = {
    "lesion_outside_gland": "error",
    "lesion_volume_change": "warning",
    "volume_ml_mismatch": "warning",
    "pirads_without_lesion": "warning",
}
DEFAULT_LIMITS = {
    # fraction of lesion voxels (on the lesion's own grid) outside the gland: an error from this fraction ...
    "lesion_outside_gland": 0.2,
    # ... and a warning from this one (a lesion at the capsule; a 10 mm shift puts about a quarter outside)
    "lesion_outside_gland_warning": 0.05,
    "lesion_volume_change": 0.3,  # relative change of lesion volume, native -> cache
    "volume_ml_mismatch": 0.1,  # relative difference of volume_ml and the prostate mask's volume
    "pirads_without_lesion": 3,  # lowest PI-RADS that expects a lesion in the mask
}


@dataclass(frozen=True)
class SanityConfig:
    levels: dict[str, str]
    limits: dict[str, float]


@dataclass(frozen=True)
class Finding:
    """One failed check: which, how serious, the manifest column it is about, and what the user reads."""

    check: str
    level: str
    column: str
    message: str


def sanity_config(levels: dict | None = None, limits: dict | None = None) -> SanityConfig:
    """Defaults updated with `levels` (name -> error/warning/off) and `limits` (name -> number); unknown names
    and levels are a ValueError (a configuration error)."""
    levels, limits = dict(levels or {}), dict(limits or {})
    for given, what, known in ((levels, "checks", DEFAULT_LEVELS), (limits, "check_limits", DEFAULT_LIMITS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"data.{what}: unknown check(s) {unknown}; known: {sorted(known)}")
    bad = {name: level for name, level in levels.items() if level not in LEVELS}
    if bad:
        raise ValueError(f"data.checks: levels must be one of {LEVELS}, got {bad}")
    return SanityConfig({**DEFAULT_LEVELS, **levels}, {**DEFAULT_LIMITS, **{k: float(v) for k, v in limits.items()}})


def gland_mask(masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """The gland as a bool array: the prostate mask, else the zones' TZ + PZ; None when the case has neither."""
    if "prostate" in masks:
        return masks["prostate"] > 0
    if "zones" in masks:
        return np.isin(masks["zones"], (ZONE_LABELS["tz"], ZONE_LABELS["pz"]))
    return None


def outside_fraction(lesion: np.ndarray, lesion_grid: Grid, gland: np.ndarray, gland_grid: Grid) -> float | None:
    """Fraction of the lesion's voxels, counted on the lesion's own grid, whose centre lies outside the gland (the
    gland voxel nearest to it is background, or it lies outside the gland's grid); None for an empty lesion or
    gland. On its own grid a lesion keeps every voxel: resampling it first can lose it all (a flipped axis)."""
    index = np.argwhere(lesion > 0)
    if not len(index) or not gland.any():
        return None
    if lesion_grid.matches(gland_grid):
        inside = gland[tuple(index.T)]
    else:
        voxels, within = gland_grid.nearest_voxels(lesion_grid.voxel_centres(index))
        inside = within & gland[tuple(voxels.T)]
    return 1.0 - float(np.count_nonzero(inside)) / len(index)


def lesion_outside_gland(outside: float | None, limits: dict[str, float]) -> tuple[str, str] | None:
    """(level, message) when `outside` (a fraction) reaches the error or the warning limit."""
    error, warning = limits["lesion_outside_gland"], limits["lesion_outside_gland_warning"]
    if outside is None or outside < min(error, warning):
        return None
    level, limit = ("error", error) if outside >= error else ("warning", warning)
    return level, (f"{outside:.0%} of the lesion lies outside the prostate (measured on the lesion's own grid; "
                   f"{level} from {limit:.0%}): the lesion mask's geometry is probably wrong (another grid, a flipped "
                   "axis, a shifted origin or another case's mask)")


def pirads_without_lesion(pirads: str, lesion: np.ndarray, limit: float) -> str | None:
    if not _number(pirads) or _number(pirads) < limit or lesion.any():
        return None
    return (f"PI-RADS {int(float(pirads))} but the lesion mask is empty (PI-CAI delineates csPCa, ISUP >= 2, only: "
            "a PI-RADS >= 3 case with ISUP <= 1 has no lesion mask)")


def relative_change(value: float, reference: float, limit: float) -> float | None:
    """|value - reference| / reference when it exceeds `limit`; None within it or without a reference."""
    if reference <= 0:
        return None
    change = abs(value - reference) / reference
    return change if change > limit else None


def volume_ml_mismatch(volume_ml: str, mask_ml: float, limit: float) -> str | None:
    given = _number(volume_ml)
    difference = relative_change(given, mask_ml, limit) if given else None
    if difference is None:
        return None
    return (f"volume_ml {given:g} mL (given in the manifest, e.g. a radiology report's estimate) differs from the "
            f"prostate mask's {mask_ml:.1f} mL by {difference:.0%} (limit {limit:.0%}); the tasks use volume_ml")


def lesion_volume_change(native_ml: float, cache_ml: float, limit: float) -> str | None:
    if relative_change(cache_ml, native_ml, limit) is None:
        return None
    return (f"lesion volume {cache_ml:.3f} mL in the cache vs {native_ml:.3f} mL native ({cache_ml / native_ml:.0%} "
            f"kept, limit +-{limit:.0%}): the cache grid is too coarse for this lesion")


def _number(text: str) -> float | None:
    """The value, or None when empty or not a number (the table check reports those)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def native_findings(row: dict, masks: dict[str, np.ndarray], grids: dict[str, Grid], cfg: SanityConfig) -> list[Finding]:
    """Checks on a case's native masks (each on its own grid, `grids`) and its manifest values. A mask on another
    grid than the gland (a lesion drawn on the ADC) is compared in patient space."""
    gland = gland_mask(masks)
    gland_grid = grids["prostate" if "prostate" in masks else "zones"] if gland is not None else None
    lesion = masks.get("lesion")
    found = []
    if lesion is not None and gland is not None and cfg.levels["lesion_outside_gland"] != "off":
        result = lesion_outside_gland(outside_fraction(lesion, grids["lesion"], gland, gland_grid), cfg.limits)
        if result:
            level = "warning" if cfg.levels["lesion_outside_gland"] == "warning" else result[0]
            found.append(Finding("lesion_outside_gland", level, "lesion", result[1]))
    checks = []
    if lesion is not None:
        checks.append(("pirads_without_lesion", "pirads",
                       pirads_without_lesion(str(row.get("pirads") or ""), lesion, cfg.limits["pirads_without_lesion"])))
    if "prostate" in masks:
        mask_ml = int(np.count_nonzero(masks["prostate"])) * grids["prostate"].voxel_ml
        checks.append(("volume_ml_mismatch", "volume_ml",
                       volume_ml_mismatch(str(row.get("volume_ml") or ""), mask_ml, cfg.limits["volume_ml_mismatch"])))
    return found + [Finding(name, cfg.levels[name], column, message)
                    for name, column, message in checks if message and cfg.levels[name] != "off"]


def cache_findings(lesion_native_ml: float | None, lesion_cache_ml: float | None, cfg: SanityConfig) -> list[Finding]:
    """Checks that need the cache: the lesion's volume change."""
    name = "lesion_volume_change"
    if lesion_native_ml is None or cfg.levels[name] == "off":
        return []
    message = lesion_volume_change(lesion_native_ml, lesion_cache_ml or 0.0, cfg.limits[name])
    return [Finding(name, cfg.levels[name], "lesion", message)] if message else []
