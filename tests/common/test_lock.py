"""The per-host measuring lock: shared `busy()`, exclusive `measuring()`, no starvation.

Sections run in forked processes (the lock is between processes); anything that could hang
on a bug runs in a child joined with a timeout, so a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from common import LOCK_DIR_ENV, busy, lock_dir, measuring
from tests._procs import join_or_kill

_fork = mp.get_context("fork")
Section = Callable[[], AbstractContextManager[None]]


@pytest.fixture(autouse=True)
def _own_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Forked children inherit os.environ, so they lock the same private directory.
    path = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(path))
    return path


def _run(target: Callable[..., object], *args: object, timeout: float) -> int | None:
    """Run `target` in a forked child; its exit code, or None if it was still running."""
    proc = _fork.Process(target=target, args=args)
    proc.start()
    return join_or_kill(proc, timeout)


def _enter_and_leave(section: Section) -> None:
    with section():
        pass


def _enters_within(section: Section, seconds: float) -> bool:
    return _run(_enter_and_leave, section, timeout=seconds) == 0


def _record_sections(
    section: Section, out: Path, until: float, hold_s: float, pause_s: float
) -> None:
    intervals = []
    # At least one section even if a loaded host started this child after `until`.
    while not intervals or time.monotonic() < until:
        with section():
            start = time.monotonic()
            time.sleep(hold_s)
            intervals.append((start, time.monotonic()))
        time.sleep(pause_s)
    out.write_text(json.dumps(intervals))


def test_lock_dir_is_created_from_the_environment(_own_lock_dir: Path) -> None:
    assert not _own_lock_dir.exists()
    assert lock_dir() == str(_own_lock_dir)
    with busy():
        assert _own_lock_dir.is_dir()


def _busy_until_other_is_in(entered: object, other: object) -> None:
    with busy():
        entered.set()  # type: ignore[attr-defined]
        sys.exit(0 if other.wait(5) else 1)  # type: ignore[attr-defined]


def test_busy_sections_of_two_processes_overlap() -> None:
    a_in, b_in = _fork.Event(), _fork.Event()
    a = _fork.Process(target=_busy_until_other_is_in, args=(a_in, b_in))
    b = _fork.Process(target=_busy_until_other_is_in, args=(b_in, a_in))
    a.start(), b.start()
    a.join(10), b.join(10)
    assert (a.exitcode, b.exitcode) == (0, 0), "each must see the other inside busy()"


def test_measuring_excludes_busy_and_other_measuring(tmp_path: Path) -> None:
    until = time.monotonic() + 0.8
    procs = [
        _fork.Process(target=_record_sections, args=(busy, tmp_path / f"busy{i}", until, 0.004, 0))
        for i in range(2)
    ] + [
        _fork.Process(
            target=_record_sections, args=(measuring, tmp_path / f"meas{i}", until, 0.02, 0.03)
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    load = [json.loads((tmp_path / n).read_text()) for n in ("busy0", "busy1", "meas0", "meas1")]
    busy_sections, measure_sections = load[0] + load[1], load[2] + load[3]
    assert all(load), "every process got its sections"
    for m0, m1 in measure_sections:
        clash = [(b0, b1) for b0, b1 in busy_sections if b0 < m1 and m0 < b1]
        assert not clash, f"busy sections {clash} overlap measuring section {(m0, m1)}"
    for a0, a1 in load[2]:
        clash = [(b0, b1) for b0, b1 in load[3] if b0 < a1 and a0 < b1]
        assert not clash, f"measuring sections {clash} and {(a0, a1)} overlapped"


def _measure_thrice(waits_out: Path) -> None:
    waits = []
    for _ in range(3):
        asked = time.monotonic()
        with measuring():
            waits.append((asked, time.monotonic()))
            time.sleep(0.01)
        time.sleep(0.05)
    waits_out.write_text(json.dumps(waits))


def _relay_busy_sections(inside: object, stop: object, starts_out: Path) -> None:
    # ~5 ms sections back to back, each left only once the other trainer is inside (or after
    # 50 ms), so between them `rw` is held shared at every instant.
    starts = []
    try:
        while not stop.is_set():  # type: ignore[attr-defined]
            with busy():
                starts.append(time.monotonic())
                with inside.get_lock():  # type: ignore[attr-defined]
                    inside.value += 1  # type: ignore[attr-defined]
                entered = time.monotonic()
                time.sleep(0.005)
                while inside.value < 2 and time.monotonic() - entered < 0.05:  # type: ignore[attr-defined]
                    time.sleep(0.0005)
                with inside.get_lock():  # type: ignore[attr-defined]
                    inside.value -= 1  # type: ignore[attr-defined]
    finally:
        starts_out.write_text(json.dumps(starts))


def test_back_to_back_busy_sections_do_not_starve_a_measurer(tmp_path: Path) -> None:
    # flock grants a shared request beside shared holders even while an exclusive one waits,
    # so without the turnstile these two trainers keep the measurer out for good.
    # Load-proof: rather than bounding the wait in seconds (a loaded host stretches every
    # sleep), count the busy sections that began while the measurer waited. The turnstile
    # lets in only those already past the gate (at most 2 measured, with two CPU hogs
    # running); without it, 1038 began before a gap let the measurer in.
    inside, stop = _fork.Value("i", 0), _fork.Event()
    trainers = [
        _fork.Process(target=_relay_busy_sections, args=(inside, stop, tmp_path / f"starts{i}"))
        for i in range(2)
    ]
    for t in trainers:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while inside.value < 1 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        time.sleep(0.2)  # both trainers relaying
        exit_code = _run(_measure_thrice, tmp_path / "waits", timeout=30)
    finally:
        stop.set()
        for t in trainers:
            t.join(10)
            if t.is_alive():
                t.kill()
                t.join()
    assert exit_code == 0, "measuring() starved behind busy() for 30 s"
    waits = json.loads((tmp_path / "waits").read_text())
    starts = sorted(t for i in range(2) for t in json.loads((tmp_path / f"starts{i}").read_text()))
    assert starts[-1] > waits[-1][1], "the trainers stopped before the measurer got in"
    for asked, entered in waits:
        passed = [t for t in starts if asked < t < entered]
        assert len(passed) <= 6, (
            f"{len(passed)} busy sections began while measuring() waited {entered - asked:.3f} s"
        )


def _measure_forever(entered: object) -> None:
    with measuring():
        entered.set()  # type: ignore[attr-defined]
        time.sleep(60)


def test_sigkilled_measurer_releases_the_lock() -> None:
    entered = _fork.Event()
    holder = _fork.Process(target=_measure_forever, args=(entered,))
    holder.start()
    assert entered.wait(10)
    assert not _enters_within(busy, 0.3), "the holder is measuring"
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join()
    assert _enters_within(measuring, 5)
    assert _enters_within(busy, 5)


def _nest_sections() -> None:
    with measuring():
        with measuring():
            pass
        with busy(), busy():
            pass
        if _enters_within(busy, 0.3):
            sys.exit(2)  # the inner sections released the outer hold
    with busy():
        with busy():
            pass
        try:
            with measuring():
                pass
        except RuntimeError:
            pass
        else:
            sys.exit(3)
        if _enters_within(measuring, 0.3):
            sys.exit(4)
    if not _enters_within(measuring, 5):
        sys.exit(5)  # still held after the outermost section ended


def test_nested_sections_in_one_thread_neither_deadlock_nor_release_early() -> None:
    assert _run(_nest_sections, timeout=20) == 0


def _threads_exclude_each_other() -> None:
    order = []
    held = threading.Event()

    def measurer() -> None:
        with measuring():
            held.set()
            time.sleep(0.2)
            order.append("measured")

    thread = threading.Thread(target=measurer)
    thread.start()
    held.wait()
    with busy():
        order.append("busy")
    thread.join()
    sys.exit(0 if order == ["measured", "busy"] else 1)


def test_threads_of_one_process_exclude_each_other() -> None:
    assert _run(_threads_exclude_each_other, timeout=10) == 0


def _record_steps(
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int | None = None,
    after_first: threading.Event | None = None,
) -> list[float]:
    """Record each step's start time; steps after the first wait for `after_first` if given."""
    from trainers import VQAModule

    steps: list[float] = []
    train, val = VQAModule.training_step, VQAModule.validation_step

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if after_first is not None and steps:
            after_first.wait(60)
        steps.append(time.monotonic())
        if fail_at is not None and len(steps) > fail_at:
            raise FloatingPointError("injected")
        time.sleep(0.02)  # keep the run going for a while on any machine
        return train(self, batch, batch_idx)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        steps.append(time.monotonic())
        return val(self, batch, batch_idx)

    monkeypatch.setattr(VQAModule, "training_step", training_step)
    monkeypatch.setattr(VQAModule, "validation_step", validation_step)
    return steps


