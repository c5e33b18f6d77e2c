"""Where a candidate runs: hardware profiles, deployment (ONNX export and quantization,
or a cast PyTorch module), latency (measured or estimated), accuracy on the target."""

from typing import TYPE_CHECKING, Any

from common import busy, measuring

from ._deploy import Accuracy, Deployment, accuracy, coverage, deploy, latency, wilson_interval
from ._profile import HardwareProfile, ProfileError, known_profiles
from ._report import GENERATION_PHASES, LatencyReport

if TYPE_CHECKING:  # typed for readers and mypy; imported on first use at run time
    from ._generate import (
        GenerationDeployment,
        deploy_generation,
        measure_generation,
        measure_rerun,
        ort_parts,
    )
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


# Generation through the three KV-cache graphs (ONNX Runtime too).
_GENERATE_NAMES = (
    "GenerationDeployment",
    "deploy_generation",
    "measure_generation",
    "measure_rerun",
    "ort_parts",
)


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        from . import _runtime

        return getattr(_runtime, name)
    if name in _GENERATE_NAMES:
        from . import _generate

        return getattr(_generate, name)
    raise AttributeError(f"module 'hardware_profiles' has no attribute {name!r}")


__all__ = [
    "GENERATION_PHASES",
    "Accuracy",
    "Deployment",
    "GenerationDeployment",
    "HardwareProfile",
    "LatencyCache",
    "LatencyReport",
    "Placement",
    "ProfileError",
    "accuracy",
    "busy",
    "coverage",
    "deploy",
    "deploy_generation",
    "evaluate",
    "export_onnx",
    "known_profiles",
    "latency",
    "measure",
    "measure_generation",
    "measure_rerun",
    "measuring",
    "ort_parts",
    "placement",
    "quantize",
    "session",
    "size_mb",
    "wilson_interval",
]
