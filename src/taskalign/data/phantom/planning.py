"""Case planning: anatomy, lesions, labels, acquisition and pose of one case (all random draws happen here)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from taskalign.data.grid import Grid
from taskalign.data.phantom.anatomy import gland_volume, lesion_sector, pelvis_anatomy, sample_lesions
from taskalign.data.phantom.config import phantom_config
from taskalign.data.phantom.geometry import PaintOp, Shape, rotation
from taskalign.data.phantom.tissues import C, FAT_SUPPRESSED, LESION0, NODULE0, TISSUES, VENDORS


@dataclass
class CasePlan:
    """Everything that defines a case before noise: ids, grids, anatomy, tissue table, labels, acquisition."""

    case_id: str
    patient_id: str
    cohort: str
    split: str
    noise_seed: list[int]
    t2w_grid: Grid
    dwi_grid: Grid
    program: list[PaintOp]
    lesions: list[Shape]
    t1: np.ndarray  # (n_classes,) ms
    t2: np.ndarray  # (n_classes,) ms
    pd: np.ndarray  # (n_classes,) relative
    adc: np.ndarray  # (n_classes,) mm^2/s
    dwi_pd_factor: np.ndarray  # (n_classes,) fat suppression on DWI
    acq: dict
    bias: dict
    texture: dict
    rectal_air: dict | None  # centre, radius_mm, amplitude_mm of the susceptibility dipole
    pirads: int | None
    sector: int | None
    truth: dict = field(default_factory=dict)


def case_seed(seed: int, cohort: str, index: int, stream: int) -> list[int]:
    """Entropy of one case's generator, independent of every other case (stream 0: plan, 1: noise), so adding
    cases or changing workers never changes a case."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [seed, zlib.crc32(cohort.encode()), index, stream]



def _sample_tissues(rng: np.random.Generator, field_t: float, n_classes: int):
    """Per-class T1 (ms), T2 (ms), PD, ADC (mm^2/s) tables (n_classes,) from TISSUES, and the 1.5 T T1 factor.
    Classes beyond the named tissues (nodules, lesions) are filled by the caller."""
    t1, t2, pd, adc = (np.ones(n_classes), np.ones(n_classes), np.zeros(n_classes), np.zeros(n_classes))
    t1_factor = rng.uniform(0.75, 0.85) if field_t < 2 else 1.0  # T1 shortens at lower field
    t2_factor = 1.05 if field_t < 2 else 1.0  # and T2 lengthens slightly
    for k, (_, spec) in enumerate(TISSUES):
        if spec is None:
            continue
        (t1lo, t1hi), (t2lo, t2hi), p, (alo, ahi) = spec
        t1[k] = rng.uniform(t1lo, t1hi) * t1_factor
        t2[k] = rng.uniform(t2lo, t2hi) * t2_factor
        pd[k] = p * rng.uniform(0.97, 1.03)
        adc[k] = rng.uniform(alo, ahi) * 1e-3
    return t1, t2, pd, adc, t1_factor



def _noisy_label(rng: np.random.Generator, label: int, p: float) -> int:
    """With probability p shift by +-1, reflected into 2-5."""
    flip, step = rng.uniform() < p, (1 if rng.uniform() < 0.5 else -1)
    if not flip:
        return label
    shifted = label + step
    return shifted if 2 <= shifted <= 5 else label - step


