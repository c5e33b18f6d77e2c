"""Trained-weights cache: an architecture already trained is never trained again.

The key is the architecture part of `arch_id` (`ArchConfig.weights_id`, quantization
excluded), the training config and the data set's fingerprint, so a known architecture
with a new quantization scheme costs seconds, while a change of budget or data retrains.

Once across processes: two trials with the same key can run at once (two Ray workers, or
two `vlmnas search` drivers on one workdir). Each entry `<cache_dir>/<key>/` therefore has
a lock file `<cache_dir>/.<key>.lock`, held with `fcntl.flock` (exclusive) from the check
for the entry until the entry is in place. The first trial trains; the second waits for it,
finds the entry and loads it (a hit) instead of training the same weights a second time.

What is held while waiting: nothing else. The host lock's `busy()` is taken per training
batch inside `fit`, never around `cached_fit`, so a trial waiting here blocks neither the
batches of the trial it waits for nor anyone's latency measurement. Do not call
`cached_fit` inside `busy()`: a waiter would hold the shared lock, a measurer would queue
behind it, and the trainer it waits for could not start its next batch.

Crash safety: the kernel drops a flock when the process holding it dies, so a trial killed
while training releases the entry and the next waiter trains it. The entry appears with one
`os.replace` of a complete folder, so a crash never leaves half an entry. (A child forked
while the lock is held keeps the open file, and so the lock, until it exits; the descriptor
is close-on-exec, so exec'd programs do not.)

Cost: a hit with the entry in place takes no lock at all. A miss adds one `open` and two
`flock`s to a training of seconds or more. Lock files stay (an empty file per trained key,
beside its entry): unlinking one that another process has open and waits on would let a
third process lock a new file of the same name, and two would train at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search_spaces import FAMILY, ArchConfig, VlmModel

from ._fit import EpochReport, TrainerConfig, TrainResult, fit, load_trained
from ._recipes import Teacher
from .data import ImageCache, VQAData

_FILES = ("model.pt", "config.json", "word_tokenizer.json")


def cache_key(
    arch: ArchConfig,
    data: VQAData,
    cfg: TrainerConfig,
    teacher: Teacher | None = None,
    per_epoch: bool = False,
) -> str:
    """The entry of these weights. `per_epoch`: validated after every epoch (a
    scheduler listens), so the entry holds the whole accuracy history; the weights are
    the same either way, but an entry validated only at the end cannot replay it."""
    fields = {"validated": "every_epoch"} if per_epoch else {}
    payload = json.dumps(
        {
            **fields,
            "family": FAMILY,  # weights of another model family are no use
            "weights_id": arch.weights_id,
            "trainer": dataclasses.asdict(cfg),
            "data": data.fingerprint,
            "vocab": hashlib.sha256(data.tokenizer.to_json().encode()).hexdigest()[:16],
            # a student's weights depend on its teacher
            "teacher": teacher.key if teacher and arch.recipe.distill_weight > 0 else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached_fit(
    arch: ArchConfig,
    data: VQAData,
    cfg: TrainerConfig,
    out_dir: Path,
    cache_dir: Path,
    *,
    report: EpochReport | None = None,
    images: ImageCache | None = None,
    teacher: Teacher | None = None,
    model: VlmModel | None = None,
) -> tuple[TrainResult, bool]:
    """`fit`, or the cached result of an identical earlier `fit`; returns (result, hit).

    On a hit the recorded per-epoch validation accuracies are reported again, so a
    scheduler sees the same trajectory as the first time. If another process is training
    the same entry, this waits for it and returns its result as a hit. `model` (the
    untrained model, built already) goes to `fit` on a miss.
    """
    entry = cache_dir / cache_key(arch, data, cfg, teacher, per_epoch=report is not None)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Entries are only ever complete (renamed into place), so a present one needs no lock.
    if (entry / "result.json").is_file():
        return _load(entry, arch, data, out_dir, report), True
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{entry.name}.lock"):
        if (entry / "result.json").is_file():  # trained by the process we waited for
            return _load(entry, arch, data, out_dir, report), True
        result = fit(
            arch, data, cfg, out_dir, report=report, images=images, teacher=teacher, model=model
        )
        _store(entry, out_dir, result)
    return result, False


def _load(
    entry: Path, arch: ArchConfig, data: VQAData, out_dir: Path, report: EpochReport | None
) -> TrainResult:
    saved = json.loads((entry / "result.json").read_text())
    model = load_trained(arch, entry)
    for name in _FILES:
        # Atomic: out_dir may be shared (the study teacher's), and a reader must never see
        # a file half overwritten with the same bytes.
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(entry / name, tmp)
        os.replace(tmp, out_dir / name)
    history = saved["val_accuracy_history"]
    if report is not None:
        for epoch, acc in enumerate(history, 1):
            report(epoch, {"val_accuracy": acc, "epoch": epoch})
    return TrainResult(out_dir / "model.pt", model.eval(), saved["metrics"], history)


def _store(entry: Path, out_dir: Path, result: TrainResult) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        for name in _FILES:
            shutil.copyfile(out_dir / name, tmp / name)
        saved = {"metrics": result.metrics, "val_accuracy_history": result.val_accuracy_history}
        (tmp / "result.json").write_text(json.dumps(saved))
        if not entry.exists():  # never replace a folder this module did not write
            os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    # flock needs no write access to the file, only an open descriptor.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Unlock before closing: a child forked meanwhile holds a copy of `fd`, and
            # closing ours alone would keep the entry locked until that child exits.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
