"""Calibration of the report's statistics in simulation, through the functions the pipeline runs: the false-positive
rate, power and interval coverage of 000 Tables 2-5's marks and brackets (taskalign.report.tables.performance
.performance_table) when training runs differ, and the coverage of 000 Table 6's Δ interval at 113 cases x 768
features (taskalign.analysis.similarity.protocol_deltas). tests/test_paper_fidelity.py runs the same simulators
with few repetitions; `python benchmarks/calibration.py` runs them in full and writes the numbers into
benchmarks/results.md (section "Calibration")."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from taskalign.report.tables.performance import Resampling, performance_table  # noqa: E402

BASE, OTHER = "pretrained:mae", "continual:mae"
DICE_PATIENTS, AUC_PATIENTS = 113, 207  # 000's lesion and PI-RADS test sets (issue 31)
DICE_SEED_SDS = (0.0, 0.0016, 0.0046, 0.009, 0.019)  # SD of a training run's shift, common to all its patients
AUC_SEED_SDS = (0.0, 0.15, 0.3)  # SD of a training run's signal strength (0.3: AUC seed SD ~0.04)


def _frames(task: str, per_run: dict[tuple[str, int], pd.DataFrame], metric, primary: str) -> tuple:
    """metrics.csv rows and the cases mapping performance_table reads, from {(init, seed): cases frame}."""
    cases = {(task, init, "full", seed): frame for (init, seed), frame in per_run.items()}
    rows = [{"task": task, "init": init, "protocol": "full", "seed": seed, "metric": primary, "value": metric(frame),
             "primary": True} for (init, seed), frame in per_run.items()]
    return pd.DataFrame(rows), cases


def dice_runs(rng: np.random.Generator, seeds: int, seed_sd: float, effect: float = 0.0,
              n_patients: int = DICE_PATIENTS) -> tuple[pd.DataFrame, dict]:
    """Lesion Dice of two training procedures over `seeds` runs each. A patient (1-2 cases) has a difficulty both
    share; each procedure a patient-specific strength every run keeps; each run a shift common to all its patients
    (SD `seed_sd`: how much training runs differ) and per-case noise. OTHER is better by `effect`."""
    patients = np.repeat(np.arange(n_patients), rng.integers(1, 3, n_patients))
    ids = [f"c{k:04d}" for k in range(len(patients))]
    difficulty = rng.normal(0.6, 0.15, n_patients)[patients]
    per_run = {}
    for init, shift in ((BASE, 0.0), (OTHER, effect)):
        strength = rng.normal(0, 0.05, n_patients)[patients]
        for seed in range(seeds):
            dice = difficulty + strength + shift + rng.normal(0, seed_sd) + rng.normal(0, 0.02, len(patients))
            per_run[(init, seed)] = pd.DataFrame({"case_id": ids, "patient_id": patients.astype(str), "dice": dice})
    return _frames("lesion_seg", per_run, lambda f: f["dice"].mean(), "dice")


def auc_runs(rng: np.random.Generator, seeds: int, seed_sd: float, effect: float = 0.0,
             n_patients: int = AUC_PATIENTS, n_classes: int = 3) -> tuple[pd.DataFrame, dict]:
    """Class probabilities of two training procedures over `seeds` runs each: each procedure sees the class
    through its own patient-level view (kept by every run); a run scales the class signal by 1 + N(0, seed_sd)
    (how much training runs differ) and adds its own noise. OTHER's signal is stronger by `effect` (0.1: about
    +0.02 macro AUC)."""
    from taskalign.evaluate.metrics import multiclass_auc

    true = rng.integers(0, n_classes, n_patients)
    ids = [f"c{k:04d}" for k in range(n_patients)]
    per_run = {}
    for init, strength in ((BASE, 1.0), (OTHER, 1.0 + effect)):
        view = rng.normal(0, 1.0, (n_patients, n_classes))
        for seed in range(seeds):
            logits = ((strength + rng.normal(0, seed_sd)) * np.eye(n_classes)[true] + view
                      + rng.normal(0, 0.5, (n_patients, n_classes)))
            prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            frame = pd.DataFrame({"case_id": ids, "patient_id": ids, "true": true, "pred": prob.argmax(axis=1)})
            per_run[(init, seed)] = frame.assign(**{f"prob_{c}": prob[:, c] for c in range(n_classes)})
    auc = lambda f: multiclass_auc(f["true"], f[[f"prob_{c}" for c in range(n_classes)]].to_numpy(), n_classes)  # noqa: E731
    return _frames("sector_cls", per_run, auc, "auc")


def marks(simulate, reps: int, seeds: int, seed_sd: float, effect: float = 0.0, bootstrap: int = 200,
          seed: int = 0) -> dict:
    """performance_table over `reps` simulated pairs of procedures: the share of OTHER marked (p <= 0.05) and the
    share of brackets (both rows) that cover the procedure's mean (BASE: the simulation's expectation, measured
    as the mean over all runs of all repetitions, which differs from it by far less than a bracket)."""
    rng = np.random.default_rng(seed)
    marked, brackets, seed_means = [], [], []
    for rep in range(reps):
        metrics, cases = simulate(rng, seeds, seed_sd, effect)
        task, metric = metrics["task"].iloc[0], metrics["metric"].iloc[0]
        table = performance_table(metrics, cases, [task], (BASE, "full"), set(), resampling=Resampling(bootstrap, rep))
        raw = table.raw.set_index("init")
        marked.append(raw.loc[OTHER, f"{task}/{metric}/p_value"] <= 0.05)
        brackets.append((raw.loc[BASE, f"{task}/{metric}/ci_low"], raw.loc[BASE, f"{task}/{metric}/ci_high"]))
        seed_means.append(metrics[metrics["init"] == BASE]["value"].to_numpy())
    values = np.concatenate(seed_means)
    truth = values.mean()
    low, high = np.array(brackets).T
    return {"rate": float(np.mean(marked)), "coverage": float(np.mean((low <= truth) & (truth <= high))),
            "seed_sd_metric": float(np.mean([np.std(v, ddof=1) for v in seed_means])), "reps": reps}


# --- 000 Table 6: the Δ interval at 113 cases x 768 features ------------------------------------------------------

DELTA_SCENARIOS = {  # (pretrained's share of the FT map, its noise), (continual's share, its noise)
    "H0": ((0.6, 1.0), (0.6, 1.0)),  # equally close to FT: E[Δ] = 0 by symmetry
    "shift": ((0.3, 2.0), (0.9, 0.5)),  # continual much closer: subsets' biased CKA biased differently
}


def delta_encoders(scenario: str, d: int = 768, rank: int = 20, seed: int = 0) -> dict:
    """Fixed linear encoders of a rank-`rank` latent: FT, and pretrained / continual mixing FT's map with their own
    (the `scenario`'s share of FT's map and noise level). Cases are drawn anew per repetition (delta_features)."""
    rng = np.random.default_rng(seed)
    mix = lambda: rng.standard_normal((rank, d)) / np.sqrt(rank)  # noqa: E731
    ft = mix()
    (c_pre, noise_pre), (c_cont, noise_cont) = DELTA_SCENARIOS[scenario]
    return {"ft": (ft, 1.0), "pre": (c_pre * ft + np.sqrt(1 - c_pre ** 2) * mix(), noise_pre),
            "cont": (c_cont * ft + np.sqrt(1 - c_cont ** 2) * mix(), noise_cont)}


def delta_features(rng: np.random.Generator, encoders: dict, n: int = DICE_PATIENTS) -> dict:
    """{name: {"block11": (n, d) features}} of n new cases through each encoder."""
    z = rng.standard_normal((n, next(iter(encoders.values()))[0].shape[0]))
    return {name: {"block11": z @ a + noise * rng.standard_normal((n, a.shape[1]))}
            for name, (a, noise) in encoders.items()}


def delta_coverage(scenario: str, reps: int, seed: int = 1, subsample_too: bool = False) -> dict:
    """Coverage of the expectation of Δ (the mean of Δ over all repetitions) by protocol_deltas' interval, per
    estimator, with one FT encoder; optionally also by the former half-sample percentile interval."""
    from taskalign.analysis.cka import debiased_cka, linear_cka, subsample_values
    from taskalign.analysis.similarity import protocol_deltas
    from taskalign.analysis.stats import percentile_interval

    encoders = delta_encoders(scenario)
    rng = np.random.default_rng(seed)
    rows, old = [], {"linear": [], "debiased": []}
    for rep in range(reps):
        f = delta_features(rng, encoders)
        table = protocol_deltas(f["pre"], f["cont"], {"0": f["ft"]})
        rows.append(table[table["seed"] == "mean"][["estimator", "delta", "ci_low", "ci_high"]])
        if subsample_too:
            for name, est in (("linear", linear_cka), ("debiased", debiased_cka)):
                draws = [subsample_values(f[k]["block11"], f["ft"]["block11"], est, 200, 0.5, rep)
                         for k in ("pre", "cont")]
                old[name].append(percentile_interval(draws[1] - draws[0]))
    frame = pd.concat(rows, ignore_index=True)
    out = {}
    for name, group in frame.groupby("estimator"):
        truth = group["delta"].mean()
        covered = (group["ci_low"] <= truth) & (truth <= group["ci_high"])
        out[name] = {"expectation": float(truth), "coverage": float(covered.mean()),
                     "excludes_0": float(((group["ci_low"] > 0) | (group["ci_high"] < 0)).mean()),
                     "width": float((group["ci_high"] - group["ci_low"]).mean()),
                     "sd_delta": float(group["delta"].std())}
        if subsample_too:
            low, high = np.array(old[name]).T
            out[name]["subsample_coverage"] = float(np.mean((low <= truth) & (truth <= high)))
            out[name]["subsample_width"] = float(np.mean(high - low))
    return out


# --- full run -----------------------------------------------------------------------------------------------------

SECTION = "## Calibration of the report's statistics"
AUC_EFFECT = 0.09  # signal strength 1.09 vs 1: +0.02 macro AUC (0.735 -> 0.755, measured on 200 000 cases)


def _write_section(lines: list[str], path: Path = REPO / "benchmarks" / "results.md") -> None:
    """Replace (or append) this section of results.md, up to the next `## ` heading; the others stay."""
    text = path.read_text() if path.exists() else ""
    before, found, after = text.partition(SECTION)
    rest = after.split("\n## ", 1)[1] if found and "\n## " in after else ""
    path.write_text(before.rstrip() + "\n\n" + "\n".join(lines) + "\n" + (f"\n## {rest}" if rest else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=1000, help="repetitions of the Dice simulations")
    parser.add_argument("--auc-reps", type=int, default=200)
    parser.add_argument("--delta-reps", type=int, default=500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    start = time.time()
    lines = [SECTION, "", f"`python benchmarks/calibration.py` ({time.strftime('%Y-%m-%d')}; simulations through "
             "`performance_table` and `protocol_deltas`, seeded, so rerunning gives these numbers). Nominal level "
             "0.05; targets: false-positive rate <= 0.06, bracket coverage of the procedure's mean >= 0.93, Δ "
             "interval coverage of its expectation >= 0.93.", "",
             "### 000 Tables 2-5: marks and brackets over training runs and patients", "",
             "| metric | patients | seeds | run-level SD (sim.) | metric's seed SD | planted | reps | rate marked | "
             "bracket coverage |", "|---|---|---|---|---|---|---|---|---|"]

    def add(name, simulate, patients, seeds, sd, effect, reps, planted):
        r = marks(simulate, reps, seeds, sd, effect)
        lines.append(f"| {name} | {patients} | {seeds} | {sd:g} | {r['seed_sd_metric']:.4f} | {planted} | {reps} | "
                     f"{r['rate']:.3f} | {r['coverage']:.3f} |")
        print(lines[-1], flush=True)

    for sd in DICE_SEED_SDS:
        add("Dice", dice_runs, DICE_PATIENTS, 3, sd, 0.0, args.reps, "none (H0)")
    for seeds in (3, 5):
        add("Dice", dice_runs, DICE_PATIENTS, seeds, 0.0046, 0.01, args.reps // 2, "+0.01 Dice (power)")
    for sd in AUC_SEED_SDS:
        add("macro AUC", auc_runs, AUC_PATIENTS, 3, sd, 0.0, args.auc_reps, "none (H0)")
    for seeds in (3, 5):
        add("macro AUC", auc_runs, AUC_PATIENTS, seeds, 0.1, AUC_EFFECT, args.auc_reps, "+0.02 AUC (power)")
    lines += ["", "Dice: 113 patients (1-2 cases each), two equally good procedures with patient-specific strengths "
              "kept by every run, a run-level shift common to all its patients (the SD column) and case noise. AUC: "
              "207 patients, 3 classes, a run-level signal strength 1 + N(0, SD). 'rate marked' is the false-positive "
              "rate under H0 and the power with a planted difference; coverage is that of the baseline row's "
              "bracket.", "", "### 000 Table 6: the Δ interval at 113 cases x 768 features", "",
              "| scenario | estimator | E[Δ] | SD of Δ | reps | jackknife coverage | width | excludes 0 | "
              "former half-sample coverage |", "|---|---|---|---|---|---|---|---|---|"]
    for scenario in DELTA_SCENARIOS:
        full = delta_coverage(scenario, args.delta_reps)
        old = delta_coverage(scenario, max(args.delta_reps // 5, 20), seed=2, subsample_too=True)
        for name in ("linear", "debiased"):
            r = full[name]
            lines.append(f"| {scenario} | {name} | {r['expectation']:+.4f} | {r['sd_delta']:.4f} | {args.delta_reps} | "
                         f"{r['coverage']:.3f} | {r['width']:.4f} | {r['excludes_0']:.3f} | "
                         f"{old[name]['subsample_coverage']:.3f} ({max(args.delta_reps // 5, 20)} reps) |")
            print(lines[-1], flush=True)
    lines += ["", "Encoders: fixed linear maps of a rank-20 latent into 768 features plus noise; H0: pretrained and "
              "continual equally close to FT (E[Δ] = 0); shift: continual much closer. Coverage of Δ's expectation "
              "(the mean over repetitions), one FT encoder. 'excludes 0' under H0 is the interval's false-positive "
              "rate. The former interval (percentiles over 200 half-size subsets without replacement) is shown for "
              "comparison.", "", f"Run time {time.time() - start:.0f} s."]
    if not args.no_write:
        _write_section(lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
