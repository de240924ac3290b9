"""Stop requests from the scheduler: SLURM sends SIGTERM to a job step 5 minutes before its time limit or when
it is preempted (the profile's `--signal=TERM@300`, then `slurm-requeue`); SIGUSR1 asks the same by hand.

A handler only records the signal. The training loop finishes the current step, writes its resume state and
raises `Stopped`, so the job exits with 128 + the signal number (143 for SIGTERM): a failure that the requeued
rerun resumes from.
"""

from __future__ import annotations

import contextlib
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[int] = []


class Stopped(SystemExit):
    """The job stopped on request after writing its resume state; exits 128 + `signum`."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _record(signum, frame) -> None:
    _received.append(signum)


def stop_requested() -> int | None:
    """The first stop signal received while `stop_signals_recorded` is active, or None."""
    return _received[0] if _received else None


@contextlib.contextmanager
def stop_signals_recorded():
    """While the block runs, SIGTERM and SIGUSR1 are recorded instead of ending the process.

    Enter it before any loader worker starts: forked workers inherit the handler, so when SLURM signals every
    process of the step they keep serving batches until the main process has written its state."""
    previous = {signum: signal.signal(signum, _record) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()
