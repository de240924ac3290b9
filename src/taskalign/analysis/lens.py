"""The radiomic lens (seed 003): which radiomic features fine-tuning re-weighted in an encoder's embeddings.

A 2-layer MLP maps preprocessed radiomic features (training split) to the pretrained embeddings' principal
component scores. Its first layer is then frozen and the last layer re-estimated in closed form (ridge) on the
pretrained and on the fine-tuned embeddings. Each encoder's targets are its own top principal components (centred,
one overall scale), the fine-tuned ones rotated onto the pretrained ones (orthogonal Procrustes): so an orthogonal
rotation, a translation or an overall rescaling of either embedding space changes nothing (a per-dimension
rescaling does). Per radiomic feature j the sensitivity is the column norm of S = W2 diag(a) W1 (the mean Jacobian
of the ReLU network, a_k = share of training cases where hidden unit k is active). What an encoder emphasises is
the profile of these sensitivities: feature j's share ||S[:, j]|| / sum_i ||S[:, i]||; fine-tuning's effect on
feature j is the change of its share. Held-out R^2 says whether the fits are worth reading (below `min_r2` the
report shows no ranking); a permutation null (fine-tuning shifts shuffled over cases) calibrates the change, with a
family-wise p from the maximum over features of each permuted change; repeating the MLP over seeds and the lens
over fine-tuning seeds gives the stability of the ranking. The seed paper has only an abstract; the choices here
follow the design notes
of the analysis research (anchors-analysis.md, section 5).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, skew, spearmanr
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score

from taskalign.analysis.radiomics import feature_groups

log = logging.getLogger(__name__)

DEFAULTS = {"pca_components": 8, "hidden": 32, "steps": 500, "lr": 0.01, "weight_decay": 0.001, "ridge_alpha": "cv",
            "dedup_spearman": 0.95, "permutations": 200, "seeds": [0, 1, 2], "min_r2": 0.1}
# ridge_alpha "cv": chosen by leave-one-out over this grid on the pretrained training fit, then used for every fit
RIDGE_ALPHAS = np.logspace(-3, 4, 15)
# Read by the entry point (which layer's embeddings to use), not by the fit.
PASSED_THROUGH = {"layer"}
META_COLUMNS = ("case_id", "patient_id", "cohort", "split")
HELDOUT_SPLITS = ("val", "test")
MIN_JOINED = 0.8
# A non-negative feature this skewed on the training split (energies, volumes) is log1p-transformed first, so a
# few extreme cases do not dominate the z-scores.
LOG_SKEW = 2.0
# Near-constant: (almost) no spread, or one value shared by this share of the training cases.
MODE_SHARE = 0.95
TABLE_COLUMNS = ["feature", "image", "filter", "class", "group", "sens_pre", "sens_ft", "change", "rank", "p_value",
                 "p_fwer", "rank_min", "rank_max"]
FWER_ALPHA = 0.05


def lens_settings(settings: dict) -> dict:
    """DEFAULTS updated with `settings`; unknown keys are an error (a typo would silently fall back)."""
    unknown = set(settings) - set(DEFAULTS) - PASSED_THROUGH
    if unknown:
        raise ValueError(f"unknown lens setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in settings.items() if k in DEFAULTS}}
    if merged["ridge_alpha"] != "cv" and not (isinstance(merged["ridge_alpha"], (int, float))
                                              and merged["ridge_alpha"] > 0):
        raise ValueError(f"lens settings: ridge_alpha must be a positive number or 'cv', got {merged['ridge_alpha']!r}")
    if not merged["seeds"]:
        raise ValueError("lens settings: seeds must list at least one seed")
    return merged


def prepare_radiomics(features: pd.DataFrame, train: np.ndarray, dedup_spearman: float) -> tuple[np.ndarray, list[str]]:
    """Radiomic matrix (all cases x kept features) standardised with training-split statistics, and the kept names.

    Steps, each decided on the training cases only: drop features with non-finite values (any case) and
    near-constant ones, log1p the strongly skewed non-negative ones, z-score, then walk the features in sorted name
    order and drop each whose |Spearman| with an already kept feature exceeds `dedup_spearman` (collinear features
    make individual weights unidentifiable).
    """
    columns = sorted(features.columns)
    values = features[columns].to_numpy(dtype=np.float64)
    fit = values[train]
    mode_share = np.array([pd.Series(col).value_counts().iloc[0] / len(col) for col in fit.T])
    keep = (np.isfinite(values).all(axis=0) & (fit.std(axis=0) > 1e-12 * np.maximum(1.0, np.abs(fit.mean(axis=0))))
            & (mode_share < MODE_SHARE))
    columns = [c for c, ok in zip(columns, keep) if ok]
    values = values[:, keep]
    if not columns:
        return values, columns
    fit = values[train]
    skewed = (fit.min(axis=0) >= 0) & (skew(fit, axis=0) > LOG_SKEW)
    # held-out cases may dip below the training minimum; clip so log1p stays defined
    values[:, skewed] = np.log1p(np.maximum(values[:, skewed], 0.0))
    fit = values[train]
    z = (values - fit.mean(axis=0)) / fit.std(axis=0)
    ranks = rankdata(z[train], axis=0)
    rho = np.atleast_2d(np.abs(np.corrcoef(ranks, rowvar=False)))
    kept: list[int] = []
    for j in range(z.shape[1]):
        if all(rho[j, i] <= dedup_spearman for i in kept):
            kept.append(j)
    return z[:, kept], [columns[j] for j in kept]


def principal_scores(embedding: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal component scores of (n, d) `embedding`, fitted on the training rows (centred, no
    per-dimension scaling), divided by their overall RMS on those rows: unchanged, up to the components' signs and
    a rotation within tied ones, by an orthogonal rotation, translation or overall rescaling of the embedding."""
    scores = PCA(n_components=k, svd_solver="full").fit(embedding[train]).transform(embedding)
    rms = float(np.sqrt(np.mean(scores[train] ** 2)))
    return scores / rms if rms > 0 else scores


