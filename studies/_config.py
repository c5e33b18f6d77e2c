"""Compose the Hydra config and turn every group into a validated, typed value.

Everything a user can get wrong is checked here, before a store is opened or a trial
starts. Each group is a pydantic dataclass whose fields state their choices and bounds
(`common._validation`), with its cross-field rules as its own validators; what spans
groups (objective metrics against the selected profiles, `export.profile`) is checked
by `load_config`. Each problem is one `ConfigError` line naming the key with its group,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from common import CONFIG, checked, choices
from hardware_profiles import GENERATION_PHASES, HardwareProfile, ProfileError
from search_spaces import (
    BackboneError,
    SearchSpace,
    SearchSpaceError,
    inspect_backbone,
    register_backbone,
)
from trainers import TrainerConfig
from trainers.data import DataConfig, DataError, WordTokenizer, checkpoint_codec

Sampler = Literal["auto", "nsga2", "nsga3", "tpe", "gp", "random"]
SAMPLERS: tuple[str, ...] = choices(Sampler)
Direction = Literal["maximize", "minimize"]  # studies._pareto.DIRECTIONS
Policy = Literal["pareto", "knee", "max_accuracy", "min_latency"]  # studies/_export.py
RankBy = Literal["pareto", "accuracy"]  # how studies/_rungs.py ranks (study.asha.rank_by)
PROFILE_METRICS = ("accuracy", "latency_p50_ms", "latency_p95_ms", "size_mb")
GLOBAL_METRICS = ("val_accuracy", "params", "image_tokens", "prompt_tokens")
Positive = Annotated[int, Field(ge=1)]
_T = TypeVar("_T")


# Metrics known before training: measured on the untrained candidate (latency, size and
# NPU coverage depend on the graph and the scheme, not on weight values).
CHEAP_SUFFIXES = (
    "/latency_p50_ms",
    "/latency_p95_ms",
    "/size_mb",
    "/npu_coverage",
    *(f"/{m}" for m in GENERATION_PHASES),
)
CHEAP_GLOBALS = ("params", "image_tokens", "prompt_tokens")


def is_cheap_metric(metric: str) -> bool:
    """Known from the untrained candidate (latency, size, coverage, parameters, tokens),
    before any training; accuracy is not."""
    return metric.endswith(CHEAP_SUFFIXES) or metric in CHEAP_GLOBALS


_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key and what is allowed."""


@dataclass(frozen=True)
class Constraint:
    """`metric <= bound` or `metric >= bound`, e.g. `cpu/latency_p95_ms <= 20`."""

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str, where: str = "study.constraints") -> Constraint:
        """`text` as a constraint; a `ConfigError` naming `where` (the option it came
        from) and the entry otherwise."""
        match = _CONSTRAINT.match(str(text))
        if not match:
            raise ConfigError(
                f"{where} entry {text!r}: write 'profile/metric <= number' or"
                " 'profile/metric >= number'"
            )
        metric, op, bound = match.groups()
        try:
            value = float(bound)
        except ValueError:
            raise ConfigError(f"{where} entry {text!r}: {bound!r} is not a number") from None
        return cls(metric, op, value)

    @property
    def cheap(self) -> bool:
        """Known before training, so a violation skips the training."""
        return is_cheap_metric(self.metric)

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when satisfied, else how far off."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def profile_metrics(profile: HardwareProfile) -> tuple[str, ...]:
    """The metrics a trial reports for `profile` that objectives may name."""
    return (
        PROFILE_METRICS
        + (("npu_coverage",) if profile.is_npu else ())
        # the generation metrics (hardware_profiles/_generate.py)
        + (GENERATION_PHASES if profile.times_generation else ())
    )


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


@checked(ConfigError, where="objective")
@pydantic_dataclass(config=CONFIG)
class Objective:
    metric: str = "cpu/accuracy"  # profile/metric or a global metric; checked by load_config
    direction: Direction = "maximize"
    # Hypervolume reference value; None: 0 when maximizing, twice the baseline trial's
    # value when minimizing.
    reference: float | None = None


@checked(ConfigError, where="study.asha")
@pydantic_dataclass(config=CONFIG)
class AshaSpec:
    """Early stopping of weak trials at rungs (asynchronous successive halving,
    `studies/_rungs.py`): every epoch is validated and reported."""

    enabled: bool = False
    grace_period: Positive = 2  # epochs every trial gets before it can be stopped
    # at each rung a trial goes on when at most 1/reduction_factor of the trials there
    # rank strictly better than it
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    # pareto: rank by non-dominated sorting over (val_accuracy so far, the objectives
    # known before training), as MO-ASHA; accuracy: by val_accuracy alone (plain ASHA)
    rank_by: RankBy = "pareto"


