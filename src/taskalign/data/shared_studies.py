"""Patient leakage by image content, within and across cohorts: the same study imported twice (as PI-CAI and as
ProstateX DICOM, or twice in one cohort under two patient ids) gets other case and patient ids, and only its T2W
shows that it is one study.

Each case's T2W is reduced to a fingerprint that survives a change of format: reoriented to LPS (a copy stored with
its rows flipped and its header saying so is the same array again), averaged onto a coarse grid of at most
COARSE_SHAPE voxels and z-scored (the pixel type and intensity scale drop out). Two cases are one study when the
Pearson correlation of their fingerprints, under any of the 8 axis flips (a copy flipped without its header), is at
least MATCH_CORRELATION. A study in two splits is patient leakage (an error); twice in one split it is a warning.
"""

from __future__ import annotations

import hashlib
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

COARSE_SHAPE = (8, 16, 16)  # (z, y, x) voxels: the anatomy, not the noise
MATCH_CORRELATION = 0.99
_BLOCK = 256  # fingerprints compared at once with all others
_FLIPS = [axes for n in range(4) for axes in itertools.combinations(range(3), n)]


def coarse_volume(array: np.ndarray, shape=COARSE_SHAPE) -> np.ndarray:
    """Mean of `array` (z, y, x) over min(shape, array.shape) equal bins per axis (area averaging), z-scored
    (zero mean, unit norm); all zeros for a constant image."""
    out = np.asarray(array, np.float64)
    for axis, n in enumerate(shape):
        size = out.shape[axis]
        starts = np.linspace(0, size, min(n, size) + 1).astype(int)
        counts = np.diff(starts).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.add.reduceat(out, starts[:-1], axis=axis) / counts
    out = out - out.mean()
    norm = np.linalg.norm(out)
    return out / norm if norm > 0 else out


def fingerprint(path: str | Path) -> np.ndarray:
    """The coarse, z-scored T2W of one file in LPS orientation, (z, y, x) float64."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path), sitk.sitkFloat64), "LPS")
    return coarse_volume(sitk.GetArrayViewFromImage(image))


def study_digests(manifests: dict[str, pd.DataFrame], workers: int = 1) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """One row per case of every cohort (cohort, case_id, patient_id, split, t2w, digest: sha256 of the
    fingerprint rounded to 0.01, an exact-copy shortcut) and the fingerprints in row order."""
    rows = pd.concat([m.assign(cohort=name)[["cohort", "case_id", "patient_id", "split", "t2w"]]
                      for name, m in manifests.items()], ignore_index=True)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        prints = list(pool.map(fingerprint, rows["t2w"], chunksize=8))
    rows["digest"] = [hashlib.sha256(f"{p.shape}".encode() + np.round(p * 100).astype(np.int16).tobytes()).hexdigest()
                      for p in prints]
    return rows, prints


def matching_studies(prints: list[np.ndarray], threshold: float = MATCH_CORRELATION) -> tuple[list[int], np.ndarray]:
    """A study number per fingerprint (cases that match, directly or through another, share one) and each case's
    best correlation with another case of its study (nan when alone). Only fingerprints of one shape compare."""
    study = list(range(len(prints)))

    def root(i: int) -> int:
        while study[i] != i:
            study[i] = study[study[i]]
            i = study[i]
        return i

    best = np.full(len(prints), np.nan)
    by_shape: dict[tuple, list[int]] = {}
    for i, p in enumerate(prints):
        by_shape.setdefault(p.shape, []).append(i)
    for members in by_shape.values():
        stack = np.stack([prints[i] for i in members]).astype(np.float32)
        flipped = [np.flip(stack, axis=tuple(a + 1 for a in axes)).reshape(len(members), -1) for axes in _FLIPS]
        for start in range(0, len(members), _BLOCK):  # rows in blocks: memory stays _BLOCK x cases
            rows = stack[start:start + _BLOCK].reshape(-1, flipped[0].shape[1])
            correlation = np.max([rows @ f.T for f in flipped], axis=0)
            for a, b in zip(*np.nonzero(correlation >= threshold)):
                a += start
                if a == b:
                    continue
                study[root(members[a])] = root(members[b])
                best[members[a]] = np.fmax(best[members[a]], correlation[a - start, b])
    return [root(i) for i in range(len(prints))], best


def shared_studies(digests: pd.DataFrame, prints: list[np.ndarray]) -> pd.DataFrame:
    """Rows of every study that occurs more than once (in one cohort or several), with `study` (a number shared by
    its cases) and `correlation` (best match), grouped by study."""
    study, best = matching_studies(prints)
    found = digests.assign(study=study, correlation=best)
    repeated = found.groupby("study")["case_id"].transform("size") > 1
    return found[repeated].sort_values(["study", "cohort", "case_id"]).reset_index(drop=True)


def describe(shared: pd.DataFrame) -> list[tuple[str, str]]:
    """(level, line) per repeated study: error when its cases lie in two splits (leakage), else warning."""
    lines = []
    for _, group in shared.groupby("study", sort=False):
        splits = sorted({s or "-" for s in group["split"]})
        level = "error" if len(splits) > 1 else "warning"
        places = "; ".join(f"cohort {r.cohort} case {r.case_id} (patient {r.patient_id}, split {r.split or '-'}, "
                           f"file {r.t2w})" for r in group.itertuples())
        where = f"in splits {' and '.join(splits)}" if level == "error" else f"in split {splits[0]}"
        lines.append((level, f"the same study (T2W correlation {group['correlation'].min():.3f} >= "
                             f"{MATCH_CORRELATION} in LPS at a coarse grid, whatever the format) occurs "
                             f"{len(group)} times {where}: {places}"))
    return lines
