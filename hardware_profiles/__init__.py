"""Where a candidate runs: hardware profiles, deployment (ONNX export and quantization,
or a cast PyTorch module), latency (measured or estimated), accuracy on the target."""

from typing import TYPE_CHECKING, Any

from common import busy, measuring

from ._deploy import Accuracy, Deployment, accuracy, coverage, deploy, latency, wilson_interval
from ._profile import HardwareProfile, ProfileError, known_profiles
from ._report import LatencyReport

if TYPE_CHECKING:  # typed for readers and mypy; imported on first use at run time
    from ._runtime import (
        LatencyCache,
        Placement,
        evaluate,
        export_onnx,
        measure,
        placement,
        quantize,
        session,
        size_mb,
    )

# The ONNX Runtime backend is imported on first use: a GPU host that deploys with torch
# alone (hardware_profiles._torch) needs no onnxruntime.
_RUNTIME_NAMES = (
    "LatencyCache",
    "Placement",
    "evaluate",
    "export_onnx",
    "measure",
    "placement",
    "quantize",
    "session",
    "size_mb",
)


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        from . import _runtime

        return getattr(_runtime, name)
    raise AttributeError(f"module 'hardware_profiles' has no attribute {name!r}")


__all__ = [
    "Accuracy",
    "Deployment",
    "HardwareProfile",
    "LatencyCache",
    "LatencyReport",
    "Placement",
    "ProfileError",
    "accuracy",
    "busy",
    "coverage",
    "deploy",
    "evaluate",
    "export_onnx",
    "known_profiles",
    "latency",
    "measure",
    "measuring",
    "placement",
    "quantize",
    "session",
    "size_mb",
    "wilson_interval",
]
