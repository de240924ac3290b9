"""Section 4: radiomics scaling. taskalign.analysis.radiomics.cohort_features with processes=1 against
processes=<all cores> on the same trimmed index, with config/radiomics.yaml; scaling efficiency = speed-up / cores.

The one-process path runs in this process (one untimed case first, so pyradiomics is imported before timing);
the pool path pays its spawn start-up and per-worker imports every call, as the pipeline's rule does. The two
feature tables must be equal."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import REPO, cores, cpu_seconds, fmt_time, row

SECTION = "4 radiomics"
PARAMS = REPO / "config" / "radiomics.yaml"
CACHE_INDEX = REPO / "results" / "cache" / "promis.csv"
CHANNELS = ("t2w", "adc")


def _trim(index_csv: Path, n: int, out: Path) -> Path:
    index = pd.read_csv(index_csv, dtype={"case_id": str, "patient_id": str})
    index = index[index["prostate"].notna()].head(n)
    index.to_csv(out, index=False)
    return out


def _time(index: Path, processes: int) -> tuple[float, pd.DataFrame, float]:
    """Wall seconds, the table, and CPU seconds (this process + the pool's workers)."""
    from taskalign.analysis.radiomics import cohort_features

    cpu = cpu_seconds()
    start = time.perf_counter()
    table = cohort_features(index, PARAMS, CHANNELS, processes=processes)
    return time.perf_counter() - start, table, cpu_seconds() - cpu


def _rows(label: str, n: int, n_cores: int, t1: float, tp: float, same: bool, n_features: int, c1: float,
          cp: float) -> list[dict]:
    speedup = t1 / tp
    efficiency = speedup / n_cores
    return [
        row(SECTION, f"cases/s, cohort_features processes={n_cores} / processes=1 ({label}, channels "
                     f"{', '.join(CHANNELS)}, {n_features} features; tables equal: {same})",
            f"1 process {n / t1:.2f} cases/s ({fmt_time(t1)})",
            f"{n_cores} processes {n / tp:.2f} cases/s ({fmt_time(tp)})", speedup, "-", None),
        row(SECTION, f"scaling efficiency = speed-up / {n_cores} cores ({label})", "ideal 100%",
            f"{efficiency:.0%}", efficiency, "-", None, "{:.0%}"),
        row(SECTION, f"CPU seconds, processes={n_cores} / processes=1 ({label}; workers included): the work the pool "
                     "adds, independent of how much CPU other jobs leave us",
            f"1 process {c1:.1f} CPU s", f"{n_cores} processes {cp:.1f} CPU s", cp / c1, "-", None),
    ]


def run(quick: bool = False) -> list[dict]:
    logging.getLogger("taskalign").setLevel(logging.WARNING)
    n_cores = cores()
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskalign-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if CACHE_INDEX.is_file():
            source, note = CACHE_INDEX, str(CACHE_INDEX.relative_to(REPO))
        else:
            from benchmarks.bench_loading import phantom_cache

            source, note = phantom_cache(tmp / "phantom"), "a tiny phantom cohort (no results/cache)"
        one = _trim(source, 1, tmp / "one.csv")
        _time(one, 1)  # imports pyradiomics in this process (warm-up)
        t_one = _time(one, 1)[0]
        sizes = [4] if quick else [8, 10**9]
        for n in sizes:
            index = _trim(source, n, tmp / f"index{n}.csv")
            n = len(pd.read_csv(index))
            t1, serial, c1 = _time(index, 1)
            tp, parallel, cp = _time(index, n_cores)
            rows += _rows(f"{n} cases of {note}", n, n_cores, t1, tp, serial.equals(parallel), serial.shape[1] - 3,
                          c1, cp)
            if n >= n_cores and not quick and n == sizes[0]:
                # one case per worker: what the pool costs beyond the work itself
                pair = _trim(source, n_cores, tmp / "pair.csv")
                t_pair = _time(pair, n_cores)[0]
                rows.append(row(SECTION, f"pool fixed cost: processes={n_cores} on {n_cores} cases (one per worker) "
                                         "- one case in this process = spawn + imports + extractor set-up per call",
                                f"1 case in-process {fmt_time(t_one)}", f"pool on {n_cores} cases {fmt_time(t_pair)}",
                                None, "-", None))
                rows[-1]["value"] += f"; fixed cost ~{fmt_time(max(t_pair - t_one, 0.0))}"
    return rows
