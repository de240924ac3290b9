"""Stop requests from the scheduler: SLURM sends SIGTERM to a job step 5 minutes before its time limit or when it
is preempted (the profile's `--signal=TERM@300`, then `slurm-requeue`); SIGUSR1 asks the same by hand.

A handler records the signal instead of ending the job, and the
training loop polls for it after every step: it writes its resume state and raises `Stopped`, and the job exits
with 128 + the signal number (143 for SIGTERM), a failure that the requeued rerun resumes from. The main thread
also blocks both signals before any loader worker forks: the workers inherit the blocked mask and keep serving
batches when SLURM signals every process of the step (torch's workers otherwise die on SIGTERM, and the main
process with them). A signal sent to the job reaches a thread that does not block it (the handler records it) or
stays pending (polled too). The mask also keeps multiprocessing's exit-time SIGTERM from ending the workers, so
they are ended when the block ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
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
    """A stop signal received or pending while `stop_signals_held` is active (SIGTERM first), or None."""
    pending = signal.sigpending()
    return next((int(signum) for signum in STOP_SIGNALS if signum in pending or signum in _received), None)


@contextlib.contextmanager
def stop_signals_held():
    """While the block runs, SIGTERM and SIGUSR1 wait for `stop_requested` instead of ending the process. Enter
    it before any loader worker starts. Signals still pending at the end are consumed, not delivered."""
    before = set(multiprocessing.active_children())
    handlers = {signum: signal.signal(signum, _record) for signum in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        end_children(set(multiprocessing.active_children()) - before)
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        _received.clear()


def end_children(children: set) -> None:
    """Kill processes started in the block (loader workers, which hold no state once the job's outputs or its
    resume state are written). torch's SIGCHLD handler would report a killed worker as a failure: reset first."""
    if children:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join()
