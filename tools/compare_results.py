"""Compare two results/ trees (before and after a refactor): bytes, except what may differ without
meaning anything: provenance lines (code version, config hash), wall-clock seconds (timing.json, history.csv), figure
footers, safetensors key order (tensors and metadata compared instead), absolute paths in the cache index.
Skipped: logs, benchmarks, resume state, QC montages. Usage: python tools/compare_results.py BEFORE AFTER [SUBDIR...]
"""
import re, sys, json
from pathlib import Path
import numpy as np
from PIL import Image
a, b = Path(sys.argv[1]), Path(sys.argv[2])
subdirs = sys.argv[3:] or ["results"]
bad, n = [], 0
for sub in subdirs:
  for fa in sorted((a / sub).rglob("*")):
    if not fa.is_file() or "/resume/" in str(fa) or "/qc/" in str(fa) or "/provenance/" in str(fa) or "/logs/" in str(fa) or "/benchmarks/" in str(fa) or "/.snakemake" in str(fa): continue
    rel = fa.relative_to(a); fb = b / rel; n += 1
    if not fb.exists(): bad.append(f"missing {rel}"); continue
    if fa.read_bytes() == fb.read_bytes(): continue
    if fa.name == "timing.json" or "001_table1_compute" in fa.name: continue  # wall-clock seconds
    if fa.name == "history.csv":
        import pandas as pd
        ha, hb = pd.read_csv(fa), pd.read_csv(fb)
        ha, hb = (h.drop(columns=[c for c in h.columns if "second" in c]) for h in (ha, hb))
        if ha.equals(hb): continue
    if fa.suffix in (".csv", ".json") and fa.read_text().replace(str(a.resolve()), "R") == fb.read_text().replace(str(b.resolve()), "R"): continue
    if fa.name == "meta.json":
        ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
        for j in (ja, jb):
            j.pop("seconds", None); j.pop("warnings", None)
        if ja == jb: continue
    if fa.suffix in (".md", ".tex", ".html"):
        strip = lambda t: re.sub(r"(code|config)(\\?_)(version|hash)=[^;&]*", "", t)
        if strip(fa.read_text()) == strip(fb.read_text()): continue
    if fa.name.endswith(".provenance.json"):
        ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text()); [j.pop(k) for j in (ja, jb) for k in ("code_version", "config_hash")]
        if ja == jb: continue
    if fa.suffix == ".png":
        ia, ib = np.asarray(Image.open(fa)), np.asarray(Image.open(fb))
        if ia.shape == ib.shape:
            rows = np.nonzero((ia != ib).any(axis=tuple(range(1, ia.ndim))))[0]
            if rows.min() > 0.9 * ia.shape[0]: continue   # only the footer (code version) differs
            bad.append(f"png differs {rel}: rows {rows.min()}-{rows.max()} of {ia.shape[0]}"); continue
    if fa.suffix == ".safetensors":
        from safetensors import safe_open
        import torch
        def load(f):
            with safe_open(str(f), "pt") as h:
                return h.metadata(), {k: h.get_tensor(k) for k in h.keys()}
        (ma, ta), (mb, tb) = load(fa), load(fb)
        values = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        if ma == mb and values: continue
        keys = sorted(k for k in set(ma or {}) | set(mb or {}) if (ma or {}).get(k) != (mb or {}).get(k))
        bad.append(f"{'metadata only' if values else 'tensors differ'} {rel}" + (f" (metadata keys {keys})" if keys else "")); continue
    if fa.suffix == ".npz":
        za, zb = np.load(fa, allow_pickle=False), np.load(fb, allow_pickle=False)  # never unpickle
        if sorted(za.files) == sorted(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files): continue
        bad.append(f"arrays differ {rel}"); continue
    if fa.suffix == ".pdf": continue  # footer text and timestamps; the PNG beside it is compared
    if fa.name.endswith(".json") and "provenance/config" in str(fa): continue
    bad.append(f"differs {rel}")
print(f"{n} files compared, {len(bad)} differ"); print("\n".join(bad))
