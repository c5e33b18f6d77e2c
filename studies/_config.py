"""Compose the Hydra config and turn every group into a validated, typed value.

Everything a user can get wrong is checked here, before a store is opened or a trial
starts; each problem is one `ConfigError` line naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hardware_profiles import HardwareProfile, ProfileError
from search_spaces import SearchSpace, SearchSpaceError
from trainers import TrainerConfig
from trainers.data import DataConfig

from ._pareto import DIRECTIONS

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random")
PROFILE_METRICS = ("accuracy", "latency_p50_ms", "latency_p95_ms", "size_mb")
GLOBAL_METRICS = ("val_accuracy", "params")


# Metrics known before training: measured on the untrained candidate (latency, size and
# NPU coverage depend on the graph and the scheme, not on weight values).
CHEAP_SUFFIXES = ("/latency_p50_ms", "/latency_p95_ms", "/size_mb", "/npu_coverage")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`metric <= bound` or `metric >= bound`, e.g. `cpu/latency_p95_ms <= 20`."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        match = _CONSTRAINT.match(str(text))
        if not match:
            raise ConfigError(
                f"study.constraints entry {text!r}: write 'profile/metric <= number' or"
                " 'profile/metric >= number'"
            )
        metric, op, bound = match.groups()
        try:
            value = float(bound)
        except ValueError:
            raise ConfigError(
                f"study.constraints entry {text!r}: {bound!r} is not a number"
            ) from None
        return cls(metric, op, value)

    @property
    def cheap(self) -> bool:
        """Known before training, so a violation skips the training."""
        return self.metric.endswith(CHEAP_SUFFIXES) or self.metric == "params"

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when satisfied, else how far off."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def profile_metrics(profile: HardwareProfile) -> tuple[str, ...]:
    """The metrics a trial reports for `profile` that objectives may name."""
    return PROFILE_METRICS + (("npu_coverage",) if profile.is_npu else ())


def available_profiles(cfg: VlmnasConfig) -> tuple[VlmnasConfig, list[str]]:
    """`cfg` without the optional profiles this machine cannot run, and one message per
    dropped profile. A missing profile that is not optional, or one an objective uses,
    raises `ConfigError` naming what is missing."""
    kept: list[HardwareProfile] = []
    dropped: list[str] = []
    for profile in cfg.profiles:
        try:
            profile.check_available()
        except ProfileError as exc:
            used = [
                o.metric for o in cfg.study.objectives if o.metric.startswith(f"{profile.name}/")
            ]
            if profile.name not in cfg.study.optional_profiles:
                raise ConfigError(
                    f"{exc} (add it to study.optional_profiles to search without it)"
                ) from None
            used += [
                c.metric
                for c in cfg.study.parsed_constraints
                if c.metric.startswith(f"{profile.name}/")
            ]
            if used:
                raise ConfigError(f"{exc}; the objectives or constraints {used} need it") from None
            dropped.append(f"{exc}: optional profile {profile.name!r} left out")
            continue
        kept.append(profile)
    return dataclasses.replace(cfg, profiles=tuple(kept)), dropped


_CONF = Path(__file__).resolve().parent.parent
_GROUP_DIRS = {
    "search_space": _CONF / "search_spaces" / "conf" / "search_space",
    "hardware": _CONF / "hardware_profiles" / "conf" / "hardware",
    "data": _CONF / "trainers" / "conf" / "data",
    "trainer": _CONF / "trainers" / "conf" / "trainer",
    "study": _CONF / "studies" / "conf" / "study",
}


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key and what is allowed."""


@dataclass
class Objective:
    metric: str = "cpu/accuracy"
    direction: str = "maximize"
    # Hypervolume reference value; None: 0 when maximizing, twice the baseline trial's
    # value when minimizing.
    reference: float | None = None


@dataclass
class AshaSpec:
    """Early stopping of weak trials by Ray Tune's ASHA on per-epoch val_accuracy."""

    enabled: bool = False
    grace_period: int = 2  # epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # keep the top 1/reduction_factor at each rung


