"""Configuration of the phantom (the `data.phantom` slice without `seed`): defaults and validation.

`cfg` keys, defaults in `DEFAULTS`:
  matrix [rows, cols] int            T2W in-plane matrix                                  [128, 128]
  fov_mm [rows, cols] float           in-plane field of view, mm (rows = A-P, cols = R-L)  [140, 140]
  slices [min, max] int               slice count; raised per case when needed to cover gland + seminal vesicles
                                                                                           [20, 28]
  slice_thickness_mm [min, max]       slice thickness, mm (also DWI)                       [3.0, 3.6]
  dwi_matrix [rows, cols] int         DWI/ADC in-plane matrix (same FOV, slices and pose)  [64, 64]
  b_values list[float]                acquired b-values, s/mm^2                            [50, 400, 800]
  computed_b float                    b of the computed high-b image written as `dwi`      1400
  label_noise float                   probability a PI-RADS label is shifted by +-1 in 2-5 0.1
  snr_t2w [min, max]                  T2W SNR (PZ signal / noise sd); 1.5 T draws from the lower half  [15, 40]
  snr_dwi [min, max]                  DWI SNR at the highest acquired b (PZ); likewise     [5, 15]
  gland_volume_ml [min, max]          prostate volume, log-normal with the geometric mean as median  [20, 80]
  max_lesions int                     0..max_lesions lesions per case (uniform)            3
  rotation_deg float                  max pose rotation about each axis, degrees           10
  shift_mm float                      max pose translation along each axis, mm             5
"""

from __future__ import annotations

from taskalign.data.phantom.tissues import LESION0

DEFAULTS: dict = {
    "matrix": [128, 128],
    "fov_mm": [140.0, 140.0],
    "slices": [20, 28],
    "slice_thickness_mm": [3.0, 3.6],
    "dwi_matrix": [64, 64],
    "b_values": [50, 400, 800],
    "computed_b": 1400,
    "label_noise": 0.1,
    "snr_t2w": [15, 40],
    "snr_dwi": [5, 15],
    "gland_volume_ml": [20, 80],
    "max_lesions": 3,
    "rotation_deg": 10,
    "shift_mm": 5,
}


def phantom_config(cfg: dict | None) -> dict:
    """DEFAULTS updated with `cfg`; unknown keys (including `seed`, which is an argument) are an error."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown phantom config key(s) {unknown}; known: {sorted(DEFAULTS)}"
                         + (" (pass the seed as the `seed` argument)" if "seed" in unknown else ""))
    out = {**DEFAULTS, **cfg}
    for key in ("matrix", "fov_mm", "slices", "slice_thickness_mm", "dwi_matrix", "snr_t2w", "snr_dwi",
                "gland_volume_ml"):
        if len(out[key]) != 2 or min(out[key]) <= 0:
            raise ValueError(f"phantom config {key} must be two positive numbers, got {out[key]}")
        if key not in ("matrix", "fov_mm", "dwi_matrix") and out[key][0] > out[key][1]:
            raise ValueError(f"phantom config {key} must be [min, max], got {out[key]}")
    if len(out["b_values"]) < 2 or len(set(out["b_values"])) < 2:
        raise ValueError(f"phantom config b_values needs two distinct b-values, got {out['b_values']}")
    if not 0 <= out["label_noise"] <= 1:
        raise ValueError(f"phantom config label_noise must be in [0, 1], got {out['label_noise']}")
    if not 0 <= int(out["max_lesions"]) <= 255 - LESION0:
        raise ValueError(f"phantom config max_lesions must be in 0-{255 - LESION0}, got {out['max_lesions']}")
    out["max_lesions"] = int(out["max_lesions"])
    return out