@checked(ConfigError, where="study")
@pydantic_dataclass(config=CONFIG)
class StudySpec:
    """The `study` config group: what to optimise, how, and where results go."""

    name: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            description="use letters, digits, '_', '-', '.'",
        ),
    ] = "quick"
    workdir: str = "runs"
    n_trials: Positive = 10
    seed: int = 0
    # auto: measure the cheap objectives of many untrained candidates, train the one a
    # surrogate expects to improve the hypervolume most (studies/_auto.py); the others
    # are Optuna's samplers
    sampler: Sampler = "auto"
    # NSGA-II generation size; the random trainings gp and auto start with
    population_size: Annotated[int, Field(ge=2)] = 4
    # auto: untrained candidates measured (latency, size, coverage) per training, at most
    cheap_per_training: Positive = 20
    # Two or more (a multi-objective study); their metrics are checked against the
    # selected profiles by load_config.
    objectives: Annotated[list[Objective], Field(min_length=2)] = Field(
        default_factory=list, validate_default=True
    )
    max_concurrent: Positive = 1  # trials at once; 1 keeps latency timing off busy cores
    cpus_per_trial: Positive = 2
    max_consecutive_failures: Positive = 5  # stop the study after this many failed trials in a row
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
    # Several drivers: each records a heartbeat for its running trials this often
    # (seconds), so that the others can tell a live trial from a dead driver's.
    heartbeat_interval: Positive = 10
    # Seconds: a RUNNING trial whose heartbeat is older than this is taken as dead,
    # closed as FAIL and rerun. More than heartbeat_interval, so that a late beat of a
    # live trial is not taken for a dead one.
    stale_after: Positive = 60

    @field_validator("workdir")
    @classmethod
    def _workdir_is_a_folder(cls, workdir: str) -> str:
        path = Path(workdir).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError("exists and is not a directory")
        return workdir

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, storage: str | None) -> str | None:
        if storage and not (storage.startswith("journal:") or "://" in storage):
            raise ValueError(
                "allowed: empty (SQLite in the workdir), an RDB URL such as"
                " postgresql://host/db, or journal:/path/to/file"
            )
        return storage

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_url(cls, uri: str | None) -> str | None:
        if uri and "://" not in uri:
            raise ValueError(
                "allowed: empty (SQLite in the workdir) or a URL such as http://host:5000"
            )
        return uri

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.parsed_constraints  # noqa: B018 - raises ConfigError naming a malformed one
        cheap = [is_cheap_metric(o.metric) for o in self.objectives]
        if self.sampler == "auto" and (all(cheap) or not any(cheap)):
            raise ValueError(
                "study.sampler=auto needs objectives known before training (latency, size,"
                " coverage, params) and after it (accuracy); objectives"
                f" {[o.metric for o in self.objectives]}: choose another sampler"
                " (nsga2, nsga3, tpe, gp, random)"
            )
        if self.stale_after <= self.heartbeat_interval:
            raise ValueError(
                f"study.stale_after={self.stale_after}: must be >"
                f" study.heartbeat_interval={self.heartbeat_interval}"
            )
        return self

    @property
    def parsed_constraints(self) -> list[Constraint]:
        return [Constraint.parse(text) for text in self.constraints]


@checked(ConfigError, where="export")
@pydantic_dataclass(config=CONFIG)
class ExportSpec:
    """What `vlmnas export` writes (studies/_export.py documents the policies)."""

    policy: Policy = "pareto"
    # whose deployed model and metrics; default: the first. Checked by load_config
    # against the selected profiles.
    profile: str | None = None
    latency_budget_ms: Annotated[float, Field(gt=0.0)] | None = None  # max_accuracy: p50 <= this
    # min_latency: accuracy at least this
    accuracy_floor: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @model_validator(mode="after")
    def _policy_inputs(self) -> Self:
        if self.policy == "max_accuracy" and self.latency_budget_ms is None:
            raise ValueError("export.policy=max_accuracy needs export.latency_budget_ms=<ms>")
        if self.policy == "min_latency" and self.accuracy_floor is None:
            raise ValueError("export.policy=min_latency needs export.accuracy_floor=<0..1>")
        return self


@checked(ConfigError, where="ray")
@pydantic_dataclass(config=CONFIG)
class RaySpec:
    """Where trials run: None = a private local Ray instance started by the driver (even
    where a `ray start` cluster or RAY_ADDRESS exists on the host); "auto" or
    "ray://host:10001" or "host:6379" = an existing cluster."""

    address: str | None = None


@dataclass(frozen=True)
class VlmnasConfig:
    space: Any  # SearchSpace, or a PretrainedSpace bound to its backbone
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


_GROUPS = (
    "search_space",
    "hardware",
    "data",
    "trainer",
    "study",
    "ray",
    "export",
    "backbone",
    "pretrain",
)


