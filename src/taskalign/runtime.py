"""What every entry point needs: logging to stderr (the rule's log), threads from the scheduler, atomic writes that
follow the umask, array reads that never unpickle, and the job's start-up clock."""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


STARTUP_LINE = "start-up"  # benchmarks/startup.py reads these lines from the jobs' logs
_ready: dict[str, float] = {}


def setup_logging(name: str) -> logging.Logger:
    """Logging to stderr (the job's log); at exit the job's start-up and total seconds are logged (`mark_ready`)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting: 100 lines a figure
    log = logging.getLogger(name)
    atexit.register(_log_startup, log)
    return log


def _process_started() -> float:
    """When this process began (epoch seconds): the interpreter's own start-up counts as start-up too."""
    import psutil

    return psutil.Process().create_time()


def mark_ready() -> None:
    """The job's first useful step begins now: everything before it (interpreter, imports, model build, opening
    the data) is start-up. Only the first call counts."""
    _ready.setdefault("at", time.time())


def _log_startup(log: logging.Logger) -> None:
    if "at" in _ready:
        started = _process_started()
        log.info("%s %.2f s of %.2f s", STARTUP_LINE, _ready["at"] - started, time.time() - started)


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


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it: a set-and-restore would give
    files that other threads create meanwhile the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    The file gets the mode a plain `open` would give it (0666 less the umask), not the 0600 of mkstemp (or of
    writers that replace the temporary file, such as safetensors): collaborators in the group can read the results
    where the umask lets them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_array(path: str | Path, mmap_mode: str | None = None):
    """A `.npy` array (numpy), never unpickled: an object array (which would run code on loading) is refused with
    a ValueError naming the file."""
    import numpy as np

    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numeric array ({error}); pickled objects are never loaded") from error


def read_arrays(path: str | Path) -> dict:
    """Every array of a `.npz` file, {name: array}, never unpickled (see `read_array`)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numeric array file ({error}); pickled objects are never "
                         "loaded") from error
