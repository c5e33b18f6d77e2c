"""Child processes in tests: wait for one, and never leave it running."""

from __future__ import annotations

import multiprocessing.process


def join_or_kill(proc: multiprocessing.process.BaseProcess, timeout: float) -> int | None:
    """Wait up to `timeout` s for `proc`; its exit code, or None (killed) if it still ran."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return proc.exitcode
