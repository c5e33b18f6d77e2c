"""`HardwareProfile`: where a candidate runs, as a frozen value read from YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).parent / "conf" / "hardware"
RUNTIMES = ("onnxruntime",)
LATENCY_SOURCES = ("measured", "estimated")
SCHEMES = ("fp32", "int8_dynamic", "int8_static", "int4_weight_only")


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
    runtime: str = "onnxruntime"
    execution_provider: str = "CPUExecutionProvider"
    provider_options: tuple[tuple[str, str], ...] = ()
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

    def __post_init__(self) -> None:
        where = f"hardware.{self.name}"
        if self.runtime not in RUNTIMES:
            raise ProfileError(f"{where}.runtime={self.runtime!r}; allowed {list(RUNTIMES)}")
        if self.latency_source not in LATENCY_SOURCES:
            raise ProfileError(
                f"{where}.latency_source={self.latency_source!r}; allowed {list(LATENCY_SOURCES)}"
            )
        if not self.quant_schemes:
            raise ProfileError(f"{where}.quant_schemes is empty; allowed values {list(SCHEMES)}")
        for scheme in self.quant_schemes:
            if scheme not in SCHEMES:
                raise ProfileError(f"{where}.quant_schemes has {scheme!r}; allowed {list(SCHEMES)}")
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
        import onnxruntime as ort

        if self.execution_provider not in ort.get_available_providers():
            raise ProfileError(
                f"hardware.{self.name}: execution provider {self.execution_provider} is not available"
                f" in onnxruntime {ort.__version__} (available: {ort.get_available_providers()})"
            )


def known_profiles() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
