"""File locks that never outlive their holder, and forked helpers that never outlive their parent.

A run directory (`<out>.lock`) and a cache entry being built (`<fingerprint>.lock`) are guarded by
`flock`, which the kernel releases when the last file descriptor of the lock's open file is closed.
A forked child shares its parent's descriptors, so a `datasets.map` worker (or the Manager process
`datasets` starts beside them) used to hold the lock as well: with only the main process killed, the
workers lived on, blocked on a queue nobody would fill, and the next run waited forever or was
refused "in use by" a pid that no longer existed. Two measures, both taken in every process forked
from one that imported this module (os.register_at_fork):
- the child's copies of the lock descriptors are pointed at /dev/null, so the parent alone holds each
  lock and its death releases it;
- a child forked from the main thread is killed (SIGKILL) when its parent dies (Linux
  PR_SET_PDEATHSIG): an orphaned worker could otherwise still write into a cache entry that the next
  run rebuilds. Only forks from the main thread: the signal follows the thread that forked, and a
  child of a short-lived thread would die with the thread.

A process that must wait for a lock says what it waits for and who holds it; a lock that is busy
while the process named in it is gone is reported with the processes that really hold it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PR_SET_PDEATHSIG = 1
# libc, loaded here: a forked child must not look it up (find_library may run a subprocess)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_held: set[int] = set()  # descriptors of the locks this process holds
_fork: dict[str, int | bool] = {}  # what the parent knew when it forked: its pid, the forking thread


class LockBusy(Exception):
    """The lock is held by another process; the message says by whom."""


def _before_fork() -> None:
    _fork.update(parent=os.getpid(), main_thread=threading.current_thread() is threading.main_thread())


def _in_child() -> None:
    if _held:
        null = os.open(os.devnull, os.O_RDONLY)
        for fd in _held:
            os.dup2(null, fd)  # the child's copy no longer refers to the lock; the parent's still does
        os.close(null)
        _held.clear()
    if _fork.get("main_thread") and _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != _fork["parent"]:  # the parent died before the line above: nobody will signal
            os._exit(1)


os.register_at_fork(before=_before_fork, after_in_child=_in_child)


@contextmanager
def exclusive(path: Path, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) while the block runs; the file
    says who holds it, and is removed when the block ends, so no lock file outlives its use. Busy: raise
    LockBusy when not `wait`, else say on stderr what is awaited (`what`) and from whom, then wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = _lock_file(path, what, wait)
    _held.add(fh.fileno())
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        yield
    finally:
        _held.discard(fh.fileno())
        try:  # removed while still locked: a process waiting on this file finds it gone and locks a new one
            path.unlink()
        except OSError:
            fh.seek(0)
            fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _lock_file(path: Path, what: str, wait: bool):
    """The open lock file at `path`, locked by this process. A holder removes the file as it releases it,
    so a lock obtained on a file no longer at `path` is dropped and the one now there is locked instead."""
    said = False
    while True:
        fh = open(path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(path, fh)
                if not wait:
                    raise LockBusy(holder) from None
                if not said:
                    print(f"waiting for {path} ({what}): held by {holder}", file=sys.stderr, flush=True)
                    said = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            if _still_at(path, fh):
                return fh
        except BaseException:
            fh.close()
            raise
        fh.close()


def _still_at(path: Path, fh) -> bool:
    try:
        here, locked = os.stat(path), os.fstat(fh.fileno())
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)


def describe_holder(path: Path, fh) -> str:
    """Who holds the lock, from what its holder wrote in the file; when that process is gone (on this
    host), the processes that really hold the file open, found in /proc."""
    fh.seek(0)
    recorded = fh.read().strip()
    words = recorded.split()
    if len(words) < 5 or words[0] != "pid" or not words[1].isdigit() or words[4] != socket.gethostname():
        return recorded or "another process"
    if _running(int(words[1])):
        return recorded
    others = [pid for pid in _processes_holding(path) if pid != os.getpid()]
    if not others:
        return f"a process that inherited it from pid {words[1]} (no longer running)"
    return (f"pid {', '.join(map(str, others))} ({_command(others[0])}), left behind by pid {words[1]}, which is no "
            f"longer running: stop {'it' if len(others) == 1 else 'them'} (kill {' '.join(map(str, others))})")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"  # a zombie has released its files


def _processes_holding(path: Path) -> list[int]:
    """Pids of the processes (of those this one may inspect) with `path` open."""
    target = os.stat(path)
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            for fd in (proc / "fd").iterdir():
                st = os.stat(fd)
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    pids.append(int(proc.name))
                    break
        except OSError:
            continue
    return sorted(pids)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"
