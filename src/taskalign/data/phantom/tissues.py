"""Tissue table of the phantom: relaxation times, proton density and ADC per class, the class indices, the
zones-mask label of each class, lesion grades and vendor scaling."""

from __future__ import annotations

import numpy as np

from taskalign.data.labels import ZONE_LABELS

VENDORS = {
    # scale: stored-intensity units; bias_gain: coil-bias strength; noise_corr: in-plane noise correlation (voxels)
    "SIEMENS": {"scale": 1000.0, "bias_gain": 1.0, "noise_corr": 0.0},
    "Philips": {"scale": 2500.0, "bias_gain": 0.7, "noise_corr": 0.7},
    "GE": {"scale": 1600.0, "bias_gain": 1.3, "noise_corr": 0.4},
}

# Tissues. Ranges at 3 T: T1 (ms), T2 (ms), PD (relative), ADC (1e-3 mm^2/s). None = signal void.
TISSUES = (
    ("air", None),
    ("fat", ((350, 420), (120, 140), 0.90, (0.1, 0.3))),
    ("muscle", ((1300, 1500), (40, 50), 0.75, (1.3, 1.6))),  # gluteal muscle, unlabelled
    ("obturator", ((1300, 1500), (40, 50), 0.75, (1.3, 1.6))),
    ("marrow", ((500, 600), (90, 110), 0.70, (0.3, 0.6))),
    ("cortex", None),
    ("bladder_wall", ((1300, 1500), (45, 60), 0.75, (1.3, 1.6))),  # detrusor muscle
    ("urine", ((3000, 4000), (1000, 2000), 1.00, (2.8, 3.2))),
    ("seminal_vesicles", ((2000, 2500), (250, 500), 0.95, (1.8, 2.5))),
    ("rectal_wall", ((1200, 1400), (60, 80), 0.80, (1.2, 1.6))),
    ("rectal_content", ((1000, 1500), (50, 120), 0.50, (0.8, 1.6))),  # stool/mucus: assumed, not in the table
    ("rectal_air", None),
    ("nvb", ((1200, 1500), (80, 120), 0.80, (1.4, 1.8))),
    ("pz", ((1600, 1800), (120, 160), 0.85, (1.5, 1.9))),
    ("tz", ((1500, 1700), (80, 110), 0.80, (1.1, 1.5))),
    ("afms", ((1300, 1500), (45, 60), 0.75, (1.2, 1.5))),  # anterior fibromuscular stroma, labelled TZ
)
C = {name: k for k, (name, _) in enumerate(TISSUES)}
MAX_NODULES = 6
NODULE0 = len(TISSUES)  # BPH nodules: classes NODULE0 .. NODULE0 + MAX_NODULES - 1, TZ-derived values
LESION0 = NODULE0 + MAX_NODULES  # lesion l has class LESION0 + l
GLAND_CLASSES = (C["pz"], C["tz"], C["afms"], *range(NODULE0, LESION0))
FAT_SUPPRESSED = {C["fat"]: (0.03, 0.10), C["marrow"]: (0.2, 0.4)}  # residual DWI signal fraction

_zone_of_class = np.zeros(LESION0, np.uint8)
for _name, _zone in [("obturator", "obturator_internus"), ("marrow", "bone"), ("cortex", "bone"),
                     ("bladder_wall", "bladder"), ("urine", "bladder"), ("seminal_vesicles", "seminal_vesicles"),
                     ("rectal_wall", "rectum"), ("rectal_content", "rectum"), ("rectal_air", "rectum"),
                     ("nvb", "nvb"), ("pz", "pz"), ("tz", "tz"), ("afms", "tz")]:
    _zone_of_class[C[_name]] = ZONE_LABELS[_zone]
_zone_of_class[NODULE0:LESION0] = ZONE_LABELS["tz"]
ZONE_OF_CLASS = _zone_of_class  # anatomy class -> zones-mask label (docs/data-contract.md)

# Lesion grades: (probability, T2 ms or factor of host zone, ADC 1e-3 mm^2/s or factor of host zone)
LESION_GRADES = {
    "faint": (0.25, ("rel", 0.80, 0.92), ("rel", 0.78, 0.92)),
    "isup1-2": (0.40, ("abs", 80, 100), ("abs", 0.9, 1.2)),
    "isup3+": (0.35, ("abs", 60, 85), ("abs", 0.6, 0.9)),
}
CLEAR_ADC_CONTRAST = 0.3  # 1 - ADC_lesion / ADC_zone at or above this is "clearly low ADC"
SMALL_DIAMETER_MM = 8.0
LARGE_DIAMETER_MM = 15.0
