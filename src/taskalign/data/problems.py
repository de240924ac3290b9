"""What the integrity check reports: one Problem per thing wrong (case, column, file, message), and the text
helpers that write numbers and voxel values as a user would."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest; any of case_id, column, file may be None when it does not apply."""

    case_id: str | None
    column: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = [
            f"{label} {value}"
            for label, value in (("case", self.case_id), ("column", self.column), ("file", self.file))
            if value is not None
        ]
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ManifestError(Exception):
    """A manifest failed the integrity check; `problems` holds every problem found."""

    def __init__(self, problems: list[Problem], manifest_path: str | os.PathLike | None = None):
        self.problems = list(problems)
        self.manifest_path = None if manifest_path is None else str(manifest_path)
        where = f" in manifest {self.manifest_path}" if self.manifest_path else ""
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''}{where}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def number_text(value: float) -> str:
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return repr(round(value, 4) + 0.0)  # + 0.0 turns -0.0 into 0.0


def value_text(value: float) -> str:
    """A voxel value as a user would write it: '2' for 2.0, '0.5', 'nan'."""
    value = float(value)
    return str(int(value)) if value.is_integer() else number_text(value)


def values_text(values, limit: int = 10) -> str:
    values = list(values)
    shown = ", ".join(value_text(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def dims_text(values) -> str:
    return "x".join(str(v) if isinstance(v, int) else number_text(v) for v in values)


