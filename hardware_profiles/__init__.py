"""Where a candidate runs: hardware profiles, ONNX export, quantization, measurement."""

from ._profile import HardwareProfile, ProfileError, known_profiles
from ._runtime import (
    LatencyCache,
    LatencyReport,
    evaluate,
    export_onnx,
    measure,
    quantize,
    session,
    size_mb,
)

__all__ = [
    "HardwareProfile",
    "LatencyCache",
    "LatencyReport",
    "ProfileError",
    "evaluate",
    "export_onnx",
    "known_profiles",
    "measure",
    "quantize",
    "session",
    "size_mb",
]
