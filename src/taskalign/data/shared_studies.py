"""Patient leakage across cohorts by image content: the same study imported twice (as PI-CAI and as ProstateX
DICOM, say) gets two case and patient ids, and only its T2W voxels show that it is one study.

Each case's T2W is reduced to a digest of its voxel array (shape, dtype and bytes, so a study converted losslessly
to another file format keeps its digest); a digest found in more than one cohort is a shared study.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


def voxel_digest(path: str | Path) -> str:
    """sha256 of the image's voxel array (shape, dtype, bytes), independent of file format and header."""
    image = sitk.ReadImage(str(path))  # kept alive: the array below is a view into it
    voxels = sitk.GetArrayViewFromImage(image)
    digest = hashlib.sha256(f"{voxels.shape}{voxels.dtype.str}".encode())
    digest.update(np.ascontiguousarray(voxels).tobytes())
    return digest.hexdigest()


def study_digests(manifests: dict[str, pd.DataFrame], workers: int = 1) -> pd.DataFrame:
    """One row per case of every cohort: cohort, case_id, patient_id, split, t2w, digest (of the T2W voxels)."""
    rows = pd.concat([m.assign(cohort=name)[["cohort", "case_id", "patient_id", "split", "t2w"]]
                      for name, m in manifests.items()], ignore_index=True)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        rows["digest"] = list(pool.map(voxel_digest, rows["t2w"], chunksize=8))
    return rows


def shared_studies(digests: pd.DataFrame) -> pd.DataFrame:
    """Rows of every study (digest) that occurs in more than one cohort, grouped by digest."""
    cohorts = digests.groupby("digest")["cohort"].transform("nunique")
    return digests[cohorts > 1].sort_values(["digest", "cohort", "case_id"]).reset_index(drop=True)


def describe(shared: pd.DataFrame) -> list[str]:
    """One line per shared study: where it occurs, under which ids and splits, and from which files."""
    lines = []
    for _, group in shared.groupby("digest", sort=False):
        places = "; ".join(f"cohort {r.cohort} case {r.case_id} (patient {r.patient_id}, split {r.split or '-'}, "
                           f"file {r.t2w})" for r in group.itertuples())
        lines.append(f"the same T2W voxels occur in {group['cohort'].nunique()} cohorts: {places}")
    return lines