@dataclass
class StudySpec:
    """The `study` config group: what to optimise, how, and where results go."""

    name: str = "quick"
    workdir: str = "runs"
    n_trials: int = 10
    seed: int = 0
    sampler: str = "nsga2"  # nsga2 | nsga3 | tpe | gp | random
    population_size: int = 4  # NSGA-II generation size
    objectives: list[Objective] = field(default_factory=list)
    max_concurrent: int = 1  # trials at once; 1 keeps latency timing off busy cores
    cpus_per_trial: int = 2
    max_consecutive_failures: int = 5  # stop the study after this many failed trials in a row
    asha: AshaSpec = field(default_factory=AshaSpec)
    # Profiles a search may run without: when one's runtime is missing here (no CUDA
    # device, no onnxruntime-qnn) it is dropped with a message instead of stopping the
    # search. Objectives on it still stop the search: they could not be computed.
    optional_profiles: list[str] = field(default_factory=list)
    # Feasibility: "profile/metric <= number" or ">= number". A candidate that breaks a
    # latency, size or coverage constraint is found before training, recorded as
    # infeasible with its measured values, and never trained. Infeasible trials are
    # never on the front; the samplers steer away from them (Optuna constraints_func).
    constraints: list[str] = field(default_factory=list)
    # Check latency/size/coverage constraints on the untrained candidate and skip the
    # training of one that breaks them. Off: every candidate is trained and checked
    # after (the benchmark of what the early check saves).
    reject_before_training: bool = True
    # Optuna storage: None = SQLite in the workdir (one writer: the driver). For several
    # drivers on one study: an RDB URL (postgresql://user:pw@host/db) or an Optuna
    # journal file, "journal:/shared/path/study.log".
    storage: str | None = None
    # MLflow: None = SQLite in the workdir; a tracking server URL (http://host:5000) for
    # clusters, where the server also stores the artifacts.
    tracking_uri: str | None = None

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(text) for text in self.constraints]


@dataclass
class ExportSpec:
    """What `vlmnas export` writes (studies/_export.py documents the policies)."""

    policy: str = "pareto"  # pareto | knee | max_accuracy | min_latency
    profile: str | None = None  # whose deployed model and metrics; default: the first
    latency_budget_ms: float | None = None  # max_accuracy: p50 at most this
    accuracy_floor: float | None = None  # min_latency: accuracy at least this


@dataclass
class RaySpec:
    """Where trials run: None = a local Ray instance started by the driver; "auto" or
    "ray://host:10001" or "host:6379" = an existing cluster."""

    address: str | None = None


@dataclass(frozen=True)
class VlmnasConfig:
    space: SearchSpace
    profiles: tuple[HardwareProfile, ...]
    data: DataConfig
    trainer: TrainerConfig
    study: StudySpec
    raw: dict[str, Any]  # the composed config, for logging
    choices: dict[str, Any]  # which option of each group was picked
    ray: RaySpec = field(default_factory=RaySpec)
    export: ExportSpec = field(default_factory=ExportSpec)

    @property
    def workdir(self) -> Path:
        return Path(self.study.workdir)

    @property
    def study_dir(self) -> Path:
        return self.workdir / self.study.name

    def profile(self, name: str) -> HardwareProfile:
        return next(p for p in self.profiles if p.name == name)


def load_config(overrides: Sequence[str] = ()) -> VlmnasConfig:
    """Compose `studies/conf/config.yaml` with Hydra `overrides` and validate every group."""
    try:
        with initialize_config_module(config_module="studies.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        message = _one_line(str(exc))
        missing = re.search(r"'(\w+)/([^']*)'", message)
        if missing and missing.group(1) in _GROUP_DIRS:
            group = missing.group(1)
            known = sorted(p.stem for p in _GROUP_DIRS[group].glob("*.yaml"))
            message = f"{group}={missing.group(2)!r} is not a known option; allowed {known}"
        raise ConfigError(message) from None
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    assert isinstance(choices, dict)
    with open_dict(cfg):
        del cfg["hydra"]
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)

    try:
        space = SearchSpace.from_mapping(
            raw.get("search_space") or {}, name=str(choices["search_space"])
        )
    except SearchSpaceError as exc:
        raise ConfigError(str(exc)) from None
    hardware = raw.get("hardware") or {}
    if not isinstance(hardware, dict) or not hardware:
        raise ConfigError("hardware: select at least one profile, e.g. hardware=[cpu]")
    try:
        profiles = tuple(
            HardwareProfile.from_mapping(name, node) for name, node in hardware.items()
        )
    except ProfileError as exc:
        raise ConfigError(str(exc)) from None
    data = _typed(DataConfig, cfg.data, "data")
    trainer = _typed(TrainerConfig, cfg.trainer, "trainer")
    study = _typed(StudySpec, cfg.study, "study")
    ray = _typed(RaySpec, cfg.ray, "ray")
    export = _typed(ExportSpec, cfg.export, "export")
    _check_study(study, profiles)
    # Resolved here, in the driver: Ray runs trials with another working directory.
    study.workdir = str(Path(study.workdir).expanduser().resolve())
    return VlmnasConfig(space, profiles, data, trainer, study, raw, choices, ray, export)


