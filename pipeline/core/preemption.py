"""What SIGTERM, SIGUSR1 and Ctrl-C do to a stage.

A cluster stops a job with SIGTERM (Slurm's preemption, `scancel`, the time limit), or ahead of the
limit with the signal `--signal` names (SIGUSR1 in scripts/slurm/), then SIGKILL after a grace period.
The CLI installs the handler below for the length of one command:

- in training (inside `deferred()`), the signal only sets a flag; a Trainer callback (pipeline/training/train.py)
  ends the current optimizer step, saves a complete checkpoint and stops, on the same step on every rank;
- anywhere else (loading, data preparation, generation, merging), it raises `Preempted` at once, as
  Ctrl-C raises KeyboardInterrupt: every file we write goes through a temp file and a rename, so
  nothing is left half-written, and a few short sections that must finish (an append to a shard
  file, recording the attempt, promoting the run) run inside `deferred()` too.

The run is then recorded `preempted` with its real duration and the command exits with
PREEMPTED_EXIT (75, EX_TEMPFAIL: "try again"), which scripts/slurm/ read to requeue the job; the same
command resumes it. Ctrl-C is recorded `interrupted` and exits 130, each in one line.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREEMPTED_EXIT = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the same command may be run again
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: str | None = None  # the name of the stop signal this process was sent, once it was
_deferring = 0  # depth of deferred() sections: inside one, a signal only sets the flag


class Preempted(BaseException):
    """The stage was sent SIGTERM or SIGUSR1 and stopped; `saved` says what the next attempt starts from.
    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way up swallows it."""

    def __init__(self, signal_name: str, saved: Path | None = None):
        self.signal_name, self.saved = signal_name, saved
        super().__init__(f"preempted by {signal_name}" + (f"; saved {saved}" if saved else ""))


def _on_stop_signal(signum: int, frame) -> None:
    global _received
    _received = signal.Signals(signum).name
    if _deferring == 0:
        raise Preempted(_received)


@contextmanager
def handling_stop_signals() -> Iterator[None]:
    """SIGTERM and SIGUSR1 stop the stage as described above while the block runs (the main thread only:
    Python delivers signals there); the previous handlers come back afterwards."""
    global _received
    _received = None
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received = None


def requested() -> str | None:
    """The name of the stop signal received (SIGTERM, SIGUSR1), or None."""
    return _received


def check() -> None:
    """Raise Preempted when a stop signal came during a deferred section: the next safe point is here."""
    if _received is not None:
        raise Preempted(_received)


@contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a stop signal only sets the flag (`requested()`); the code decides where to stop."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def stopped_by(exc: BaseException) -> BaseException | None:
    """The Preempted or KeyboardInterrupt that `exc` is or follows from (a library may raise its own error
    while it unwinds from one: datasets' worker pool raises TimeoutError), else None."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (Preempted, KeyboardInterrupt)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# The stop signals, and Ctrl-C, are blocked in a thread that forks while the CLI's handling is on, until the
# child has its own handlers. Without that, a signal reaching the child between fork() and _default_handlers_in_child
# ran the parent's handler there (Preempted raised inside another library's at-fork hook, then swallowed) or was
# dropped by CPython's after-fork reset, and the child lived on: a `datasets.map` pool that replaces a worker
# the job's SIGTERM killed forks just as Pool.terminate() signals its workers, and the stage waited forever on
# the one that missed it (tests/test_preemption.py, about 1 run in 3 at num_proc 2). A blocked signal stays
# pending in the child and arrives once its handlers are set.
_FORK_BLOCKED = (*STOP_SIGNALS, signal.SIGINT)
_mask_before_fork = threading.local()


def _handling() -> bool:
    return signal.getsignal(signal.SIGTERM) is _on_stop_signal


def _block_before_fork() -> None:
    _mask_before_fork.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED) if _handling() else None


def _unblock_in_parent() -> None:
    if getattr(_mask_before_fork, "mask", None) is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, _mask_before_fork.mask)


def _default_handlers_in_child() -> None:
    """A forked helper (a `datasets.map` worker) is stopped by its parent, which handles the signals: it
    must not raise Preempted inside a library's worker loop, nor print a KeyboardInterrupt traceback of its
    own when Ctrl-C reaches the whole process group. SIGTERM and SIGUSR1 end it; SIGINT is left to the parent."""
    global _received, _deferring
    _received, _deferring = None, 0
    mask = getattr(_mask_before_fork, "mask", None)
    try:
        if not _handling():  # the CLI's handling is not on: leave all be
            return
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the child: nothing was installed there
        pass
    finally:
        if mask is not None:  # a stop signal held back since the fork ends the child now
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


os.register_at_fork(before=_block_before_fork, after_in_parent=_unblock_in_parent,
                    after_in_child=_default_handlers_in_child)
