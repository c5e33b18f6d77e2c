"""`HardwareProfile`: where a candidate runs, as a frozen value read from YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from common import CONFIG, checked, choices

CONF_DIR = Path(__file__).parent / "conf" / "hardware"
Runtime = Literal["onnxruntime", "torch"]
LatencySource = Literal["measured", "estimated"]
Device = Literal["cpu", "cuda"]
# Quantization schemes by runtime. ONNX Runtime: the CPU schemes, and the QDQ schemes
# of the Hexagon NPU (w8a8: uint8 weights and activations; w8a16: uint16 activations).
# torch: the dtypes a GPU serves in.
CpuScheme = Literal["fp32", "int8_dynamic", "int8_static", "int4_weight_only"]
NpuScheme = Literal["w8a8", "w8a16"]
OrtScheme = Literal[CpuScheme, NpuScheme]
TorchScheme = Literal["fp32", "fp16", "bf16"]
Scheme = Literal[OrtScheme, TorchScheme]
ORT_SCHEMES: tuple[str, ...] = choices(OrtScheme)
# Parameters of the analytic NPU latency model (hardware_profiles/_cost.py documents each).
CostKey = Literal[
    "peak_int8_tops",
    "efficiency",
    "a16_slowdown",
    "bandwidth_gbps",
    "op_overhead_us",
    "fallback_gflops",
    "fallback_sync_us",
]
COST_MODEL_KEYS: tuple[str, ...] = choices(CostKey)
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


class ProfileError(ValueError):
    """A profile that is malformed or whose runtime is missing on this machine."""


@checked(ProfileError, where=lambda kwargs: f"hardware.{kwargs.get('name', '?')}")
@dataclass(frozen=True, config=CONFIG)
class HardwareProfile:
    """One deployment target.

    `quant_schemes` are the schemes legal on this target; the search samples one per
    profile. `latency_source` says whether latency is measured on the real runtime or
    estimated (a device that is emulated here).
    """

    name: str
    runtime: Runtime = "onnxruntime"
    execution_provider: str = "CPUExecutionProvider"
    # A mapping in YAML; held as sorted (key, value) pairs so that the profile stays hashable.
    provider_options: tuple[tuple[str, str], ...] = ()
    # A plugin execution provider's Python package (onnxruntime_qnn), registered with
    # onnxruntime.register_execution_provider_library before the first session.
    ep_library: str = ""
    device: Device = "cpu"  # where the torch runtime runs
    static_shapes: bool = False  # export with a fixed batch (NPUs compile static graphs)
    # Time and score whole greedy answers through the vision, embedding and KV-cache
    # decoder graphs (where the profile supports them: `times_generation`); false: one
    # graph, latency of one forward pass (what studies before the KV-cache graphs timed).
    generation: bool = True
    threads: Positive = 1
    batch: Positive = 1
    quant_schemes: Annotated[tuple[Scheme, ...], Field(min_length=1)] = ("fp32",)
    latency_source: LatencySource = "measured"
    warmup: NonNegative = 10
    repeats: Positive = 50  # timed runs per attempt, at least
    min_time_s: Annotated[float, Field(ge=0.0)] = 1.0  # and at least this long
    # re-measure while the coefficient of variation is above this
    max_cv: Annotated[float, Field(ge=0.0)] = 0.05
    max_attempts: Positive = 3
    # A measurement whose reference workload ran slow (hardware_profiles/_report.py) waits
    # this long and measures again, up to this many times, before it is tagged disturbed.
    disturbed_wait_s: Annotated[float, Field(ge=0.0)] = 2.0
    disturbed_retries: NonNegative = 3
    eval_batch: Positive = 64  # rows per run when measuring accuracy on the runtime
    # training images whose questions calibrate static quantization
    calibration_images: Positive = 16
    # Validation rows scored on this runtime: 0 = all. An emulated NPU runs ~1 s per
    # forward pass, so it scores a stated subset and reports a 95% confidence interval.
    validation_subset: NonNegative = 0
    # Parameters of the analytic latency model used when latency_source is "estimated"
    # (a mapping in YAML, held as sorted pairs).
    cost_model: tuple[tuple[CostKey, float], ...] = ()

    @property
    def is_npu(self) -> bool:
        return self.execution_provider == "QNNExecutionProvider"

    @property
    def times_generation(self) -> bool:
        """Whether trials time generation on this profile (vision, prefill, time to first
        token, per token, end to end): ONNX Runtime profiles through the generation
        graphs (`_generate.py`; measured or estimated, static shapes through the
        fixed-context graphs) and torch profiles through the module's three parts
        (`_torch.measure_generation`), unless the profile says `generation: false`."""
        return self.generation

    @property
    def cost_params(self) -> dict[str, float]:
        return dict(self.cost_model)

    @field_validator("provider_options", mode="before")
    @classmethod
    def _sorted_options(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), str(v)) for k, v in value.items()))
        return value

    @field_validator("cost_model", mode="before")
    @classmethod
    def _sorted_costs(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        unknown = sorted(set(map(str, value)) - set(COST_MODEL_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed {list(COST_MODEL_KEYS)}")
        try:
            return tuple(sorted((str(k), float(v)) for k, v in value.items()))
        except (TypeError, ValueError):
            raise ValueError("must be a mapping of numbers") from None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        where = f"hardware.{self.name}"
        legal = self.legal_schemes
        for scheme in self.quant_schemes:
            if scheme not in legal:
                raise ValueError(
                    f"{where}.quant_schemes has {scheme!r}; allowed on this profile {list(legal)}"
                )
        if self.latency_source == "estimated":
            missing = [k for k in COST_MODEL_KEYS if k not in self.cost_params]
            if missing:
                raise ValueError(
                    f"{where}.cost_model lacks {missing}: latency_source=estimated needs"
                    f" all of {list(COST_MODEL_KEYS)}"
                )
        return self

    @property
    def legal_schemes(self) -> tuple[str, ...]:
        if self.runtime == "torch":
            return choices(TorchScheme)
        if self.is_npu:
            return choices(NpuScheme)  # the HTP runs QDQ models only
        return choices(CpuScheme)

    @classmethod
    def from_mapping(cls, name: str, data: Any) -> HardwareProfile:
        """The profile `name` from its YAML mapping; raises `ProfileError`."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"hardware.{name}={data!r}: must be a mapping of settings")
        if "name" in data:
            raise ProfileError(
                f"hardware.{name}.name: the name is the profile's key, not a setting"
            )
        return cls(name=name, **{str(k): v for k, v in data.items()})

    @classmethod
    def load(cls, name: str) -> HardwareProfile:
        """Load `conf/hardware/<name>.yaml` (a mapping `{name: {...}}`)."""
        path = CONF_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ProfileError(f"hardware profile {name!r} not found; known: {known_profiles()}")
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_mapping(name, data.get(name, {}))

    def check_available(self) -> None:
        """Raise `ProfileError` naming what is missing if this machine cannot run the profile."""
        if self.runtime == "torch":
            import torch

            if self.device == "cuda" and not torch.cuda.is_available():
                raise ProfileError(
                    f"hardware.{self.name}: needs a CUDA device; torch {torch.__version__}"
                    " sees none (torch.cuda.is_available() is False)"
                )
            return
        import onnxruntime as ort

        if self.ep_library:
            register_ep_library(self.ep_library, self.execution_provider)
        if self.execution_provider not in ort.get_available_providers():
            raise ProfileError(
                f"hardware.{self.name}: execution provider {self.execution_provider} is not available"
                f" in onnxruntime {ort.__version__} (available: {ort.get_available_providers()})"
            )


_REGISTERED: set[str] = set()


def register_ep_library(package: str, ep_name: str) -> None:
    """Register a plugin execution provider shipped as a Python package, once per process.

    `onnxruntime_qnn` (PyPI `onnxruntime-qnn`) carries the QNN EP and Qualcomm's HTP
    backend; on x86 that backend emulates the Hexagon NPU.
    """
    if ep_name in _REGISTERED:
        return
    import importlib

    import onnxruntime as ort

    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ProfileError(
            f"execution provider {ep_name} needs the Python package {package!r}, which is not"
            f" installed (pip install {package.replace('_', '-')})"
        ) from None
    if not hasattr(ort, "register_execution_provider_library"):
        raise ProfileError(
            f"{package} is a plugin execution provider: it needs onnxruntime >= 1.24, found"
            f" {ort.__version__}"
        )
    try:
        ort.register_execution_provider_library(ep_name, module.get_library_path())
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail type
        if "already registered" not in str(exc):
            raise ProfileError(f"registering {ep_name} from {package} failed: {exc}") from None
    _REGISTERED.add(ep_name)


def known_profiles() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