def _typed(cls: type, node: DictConfig, group: str) -> Any:
    for key in OmegaConf.missing_keys(node):
        raise ConfigError(f"{key} is required (set it with {key}=...)")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{group}.{key}: {_one_line(str(exc))}") from None
    except ValueError as exc:  # a dataclass's own __post_init__ check
        raise ConfigError(_one_line(str(exc))) from None


def _check_study(study: StudySpec, profiles: tuple[HardwareProfile, ...]) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study.name):
        raise ConfigError(f"study.name={study.name!r}: use letters, digits, '_', '-', '.'")
    if study.n_trials < 1:
        raise ConfigError(f"study.n_trials={study.n_trials}: must be >= 1")
    if study.sampler not in SAMPLERS:
        raise ConfigError(f"study.sampler={study.sampler!r}; allowed {list(SAMPLERS)}")
    if study.population_size < 2:
        raise ConfigError(f"study.population_size={study.population_size}: must be >= 2")
    if study.asha.grace_period < 1 or study.asha.reduction_factor < 2:
        raise ConfigError(
            f"study.asha: grace_period={study.asha.grace_period} must be >= 1 and"
            f" reduction_factor={study.asha.reduction_factor} >= 2"
        )
    for key in ("max_concurrent", "cpus_per_trial", "max_consecutive_failures"):
        if getattr(study, key) < 1:
            raise ConfigError(f"study.{key}={getattr(study, key)}: must be >= 1")
    if len(study.objectives) < 2:
        raise ConfigError(
            f"study.objectives has {len(study.objectives)}; a multi-objective study needs >= 2"
        )
    names = [p.name for p in profiles]
    allowed = [f"{p.name}/{m}" for p in profiles for m in profile_metrics(p)]
    allowed += list(GLOBAL_METRICS)
    for constraint in study.parsed_constraints:
        if constraint.metric not in allowed:
            raise ConfigError(
                f"study.constraints metric {constraint.metric!r}; allowed with hardware={names}:"
                f" {allowed}"
            )
    for name in study.optional_profiles:
        if name not in names:
            raise ConfigError(
                f"study.optional_profiles has {name!r}, which is not selected; hardware={names}"
            )
    for obj in study.objectives:
        if obj.metric not in allowed:
            raise ConfigError(
                f"study.objectives metric {obj.metric!r}; allowed with hardware={names}: {allowed}"
            )
        if obj.direction not in DIRECTIONS:
            raise ConfigError(
                f"study.objectives direction {obj.direction!r}; allowed {list(DIRECTIONS)}"
            )
    if study.storage and not (study.storage.startswith("journal:") or "://" in study.storage):
        raise ConfigError(
            f"study.storage={study.storage!r}; allowed: empty (SQLite in the workdir), an RDB"
            " URL such as postgresql://host/db, or journal:/path/to/file"
        )
    if study.tracking_uri and "://" not in study.tracking_uri:
        raise ConfigError(
            f"study.tracking_uri={study.tracking_uri!r}; allowed: empty (SQLite in the"
            " workdir) or a URL such as http://host:5000"
        )
    workdir = Path(study.workdir).expanduser()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"study.workdir={study.workdir!r} exists and is not a directory")


def _one_line(message: str) -> str:
    lines = []
    for line in message.strip().splitlines():
        if line.strip().startswith(
            ("Config search path", "full_key:", "object_type=", "reference_type=")
        ):
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines)
