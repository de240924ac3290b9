"""Label conventions shared by every cohort (docs/data-contract.md)."""

# Zone-segmentation labels; 0 is background.
ZONE_LABELS = {
    "tz": 1,
    "pz": 2,
    "bladder": 3,
    "rectum": 4,
    "seminal_vesicles": 5,
    "bone": 6,
    "obturator_internus": 7,
    "nvb": 8,
}
N_ZONE_CLASSES = len(ZONE_LABELS) + 1  # with background

MANIFEST_COLUMNS = [
    "case_id", "patient_id", "cohort", "split",
    "t2w", "adc", "dwi",
    "prostate", "zones", "lesion", "rectum",
    "pirads", "sector", "volume_ml",
    "tr", "te", "flip_angle", "field_strength", "vendor",
]
IMAGE_COLUMNS = ["t2w", "adc", "dwi"]
MASK_COLUMNS = ["prostate", "zones", "lesion", "rectum"]
BINARY_MASK_COLUMNS = ["prostate", "lesion", "rectum"]
SPLITS = ("train", "val", "test")

LEVELS = ("base", "mid", "apex")
SIDES = ("right", "left")
ZONES = ("pz", "tz")
AP = ("anterior", "posterior")
N_SECTORS = 20
# PI-RADS scores a case can carry (the manifest range) and the classes of the PI-RADS task, in order.
PIRADS_CLASSES = (2, 3, 4, 5)


def sector_index(level: str, side: str, zone: str, ap: str | None) -> int:
    """Index 0-19 of the 20-sector scheme: base 0-7, mid 8-15 (side x zone x ap), apex 16-19 (side x zone)."""
    s, z = SIDES.index(side), ZONES.index(zone)
    if level == "apex":
        return 16 + 2 * s + z
    return 8 * LEVELS.index(level) + 4 * s + 2 * z + AP.index(ap)


