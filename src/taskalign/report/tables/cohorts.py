"""Seed 000 Table 1: the cohorts, their tasks, split sizes, inputs and outputs."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from taskalign.report.tables.model import MISSING, Table
from taskalign.tasks.spec import Task

def cohort_table(manifests: Mapping[str, pd.DataFrame], tasks_config: Mapping[str, dict]) -> Table:
    """Seed 000 Table 1: per cohort the tasks using it, train/val/test case counts, inputs (union of its tasks'
    input channels) and outputs (its tasks' targets).

    manifests: cohort -> manifest frame (case_id, split, ...). tasks_config: the config's `tasks` section.
    """
    tasks = [Task.from_config(name, spec) for name, spec in tasks_config.items()]
    rows = []
    for cohort, manifest in manifests.items():
        used = [t for t in tasks if t.cohort == cohort]
        counts = manifest["split"].value_counts()
        inputs = dict.fromkeys(ch.upper() for t in used for ch in t.inputs)
        outputs = dict.fromkeys(t.kind.describe_output(t.type.target) for t in used)
        rows.append({"cohort": cohort, "tasks": ", ".join(t.name for t in used) or MISSING,
                     "train": int(counts.get("train", 0)), "val": int(counts.get("val", 0)),
                     "test": int(counts.get("test", 0)), "inputs": ", ".join(inputs) or MISSING,
                     "outputs": ", ".join(outputs) or MISSING})
    raw = pd.DataFrame(rows)
    cells = raw.set_index("cohort").astype(str)
    return Table(cells, raw, "Cohorts: tasks, case counts per split (train, val, test), input channels and outputs.")

