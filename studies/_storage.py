"""The study's Optuna store: open it, resume it, hand out trials, and tell Optuna how
they ended; safe with several drivers on one RDB or journal store.

Several drivers. Each driver has an id (`host:pid:start-time`) that it writes on every
trial it asks for (user attribute `driver`), and records a heartbeat for its running
trials every `study.heartbeat_interval` seconds (Optuna's heartbeat on an RDB store; on a
journal file, which has none, the trial system attribute `vlmnas:heartbeat`). A RUNNING
trial is taken as dead, closed as FAIL and queued again with the same parameters
(`rerun_of` names the old one) when

- its heartbeat is older than `study.stale_after` (`optuna.storages.fail_stale_trials`);
- or its driver ran on this host and that process is gone (so a rerun after a crash
  need not wait out the grace period);
- or it has no driver id (a study from before driver ids) and started more than
  `study.stale_after` ago.

A live driver's trials are never touched. How many trials to run is decided against
the store each time a trial is asked for: finished ones (a rerun replaces its original)
plus those running anywhere. Two drivers asking at the same moment can both pass that
check; the one whose trial is ranked past `n_trials` closes it at once as FAIL with the
user attribute `surplus` (it never runs and counts nowhere), so the study reaches
`n_trials` exactly; a trial still queued when the study is full (two drivers' `auto`
choices) is closed the same way. SQLite (the default) is for one driver: use PostgreSQL
or a journal file for several.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ._config import ConfigError, VlmnasConfig
from ._outcome import Outcome, optuna_verdict, reason_attr
from ._samplers import make_sampler
from ._timing import Timing

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
HEARTBEAT_ATTR = "vlmnas:heartbeat"  # journal stores: unix time of the last heartbeat

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def storage_url(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'optuna.db'}"


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), so that a reused pid
    is not taken for the driver that died; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def driver_id() -> str:
    """This process as a driver: host, pid and start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '0'}"


def driver_alive(driver: str) -> bool | None:
    """Whether the driver `driver` still runs: True/False for one on this host, None
    (unknown) for another host's."""
    try:
        name, pid, ticks = driver.rsplit(":", 2)
    except ValueError:
        return None
    if name != socket.gethostname():
        return None
    return _start_ticks(int(pid)) == ticks


def dead_reason(trial: FrozenTrial, *, now: float, stale_after: float) -> str | None:
    """Why a RUNNING trial's driver is known to be gone, or None (alive, or for an RDB
    store unknown: there Optuna's own heartbeat check decides)."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None and now - float(beat) > stale_after:
        return f"no heartbeat for {now - float(beat):.0f} s (study.stale_after={stale_after:g})"
    driver = trial.user_attrs.get("driver")
    if driver is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - started > stale_after:
            return "no driver id and started more than study.stale_after ago"
        return None
    if driver_alive(str(driver)) is False:
        return f"its driver {driver} on this host is gone"
    return None


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """A dead trial's parameters go back into the queue; the new trial names the old."""
    attrs: dict[str, Any] = {"rerun_of": trial.number}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs)


