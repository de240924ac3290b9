"""Random anatomy of one case: the pelvis as a paint program of solids around a prostate, and its lesions."""

from __future__ import annotations

import math

import numpy as np

from taskalign.data.labels import sector_index
from taskalign.data.phantom.geometry import PaintOp, Shape, rotation
from taskalign.data.phantom.tissues import (
    C,
    CLEAR_ADC_CONTRAST,
    LARGE_DIAMETER_MM,
    LESION0,
    LESION_GRADES,
    MAX_NODULES,
    NODULE0,
    SMALL_DIAMETER_MM,
)


def _ball_point(rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 1:
            return p



def gland_volume(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-normal with median sqrt(lo*hi), truncated to [lo, hi] by redrawing."""
    mu, sd = 0.5 * (math.log(lo) + math.log(hi)), max((math.log(hi) - math.log(lo)) / 4.0, 1e-9)
    for _ in range(1000):
        v = math.exp(rng.normal(mu, sd))
        if lo <= v <= hi:
            return v
    return math.exp(mu)


def pelvis_anatomy(rng: np.random.Generator, volume_ml: float) -> tuple[list[PaintOp], dict]:
    """Paint program of the pelvis around a prostate of `volume_ml`, plus the named solids the labels need."""
    u = rng.uniform
    c = u(-20, 20, 3)  # gland centre in the scanner frame
    ratios = np.array([1.0, u(0.62, 0.75), u(0.75, 0.9)])  # wider than deep, taller than deep
    k = (volume_ml * 1000.0 / (4.0 / 3.0 * math.pi * ratios.prod())) ** (1.0 / 3.0)
    ax, ay, az = axes = k * ratios
    gland = Shape.make("ellipsoid", c, axes)

    # TZ grows with volume (BPH); shifted anterior and superior so the PZ is a posterior-lateral crescent,
    # thickest at the apex.
    tz_frac = float(np.clip(0.2 + 0.4 * np.clip(math.log(volume_ml / 20.0) / math.log(4.0), 0, 1)
                            + rng.normal(0, 0.05), 0.15, 0.65))
    tz_ratio = np.array([1.0, 0.85, 0.9])
    tz_axes = np.minimum((tz_frac / tz_ratio.prod()) ** (1 / 3) * tz_ratio, 0.92) * axes
    tz_c = c + np.array([0.0, -(ay - tz_axes[1]) * u(0.7, 1.0), (az - tz_axes[2]) * u(0.3, 0.6)])
    tz = Shape.make("ellipsoid", tz_c, tz_axes)
    afms = Shape.make("ellipsoid", c + [0, -ay, az * u(0, 0.3)], axes * [u(0.4, 0.55), u(0.25, 0.35), u(0.7, 0.9)])

    ops: list[PaintOp] = []

    def paint(shape: Shape, tissue: str | int, over=None) -> None:
        ops.append(PaintOp(shape, C[tissue] if isinstance(tissue, str) else tissue,
                           None if over is None else tuple(over)))

    body_c = c + [0, u(10, 25), 0]
    paint(Shape.make("cylinder", body_c, [u(150, 190), u(75, 115), 1000]), "fat")
    for s in (-1, 1):  # gluteal muscles, posterolateral, mostly outside the FOV
        paint(Shape.make("ellipsoid", c + [s * u(55, 70), u(55, 70), u(0, 20)], [u(30, 40), u(25, 35), 80]),
              "muscle")
    for s in (-1, 1):  # femoral heads: marrow in a cortical shell
        r, t = u(22, 26), u(1.5, 2.5)
        fc = c + [s * u(85, 95), u(0, 10), u(15, 30)]
        paint(Shape.make("ellipsoid", fc, [r, r, r]), "cortex")
        paint(Shape.make("ellipsoid", fc, [r - t] * 3), "marrow", [C["cortex"]])
    for s in (-1, 1):  # pubic bones meeting at the symphysis, anterior to the gland
        pa, t = np.array([u(10, 14), u(7, 10), u(15, 22)]), u(1.5, 2.5)
        pc = c + [s * u(12, 16), -ay - u(22, 30), u(-5, 8)]
        rot = rotation(0, 0, -s * u(20, 35))
        paint(Shape.make("ellipsoid", pc, pa, rot), "cortex")
        paint(Shape.make("ellipsoid", pc, pa - t, rot), "marrow", [C["cortex"]])
    for s in (-1, 1):  # obturator internus on the pelvic side walls
        ox = u(7, 11)
        paint(Shape.make("ellipsoid", c + [s * (ax + u(12, 20) + ox), u(-5, 10), u(0, 15)],
                         [ox, u(25, 35), u(30, 45)], rotation(0, 0, s * u(5, 15))), "obturator")
    # bladder: wall then urine, sitting on the base
    ba = np.array([u(30, 50), u(22, 40), u(18, 35)])
    bc = c + [u(-5, 5), -ay * u(0, 0.4), az + ba[2] * u(0.6, 0.85)]
    wall = u(2, 4)
    paint(Shape.make("ellipsoid", bc, ba), "bladder_wall")
    paint(Shape.make("ellipsoid", bc, ba - wall), "urine", [C["bladder_wall"]])
    for s in (-1, 1):  # seminal vesicles, posterior-superior, fanning out laterally and upwards
        paint(Shape.make("ellipsoid", c + [s * u(10, 16), ay * u(0.7, 0.9) + u(2, 6), az * u(0.7, 0.9) + u(4, 8)],
                         [u(12, 20), u(4, 7), u(5, 8)], rotation(0, -s * u(10, 30), s * u(10, 25))),
              "seminal_vesicles")
    nvb = []
    for s in (-1, 1):  # neurovascular bundles just outside the posterolateral capsule
        th, r = math.radians(u(35, 60)), u(2.0, 3.5)
        n = np.array([math.cos(th) / ax, math.sin(th) / ay])
        n /= np.linalg.norm(n)
        xy = np.array([ax * math.cos(th), ay * math.sin(th)]) + n * (r + 1.0)
        nvb.append(Shape.make("cylinder", c + [s * xy[0], xy[1], 0], [r, r, 0.9 * az]))
        paint(nvb[-1], "nvb")
    # rectum: tube posterior to the gland, tilting posteriorly as it rises; wall, content, anterior gas bubble
    rx, ry, w = u(15, 22), u(12, 18), u(3, 5)
    slope = u(0.05, 0.25)
    rrot = rotation(-math.degrees(math.atan(slope)), 0, 0)
    rc = c + [u(-5, 5), ay + u(1, 4) + ry + slope * 20.0, 20.0]
    paint(Shape.make("cylinder", rc, [rx, ry, 80], rrot), "rectal_wall")
    paint(Shape.make("cylinder", rc, [rx - w, ry - w, 80], rrot), "rectal_content", [C["rectal_wall"]])
    gas = None
    if u() > 0.15:
        g = np.array([u(0.3, 1.0) * (rx - w), u(0.2, 0.9) * (ry - w), u(8, 35)])
        gas_c = rc + rrot @ np.array([0.0, -(ry - w) + g[1], u(-35, 0)])  # non-dependent (anterior) when supine
        gas = Shape.make("ellipsoid", gas_c, g, rrot)
        paint(gas, "rectal_air", [C["rectal_content"]])
    # the gland overrides its neighbours, so its mask is the analytic ellipsoid
    paint(gland, "pz")
    paint(tz, "tz", [C["pz"]])
    paint(afms, "afms", [C["pz"], C["tz"]])
    nodules = []
    for n in range(int(rng.integers(0, 1 + round(MAX_NODULES * tz_frac / 0.65)))):
        centre = tz.centre + (tz_axes * 0.8) * _ball_point(rng)
        nodules.append(Shape.make("ellipsoid", centre, u(3, 9) * u(0.8, 1.25, 3),
                                  rotation(*u(-90, 90, 3))))
        paint(nodules[-1], NODULE0 + n, [C["tz"]] + list(range(NODULE0, NODULE0 + n)))
    solids = {"centre": c, "axes": axes, "gland": gland, "tz": tz, "afms": afms, "tz_fraction": tz_frac,
              "nodules": nodules, "gas": gas, "rectum_axes": (rx, ry, w)}
    return ops, solids


def zone_at(point: np.ndarray, solids: dict) -> str | None:
    """Zone ("tz" or "pz") of the gland at a world point (3,) mm, None outside the gland (analytic)."""
    if not solids["gland"].contains(point)[0]:
        return None
    return "tz" if (solids["tz"].contains(point)[0] or solids["afms"].contains(point)[0]) else "pz"


def lesion_score(diameter_mm: float, adc_contrast: float) -> int:
    """PI-RADS-like score of one lesion: 3 small or faint; 4 < 15 mm with clearly low ADC; 5 >= 15 mm with
    clearly low ADC. adc_contrast = 1 - ADC_lesion / ADC_host_zone."""
    if adc_contrast < CLEAR_ADC_CONTRAST or diameter_mm < SMALL_DIAMETER_MM:
        return 3
    return 5 if diameter_mm >= LARGE_DIAMETER_MM else 4


def lesion_sector(centre: np.ndarray, solids: dict) -> int:
    """Sector (labels.sector_index) of a point in the gland: level by cranio-caudal thirds, side by x (+x is
    patient left), zone at the point, anterior/posterior by y, all relative to the gland centre."""
    c, az = solids["centre"], solids["axes"][2]
    dz = centre[2] - c[2]
    level = "base" if dz > az / 3 else ("apex" if dz < -az / 3 else "mid")
    side = "left" if centre[0] > c[0] else "right"
    ap = "anterior" if centre[1] < c[1] else "posterior"
    return sector_index(level, side, zone_at(centre, solids) or "pz", None if level == "apex" else ap)


def sample_lesions(rng, solids, n_lesions, t1, t2, pd, adc, t1_factor):
    """Lesions (0.1-3 mL ellipsoids, ~70% PZ) with grade-dependent T2/ADC written into the class tables."""
    u = rng.uniform
    gland = solids["gland"]
    lesions, info = [], []
    names, probs = list(LESION_GRADES), np.array([g[0] for g in LESION_GRADES.values()])
    for n in range(n_lesions):
        want = "pz" if u() < 0.7 else "tz"
        for _ in range(200):  # uniform in the gland away from the capsule, rejected until in the wanted zone
            centre = gland.centre + 0.85 * solids["axes"] * _ball_point(rng)
            if zone_at(centre, solids) == want:
                break
        zone = zone_at(centre, solids)
        vol = math.exp(u(math.log(0.1), math.log(3.0)))
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        e = u(0.75, 1.33, 3)
        semi = r * e / np.prod(e) ** (1 / 3)
        shape = Shape.make("ellipsoid", centre, semi, rotation(*u(-90, 90, 3)))
        grade = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        host = C[zone]
        _, t2spec, adcspec = LESION_GRADES[grade]
        k = LESION0 + n
        t1[k] = u(1500, 1700) * t1_factor
        pd[k] = 0.8 * u(0.97, 1.03)
        t2[k] = t2[host] * u(*t2spec[1:]) if t2spec[0] == "rel" else u(*t2spec[1:])
        adc[k] = adc[host] * u(*adcspec[1:]) if adcspec[0] == "rel" else u(*adcspec[1:]) * 1e-3
        contrast = 1.0 - adc[k] / adc[host]
        diameter = 2.0 * float(semi.max())
        lesions.append(shape)
        info.append({"centre": centre, "zone": zone, "volume_ml": shape.volume_ml, "diameter_mm": diameter,
                     "grade": grade, "adc": adc[k], "t2": t2[k], "contrast": contrast,
                     "score": lesion_score(diameter, contrast)})
    return lesions, info
