"""Linear probe of the continual-pretraining target: how much of the target mask each encoder's patch tokens carry
beyond what the patch's position already tells.

For every encoder entering or leaving continual pretraining (pretrained and continual, each variant, the random
init included) and each of the adapter's blocks, a ridge regression maps a patch token to the share of its patch
inside the target mask (prostate by default) minus that share's mean over the training cases at the same patch
position. The crop is centred on the gland, so position alone explains most of the share (R^2 0.94 on the default
run's validation cases); subtracting it leaves the case-specific part, which only the image can give. The probe is
fitted on the training cases' tokens and scored (R^2) on the validation cases', with a bootstrap interval over
validation cases and the paired gain over the random init of the same stage. The UperNet decoder of continual
pretraining reaches about the same validation Dice from random and pretrained encoders, because it infers the
gland from context and position; the probe, which reads one token at a time, shows whether the encoder carries
the case's own target.

Tokens are the positions of each level's map (taskalign.models.families.base: vit3d's block maps are its patch
tokens), each standing for the input voxels of its stride; a level whose stride does not tile the input is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeCV

from taskalign.data.dataset import CacheDataset, read_index
from taskalign.models.checkpoint_io import EncoderFile
from taskalign.models.device import autocast, select_device, to_device
from taskalign.models.families.base import FoundationEncoder
from taskalign.runtime import atomic_path

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties, chosen per fit by efficient leave-one-out on the training tokens


def patch_occupancy(mask: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, 1, D, H, W) mask -> (B, N) fraction of each patch inside it, in the encoder's token order."""
    return F.avg_pool3d(mask.float(), kernel_size=patch, stride=patch).flatten(1)


def level_strides(encoder: FoundationEncoder, names: list[str], size: tuple[int, ...], where: str) -> dict:
    """{level: integer stride (D, H, W)} of each level whose stride tiles the input `size`; an error otherwise."""
    strides = {}
    levels = {level.name: level for level in encoder.levels()}
    for level in (levels[name] for name in names):
        stride = tuple(int(s) for s in level.stride)
        if stride != tuple(level.stride) or any(n % s for n, s in zip(size, stride)):
            raise ValueError(f"{where}: level {level.name} has stride {level.stride}, which does not tile the input "
                             f"{list(size)}: the target probe needs one map position per whole patch of voxels")
        strides[level.name] = stride
    return strides


