"""The weights cache across processes: one entry is trained once, a crash frees it.

Children that train or load weights are spawned, not forked: a fork of a process whose
torch thread pools already ran is not safe to run torch in. The one that only holds the
lock (its `fit` replaced by a sleep) runs no torch and is forked, sparing it a fresh
interpreter's imports. Every child is joined with a timeout, so a lock that never frees
fails the test instead of hanging it.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
import torch

from search_spaces import ArchConfig
from tests._procs import join_or_kill
from trainers import TrainerConfig, cache_key, cached_fit
from trainers.data import VQAData

_spawn, _fork = mp.get_context("spawn"), mp.get_context("fork")
CFG = TrainerConfig(max_epochs=1, batch_size=16, threads=1)


def _fit_in_child(
    root: Path,
    arch: ArchConfig,
    cache: Path,
    out: Path,
    trained_log: Path,
    entered: Event,
    other_entered: Event,
) -> None:
    """`cached_fit` with its `fit` recorded in `trained_log`; result and hit flag in `out`."""
    import trainers._cache as cache_module

    real_key, real_fit = cache_module.cache_key, cache_module.fit

    def key(*args, **kwargs) -> str:  # type: ignore[no-untyped-def]
        entered.set()
        return real_key(*args, **kwargs)

    def fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        with trained_log.open("a") as log:
            log.write(f"{os.getpid()}\n")
        # Train only once the other process is inside cached_fit too, and give it time to
        # look for the entry: without a lock it misses and trains as well.
        assert other_entered.wait(120), "the other process never called cached_fit"
        time.sleep(0.5)
        return real_fit(*args, **kwargs)

    cache_module.cache_key, cache_module.fit = key, fit
    result, hit = cache_module.cached_fit(arch, VQAData.load(root), CFG, out, cache)
    torch.save(result.model.state_dict(), out / "returned.pt")
    (out / "hit.json").write_text(json.dumps({"hit": hit, "history": result.val_accuracy_history}))


# Slow: two fresh interpreters import torch and Lightning (15-25 s on 2 cores). The quick
# loop keeps the test below, which fails too if training does not hold the entry's lock.
@pytest.mark.slow
def test_two_processes_train_one_entry_once(tmp_path: Path, shapes_root: Path, tiny_arch) -> None:
    cache, log = tmp_path / "cache", tmp_path / "trained.log"
    events = [_spawn.Event(), _spawn.Event()]
    procs = [
        _spawn.Process(
            target=_fit_in_child,
            args=(shapes_root, tiny_arch, cache, tmp_path / n, log, events[i], events[1 - i]),
        )
        for i, n in enumerate("ab")
    ]
    for p in procs:
        p.start()
    codes = [join_or_kill(p, 300) for p in procs]
    assert codes == [0, 0], f"exit codes {codes} (None: still running after 300 s)"
    assert len(log.read_text().splitlines()) == 1, "both processes trained the same entry"
    outcomes = [json.loads((tmp_path / n / "hit.json").read_text()) for n in "ab"]
    assert sorted(o["hit"] for o in outcomes) == [False, True]
    assert outcomes[0]["history"] == outcomes[1]["history"]
    entry = cache / cache_key(tiny_arch, VQAData.load(shapes_root), CFG)
    weights = [torch.load(entry / "model.pt", weights_only=True)]
    for n in "ab":
        weights += [
            torch.load(tmp_path / n / f, weights_only=True) for f in ("model.pt", "returned.pt")
        ]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in other)


def _train_forever(
    data: VQAData, arch: ArchConfig, cache: Path, out: Path, training: Event
) -> None:
    import trainers._cache as cache_module

    def fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        training.set()
        time.sleep(600)

    cache_module.fit = fit
    cache_module.cached_fit(arch, data, CFG, out, cache)


def test_a_process_killed_while_training_frees_the_entry(
    tmp_path: Path, shapes_data: VQAData, tiny_arch
) -> None:
    cache = tmp_path / "cache"
    training = _fork.Event()
    holder = _fork.Process(
        target=_train_forever, args=(shapes_data, tiny_arch, cache, tmp_path / "a", training)
    )
    holder.start()
    try:
        assert training.wait(120), "the child never started training"
        key = cache_key(tiny_arch, shapes_data, CFG)
        lock = cache / f".{key}.lock"
        fd = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the trainer holds the entry's lock
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
            holder.join(30)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()
    assert holder.exitcode == -signal.SIGKILL
    result, hit = cached_fit(tiny_arch, shapes_data, CFG, tmp_path / "b", cache)
    assert hit is False and len(result.val_accuracy_history) == 1
    assert (cache / key / "result.json").is_file()
    _, again = cached_fit(tiny_arch, shapes_data, CFG, tmp_path / "c", cache)
    assert again is True