def open_storage(cfg: VlmnasConfig, *, on_stale: StaleCallback | None = None) -> BaseStorage:
    """The study's Optuna storage: SQLite in the workdir unless `study.storage` names an
    RDB URL (PostgreSQL for several drivers) or an Optuna journal file, each with the
    heartbeat that tells live trials from dead ones."""
    spec = cfg.study
    url = spec.storage or storage_url(cfg.workdir)
    with warnings.catch_warnings():  # Optuna marks heartbeat arguments experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        # SQLite waits for a lock instead of failing at once
        sqlite = {"connect_args": {"timeout": 30}} if not spec.storage else None
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs=sqlite,
                    heartbeat_interval=spec.heartbeat_interval,
                    grace_period=spec.stale_after,
                    heartbeat_stale_trial_callback=on_stale or requeue,
                )
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
                # Optuna creates the schema of a new database without a lock: a second
                # process opening it at the same moment (another driver, a dashboard, a
                # script reading the study) makes one of them fail with "table ... already
                # exists" or a UNIQUE constraint on alembic_version. The schema is there
                # once the other is done; opening it again succeeds.
                if attempt + 1 == _SCHEMA_ATTEMPTS or not _schema_race(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")


_SCHEMA_ATTEMPTS = 5


def _schema_race(exc: Exception) -> bool:
    """Whether `exc` is two processes creating one Optuna schema at once."""
    text = str(exc)
    return "already exists" in text or "alembic_version" in text


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count towards `n_trials`: finished or running, except an
    interrupted trial that was queued again (its rerun counts) and surplus trials."""
    rerun = {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}
    return [
        t
        for t in trials
        if (t.state in FINISHED or t.state == TrialState.RUNNING)
        and t.number not in rerun
        and "surplus" not in t.user_attrs
    ]


def finished_count(trials: Sequence[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in counted(trials))


class StudyStore:
    """One driver's handle on the study: asks for trials, beats for them, tells them."""

    def __init__(self, cfg: VlmnasConfig, timing: Timing) -> None:
        self.cfg = cfg
        self.timing = timing
        self.storage = open_storage(cfg, on_stale=self._requeue_stale)
        self.study = _open_study(self.storage, cfg)
        self.study_id = self.storage.get_study_id_from_name(cfg.study.name)
        self.driver = driver_id()
        self.rerun = 0  # dead trials this driver queued again
        self._running: dict[int, optuna.Trial] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._reaped = -math.inf  # when reap last ran (monotonic)

    def __enter__(self) -> StudyStore:
        self.reap()
        self._beater = threading.Thread(target=self._beat, name="vlmnas-heartbeat", daemon=True)
        self._beater.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def reap(self) -> int:
        """Close the RUNNING trials whose driver is dead and queue them again."""
        self._reaped = time.monotonic()
        before = self.rerun
        with warnings.catch_warnings():  # Optuna marks it experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # RDB: heartbeat older than grace
        now = time.time()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (
                t.number in self._running
                or dead_reason(t, now=now, stale_after=self.cfg.study.stale_after) is None
            ):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
            try:
                closed = self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                closed = False  # another driver closed it first
            if closed:
                self._requeue_stale(self.study, t)
        return self.rerun - before

    def _requeue_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial)
        self.rerun += 1

    def full(self) -> bool:
        """The study has `n_trials` counted (finished or running)."""
        with self.timing.part("optuna"):
            return len(counted(self.trials())) >= self.cfg.study.n_trials

    def waiting(self) -> bool:
        """A trial is queued (the baseline, a rerun, an `auto` choice): `ask` takes it next."""
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def enqueue(self, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Queue a trial with fixed parameters; the next `ask` hands it out."""
        with self.timing.part("optuna"):
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)

    def ask(self) -> optuna.Trial | None:
        """A new trial for this driver, or None when the study has `n_trials` counted."""
        with self.timing.part("optuna"), warnings.catch_warnings():
            # this driver beats for its trials itself (Optuna expects study.optimize)
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            if time.monotonic() - self._reaped >= self.cfg.study.heartbeat_interval:
                self.reap()
            if len(counted(self.trials())) >= self.cfg.study.n_trials:
                self._drop_waiting()
                return None
            trial = self.study.ask()
            trial.set_user_attr("driver", self.driver)
            self.storage_beat(trial.number)
            ranked = sorted(t.number for t in counted(self.trials()))
            if ranked.index(trial.number) >= self.cfg.study.n_trials or self._duplicate(trial):
                trial.set_user_attr("surplus", f"asked by {self.driver} past study.n_trials")
                self.study.tell(trial, state=TrialState.FAIL)
                return None
        with self._lock:
            self._running[trial.number] = trial
        return trial

    def _drop_waiting(self) -> None:
        """The study is full, so a trial still queued never runs: close it as surplus.
        With `auto` two drivers can each queue a choice, and only one is asked before
        the study fills up; left WAITING, the other would stay in the store for good."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for _ in waiting:
            trial = self.study.ask()  # the oldest queued (or, if another driver took it, a new one)
            trial.set_user_attr("surplus", f"queued, but the study was full ({self.driver})")
            self.study.tell(trial, state=TrialState.FAIL)

    def _duplicate(self, trial: optuna.Trial) -> bool:
        """Two drivers that create a study at once both queue its baseline: the later
        copy is surplus."""
        if not trial.user_attrs.get("baseline") or "rerun_of" in trial.user_attrs:
            return False
        return any(
            t.user_attrs.get("baseline") and "rerun_of" not in t.user_attrs
            for t in self.trials()
            if t.number < trial.number
        )

    def tell(self, number: int, outcome: Outcome, attrs: dict[str, Any]) -> None:
        """Record how trial `number` (this driver's) ended: its state and objective
        values, its constraint values (feasibility, stored once, where Optuna and every
        sampler read it), the reason, and `attrs` (arch_id, trial_dir)."""
        with self._lock:
            trial = self._running.pop(number)
        with self.timing.part("optuna"):
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            attr = reason_attr(outcome)
            if attr is not None:
                trial.set_user_attr(attr, outcome.reason)
            state, values = optuna_verdict(
                outcome, [o.direction for o in self.cfg.study.objectives]
            )
            if state == TrialState.COMPLETE:
                for name, violation in outcome.violations.items():
                    trial.set_constraint(name, violation)
            with warnings.catch_warnings():  # this driver beats for its trials itself
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
                self.study.tell(trial, values, state=state, skip_if_finished=True)

    @property
    def running(self) -> int:
        return len(self._running)

    def storage_beat(self, number: int) -> None:
        """Record that trial `number` is alive: Optuna's heartbeat on an RDB store, a
        trial system attribute on a journal file (JournalStorage has no heartbeat)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        if isinstance(self.storage, RDBStorage):
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.study.heartbeat_interval):
            with self._lock:
                numbers = list(self._running)
            for number in numbers:
                try:
                    self.storage_beat(number)
                except Exception as exc:  # noqa: BLE001 - a missed beat must not end the study
                    print(f"vlmnas: warning: heartbeat for trial {number} failed: {exc}")


def _open_study(storage: BaseStorage, cfg: VlmnasConfig) -> optuna.Study:
    """Create or load the study with `study.sampler` (`make_sampler`); a new one gets the
    space's baseline as its first trial."""
    known = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    study = optuna.create_study(
        study_name=cfg.study.name,
        storage=storage,
        directions=[o.direction for o in cfg.study.objectives],
        sampler=make_sampler(cfg.study, offset=known.get(cfg.study.name, 0)),
        load_if_exists=True,
    )
    directions = [
        "maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        for d in study.directions
    ]
    wanted = [o.direction for o in cfg.study.objectives]
    if directions != wanted:
        raise ConfigError(
            f"study {cfg.study.name!r} in {cfg.study.storage or cfg.workdir} was created with"
            f" directions {directions}; study.objectives ask for {wanted}: choose another"
            " study.name"
        )
    names = [o.metric for o in cfg.study.objectives]
    if study.metric_names != names:  # optuna-dashboard labels its axes with them
        study.set_metric_names(names)
    if not study.get_trials(deepcopy=False):
        outside = cfg.space.baseline_outside()
        if outside:
            print(
                f"vlmnas: baseline values outside the overridden choices, sampled instead: {outside}"
            )
        quant = {p.name: p.quant_schemes for p in cfg.profiles}
        study.enqueue_trial(cfg.space.baseline_params(quant), user_attrs={"baseline": True})
    return study


def existing_storage(cfg: VlmnasConfig) -> BaseStorage:
    """The storage of a study that exists, for reading (report, export, dashboard);
    raises `ConfigError` when it is missing. Checked before opening: opening a SQLite or
    journal file that is not there would create an empty one."""
    db = cfg.workdir / "optuna.db"
    if not cfg.study.storage and not db.is_file():
        raise ConfigError(
            f"study.workdir={str(cfg.workdir)!r} has no optuna.db; run `vlmnas search` first"
        )
    url = cfg.study.storage or ""
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).expanduser().is_file():
        raise ConfigError(f"study.storage={url!r}: no such journal file")
    storage = open_storage(cfg)
    known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if cfg.study.name not in known:
        raise ConfigError(
            f"study.name={cfg.study.name!r} not found in {cfg.study.storage or db};"
            f" known studies: {known}"
        )
    return storage


def load_study(cfg: VlmnasConfig) -> optuna.Study:
    """The study for reading; raises `ConfigError` when it is missing."""
    return optuna.load_study(study_name=cfg.study.name, storage=existing_storage(cfg))