def embedding_targets(pre: np.ndarray, ft: np.ndarray, train: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lens's targets: each encoder's principal_scores (z_pre, z_ft), and z_ft rotated onto z_pre by orthogonal
    Procrustes on the training rows. The sensitivity shares do not depend on that rotation (a rotation of the
    targets rotates S's rows), so they are read off z_ft itself; the rotated scores line the fine-tuning shift
    z_ft - z_pre up for the permutation null."""
    z_pre, z_ft = principal_scores(pre, train, k), principal_scores(ft, train, k)
    rotation, _ = orthogonal_procrustes(z_ft[train], z_pre[train])
    return z_pre, z_ft, z_ft @ rotation


def first_layers(x: np.ndarray, z: np.ndarray, settings: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W1, b1) of the MLP radiomics -> hidden (ReLU) -> targets for each seed, trained full-batch with Adam.

    The seeds' networks train side by side as one batched model: their losses add and Adam works elementwise, so
    each network follows exactly the updates it would get alone, in a third of the time for three seeds.
    """
    hidden, k = settings["hidden"], z.shape[1]
    inits = []
    # fork_rng keeps the caller's global torch RNG untouched while each seed fixes its network's initialisation
    with torch.random.fork_rng(devices=[]):
        for seed in settings["seeds"]:
            torch.manual_seed(seed)
            inits.append((torch.nn.Linear(x.shape[1], hidden), torch.nn.Linear(hidden, k)))
    params = [torch.stack([getattr(layers[i], name) for layers in inits]).detach().requires_grad_()
              for i in (0, 1) for name in ("weight", "bias")]
    w1, b1, w2, b2 = params
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = torch.as_tensor(z, dtype=torch.float32)
    optimiser = torch.optim.Adam(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    threads = torch.get_num_threads()
    # matrices this small run 10-30x faster on one thread than with the intra-op pool's start-up costs
    torch.set_num_threads(1)
    try:
        for _ in range(settings["steps"]):
            optimiser.zero_grad()
            h = torch.relu(inputs @ w1.transpose(1, 2) + b1[:, None])
            loss = ((h @ w2.transpose(1, 2) + b2[:, None] - targets) ** 2).mean(dim=(1, 2)).sum()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return [(w1[i].detach().double().numpy(), b1[i].detach().double().numpy()) for i in range(len(inits))]


def ridge_alpha(h: np.ndarray, z: np.ndarray, setting) -> float:
    """The ridge penalty: `setting` itself, or for "cv" the RIDGE_ALPHAS value with the lowest leave-one-out error
    of the pretrained fit (sklearn's RidgeCV, closed form)."""
    if setting != "cv":
        return float(setting)
    return float(RidgeCV(alphas=RIDGE_ALPHAS).fit(h, z).alpha_)


def _heldout_r2(true: np.ndarray, predicted: np.ndarray) -> float:
    return float(r2_score(true, predicted, multioutput="variance_weighted")) if len(true) >= 2 else float("nan")


def ridge_coefficients(h: np.ndarray, z: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge slopes (..., k, hidden) for targets z (..., n, k) on fixed activations h (n, hidden), with intercept.

    The same solution as sklearn's Ridge(alpha, fit_intercept=True) (centre both sides, solve the normal equations),
    batched over leading axes of z so a whole permutation null is one solve.
    """
    hc = h - h.mean(axis=0)
    zc = z - z.mean(axis=-2, keepdims=True)
    gram = hc.T @ hc + alpha * np.eye(h.shape[1])
    return np.swapaxes(np.linalg.solve(gram, hc.T) @ zc, -1, -2)


def _join(radiomics: pd.DataFrame, pre: pd.DataFrame, finetuned: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Radiomics joined with the pretrained (suffix @pre) and every fine-tuned embedding (suffix @ft<seed>)."""
    frames = {"radiomics": radiomics, "pretrained": pre, **{f"fine-tuned seed {s}": f for s, f in finetuned.items()}}
    for name, frame in frames.items():
        if "case_id" not in frame.columns:
            raise ValueError(f"lens: {name} table has no case_id column")
        dup = frame["case_id"][frame["case_id"].duplicated()]
        if not dup.empty:
            raise ValueError(f"lens: {name} table repeats case ids {sorted(map(str, dup.unique()))[:10]}")
    if "split" not in radiomics.columns:
        raise ValueError("lens: radiomics table has no split column")
    emb_cols = [c for c in pre.columns if c != "case_id"]
    if any(sorted(emb_cols) != sorted(c for c in ft.columns if c != "case_id") for ft in finetuned.values()):
        raise ValueError("lens: pretrained and fine-tuned embeddings have different columns")
    ids = {name: set(frame["case_id"].astype(str)) for name, frame in frames.items()}
    wanted = set().union(*(v for k, v in ids.items() if k != "radiomics"))
    joined = set.intersection(*ids.values())
    # The embedded cases are the subject; radiomics of extra cohort cases are harmless.
    if len(joined) < MIN_JOINED * len(wanted):
        missing = sorted(wanted - joined)
        raise ValueError(f"lens: only {len(joined)} of {len(wanted)} embedded cases join radiomics and all "
                         f"embeddings (need {MIN_JOINED:.0%}); {len(missing)} missing, e.g. {missing[:10]}")
    if len(joined) < len(wanted):
        log.warning("lens: %d of %d embedded cases not joined: %s", len(wanted) - len(joined), len(wanted),
                    sorted(wanted - joined)[:10])

    def keyed(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
        return frame.assign(case_id=frame["case_id"].astype(str)).set_index("case_id")[emb_cols].add_suffix(suffix)

    out = radiomics.assign(case_id=radiomics["case_id"].astype(str)).set_index("case_id")
    for suffix, frame in {"@pre": pre, **{f"@ft{s}": f for s, f in finetuned.items()}}.items():
        out = out.join(keyed(frame, suffix), how="inner")
    return out.sort_index()


def _sensitivity(w2: np.ndarray, active: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """S = W2 diag(a) W1, batched over leading axes of w2."""
    return (w2 * active) @ w1


def sensitivity_profile(s: np.ndarray) -> np.ndarray:
    """Each feature's share of the total sensitivity, ||S[:, j]|| / sum_i ||S[:, i]||, over the last two axes
    (..., k, features) -> (..., features); all 0 when S is 0. Scaling S (a rescaled embedding) leaves it unchanged."""
    norms = np.linalg.norm(s, axis=-2)
    total = norms.sum(axis=-1, keepdims=True)
    return np.divide(norms, total, out=np.zeros_like(norms), where=total > 0)


def _mean_pairwise_spearman(vectors: list[np.ndarray]) -> float:
    """Mean Spearman correlation over pairs of vectors; NaN with fewer than two or a constant vector."""
    if len(vectors) < 2 or any(np.ptp(v) == 0 for v in vectors):
        return float("nan")
    return float(np.mean([spearmanr(a, b)[0] for a, b in itertools.combinations(vectors, 2)]))


def _ranks(change: np.ndarray) -> np.ndarray:
    """Rank 1 = largest |change|, ties by position (the features' sorted-name order)."""
    order = np.argsort(-np.abs(change), kind="mergesort")
    ranks = np.empty(len(change), int)
    ranks[order] = np.arange(1, len(change) + 1)
    return ranks


def permutation_p(observed: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature p of |observed_j| (B, F null of signed changes): raw, (1 + #{|null_bj| >= |obs_j|}) / (B + 1),
    and family-wise, the same count of the maximum over features max_i |null_bi| (single-step max-statistic,
    which holds the chance of any false positive among all features at the level)."""
    stat = np.abs(observed)
    tol = 1e-12 * max(1.0, float(stat.max(initial=0.0)))
    null = np.abs(null)
    raw = (1 + (null >= stat - tol).sum(axis=0)) / (len(null) + 1)
    fwer = (1 + (null.max(axis=1)[:, None] >= stat - tol).sum(axis=0)) / (len(null) + 1)
    return raw, fwer


def fit_lens(radiomics: pd.DataFrame, pre: pd.DataFrame, finetuned: Mapping[int, pd.DataFrame] | pd.DataFrame,
             settings: dict) -> tuple[pd.DataFrame, dict]:
    """Per-feature change table (sorted by rank, 1 = largest |change|) and a summary dict.

    radiomics: case_id, split and feature columns (patient_id and cohort are ignored); pre and each fine-tuned
    frame: case_id plus the same numeric embedding columns; finetuned: {fine-tuning seed: frame} (a single frame
    counts as seed 0). Cases are joined on case_id; at least MIN_JOINED of the embedded cases must join. Fitting
    uses the training split; R^2 (variance-weighted over the k targets: the share of the top-k embedding variance
    explained) uses val and test.

    Table columns TABLE_COLUMNS: sensitivity shares sens_pre, sens_ft and change = sens_ft - sens_pre (means over
    MLP and fine-tuning seeds), rank by |change|, p_value (per feature) and p_fwer (max-statistic over features)
    under the permutation null, and rank_min / rank_max over the fine-tuning seeds. Summary: n_train, n_heldout,
    n_features_in, n_features_kept, r2_pre, r2_ft, total_change (sum |change|), perm_p (of ||change||_2 under the
    same null), n_significant (p_fwer <= FWER_ALPHA), stability_spearman (MLP seeds) and
    finetune_stability_spearman (fine-tuning seeds): mean pairwise Spearman of |change|; seeds, finetune_seeds;
    r2_floor, interpretable (both R^2 >= min_r2: only then does the report show rankings and changes) and a note
    saying why not; ridge_alpha (mean over MLP seeds).
    """
    st = lens_settings(settings)
    if isinstance(finetuned, pd.DataFrame):
        finetuned = {0: finetuned}
    if not finetuned:
        raise ValueError("lens: no fine-tuned embeddings")
    data = _join(radiomics, pre, finetuned)
    feature_cols = [c for c in radiomics.columns if c not in META_COLUMNS]
    bad = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(radiomics[c])]
    if bad:
        raise ValueError(f"lens: non-numeric radiomic columns {bad[:10]}")
    split = data["split"].astype(str).to_numpy()
    train = split == "train"
    heldout = np.isin(split, HELDOUT_SPLITS)
    n_train = int(train.sum())
    if n_train < 3:
        raise ValueError(f"lens: {n_train} training cases joined; need at least 3")
    x, kept = prepare_radiomics(data[feature_cols], train, st["dedup_spearman"])
    if not kept:
        raise ValueError("lens: no radiomic feature left after dropping non-finite and near-constant ones")
    emb_cols = [c for c in pre.columns if c != "case_id"]
    e_pre = data[[f"{c}@pre" for c in emb_cols]].to_numpy(dtype=np.float64)
    k = min(st["pca_components"], n_train - 1, len(emb_cols))
    targets = {seed: embedding_targets(e_pre, data[[f"{c}@ft{seed}" for c in emb_cols]].to_numpy(np.float64),
                                       train, k) for seed in finetuned}
    z_pre = next(iter(targets.values()))[0]
    # Null: what fine-tuning changed in the targets (z_ft - z_pre) is unrelated to the radiomics, so its rows are
    # permuted over the training cases (fine-tuned targets z_pre + shift[perm]). Ridge is linear in the targets, so
    # the permuted fit is the pre fit plus the ridge fit of the permuted shift. One set of permutations serves every
    # fine-tuning seed, so the seeds' nulls average like their observed changes.
    rng = np.random.default_rng(st["seeds"][0])
    perms = np.stack([rng.permutation(n_train) for _ in range(st["permutations"])])
    per_run = []  # one entry per (MLP seed, fine-tuning seed)
    for mlp_seed, (w1, b1) in zip(st["seeds"], first_layers(x[train], z_pre[train], st)):
        h = np.maximum(x @ w1.T + b1, 0.0)
        active = (h[train] > 0).mean(axis=0)
        alpha = ridge_alpha(h[train], z_pre[train], st["ridge_alpha"])
        fit_pre = Ridge(alpha=alpha).fit(h[train], z_pre[train])
        s_pre = _sensitivity(fit_pre.coef_, active, w1)
        profile_pre = sensitivity_profile(s_pre)
        r2_pre = _heldout_r2(z_pre[heldout], fit_pre.predict(h[heldout]))
        for ft_seed, (_, z_ft, z_aligned) in targets.items():
            fit_ft = Ridge(alpha=alpha).fit(h[train], z_ft[train])
            shift = (z_aligned - z_pre)[train][perms]
            s_null = s_pre + _sensitivity(ridge_coefficients(h[train], shift, alpha), active, w1)
            profile_ft = sensitivity_profile(_sensitivity(fit_ft.coef_, active, w1))
            per_run.append({"mlp_seed": mlp_seed, "ft_seed": ft_seed, "sens_pre": profile_pre,
                            "sens_ft": profile_ft, "change": profile_ft - profile_pre,
                            "null": sensitivity_profile(s_null) - profile_pre, "r2_pre": r2_pre,
                            "r2_ft": _heldout_r2(z_ft[heldout], fit_ft.predict(h[heldout])), "alpha": alpha})

    def mean(key: str, runs=per_run) -> np.ndarray:
        return np.mean([run[key] for run in runs], axis=0)

    change, null = mean("change"), mean("null")
    raw_p, fwer_p = permutation_p(change, null)
    by_ft = [mean("change", [r for r in per_run if r["ft_seed"] == s]) for s in finetuned]
    by_mlp = [mean("change", [r for r in per_run if r["mlp_seed"] == s]) for s in st["seeds"]]
    ft_ranks = np.stack([_ranks(c) for c in by_ft])
    table = pd.concat([pd.DataFrame({"feature": kept}), pd.DataFrame([feature_groups(name) for name in kept])],
                      axis=1)
    table = table.assign(sens_pre=mean("sens_pre"), sens_ft=mean("sens_ft"), change=change, rank=_ranks(change),
                         p_value=raw_p, p_fwer=fwer_p, rank_min=ft_ranks.min(axis=0), rank_max=ft_ranks.max(axis=0))
    table = table.sort_values("rank", kind="mergesort").reset_index(drop=True)
    summary = {
        "n_train": n_train, "n_heldout": int(heldout.sum()), "n_features_in": len(feature_cols),
        "n_features_kept": len(kept), "r2_pre": float(mean("r2_pre")), "r2_ft": float(mean("r2_ft")),
        "r2_floor": float(st["min_r2"]), "ridge_alpha": float(mean("alpha")),
        "total_change": float(np.abs(change).sum()),
        "perm_p": float((1 + (np.linalg.norm(null, axis=1) >= np.linalg.norm(change) - 1e-12).sum())
                        / (len(null) + 1)),
        "n_significant": int((fwer_p <= FWER_ALPHA).sum()),
        "stability_spearman": _mean_pairwise_spearman([np.abs(c) for c in by_mlp]),
        "finetune_stability_spearman": _mean_pairwise_spearman([np.abs(c) for c in by_ft]),
        "seeds": ";".join(map(str, st["seeds"])), "finetune_seeds": ";".join(map(str, finetuned)),
    }
    summary["interpretable"] = bool(min(summary["r2_pre"], summary["r2_ft"]) >= st["min_r2"])
    summary["note"] = "" if summary["interpretable"] else (
        f"held-out R² {min(summary['r2_pre'], summary['r2_ft']):.3f} below the floor {st['min_r2']:g}: the radiomics "
        "do not explain the embeddings, so no ranking or change is shown")
    return table[TABLE_COLUMNS], summary


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Change of sensitivity share aggregated by feature group, filter and image (a group's sum is the change of
    its share; all groups together sum to 0): columns by, level, n, sum, mean."""
    parts = []
    for by in ("group", "filter", "image"):
        agg = table.groupby(by, sort=True)["change"].agg(n="size", sum="sum", mean="mean").reset_index()
        parts.append(agg.rename(columns={by: "level"}).assign(by=by))
    return pd.concat(parts, ignore_index=True)[["by", "level", "n", "sum", "mean"]]
