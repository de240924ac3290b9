"""The radiomic lens (seed 003): which radiomic features fine-tuning re-weighted in an encoder's embeddings.

A 2-layer MLP maps preprocessed radiomic features (training split) to standardised PCA scores of the pretrained
embeddings. Its first layer is then frozen and the last layer re-estimated in closed form (ridge) on the pretrained
and on the fine-tuned embeddings, both in the pretrained PCA basis. Per radiomic feature j the sensitivity is the
column norm of S = W2 diag(a) W1 (the mean Jacobian of the ReLU network, a_k = share of training cases where hidden
unit k is active); fine-tuning's effect on feature j is ||S_ft[:, j] - S_pre[:, j]||. Held-out R^2 says whether the
fits are worth reading, a permutation null (fine-tuning shifts shuffled over cases) calibrates the change, and
repeating the MLP over seeds gives the stability of the ranking. The seed paper has only an abstract; the choices
here follow the design notes of the analysis research (anchors-analysis.md, section 5).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, skew, spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from taskalign.analysis.radiomics import feature_groups

log = logging.getLogger(__name__)

DEFAULTS = {"pca_components": 8, "hidden": 32, "steps": 500, "lr": 0.01, "weight_decay": 0.001, "ridge_alpha": 1.0,
            "dedup_spearman": 0.95, "permutations": 200, "seeds": [0, 1, 2]}
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
TABLE_COLUMNS = ["feature", "image", "filter", "class", "group", "sens_pre", "sens_ft", "gain", "change", "rank",
                 "p_value"]


def lens_settings(settings: dict) -> dict:
    """DEFAULTS updated with `settings`; unknown keys are an error (a typo would silently fall back)."""
    unknown = set(settings) - set(DEFAULTS) - PASSED_THROUGH
    if unknown:
        raise ValueError(f"unknown lens setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in settings.items() if k in DEFAULTS}}
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


def embedding_targets(pre: np.ndarray, ft: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised PCA scores of both embeddings in the basis fitted on the standardised pretrained training rows.

    The fine-tuned embeddings go through the same scaler and basis, so a change in targets is a change of the
    encoder, not of the coordinate system (fine-tuning also rescales features, which the shared scaler keeps).
    """
    mean, std = pre[train].mean(axis=0), pre[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    pca = PCA(n_components=k, svd_solver="full").fit((pre[train] - mean) / std)
    scores_pre = pca.transform((pre - mean) / std)
    scores_ft = pca.transform((ft - mean) / std)
    scale = scores_pre[train].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return scores_pre / scale, scores_ft / scale


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


def ridge_coefficients(h: np.ndarray, z: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge slopes (..., k, hidden) for targets z (..., n, k) on fixed activations h (n, hidden), with intercept.

    The same solution as sklearn's Ridge(alpha, fit_intercept=True) (centre both sides, solve the normal equations),
    batched over leading axes of z so a whole permutation null is one solve.
    """
    hc = h - h.mean(axis=0)
    zc = z - z.mean(axis=-2, keepdims=True)
    gram = hc.T @ hc + alpha * np.eye(h.shape[1])
    return np.swapaxes(np.linalg.solve(gram, hc.T) @ zc, -1, -2)


def _join(radiomics: pd.DataFrame, pre: pd.DataFrame, ft: pd.DataFrame) -> pd.DataFrame:
    for name, frame in {"radiomics": radiomics, "pretrained": pre, "fine-tuned": ft}.items():
        if "case_id" not in frame.columns:
            raise ValueError(f"lens: {name} table has no case_id column")
        dup = frame["case_id"][frame["case_id"].duplicated()]
        if not dup.empty:
            raise ValueError(f"lens: {name} table repeats case ids {sorted(map(str, dup.unique()))[:10]}")
    if "split" not in radiomics.columns:
        raise ValueError("lens: radiomics table has no split column")
    emb_cols = [c for c in pre.columns if c != "case_id"]
    if sorted(emb_cols) != sorted(c for c in ft.columns if c != "case_id"):
        raise ValueError("lens: pretrained and fine-tuned embeddings have different columns")
    ids = {name: set(frame["case_id"].astype(str)) for name, frame in
           {"radiomics": radiomics, "pretrained": pre, "fine-tuned": ft}.items()}
    wanted = ids["pretrained"] | ids["fine-tuned"]
    joined = ids["radiomics"] & ids["pretrained"] & ids["fine-tuned"]
    # The embedded cases are the subject; radiomics of extra cohort cases are harmless.
    if len(joined) < MIN_JOINED * len(wanted):
        missing = sorted(wanted - joined)
        raise ValueError(f"lens: only {len(joined)} of {len(wanted)} embedded cases join radiomics and both "
                         f"embeddings (need {MIN_JOINED:.0%}); {len(missing)} missing, e.g. {missing[:10]}")
    if len(joined) < len(wanted):
        log.warning("lens: %d of %d embedded cases not joined: %s", len(wanted) - len(joined), len(wanted),
                    sorted(wanted - joined)[:10])

    def keyed(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
        return frame.assign(case_id=frame["case_id"].astype(str)).set_index("case_id").add_suffix(suffix)

    rad = radiomics.assign(case_id=radiomics["case_id"].astype(str)).set_index("case_id")
    out = rad.join(keyed(pre[["case_id", *emb_cols]], "@pre"), how="inner")
    out = out.join(keyed(ft[["case_id", *emb_cols]], "@ft"), how="inner")
    return out.sort_index()


def _sensitivity(w2: np.ndarray, active: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """S = W2 diag(a) W1, batched over leading axes of w2."""
    return (w2 * active) @ w1


def _mean_pairwise_spearman(vectors: list[np.ndarray]) -> float:
    """Mean Spearman correlation over pairs of vectors; NaN with fewer than two seeds or a constant vector."""
    if len(vectors) < 2 or any(np.ptp(v) == 0 for v in vectors):
        return float("nan")
    return float(np.mean([spearmanr(a, b)[0] for a, b in itertools.combinations(vectors, 2)]))


def fit_lens(radiomics: pd.DataFrame, pre: pd.DataFrame, ft: pd.DataFrame, settings: dict) -> tuple[pd.DataFrame, dict]:
    """Per-feature change table (sorted by rank, 1 = largest change) and a summary dict.

    radiomics: case_id, split and feature columns (patient_id and cohort are ignored); pre, ft: case_id plus the same
    numeric embedding columns. Cases are joined on case_id; at least MIN_JOINED of the embedded cases must join.
    Fitting uses the training split; R^2 (uniform over the k targets, mean over seeds) uses val and test.

    Table columns TABLE_COLUMNS: sensitivities, gain = sens_ft - sens_pre and change (means over seeds), rank by
    change, and p_value = (1 + #{null change_j >= change_j}) / (B + 1). Summary: n_train, n_heldout, n_features_in,
    n_features_kept, r2_pre, r2_ft, total_change (sum of the per-feature changes), perm_p (of ||S_ft - S_pre||_F under
    the same null), stability_spearman (mean pairwise Spearman of the seeds' change vectors), seeds ("0;1;2").
    """
    st = lens_settings(settings)
    data = _join(radiomics, pre, ft)
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
    e_ft = data[[f"{c}@ft" for c in emb_cols]].to_numpy(dtype=np.float64)
    k = min(st["pca_components"], n_train - 1, len(emb_cols))
    z_pre, z_ft = embedding_targets(e_pre, e_ft, train, k)
    alpha = float(st["ridge_alpha"])
    # Null: what fine-tuning changed in the targets (z_ft - z_pre) is unrelated to the radiomics, so its rows are
    # permuted over the training cases (fine-tuned targets z_pre + shift[perm]). Ridge is linear in the targets, so
    # the permuted fit's change from the pre fit is the ridge fit of the permuted shift itself.
    rng = np.random.default_rng(st["seeds"][0])
    shift = (z_ft - z_pre)[train]
    permuted = shift[np.stack([rng.permutation(n_train) for _ in range(st["permutations"])])]
    per_seed = []
    for w1, b1 in first_layers(x[train], z_pre[train], st):
        h = np.maximum(x @ w1.T + b1, 0.0)
        active = (h[train] > 0).mean(axis=0)
        fits = {name: Ridge(alpha=alpha).fit(h[train], z[train]) for name, z in {"pre": z_pre, "ft": z_ft}.items()}
        s_pre = _sensitivity(fits["pre"].coef_, active, w1)
        s_ft = _sensitivity(fits["ft"].coef_, active, w1)
        s_null = _sensitivity(ridge_coefficients(h[train], permuted, alpha), active, w1)
        r2 = {name: (r2_score(z[heldout], fits[name].predict(h[heldout])) if heldout.sum() >= 2 else float("nan"))
              for name, z in {"pre": z_pre, "ft": z_ft}.items()}
        per_seed.append({"sens_pre": np.linalg.norm(s_pre, axis=0), "sens_ft": np.linalg.norm(s_ft, axis=0),
                         "change": np.linalg.norm(s_ft - s_pre, axis=0),
                         "null": np.linalg.norm(s_null, axis=1), **{f"r2_{n}": v for n, v in r2.items()}})

    def mean(key: str) -> np.ndarray:
        return np.mean([run[key] for run in per_seed], axis=0)

    change, null = mean("change"), mean("null")
    table = pd.DataFrame({"feature": kept, "sens_pre": mean("sens_pre"), "sens_ft": mean("sens_ft")})
    groups = pd.DataFrame([feature_groups(name) for name in kept])
    table = pd.concat([table[["feature"]], groups, table[["sens_pre", "sens_ft"]]], axis=1)
    table["gain"] = table["sens_ft"] - table["sens_pre"]
    table["change"] = change
    table["p_value"] = (1 + (null >= change).sum(axis=0)) / (len(permuted) + 1)
    table = table.sort_values(["change", "feature"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    # The overall test uses ||S_ft - S_pre||_F (root of the summed squared changes): the plain sum of per-feature
    # changes also adds every feature's estimation noise and lost a planted two-feature shift among 30 (p 0.7).
    frobenius = np.mean([np.linalg.norm(run["change"]) for run in per_seed])
    null_frobenius = np.mean([np.linalg.norm(run["null"], axis=1) for run in per_seed], axis=0)
    summary = {
        "n_train": n_train, "n_heldout": int(heldout.sum()), "n_features_in": len(feature_cols),
        "n_features_kept": len(kept), "r2_pre": float(mean("r2_pre")), "r2_ft": float(mean("r2_ft")),
        "total_change": float(change.sum()),
        "perm_p": float((1 + (null_frobenius >= frobenius).sum()) / (len(permuted) + 1)),
        "stability_spearman": _mean_pairwise_spearman([run["change"] for run in per_seed]),
        "seeds": ";".join(map(str, st["seeds"])),
    }
    return table[TABLE_COLUMNS], summary


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Change aggregated by feature group, filter and image: columns by, level, n, sum, mean."""
    parts = []
    for by in ("group", "filter", "image"):
        agg = table.groupby(by, sort=True)["change"].agg(n="size", sum="sum", mean="mean").reset_index()
        parts.append(agg.rename(columns={by: "level"}).assign(by=by))
    return pd.concat(parts, ignore_index=True)[["by", "level", "n", "sum", "mean"]]
