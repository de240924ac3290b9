"""What every entry point needs: logging to stderr (the rule's log), threads from the scheduler, atomic writes."""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def setup_logging(name: str) -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return logging.getLogger(name)


def available_cores(requested: int | None = None) -> int:
    """Cores this job may use: the request, bounded by the CPU affinity (SLURM and cgroups restrict it)."""
    allowed = len(os.sched_getaffinity(0))
    return max(1, min(requested or allowed, allowed))


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping (a parameter or option file); ValueError naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: {path} is not a file")
    mapping = yaml.safe_load(path.read_text())
    if not isinstance(mapping, dict):
        raise ValueError(f"{what}: {path} does not hold a mapping")
    return mapping


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