def load_config(overrides: Sequence[str] = ()) -> VlmnasConfig:
    """Compose `studies/conf/config.yaml` with Hydra `overrides` and validate every group;
    raises `ConfigError` before anything is written."""
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
    picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
    assert isinstance(picked, dict)
    choices = {str(k): v for k, v in picked.items()}
    with open_dict(cfg):
        del cfg["hydra"]
    for key in sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(f"{key} is required (set it with {key}=...)")
    composed = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(composed, dict)
    raw = {str(k): v for k, v in composed.items()}
    unknown = sorted(set(raw) - set(_GROUPS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; allowed {list(_GROUPS)}")

    try:
        space = SearchSpace.from_mapping(
            raw.get("search_space") or {}, name=str(choices["search_space"])
        )
        hardware = raw.get("hardware") or {}
        if not isinstance(hardware, dict) or not hardware:
            raise ConfigError("hardware: select at least one profile, e.g. hardware=[cpu]")
        profiles = tuple(
            HardwareProfile.from_mapping(str(name), node) for name, node in hardware.items()
        )
        space = _bind_backbone(space, raw.get("backbone") or {})
    except (SearchSpaceError, ProfileError, BackboneError) as exc:
        raise ConfigError(str(exc)) from None
    data = _group(DataConfig, raw, "data")
    trainer = _group(TrainerConfig, raw, "trainer")
    study = _group(StudySpec, raw, "study")
    ray = _group(RaySpec, raw, "ray")
    export = _group(ExportSpec, raw, "export")
    _check_across_groups(study, export, profiles)
    _check_held_out(space, data)
    # Resolved here, in the driver: Ray runs trials with another working directory.
    study.workdir = str(Path(study.workdir).expanduser().resolve())
    return VlmnasConfig(space, profiles, data, trainer, study, raw, choices, ray, export)


def _bind_backbone(space: Any, node: Any) -> Any:
    """A pretrained space bound to `backbone.path` (checked, before any trial); a scratch
    space must not name one."""
    if not isinstance(node, dict) or set(node) - {"path"}:
        raise ConfigError(f"backbone={node!r}: allowed backbone.path=DIR")
    path = node.get("path")
    if space.kind != "pretrained":
        if path:
            raise ConfigError(
                f"backbone.path={path!r} applies to a pretrained search space, e.g."
                " search_space=llava_next_pretrained"
            )
        return space
    if not path:
        raise ConfigError(
            f"search_space={space.name} cuts a checkpoint down: give backbone.path=DIR"
            " (a LLaVA-NeXT transformers folder, e.g. checkpoints/shapes-llava-next)"
        )
    folder = Path(str(path)).expanduser()
    if not folder.is_absolute() and not folder.exists() and (_REPO / folder).exists():
        folder = _REPO / folder  # the shipped checkpoint, from anywhere in a source checkout
    return space.bind(inspect_backbone(folder))


_REPO = Path(__file__).resolve().parents[1]


def _check_held_out(space: Any, data: DataConfig) -> None:
    """A checkpoint built by `vlmnas pretrain` records its data (`pretrain.json`). The
    shapes-VQA generator draws the training records, then the validation ones, from one
    stream per seed: with the checkpoint's seed, a study's validation images (records
    train_images .. train_images + val_images) are among the checkpoint's training
    images unless the study draws at least as many training images. Scoring on them
    would measure memory, not the cut."""
    backbone = getattr(space, "backbone", None)
    if backbone is None or data.name != "shapes_vqa" or data.root:
        return
    record = Path(backbone.path) / "pretrain.json"
    if not record.is_file():
        return
    built = json.loads(record.read_text()).get("data") or {}
    if (
        built.get("name") == "shapes_vqa"
        and built.get("seed") == data.seed
        and data.train_images < int(built.get("train_images", 0))
    ):
        raise ConfigError(
            f"data.seed={data.seed}: {backbone.path} was trained on shapes-VQA with seed"
            f" {data.seed} ({built.get('train_images')} training images), so this study's"
            f" validation images would be among them; use another data.seed"
        )


def text_side(cfg: VlmnasConfig, trial_dir: Path | None = None) -> Any:
    """What the study's text goes through: the checkpoint's tokenizer and chat template
    (`ChatCodec`) for a pretrained space, else vlmnas's word tokenizer (from a trial's
    folder when given, or None: built from the data)."""
    backbone = getattr(cfg.space, "backbone", None)
    if backbone is not None:
        register_backbone(backbone)
        return checkpoint_codec(
            backbone.path,
            image_token_id=int(backbone.config.image_token_id),
            vocab_size=int(backbone.config.text_config.vocab_size),
        )
    if trial_dir is not None:
        return WordTokenizer.from_json((trial_dir / "word_tokenizer.json").read_text())
    return None


def _group(cls: Callable[..., _T], raw: dict[str, Any], group: str) -> _T:
    node = raw.get(group)
    if not isinstance(node, dict):
        raise ConfigError(f"{group}={node!r}: must be a mapping of settings")
    try:
        return cls(**{str(k): v for k, v in node.items()})
    except (ValueError, DataError) as exc:  # each group's own error type, one line each
        raise ConfigError(str(exc)) from None


def _check_across_groups(
    study: StudySpec, export: ExportSpec, profiles: tuple[HardwareProfile, ...]
) -> None:
    """The rules that span groups: metrics and profile names against `hardware`."""
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
    if export.profile is not None and export.profile not in names:
        raise ConfigError(
            f"export.profile={export.profile!r}; allowed with hardware={names}: {names}"
        )


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
