"""A per-host readers-writer lock: a latency measurement runs alone, training runs side by side.

Why: a study runs several trials at once on one machine. Timing ONNX Runtime on the 2-core
reference machine while another trial trains shares the cores with it: latency roughly
doubles and its coefficient of variation ruins the comparison between candidates. So every
timing run holds `measuring()` (exclusive) and every training or validation batch holds
`busy()` (shared): trainers overlap freely, a measurement waits for the batches in flight,
runs with the cores to itself, and only then lets the next batch start.

How: two empty files in one lock directory, locked with `fcntl.flock`.

- `rw` is the readers-writer lock itself: `busy()` holds it shared, `measuring()` exclusive.
- `gate` is a turnstile that keeps a waiting measurer from starving. flock grants a shared
  request beside other shared holders even while an exclusive one waits, so two trainers
  whose batches overlap would hold `rw` forever. `busy()` therefore passes through `gate`
  (lock it, take `rw` shared, unlock it) while `measuring()` keeps `gate` for its whole
  section, including the wait for `rw`: once a measurer is waiting, no new batch starts and
  it waits at most for the batches already running.

Per host, because latency is a property of the host's cores. The directory is
`$VLMNAS_LOCK_DIR`, else `<tempfile.gettempdir()>/vlmnas-<uid>-locks` (created 0700 on first
use). Every process of a study must resolve the same directory: set `VLMNAS_LOCK_DIR` if
their `TMPDIR`s differ, and keep it on a local file system (flock is not shared across NFS
clients, which is right: another host's cores are not ours).

Crash safety: the kernel drops a flock when the last descriptor of its open file is closed,
which process death does. A trial SIGKILLed inside `measuring()` or `busy()` never blocks
the study. (A child it forked while holding the lock keeps the open file alive until that
child exits too; descriptors are close-on-exec, so exec'd programs do not.)

Re-entrancy: holds are tracked per thread. Each outermost acquisition opens its own file
descriptions, and flock treats separate open files as separate owners even within one
process, so two threads exclude each other exactly as two processes do. Nested in the same
thread, `measuring()` in `measuring()`, `busy()` in `measuring()` and `busy()` in `busy()`
only count depth; the lock is released when the outermost section ends. `measuring()` inside
`busy()` raises: it would wait for the thread's own shared hold.

Cost: an uncontended `busy()` is two `open`s, three `flock`s and two `close`s, 10-14 µs on
a local ext4 disk (about 1 µs nested), noise next to a training step of milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["LOCK_DIR_ENV", "busy", "lock_dir", "measuring"]

LOCK_DIR_ENV = "VLMNAS_LOCK_DIR"


@dataclass
class _Holds:
    """What this thread holds: nesting depth, kind, and the descriptors to unlock at depth 0."""

    pid: int
    depth: int = 0
    exclusive: bool = False
    fds: tuple[int, ...] = ()


_local = threading.local()
_checked_dirs: set[str] = set()


def lock_dir() -> str:
    """The lock directory of this host and user, created if missing."""
    override = os.environ.get(LOCK_DIR_ENV)
    path = override or os.path.join(tempfile.gettempdir(), f"vlmnas-{os.getuid()}-locks")
    if path in _checked_dirs:
        return path
    os.makedirs(path, mode=0o700, exist_ok=True)
    if not override and os.stat(path).st_uid != os.getuid():
        # In a world-writable temp dir another user could pre-create it and hold our locks.
        raise PermissionError(
            f"lock directory {path} is owned by uid {os.stat(path).st_uid}, not {os.getuid()}; "
            f"remove it or set {LOCK_DIR_ENV} to a directory of your own"
        )
    _checked_dirs.add(path)
    return path


def busy() -> contextlib.AbstractContextManager[None]:
    """Shared hold for a stretch of CPU work (a training or validation batch).

    Any number of threads and processes on the host may hold it together; it waits while a
    `measuring()` section runs or waits to run.
    """
    return _hold(exclusive=False)


def measuring() -> contextlib.AbstractContextManager[None]:
    """Exclusive hold for a latency measurement.

    Waits for the `busy()` sections in flight, then keeps every other `busy()` and
    `measuring()` on the host out until it ends. Raises `RuntimeError` inside `busy()` in the
    same thread.
    """
    return _hold(exclusive=True)


@contextmanager
def _hold(*, exclusive: bool) -> Iterator[None]:
    holds = _thread_holds()
    if holds.depth:
        if exclusive and not holds.exclusive:
            raise RuntimeError(
                "measuring() inside busy() in the same thread would wait for its own shared "
                "hold; end the busy() section before measuring"
            )
        holds.depth += 1
        try:
            yield
        finally:
            holds.depth -= 1
        return

    directory = lock_dir()
    gate = _open_locked(os.path.join(directory, "gate"), fcntl.LOCK_EX)
    try:
        rw = _open_locked(
            os.path.join(directory, "rw"), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        )
    except BaseException:
        _unlock(gate)
        raise
    if exclusive:
        fds: tuple[int, ...] = (rw, gate)
    else:
        _unlock(gate)
        fds = (rw,)
    holds.depth, holds.exclusive, holds.fds = 1, exclusive, fds
    try:
        yield
    finally:
        holds.depth, holds.exclusive, holds.fds = 0, False, ()
        for fd in fds:
            _unlock(fd)


def _thread_holds() -> _Holds:
    holds: _Holds | None = getattr(_local, "holds", None)
    if holds is None or holds.pid != os.getpid():
        if holds is not None:
            # Forked while holding: the descriptors share the parent's open files, so unlocking
            # them would release the parent's lock. Closing them leaves it alone.
            for fd in holds.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        holds = _Holds(pid=os.getpid())
        _local.holds = holds
    return holds


def _open_locked(path: str, operation: int) -> int:
    # flock needs no write access to the file, only an open descriptor.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, operation)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int) -> None:
    # Unlock explicitly before closing: a child forked meanwhile may hold a copy of `fd`, and
    # closing ours alone would leave the lock held until that child exits.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
