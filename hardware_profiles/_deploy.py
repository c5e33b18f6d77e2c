"""One interface over the runtimes: deploy a model for a profile, then time and score it.

`deploy` turns a PyTorch model into what the profile runs: an ONNX file quantized with
the scheme (ONNX Runtime profiles: cpu, npu_htp) or a module cast to the scheme's dtype
(torch profiles: gpu). `latency`, `accuracy` and `coverage` then work the same way for
every profile, so `studies._trial` never branches on the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from search_spaces import EncodedVQA

from ._profile import HardwareProfile
from ._report import LatencyReport


@dataclass(frozen=True)
class Deployment:
    profile: HardwareProfile
    scheme: str
    path: Path  # the deployable file: ONNX model, or the torch state dict
    module: torch.nn.Module | None = None  # torch runtime: the prepared module


@dataclass(frozen=True)
class Accuracy:
    """Exact-match accuracy over `n` validation rows with its 95% Wilson interval."""

    value: float
    n: int
    low: float
    high: float


def deploy(
    model: torch.nn.Module,
    profile: HardwareProfile,
    scheme: str,
    out_dir: Path,
    example: EncodedVQA,
    calibration: EncodedVQA | None = None,
) -> Deployment:
    """Prepare `model` for `profile` with `scheme`, writing its files under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if profile.runtime == "torch":
        from . import _torch

        module = _torch.prepare(model, scheme, profile.device)
        path = _torch.save(module, out_dir / f"model_{profile.name}_{scheme}.pt")
        return Deployment(profile, scheme, path, module)
    from ._runtime import export_onnx, quantize

    fp32 = export_onnx(
        model, out_dir / f"model_{profile.name}_fp32.onnx", example, static=profile.static_shapes
    )
    path = quantize(fp32, scheme, out_dir / f"model_{profile.name}_{scheme}.onnx", calibration)
    return Deployment(profile, scheme, path)


def latency(dep: Deployment, example: EncodedVQA) -> LatencyReport:
    """Latency of one forward pass on the profile: measured while holding the host's
    measuring lock (no training shares the cores), or estimated by the cost model."""
    from common import measuring

    profile = dep.profile
    if profile.runtime == "torch":
        from . import _torch

        assert dep.module is not None
        with measuring():
            return _torch.measure(dep.module, profile, example)
    from ._runtime import measure

    if profile.latency_source == "estimated":
        return measure(dep.path, profile, example)
    with measuring():
        return measure(dep.path, profile, example)


def accuracy(dep: Deployment, data: EncodedVQA, max_new_tokens: int) -> Accuracy:
    """Accuracy of the deployed model run on the profile's runtime, over the first
    `validation_subset` rows of `data` (all when 0)."""
    if dep.profile.validation_subset:
        data = data.slice(0, dep.profile.validation_subset)
    if dep.profile.runtime == "torch":
        from . import _torch

        assert dep.module is not None
        value = _torch.evaluate(dep.module, dep.profile, data, max_new_tokens)
    else:
        from ._runtime import evaluate

        value = evaluate(dep.path, dep.profile, data, max_new_tokens)
    low, high = wilson_interval(round(value * len(data)), len(data))
    return Accuracy(value, len(data), low, high)


def coverage(dep: Deployment) -> float | None:
    """Share of compute nodes the NPU runs (1.0: nothing falls back to the CPU); None for
    profiles where every node runs on the target."""
    if not dep.profile.is_npu:
        return None
    from ._runtime import placement

    return placement(dep.path, dep.profile).coverage


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound for small n and p near
    0 or 1, where the normal approximation is not)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
