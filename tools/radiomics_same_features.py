"""Do two (or more) Python environments extract the same pyradiomics features? An install check, not a test.

    .venv/bin/python tools/radiomics_same_features.py --python .venv/bin/python --python /tmp/v312/bin/python

The interpreter running this script writes small cases in the preprocessed-cache layout (meta.json, image.npy,
prostate.npy) into a temporary folder: phantom cases (taskalign.data.phantom, T2W and ADC on the T2W grid,
robust z-scored like the cache; needs scipy) or, with --synthetic or without scipy, smooth random volumes. Each
--python then runs the project's own extraction (taskalign.analysis.radiomics.case_features with
config/radiomics.yaml, src/ on PYTHONPATH; it needs numpy, pandas, pyyaml, SimpleITK and pyradiomics, not torch)
and writes its features as JSON (floats round-trip exactly). The first environment is the reference: the others
must have the same feature names and values, bit for bit ("identical") or within --rtol ("close"); exit 1 if not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("numpy", "SimpleITK", "pyradiomics", "PyWavelets", "pykwalify", "setuptools")  # distributions


def _robust_z(x):
    import numpy as np

    x = x.astype(np.float64)
    lo, med, hi = np.percentile(x, [25, 50, 75])
    return ((x - med) / max(hi - lo, 1e-6)).astype(np.float32)


def phantom_case(index: int):
    """A phantom case: T2W and ADC (repeated onto the T2W grid in-plane), prostate mask, spacing (z, y, x)."""
    import numpy as np

    from taskalign.data import phantom

    images = phantom.render_case(phantom.plan_case("promis", index, "train", 7, {}))
    t2w, adc = images.t2w, images.adc
    factors = [a // b for a, b in zip(t2w.shape, adc.shape)]
    if any(a != b * f for a, b, f in zip(t2w.shape, adc.shape, factors)):
        raise ValueError(f"ADC grid {adc.shape} does not divide the T2W grid {t2w.shape}")
    for axis, f in enumerate(factors):
        adc = np.repeat(adc, f, axis=axis)
    spacing_zyx = [float(s) for s in reversed(images.t2w_grid.spacing)]
    return np.stack([_robust_z(t2w), _robust_z(adc)]), images.prostate.astype(np.uint8), spacing_zyx


def synthetic_case(index: int):
    """Smoothed noise in two channels with an ellipsoid 'gland' of its own texture: (2, 24, 48, 48)."""
    import numpy as np

    rng = np.random.default_rng(1000 + index)
    shape = (24, 48, 48)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    mask = ((z / 0.6) ** 2 + (y / 0.5) ** 2 + (x / 0.55) ** 2 <= 1).astype(np.uint8)
    channels = []
    for _ in range(2):
        noise = rng.standard_normal(shape)
        for axis in range(3):  # a cheap 3-tap smoothing along each axis
            noise = (np.roll(noise, 1, axis) + 2 * noise + np.roll(noise, -1, axis)) / 4
        channels.append(_robust_z(noise + 1.5 * mask * (1 + 0.5 * np.sin(6 * x + 3 * y))))
    return np.stack(channels), mask, [2.0, 1.5, 1.5]


def write_cases(out: Path, n: int, synthetic: bool) -> list[Path]:
    import numpy as np

    if not synthetic:
        try:
            import scipy  # noqa: F401  (the phantom needs it)
        except ImportError:
            print("no scipy here: synthetic cases instead of phantom ones")
            synthetic = True
    dirs = []
    for i in range(n):
        image, mask, spacing = (synthetic_case if synthetic else phantom_case)(i)
        d = out / f"case{i}"
        d.mkdir(parents=True)
        np.save(d / "image.npy", image)
        np.save(d / "prostate.npy", mask)
        (d / "meta.json").write_text(json.dumps({
            "case_id": d.name, "channels": ["t2w", "adc"], "channels_present": ["t2w", "adc"],
            "masks_present": ["prostate"], "spacing_mm": spacing}))
        print(f"{d.name}: {'synthetic' if synthetic else 'phantom'} image {image.shape}, "
              f"{int(mask.sum())} mask voxels, spacing (z, y, x) {spacing}")
        dirs.append(d)
    return dirs


def extract(params_path: str, case_dirs: list[str], out: str) -> None:
    """Child mode: features of every case with the project's extraction, and the package versions."""
    from importlib.metadata import version

    from taskalign.analysis.radiomics import case_features, load_params, make_extractor

    extractor = make_extractor(load_params(params_path))
    features = {Path(d).name: case_features(d, ("t2w", "adc"), extractor=extractor) for d in case_dirs}
    versions = {"python": sys.version.split()[0]}
    versions.update({name: version(name) for name in VERSIONS})
    Path(out).write_text(json.dumps({"versions": versions, "features": features}))


def compare(ref: dict, other: dict, rtol: float) -> tuple[str, list[str]]:
    problems, n, exact, worst = [], 0, 0, 0.0
    for case, feats in ref.items():
        got = other.get(case, {})
        if set(got) != set(feats):
            problems.append(f"{case}: feature names differ: only in reference {sorted(set(feats) - set(got))[:5]}, "
                            f"only here {sorted(set(got) - set(feats))[:5]}")
            continue
        for name, a in feats.items():
            b = got[name]
            n += 1
            if a == b or (math.isnan(a) and math.isnan(b)):
                exact += 1
                continue
            rel = abs(a - b) / max(abs(a), abs(b))
            worst = max(worst, rel)
            if rel > rtol:
                problems.append(f"{case} {name}: {a!r} != {b!r} (rel {rel:.2e})")
    verdict = ("identical" if exact == n else "close" if not problems else "DIFFERENT")
    return f"{verdict}: {exact}/{n} values bit-identical, max relative difference {worst:.3g}", problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", default=[], help="an environment's interpreter (repeat)")
    ap.add_argument("--params", default=str(ROOT / "config" / "radiomics.yaml"))
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true", help="synthetic volumes instead of phantom cases")
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--extract", nargs="+", metavar=("OUT", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.extract:
        extract(args.params, args.extract[1:], args.extract[0])
        return 0
    if len(args.python) < 2:
        ap.error("give at least two --python")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        cases = [str(d) for d in write_cases(Path(tmp) / "cache", args.cases, args.synthetic)]
        results = []
        for i, py in enumerate(args.python):
            out = Path(tmp) / f"features{i}.json"
            subprocess.run([py, __file__, "--params", args.params, "--extract", str(out), *cases], env=env, check=True)
            results.append(json.loads(out.read_text()))
            n = sum(len(f) for f in results[-1]["features"].values())
            print(f"[{i}] {py}: {n} features; " + ", ".join(f"{k} {v}" for k, v in results[-1]["versions"].items()))
    failed = False
    for i, res in enumerate(results[1:], 1):
        line, problems = compare(results[0]["features"], res["features"], args.rtol)
        print(f"[{i}] vs [0]: {line}")
        for p in problems[:10]:
            print("   ", p)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