def test_training_makes_no_step_while_another_process_measures(
    tmp_path: Path, shapes_data, tiny_arch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainers import TrainerConfig, fit

    # Training pauses after its first step until the measurer is forked, so however slowly a
    # loaded host forks, the measurement starts with most of the training still to come.
    forked = threading.Event()
    steps = _record_steps(monkeypatch, after_first=forked)
    cfg = TrainerConfig(max_epochs=4, batch_size=16, threads=1)
    errors: list[BaseException] = []

    def train() -> None:
        try:
            fit(tiny_arch, shapes_data, cfg, tmp_path / "run")
        except BaseException as e:
            errors.append(e)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    deadline = time.monotonic() + 30
    while not steps and time.monotonic() < deadline:
        time.sleep(0.005)
    assert steps, "training never started"
    entered, release = _fork.Event(), _fork.Event()
    window = _fork.Array("d", 2)
    measurer = _fork.Process(target=_measure_window, args=(entered, release, window))
    try:
        measurer.start()
        forked.set()
        assert entered.wait(10), "measuring() was not granted between batches"
        time.sleep(1.0)
    finally:
        release.set()
        measurer.join(10)
    trainer.join(60)
    assert not trainer.is_alive() and not errors, errors
    start, end = window[:]
    during = [t for t in steps if start < t < end]
    assert not during, f"{len(during)} steps ran during a {end - start:.2f} s measurement"
    assert any(t > end for t in steps), "training was over before the measurement; no evidence"


def _measure_window(entered: object, release: object, window: object) -> None:
    with measuring():
        window[0] = time.monotonic()  # type: ignore[index]
        entered.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]
        window[1] = time.monotonic()  # type: ignore[index]


def test_failed_training_batch_releases_busy(
    tmp_path: Path, shapes_data, tiny_arch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainers import TrainerConfig, fit

    _record_steps(monkeypatch, fail_at=1)
    with pytest.raises(FloatingPointError, match="injected"):
        fit(tiny_arch, shapes_data, TrainerConfig(max_epochs=1, batch_size=16, threads=1), tmp_path)
    assert _enters_within(measuring, 5), "the failed batch left busy() held"
    with measuring():  # and this thread holds nothing either (measuring inside busy raises)
        pass
