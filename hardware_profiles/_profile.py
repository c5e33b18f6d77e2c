"""`HardwareProfile`: where a candidate runs, as a frozen value read from YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).parent / "conf" / "hardware"
RUNTIMES = ("onnxruntime", "torch")
LATENCY_SOURCES = ("measured", "estimated")
# Quantization schemes by runtime. ONNX Runtime: the CPU schemes, and the QDQ schemes
# of the Hexagon NPU (w8a8: uint8 weights and activations; w8a16: uint16 activations).
# torch: the dtypes a GPU serves in.
ORT_SCHEMES = ("fp32", "int8_dynamic", "int8_static", "int4_weight_only", "w8a8", "w8a16")
NPU_SCHEMES = ("w8a8", "w8a16")
TORCH_SCHEMES = ("fp32", "fp16", "bf16")
SCHEMES = ORT_SCHEMES + TORCH_SCHEMES[1:]
DEVICES = ("cpu", "cuda")
COST_MODEL_KEYS = (
    "peak_int8_tops",
    "efficiency",
    "a16_slowdown",
    "bandwidth_gbps",
    "op_overhead_us",
    "fallback_gflops",
    "fallback_sync_us",
)


class ProfileError(ValueError):
    """A profile that is malformed or whose runtime is missing on this machine."""


@dataclass(frozen=True)
class HardwareProfile:
    """One deployment target.

    `quant_schemes` are the schemes legal on this target; the search samples one per
    profile. `latency_source` says whether latency is measured on the real runtime or
    estimated (a device that is emulated here).
    """

    name: str
    runtime: str = "onnxruntime"  # onnxruntime | torch
    execution_provider: str = "CPUExecutionProvider"
    provider_options: tuple[tuple[str, str], ...] = ()
    # A plugin execution provider's Python package (onnxruntime_qnn), registered with
    # onnxruntime.register_execution_provider_library before the first session.
    ep_library: str = ""
    device: str = "cpu"  # torch runtime: cpu | cuda
    static_shapes: bool = False  # export with a fixed batch (NPUs compile static graphs)
    threads: int = 1
    batch: int = 1
    quant_schemes: tuple[str, ...] = ("fp32",)
    latency_source: str = "measured"
    warmup: int = 10
    repeats: int = 50  # timed runs per attempt, at least
    min_time_s: float = 1.0  # and at least this long
    max_cv: float = 0.05  # re-measure while the coefficient of variation is above this
    max_attempts: int = 3
    eval_batch: int = 64  # rows per run when measuring accuracy on the runtime
    calibration_images: int = 16  # training images whose questions calibrate static quantization
    # Validation rows scored on this runtime: 0 = all. An emulated NPU runs ~1 s per
    # forward pass, so it scores a stated subset and reports a 95% confidence interval.
    validation_subset: int = 0
    # Parameters of the analytic latency model used when latency_source is "estimated"
    # (hardware_profiles/_cost.py documents each).
    cost_model: tuple[tuple[str, float], ...] = ()

    @property
    def is_npu(self) -> bool:
        return self.execution_provider == "QNNExecutionProvider"

    @property
    def cost_params(self) -> dict[str, float]:
        return dict(self.cost_model)

    def __post_init__(self) -> None:
        where = f"hardware.{self.name}"
        if self.runtime not in RUNTIMES:
            raise ProfileError(f"{where}.runtime={self.runtime!r}; allowed {list(RUNTIMES)}")
        if self.device not in DEVICES:
            raise ProfileError(f"{where}.device={self.device!r}; allowed {list(DEVICES)}")
        if self.latency_source not in LATENCY_SOURCES:
            raise ProfileError(
                f"{where}.latency_source={self.latency_source!r}; allowed {list(LATENCY_SOURCES)}"
            )
        if not self.quant_schemes:
            raise ProfileError(f"{where}.quant_schemes is empty; allowed values {list(SCHEMES)}")
        legal = self.legal_schemes
        for scheme in self.quant_schemes:
            if scheme not in legal:
                raise ProfileError(
                    f"{where}.quant_schemes has {scheme!r}; allowed on this profile {list(legal)}"
                )
        if self.latency_source == "estimated":
            missing = [k for k in COST_MODEL_KEYS if k not in self.cost_params]
            if missing:
                raise ProfileError(
                    f"{where}.cost_model lacks {missing}: latency_source=estimated needs"
                    f" all of {list(COST_MODEL_KEYS)}"
                )
        unknown = sorted(set(self.cost_params) - set(COST_MODEL_KEYS))
        if unknown:
            raise ProfileError(
                f"{where}.cost_model has unknown keys {unknown}; allowed {list(COST_MODEL_KEYS)}"
            )
        if self.validation_subset < 0:
            raise ProfileError(f"{where}.validation_subset={self.validation_subset}: must be >= 0")
        for key in (
            "threads",
            "batch",
            "repeats",
            "max_attempts",
            "eval_batch",
            "calibration_images",
        ):
            if getattr(self, key) < 1:
                raise ProfileError(f"{where}.{key}={getattr(self, key)}: must be >= 1")

    @property
    def legal_schemes(self) -> tuple[str, ...]:
        if self.runtime == "torch":
            return TORCH_SCHEMES
        if self.is_npu:
            return NPU_SCHEMES  # the HTP runs QDQ models only
        return tuple(s for s in ORT_SCHEMES if s not in NPU_SCHEMES)

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any]) -> HardwareProfile:
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ProfileError(f"hardware.{name}: unknown keys {unknown}; allowed {sorted(fields)}")
        kwargs = dict(data)
        if "provider_options" in kwargs:
            kwargs["provider_options"] = tuple(
                sorted((str(k), str(v)) for k, v in kwargs["provider_options"].items())
            )
        if "cost_model" in kwargs:
            try:
                kwargs["cost_model"] = tuple(
                    sorted((str(k), float(v)) for k, v in kwargs["cost_model"].items())
                )
            except (AttributeError, TypeError, ValueError):
                raise ProfileError(
                    f"hardware.{name}.cost_model={kwargs['cost_model']!r}: a mapping of numbers"
                ) from None
        if "quant_schemes" in kwargs:
            kwargs["quant_schemes"] = tuple(kwargs["quant_schemes"])
        try:
            return cls(name=name, **kwargs)
        except TypeError as exc:
            raise ProfileError(f"hardware.{name}: {exc}") from None

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
