"""Section 3: CKA and MMD of taskalign.analysis against the plain numpy formulas (benchmarks/baselines.py).

Same inputs, values compared to 1e-8 (absolute), speed-up = plain time / library time, both best-of-N in this run.
The plain MMD double loop at n = 1000 is ~3 x 10^6 Python iterations: the full run times the whole loop once
(and uses its sums for both estimators); --quick times the first rows of each block and scales by n / rows, and
checks values on a 120-row subset instead. CKA is compared with both plain routes, Grams as matrix products and
Grams by pairwise loops (2 x 10^6 iterations, timed the same way)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks import baselines
from benchmarks.common import best_of, fmt_time, row
from taskalign.analysis.cka import debiased_cka, linear_cka
from taskalign.analysis.mmd import median_sigma, mmd2, normalise
from taskalign.evaluate.metrics import bootstrap_cis, pirads_metrics

SECTION = "3 analyses"
TOL = 1e-8
GOAL = 10.0


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related n x d representations (so CKA and MMD are neither 0 nor saturated)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = 0.6 * x @ rng.standard_normal((d, d)) / np.sqrt(d) + 0.8 * rng.standard_normal((n, d)) + 0.05
    return x, y


def _speed_row(measure: str, t_plain: float, t_lib: float, diff: float, note: str = "") -> dict:
    speedup = t_plain / t_lib
    ok = diff <= TOL
    return row(SECTION, f"{measure}: plain numpy / library (|diff| {diff:.1e}{', ' + note if note else ''})",
               f"plain {fmt_time(t_plain)}", f"library {fmt_time(t_lib)}", speedup, f">= {GOAL:g}x",
               speedup >= GOAL and ok)


def run(quick: bool = False, n: int = 1000, d: int = 768) -> list[dict]:
    repeats = 3 if quick else 7
    x, y = data(n, d)
    rows = []

    rows += cka_rows(x, y, quick, repeats)
    xn, yn = normalise(x, "l2"), normalise(y, "l2")
    sigma = median_sigma(xn, yn)
    if quick:
        k = 10
        start = time.perf_counter()
        for a, b in ((xn, xn), (yn, yn), (xn, yn)):
            baselines.kernel_sums(a, b, sigma, rows=k)
        t_plain = (time.perf_counter() - start) * n / k
        check = 120
        sums = baselines.plain_mmd_sums(xn[:check], yn[:check], sigma)
        note = f"plain timed on {k} of {n} rows per block x {n // k}; values checked at n={check}"
        lib_check = {e: mmd2(xn[:check], yn[:check], sigma, e) for e in ("biased", "unbiased")}
    else:
        start = time.perf_counter()
        sums = baselines.plain_mmd_sums(xn, yn, sigma)
        t_plain = time.perf_counter() - start
        note = "plain full double loop, its sums serve both estimators"
        lib_check = {e: mmd2(xn, yn, sigma, e) for e in ("biased", "unbiased")}
    for estimator in ("biased", "unbiased"):
        v_plain = baselines.plain_mmd2(None, None, sigma, estimator, sums=sums)
        t_lib = best_of(lambda: mmd2(xn, yn, sigma, estimator), repeats)
        rows.append(_speed_row(f"MMD^2 {estimator} n={n}+{n} d={d}, l2 rows, median sigma {sigma:.3f} "
                               f"(value {lib_check[estimator]:.3e})", t_plain, t_lib,
                               abs(lib_check[estimator] - v_plain), note))
    rows.append(bootstrap_row(repeats))
    rows.append(auc_bootstrap_row(repeats))
    return rows


def cka_rows(x: np.ndarray, y: np.ndarray, quick: bool, repeats: int) -> list[dict]:
    """Each CKA against the two plain routes the issue names: Grams as (un-fused) matrix products, and Grams built
    pairwise by a loop over rows (like the MMD baseline). Both then evaluate the same textbook HSIC formulas, so the
    loop route's time is the time of its two Grams plus that of the formulas on them."""
    n, d = x.shape
    if quick:  # time 10 rows of each Gram and scale; check the values on a subset
        k, check = 10, 120
        start = time.perf_counter()
        baselines.loop_gram(x, rows=k), baselines.loop_gram(y, rows=k)
        t_loop_grams = (time.perf_counter() - start) * n / k
        loop_note = f"loops timed on {k} of {n} rows x {n // k}; values checked at n={check}"
    else:
        start = time.perf_counter()
        grams = baselines.loop_gram(x), baselines.loop_gram(y)
        t_loop_grams = time.perf_counter() - start
        loop_note = "the whole double loop"
    rows = []
    for name, lib, plain, hsic in (("linear CKA", linear_cka, baselines.plain_linear_cka, baselines.hsic_biased),
                                   ("debiased CKA", debiased_cka, baselines.plain_debiased_cka,
                                    baselines.hsic_unbiased)):
        v_lib = lib(x, y)
        t_lib = best_of(lambda: lib(x, y), repeats)
        t_plain = best_of(lambda: plain(x, y), max(1, repeats // 2))
        rows.append(_speed_row(f"{name} n={n} d={d} (value {v_lib:.4f}), plain Grams as matrix products", t_plain,
                               t_lib, abs(v_lib - plain(x, y))))
        kx, ky = (x @ x.T, y @ y.T) if quick else grams
        t_formulas = best_of(lambda: baselines.cka_from_grams(kx, ky, hsic), max(1, repeats // 2))
        if quick:
            diff = abs(lib(x[:check], y[:check]) - plain(x[:check], y[:check], gram=baselines.loop_gram))
        else:
            diff = abs(v_lib - baselines.cka_from_grams(*grams, hsic))
        rows.append(_speed_row(f"{name} n={n} d={d}, plain Grams by pairwise loops over rows (Grams "
                               f"{fmt_time(t_loop_grams)} + formulas {fmt_time(t_formulas)})",
                               t_loop_grams + t_formulas, t_lib, diff, loop_note))
    return rows


def bootstrap_row(repeats: int, n_cases: int = 12, n_boot: int = 1000) -> dict:
    """The evaluation CIs of a zone-segmentation run (mean Dice and 8 per-structure Dice, 1000 patient resamples):
    each metric bootstrapped on its own from concatenated frames, against all metrics from one pass."""
    import pandas as pd

    rng = np.random.default_rng(0)
    columns = ["dice"] + [f"dice_{i}" for i in range(8)]
    cases = pd.DataFrame(rng.uniform(0, 1, (n_cases, len(columns))), columns=columns)
    cases.insert(0, "patient_id", [f"p{i:02d}" for i in rng.permutation(n_cases)])

    def metrics(frame):
        return {c: float(frame[c].mean()) for c in columns}

    def plain():
        return {c: baselines.plain_bootstrap_ci(cases, lambda f, c=c: metrics(f)[c], n_boot, 0) for c in columns}

    same = plain() == bootstrap_cis(cases, metrics, n_boot=n_boot, seed=0)
    t_plain = best_of(plain, 1)
    t_lib = best_of(lambda: bootstrap_cis(cases, metrics, n_boot=n_boot, seed=0), max(1, repeats // 2))
    return row(SECTION, f"evaluation bootstrap CIs, {len(columns)} metrics x {n_boot} patient resamples of {n_cases} "
                        f"cases: one metric at a time (concat) / all in one pass (bootstrap_cis); intervals "
                        f"identical: {same}", f"plain {fmt_time(t_plain)}", f"library {fmt_time(t_lib)}",
               t_plain / t_lib, "-", None)


def auc_bootstrap_row(repeats: int, n_cases: int = 48, n_boot: int = 1000) -> dict:
    """The evaluation CIs of a PI-RADS run (OvR AUC, AUC >= 3 and >= 4, specificity at 90% sensitivity; 1000
    patient resamples): every AUC through roc_auc_score, against ROC curves scored by sklearn's auc."""
    import pandas as pd

    rng = np.random.default_rng(0)
    classes = (2, 3, 4, 5)
    true = rng.choice(classes, n_cases)
    prob = rng.dirichlet(np.ones(4), n_cases).round(3)  # rounded: ties, as softmax outputs of small models have
    cases = pd.DataFrame(prob, columns=[f"prob_{c}" for c in classes])
    cases.insert(0, "true", true)
    cases.insert(0, "patient_id", [f"p{i:02d}" for i in range(n_cases)])

    def scored(metrics_fn):
        return lambda frame: metrics_fn(frame["true"].to_numpy(), frame[cases.columns[2:]].to_numpy())

    def plain():
        return bootstrap_cis(cases, scored(baselines.plain_pirads_metrics), n_boot=n_boot, seed=0)

    def library():
        return bootstrap_cis(cases, scored(pirads_metrics), n_boot=n_boot, seed=0)

    same = plain() == library()
    t_plain = best_of(plain, 1)
    t_lib = best_of(library, max(1, repeats // 2))
    return row(SECTION, f"PI-RADS evaluation CIs, 4 metrics x {n_boot} patient resamples of {n_cases} cases: "
                        f"roc_auc_score per AUC / ROC curves scored by sklearn's auc; intervals identical: {same}",
               f"plain {fmt_time(t_plain)}", f"library {fmt_time(t_lib)}", t_plain / t_lib, "-", None)
