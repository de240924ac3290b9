"""The manifest as a table: reading the CSV (header, line lengths, columns) and the checks that need no files
(required values, ids, splits, label ranges, patient leakage)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pandas as pd

from taskalign.data.labels import MANIFEST_COLUMNS, N_SECTORS, PIRADS_CLASSES, SPLITS
from taskalign.data.problems import Problem, value_text
from taskalign.data.splits import check_patient_leakage

REFERENCE_IMAGE = "t2w"
REQUIRED_VALUES = ("case_id", "patient_id", "cohort", REFERENCE_IMAGE)
# A case id names a folder: '.' and '..' would name the folder itself or its parent.
CASE_ID_PATTERN = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.-]+")
CASE_ID_RULE = "case_id may only contain A-Z a-z 0-9 _ . - and may not be '.' or '..' (it names folders)"
PIRADS_RANGE = (min(PIRADS_CLASSES), max(PIRADS_CLASSES))
SECTOR_RANGE = (0, N_SECTORS - 1)
POSITIVE_FLOAT_COLUMNS = {"volume_ml": "mL", "tr": "ms", "te": "ms", "flip_angle": "deg", "field_strength": "T"}


def read_table(manifest_path: Path, problems: list[Problem]) -> tuple[pd.DataFrame, set[str]] | None:
    """The manifest as strings ('' for empty) with every known column plus `_line` (the manifest line), and the
    set of columns the file really has; header and line-length problems are reported."""
    where = str(manifest_path)
    if not manifest_path.is_file():
        problems.append(Problem(None, None, where, "manifest not found"))
        return None
    try:
        with open(manifest_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports
            lines = [(reader.line_num, row) for reader in [csv.reader(f)] for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(Problem(None, None, where, f"cannot parse manifest: {' '.join(str(error).split())}"))
        return None
    lines = [(n, row) for n, row in lines if any(cell.strip() for cell in row)]
    if not lines:
        problems.append(Problem(None, None, where, "manifest is empty (no header)"))
        return None
    header = [name.strip() for name in lines[0][1]]
    records = []
    for n, row in lines[1:]:
        if len(row) != len(header):
            problems.append(Problem(None, None, where, f"line {n} has {len(row)} fields, the header has {len(header)}"))
        records.append((row + [""] * len(header))[: len(header)])
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen:
            problems.append(Problem(None, name, where, f"duplicate column {name!r}"))
        else:
            seen[name] = i
    for name in MANIFEST_COLUMNS:
        if name not in seen:
            problems.append(Problem(None, name, where, f"missing required column {name!r}"))
    for name in seen:
        if name not in MANIFEST_COLUMNS:
            problems.append(
                Problem(None, name, where, f"unknown column {name!r} (known: {', '.join(MANIFEST_COLUMNS)})")
            )
    table = pd.DataFrame(
        {name: [row[seen[name]].strip() if name in seen else "" for row in records] for name in MANIFEST_COLUMNS},
        index=pd.RangeIndex(len(records)),
        dtype=object,
    )
    table["_line"] = [n for n, _ in lines[1:]]  # manifest line of each case, dropped before writing
    if table.empty:
        problems.append(Problem(None, None, where, "manifest has no cases"))
    return table, set(seen)


def _label_problem(column: str, value: str) -> str | None:
    if column in ("pirads", "sector"):
        lo, hi = PIRADS_RANGE if column == "pirads" else SECTOR_RANGE
        try:
            number = float(value)
        except ValueError:
            return f"{column} {value!r} is not an integer"
        if not (math.isfinite(number) and number.is_integer()):
            return f"{column} {value!r} is not an integer"
        if not lo <= number <= hi:
            return f"{column} {value_text(number)} out of range {lo}-{hi}"
        return None
    unit = POSITIVE_FLOAT_COLUMNS[column]
    try:
        number = float(value)
    except ValueError:
        return f"{column} {value!r} is not a number"
    if not math.isfinite(number) or number <= 0:
        return f"{column} {value} must be a finite number > 0 {unit}"
    return None


def check_rows(
    table: pd.DataFrame, case: pd.Series, present: set[str], require: dict[str, bool], problems: list[Problem]
) -> None:
    """Values, ids and splits (no files); a column missing from the file is reported once, not per row."""
    required = [c for c in MANIFEST_COLUMNS if c in present and (c in REQUIRED_VALUES or require.get(c, False))]
    for i, row in table.iterrows():
        for column in required:
            if not row[column]:
                problems.append(Problem(case[i], column, None, "required value is empty"))
        if row["case_id"] and not CASE_ID_PATTERN.fullmatch(row["case_id"]):
            problems.append(Problem(case[i], "case_id", None, CASE_ID_RULE))
        if row["split"] and row["split"] not in SPLITS:
            problems.append(
                Problem(case[i], "split", None,
                        f"invalid split {row['split']!r} (expected {', '.join(SPLITS)} or empty)")
            )
        for column in ("pirads", "sector", *POSITIVE_FLOAT_COLUMNS):
            if row[column]:
                message = _label_problem(column, row[column])
                if message:
                    problems.append(Problem(case[i], column, None, message))

    ids = table["case_id"][table["case_id"] != ""]
    for case_id, rows in ids.groupby(ids, sort=False).groups.items():
        if len(rows) > 1:
            lines = ", ".join(str(table.at[r, "_line"]) for r in rows)
            problems.append(Problem(case_id, "case_id", None, f"duplicate case_id (manifest lines {lines})"))

    empty = table["split"] == ""
    if empty.any() and not empty.all():
        for i in table.index[empty]:
            problems.append(
                Problem(case[i], "split", None, "split is empty while other rows have one (fill every row or none)")
            )
    for leak in check_patient_leakage(table):
        rows = table[(table["patient_id"] == leak.patient_id) & (table["split"] != "")]
        where = ", ".join(f"{case[i]} in {rows.at[i, 'split']}" for i in rows.index)
        problems.append(
            Problem(", ".join(case[i] for i in rows.index), "split",
                    None, f"patient {leak.patient_id} is in {len(leak.splits)} splits ({where})")
        )


