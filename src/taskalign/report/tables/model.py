"""The paper-table model: display cells, bold flags, stars, raw numbers and provenance, written as CSV,
Markdown and LaTeX from one object (SPEC "Outputs"), and the formatting helpers the builders share."""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from taskalign.runtime import atomic_path

MISSING = "–"
CHECK = "✓"
PACKAGES = ("torch", "monai", "numpy", "pandas", "snakemake")
STARS_LEGEND = "* p ≤ 0.05, ** p ≤ 0.01, *** p ≤ 0.001"
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
        "≥": r"$\geq$", "≤": r"$\leq$", "<": r"$<$", ">": r"$>$", "|": r"\textbar{}", "–": "--",
        "✓": r"\checkmark{}", "ρ": r"$\rho$", "²": r"$^2$"}


@dataclass
class Table:
    """Display strings (index = row labels; columns flat or a (group, column) MultiIndex), per-cell bold flags
    and stars, the raw numbers behind them (one CSV row per display row), a caption, and the provenance that
    write_table puts into every file (set it with `table.provenance = provenance(config)`)."""

    cells: pd.DataFrame
    raw: pd.DataFrame
    caption: str
    bold: pd.DataFrame | None = None
    stars: pd.DataFrame | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bold is None:
            self.bold = pd.DataFrame(False, index=self.cells.index, columns=self.cells.columns)
        if self.stars is None:
            self.stars = pd.DataFrame("", index=self.cells.index, columns=self.cells.columns)


# --- provenance ---------------------------------------------------------------------------------------------------

def _code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def provenance(config: dict) -> dict:
    """Config hash (first 12 hex of the sha256 of the sorted-key JSON), code version, package versions, device."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return {"config_hash": digest, "code_version": _code_version(), "packages": _package_versions(),
            "device": _device()}


def _provenance_line(prov: Mapping) -> str:
    parts = []
    for key, value in prov.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return "; ".join(parts).replace("\n", " ")


# --- writers ------------------------------------------------------------------------------------------------------

def _headers(columns: pd.Index) -> list[str]:
    if isinstance(columns, pd.MultiIndex):
        return [f"{g} / {c}" if g else str(c) for g, c in columns]
    return [str(c) for c in columns]


def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def _md_cell(text: str, bold: bool, star: str) -> str:
    text = _md_escape(text)
    if bold and text:
        text = f"**{text}**"
    # A lone run of '*' between a space and the cell end is not emphasis in GFM, so stars stay plain.
    return f"{text} {star}" if star else text


def _to_markdown(table: Table) -> str:
    cells = table.cells
    header = [_md_escape(cells.index.name or "")] + [_md_escape(h) for h in _headers(cells.columns)]
    lines = [f"Table: {table.caption}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, label in enumerate(cells.index):
        row = [_md_escape(label)] + [_md_cell(cells.iat[i, j], table.bold.iat[i, j], table.stars.iat[i, j])
                                     for j in range(cells.shape[1])]
        lines.append("| " + " | ".join(row) + " |")
    prov = _provenance_line(table.provenance).replace("*", r"\*")
    return "\n".join(lines + ["", f"*provenance: {prov}*", ""])


def _tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_cell(text: str, bold: bool, star: str) -> str:
    text = _tex_escape(text)
    if bold and text:
        text = rf"\textbf{{{text}}}"
    return text + (rf"$^{{{star}}}$" if star else "")


def _to_latex(table: Table) -> str:
    cells, columns = table.cells, table.cells.columns
    lines = [r"% needs \usepackage{booktabs} (and amssymb for \checkmark)", r"\begin{table}[ht]", r"\centering",
             rf"\caption{{{_tex_escape(table.caption)}}}", rf"\begin{{tabular}}{{l{'c' * len(columns)}}}",
             r"\toprule"]
    leaves = list(columns)
    if isinstance(columns, pd.MultiIndex):
        head, rules, start = [""], [], 2
        for group, run in itertools.groupby(columns.get_level_values(0)):
            width = len(list(run))
            head.append(rf"\multicolumn{{{width}}}{{c}}{{{_tex_escape(group)}}}" if group else " & ".join([""] * width))
            if group:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(head) + r" \\", " ".join(rules)]
        leaves = list(columns.get_level_values(-1))
    lines += [" & ".join([_tex_escape(cells.index.name or "")] + [_tex_escape(c) for c in leaves]) + r" \\",
              r"\midrule"]
    for i, label in enumerate(cells.index):
        row = [_tex_escape(label)] + [_tex_cell(cells.iat[i, j], table.bold.iat[i, j], table.stars.iat[i, j])
                                      for j in range(cells.shape[1])]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", f"% provenance: {_provenance_line(table.provenance)}",
              ""]
    return "\n".join(lines)


def write_table(table: Table, stem: Path) -> list[Path]:
    """Write stem.csv (+ stem.provenance.json), stem.md and stem.tex atomically; return the paths written."""
    if not table.provenance:
        raise ValueError("table has no provenance; set table.provenance = provenance(config) before writing")
    stem = Path(stem)
    texts = {".provenance.json": json.dumps(table.provenance, indent=2, sort_keys=True) + "\n",
             ".md": _to_markdown(table), ".tex": _to_latex(table)}
    paths = [stem.with_name(stem.name + ".csv")]
    with atomic_path(paths[0]) as tmp:
        table.raw.to_csv(tmp, index=False)
    for suffix, text in texts.items():
        paths.append(stem.with_name(stem.name + suffix))
        with atomic_path(paths[-1]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths


# --- formatting helpers -------------------------------------------------------------------------------------------

def finite(x: float) -> bool:
    return bool(np.isfinite(x))


def mean_std(mean: float, std: float, digits: int) -> str:
    if not finite(mean):
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if finite(std) else "")


def best_cells(values: pd.Series, lower: bool) -> pd.Series:
    """True where a value equals the column's best (ties all bold); NaN never wins, and a column where every
    value ties has no best."""
    values = values.astype(float)
    best = values.min() if lower else values.max()
    winners = pd.Series(np.isclose(values, best) & values.notna(), index=values.index)
    return winners if winners.sum() < values.notna().sum() else pd.Series(False, index=values.index)