@torch.no_grad()
def tokens_and_occupancy(encoder: FoundationEncoder, loader, names: list[str], strides: dict, target: str,
                         device: torch.device) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tokens (map positions) of each chosen level, (cases x N, C), and the target occupancy of the voxels each
    stands for, (cases, N), per level."""
    encoder = encoder.to(device).eval()
    tokens: dict[str, list[np.ndarray]] = {n: [] for n in names}
    occupancy: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            levels = encoder(batch["image"])
        for n in names:
            tokens[n].append(levels[n].float().flatten(2).transpose(1, 2).flatten(0, 1).cpu().numpy())
            occupancy[n].append(patch_occupancy(batch[target], strides[n]).cpu().numpy())
    return ({n: np.concatenate(parts) for n, parts in tokens.items()},
            {n: np.concatenate(parts) for n, parts in occupancy.items()})


def ridge_fit(x_train: np.ndarray, y_train: np.ndarray) -> RidgeCV:
    return RidgeCV(alphas=ALPHAS).fit(x_train.astype(np.float64), y_train.astype(np.float64))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's r2_score for one output, without its input checks: the bootstrap calls it ~10^4 times."""
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def bootstrap_r2(y: np.ndarray, preds: dict[str, np.ndarray], cases: np.ndarray, reference: dict[str, str | None],
                 n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Per encoder: R^2 over `n_boot` resamples of the validation cases (tokens of a case stay together), and,
    where it has a reference encoder, the paired difference R^2 - R^2(reference) on the same resamples."""
    ids = np.unique(cases)
    members = [np.flatnonzero(cases == c) for c in ids]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in preds}
    draws.update({f"{name}-gain": [] for name, ref in reference.items() if ref is not None})
    for _ in range(n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(len(ids), size=len(ids))])
        if np.ptp(y[rows]) == 0:  # every drawn case the same constant target: R^2 undefined
            continue
        scores = {name: r2(y[rows], pred[rows]) for name, pred in preds.items()}
        for name, score in scores.items():
            draws[name].append(score)
            if reference.get(name) is not None:
                draws[f"{name}-gain"].append(score - scores[reference[name]])
    return {k: np.asarray(v) for k, v in draws.items()}


def interval(draws: np.ndarray) -> tuple[float, float]:
    """95% percentile interval; NaN when no resample was defined."""
    if len(draws) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def random_reference(name: str, names: list[str]) -> str | None:
    """The random init of the same stage ("continual-random" for "continual-mae"), when there is one."""
    stage = name.split("-", 1)[0]
    ref = f"{stage}-random"
    return ref if ref in names and ref != name else None


def probe(*, encoders: dict[str, Path], index: Path, target: str, layers: list[int], batch_size: int,
          n_boot: int = 1000, seed: int = 0, threads: int | None = None) -> pd.DataFrame:
    """One row per encoder x block: validation R^2 of the ridge probe from a token to its patch's target share
    beyond the position's mean, its 95% bootstrap interval over validation cases, and the paired gain over the
    random init of the same stage with its interval."""
    device = select_device(threads)
    rows = read_index([index])
    splits = {s: rows[rows["split"] == s].reset_index(drop=True) for s in ("train", "val")}
    for split, part in splits.items():
        if part.empty:
            raise ValueError(f"{index}: the target probe needs {split} cases")
        missing = part.loc[part[target].isna() | (part[target].astype(str) == ""), "case_id"].tolist()
        if missing:
            raise ValueError(f"{index}: {split} cases without a {target} mask: {', '.join(missing)}")
    preds: dict[int, dict[str, np.ndarray]] = {n: {} for n in layers}
    alphas: dict[tuple[str, int], float] = {}
    y_val: dict = {}
    cases: dict = {}
    for name, path in encoders.items():
        encoder_file = EncoderFile.read(path)
        encoder = encoder_file.build()
        contract = encoder_file.contract.to_json() if encoder_file.contract else None
        loaders = {s: torch.utils.data.DataLoader(CacheDataset(part, masks=(target,), contract=contract),
                                                  batch_size=batch_size) for s, part in splits.items()}
        try:
            level_of = dict(zip(layers, encoder.resolve_levels(layers)))
        except ValueError as err:
            raise ValueError(f"{path}: continual.layers {layers}: {err}") from err
        size = tuple(loaders["train"].dataset[0]["image"].shape[1:])
        strides = level_strides(encoder, list(level_of.values()), size, str(path))
        train_tokens, train_share = tokens_and_occupancy(encoder, loaders["train"], list(level_of.values()), strides,
                                                         target, device)
        val_tokens, val_share = tokens_and_occupancy(encoder, loaders["val"], list(level_of.values()), strides, target,
                                                     device)
        for n in layers:
            level = level_of[n]
            by_position = train_share[level].mean(axis=0)  # what the position alone predicts
            y_train = (train_share[level] - by_position).ravel()
            y_val[n] = (val_share[level] - by_position).ravel()
            cases[n] = np.repeat(np.arange(len(val_share[level])), val_share[level].shape[1])
            model = ridge_fit(train_tokens[level], y_train)
            preds[n][name] = model.predict(val_tokens[level].astype(np.float64))
            alphas[name, n] = float(model.alpha_)
        log.info("%s: validation R^2 %s", name,
                 "  ".join(f"{level_of[n]} {r2(y_val[n], preds[n][name]):.3f}" for n in layers))
    names = list(encoders)
    reference = {name: random_reference(name, names) for name in names}
    draws = {n: bootstrap_r2(y_val[n], preds[n], cases[n], reference, n_boot, seed) for n in layers}
    records = []
    for name in names:
        for n in layers:
            low, high = interval(draws[n][name])
            record = {"encoder": name, "block": n, "val_r2": r2(y_val[n], preds[n][name]), "val_r2_low": low,
                      "val_r2_high": high, "reference": reference[name] or "", "gain": np.nan, "gain_low": np.nan, "gain_high": np.nan,
                      "alpha": alphas[name, n], "val_cases": len(splits["val"]), "val_tokens": len(y_val[n])}
            if reference[name]:
                low, high = interval(draws[n][f"{name}-gain"])
                record.update(gain=record["val_r2"] - r2(y_val[n], preds[n][reference[name]]), gain_low=low,
                              gain_high=high)
            records.append(record)
    return pd.DataFrame(records)


def plot(table: pd.DataFrame, png: Path, target: str) -> None:
    """Left: validation R^2 against block, one line per encoder (pretrained solid, continual dashed). Right: the
    paired gain over the random init of the same stage, with its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    variants = sorted({name.split("-", 1)[1] for name in table["encoder"]})
    for name, part in table.groupby("encoder", sort=False):
        stage, variant = name.split("-", 1)
        style = {"marker": "o", "ls": "--" if stage == "continual" else "-", "color": f"C{variants.index(variant)}",
                 "label": name}
        left.plot(part["block"], part["val_r2"], **style)
        if part["gain"].notna().any():
            right.errorbar(part["block"], part["gain"], yerr=[part["gain"] - part["gain_low"],
                                                               part["gain_high"] - part["gain"]], capsize=2, **style)
    right.axhline(0.0, color="grey", lw=0.8)
    left.set_ylabel("validation R$^2$")
    right.set_ylabel("gain over the random init (95% CI over cases)")
    for ax in (left, right):
        ax.set_xlabel("block")
        ax.set_xticks(sorted(table["block"].unique()))
        if ax.get_legend_handles_labels()[0]:  # no gains without a random init to compare with
            ax.legend(fontsize=7)
    fig.suptitle(f"linear probe: {target} share of a patch beyond its position's mean, from that patch's token",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def run(*, encoders: dict[str, Path], index: Path, settings: dict, out_csv: Path, out_png: Path,
        threads: int | None = None) -> pd.DataFrame:
    """The probe of every encoder as a table and a figure. settings (taskalign.plan.params.target_probe): target,
    layers, batch_size, bootstrap (resamples of the validation cases) and seed."""
    table = probe(encoders=encoders, index=index, target=settings["target"], layers=settings["layers"],
                  batch_size=settings["batch_size"], n_boot=settings["bootstrap"], seed=settings["seed"],
                  threads=threads)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    plot(table, out_png, settings["target"])
    return table