def plan_case(cohort: str, index: int, split: str, seed: int, cfg: dict) -> CasePlan:
    """Draw one case (anatomy, lesions, labels, acquisition, pose) from its own generator. `cfg` as resolved by
    `phantom_config`. Pure: no IO, no noise yet."""
    cfg = phantom_config(cfg)
    rng = np.random.default_rng(case_seed(seed, cohort, index, 0))
    u = rng.uniform
    field_t = 3.0 if u() < 0.65 else 1.5
    vendor = list(VENDORS)[int(rng.integers(len(VENDORS)))]
    n_classes = LESION0 + cfg["max_lesions"]
    t1, t2, pd, adc, t1_factor = _sample_tissues(rng, field_t, n_classes)

    volume = gland_volume(rng, *cfg["gland_volume_ml"])
    program, solids = pelvis_anatomy(rng, volume)
    for n in range(len(solids["nodules"])):  # BPH nodules: stromal (dark, lower ADC) to glandular (bright)
        f = u(-1, 1)
        k = NODULE0 + n
        t1[k], pd[k] = t1[C["tz"]], pd[C["tz"]]
        t2[k], adc[k] = t2[C["tz"]] * (1 + 0.35 * f), adc[C["tz"]] * (1 + 0.12 * f)
    n_lesions = int(rng.integers(0, cfg["max_lesions"] + 1))
    lesions, info = sample_lesions(rng, solids, n_lesions, t1, t2, pd, adc, t1_factor)
    dwi_pd = np.ones(n_classes)
    for k, (lo, hi) in FAT_SUPPRESSED.items():
        dwi_pd[k] = u(lo, hi)

    pirads_true = max((d["score"] for d in info), default=2)
    index_lesion = max(range(n_lesions), key=lambda n: info[n]["volume_ml"]) if n_lesions else None
    sector = lesion_sector(info[index_lesion]["centre"], solids) if n_lesions else None
    pirads = _noisy_label(rng, pirads_true, cfg["label_noise"])

    # acquisition (rounded as a scanner header would store them; the physics uses the stored values)
    tr, te, fa = round(u(3000, 6500), 1), round(u(90, 120), 1), round(u(120, 160), 1)
    tr_dwi, te_dwi = round(u(3000, 6000), 1), round(u(55, 85), 1)
    snr_hi = 1.0 if field_t > 2 else 0.5  # lower SNR at 1.5 T: lower half of the configured range
    snr_t2w = float(np.interp(u(0, snr_hi), [0, 1], cfg["snr_t2w"]))
    snr_dwi = float(np.interp(u(0, snr_hi), [0, 1], cfg["snr_dwi"]))
    thickness = round(u(*cfg["slice_thickness_mm"]), 1)
    n_slices = int(rng.integers(cfg["slices"][0], cfg["slices"][1] + 1))

    # pose: the grid is rotated and shifted about the gland (+5 mm superior to include the seminal vesicles)
    rot_max, shift_max = cfg["rotation_deg"], cfg["shift_mm"]
    angles = u(-rot_max, rot_max, 3) if rot_max > 0 else np.zeros(3)
    shift = u(-shift_max, shift_max, 3) if shift_max > 0 else np.zeros(3)
    rot = rotation(*angles)
    centre = solids["centre"] + [0, 0, 5.0] + shift
    kaxis = rot[:, 2]
    half_extent = float(np.linalg.norm(solids["axes"] * kaxis))  # gland half-extent along the slice axis
    need = 2.0 * (half_extent + 15.0 + abs(float(np.dot(centre - solids["centre"], kaxis))))
    n_slices = max(n_slices, math.ceil(need / thickness))
    rows, cols = cfg["matrix"]
    fov_r, fov_c = cfg["fov_mm"]
    t2w_grid = Grid.centred((cols, rows, n_slices), (fov_c / cols, fov_r / rows, thickness), centre, rot)
    dwi_grid = t2w_grid.with_inplane(cfg["dwi_matrix"][1], cfg["dwi_matrix"][0])

    vend = VENDORS[vendor]
    c = solids["centre"]
    bias = {"centre": c, "coil": c + [u(-10, 10), solids["axes"][1] + u(25, 40), u(-25, 0)],
            "width_mm": u(40, 70), "gain": u(0.4, 0.9) * vend["bias_gain"],
            "gradient": rng.normal(0, 0.0015, 3) * vend["bias_gain"]}
    directions = rng.normal(size=(4, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    texture = {"waves": directions * (2 * math.pi / u(15, 50, (4, 1))), "phases": u(0, 2 * math.pi, 4),
               "amp_t2w": u(0.03, 0.08), "amp_adc": u(0.02, 0.05)}
    gas = solids["gas"]
    rectal_air = None
    if gas is not None:
        rectal_air = {"centre": gas.centre, "radius_mm": (gas.volume_ml * 1000 * 3 / (4 * math.pi)) ** (1 / 3),
                      "amplitude_mm": u(2, 6) * field_t / 3.0}

    acq = {"tr": tr, "te": te, "flip_angle": fa, "tr_dwi": tr_dwi, "te_dwi": te_dwi, "field_strength": field_t,
           "vendor": vendor, "b_values": [float(b) for b in cfg["b_values"]], "computed_b": float(cfg["computed_b"]),
           "snr_t2w": snr_t2w, "snr_dwi": snr_dwi}
    il = info[index_lesion] if n_lesions else None
    truth = {
        "field_strength": field_t, "vendor": vendor, "tr": tr, "te": te, "flip_angle": fa,
        "tr_dwi": tr_dwi, "te_dwi": te_dwi, "b_values": ";".join(f"{b:g}" for b in acq["b_values"]),
        "computed_b": acq["computed_b"], "snr_t2w": snr_t2w, "snr_dwi": snr_dwi, "t1_field_factor": t1_factor,
        "slice_thickness_mm": thickness, "n_slices": n_slices, "pixel_mm": f"{fov_c / cols:.4f};{fov_r / rows:.4f}",
        "pose_deg": ";".join(f"{a:.3f}" for a in angles), "shift_mm": ";".join(f"{s:.3f}" for s in shift),
        "gland_volume_ml": solids["gland"].volume_ml,  # exact: the painted gland is this ellipsoid
        "gland_centre_mm": ";".join(f"{x:.3f}" for x in solids["centre"]),
        "gland_semi_axes_mm": ";".join(f"{a:.3f}" for a in solids["axes"]),
        "tz_volume_fraction": solids["tz_fraction"], "n_nodules": len(solids["nodules"]),
        "n_lesions": n_lesions, "pirads_true": pirads_true, "pirads": pirads,
        "sector": "" if sector is None else sector,
        "index_lesion_volume_ml": il["volume_ml"] if il else "",
        "index_lesion_diameter_mm": il["diameter_mm"] if il else "",
        "index_lesion_zone": il["zone"] if il else "", "index_lesion_grade": il["grade"] if il else "",
        "index_lesion_adc_contrast": il["contrast"] if il else "",
        "adc_index_lesion_true": il["adc"] * 1e6 if il else "",
        "adc_lesions_true": ";".join(f"{d['adc'] * 1e6:.1f}" for d in info),
        "lesion_scores": ";".join(str(d["score"]) for d in info),
        "adc_pz_true": adc[C["pz"]] * 1e6, "adc_tz_true": adc[C["tz"]] * 1e6,
        "t2_pz_ms": t2[C["pz"]], "t2_tz_ms": t2[C["tz"]], "t2_index_lesion_ms": il["t2"] if il else "",
        "rectal_gas_ellipsoid_ml": gas.volume_ml if gas is not None else 0.0,  # before clipping to the lumen
        "dwi_distortion_mm": rectal_air["amplitude_mm"] if rectal_air else 0.0,
    }
    case_id, patient_id = f"{cohort}_{index:04d}", f"{cohort}_p{index:04d}"
    return CasePlan(case_id, patient_id, cohort, split, case_seed(seed, cohort, index, 1),
                    t2w_grid, dwi_grid, program, lesions, t1, t2, pd, adc, dwi_pd, acq, bias, texture,
                    rectal_air, pirads, sector, truth)
