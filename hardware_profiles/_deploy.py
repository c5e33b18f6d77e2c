"""One interface over the runtimes: deploy a model for a profile, then time and score it.

`deploy` turns a PyTorch model into what the profile runs:

- on a measured ONNX Runtime profile with dynamic shapes (cpu): the candidate's vision,
  embedding and KV-cache decoder graphs, each quantized for the scheme (`_generate.py`);
  a FastV candidate, which has no KV-cache graphs, is one graph re-run per token;
- on another ONNX Runtime profile (npu_htp, static shapes): one ONNX file quantized with
  the scheme;
- on a torch profile (gpu): a module cast to the scheme's dtype.

`latency`, `accuracy` and `coverage` then work the same way for every profile, so
`studies._trial` never branches on the runtime. `Deployment.decoding` says how answers
are generated, and so what `latency` times: `kv_cache` and `full_rerun` time a whole
greedy answer of `answer_tokens` tokens (p50 = end to end, its phases in
`LatencyReport.phases`); `one_pass` times one forward pass of the static sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from search_spaces import EncodedVQA, VlmModel, supports_kv

from ._profile import HardwareProfile
from ._report import LatencyReport

if TYPE_CHECKING:
    from ._generate import GenerationDeployment


@dataclass(frozen=True)
class Deployment:
    profile: HardwareProfile
    scheme: str
    # the deployable file: ONNX model or the torch state dict; for the three generation
    # graphs, their folder
    path: Path
    module: torch.nn.Module | None = None  # torch runtime: the prepared module
    generation: GenerationDeployment | None = None  # ONNX Runtime: the generation graphs
    # How latency and accuracy decode: `kv_cache` (the generation graphs, or the torch
    # module's three parts), `full_rerun` (the one graph or module re-run per answer
    # token: a FastV candidate on a generating profile) or `one_pass` (latency of one
    # forward pass: a profile with `generation: false`).
    decoding: str = "one_pass"

    @property
    def size_mb(self) -> float:
        """What the deployment takes on disk (all three graphs for `kv_cache`)."""
        if self.generation is not None:
            return self.generation.size_mb
        if self.profile.runtime == "torch":
            return self.path.stat().st_size / 1e6
        from ._runtime import size_mb

        return size_mb(self.path)


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
    max_new_tokens: int = 2,
) -> Deployment:
    """Prepare `model` for `profile` with `scheme`, writing its files under `out_dir`.
    On a static-shape profile that generates, the decoder's fixed context holds
    `example`'s padded prompt and answers of up to `max_new_tokens` tokens."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # a candidate that generates with a KV cache here (FastV has no cache parts)
    kv = profile.times_generation and isinstance(model, VlmModel) and supports_kv(model.arch)
    if profile.runtime == "torch":
        from . import _torch

        module = _torch.prepare(model, scheme, profile.device)
        path = _torch.save(module, out_dir / f"model_{profile.name}_{scheme}.pt")
        decoding = "kv_cache" if kv else "full_rerun" if profile.times_generation else "one_pass"
        return Deployment(profile, scheme, path, module, decoding=decoding)
    if kv:
        assert isinstance(model, VlmModel)
        from search_spaces import fixed_context

        from ._generate import deploy_generation

        folder = out_dir / f"generation_{profile.name}_{scheme}"
        context = (
            fixed_context(example.prompt_ids.shape[1], max(2, max_new_tokens))
            if profile.static_shapes
            else None
        )
        gen = deploy_generation(model, scheme, folder, example, calibration, context)
        return Deployment(profile, scheme, folder, generation=gen, decoding="kv_cache")
    from ._runtime import export_onnx, quantize

    fp32 = export_onnx(
        model, out_dir / f"model_{profile.name}_fp32.onnx", example, static=profile.static_shapes
    )
    path = quantize(fp32, scheme, out_dir / f"model_{profile.name}_{scheme}.onnx", calibration)
    decoding = "full_rerun" if profile.times_generation else "one_pass"
    return Deployment(profile, scheme, path, decoding=decoding)


def latency(dep: Deployment, example: EncodedVQA, answer_tokens: int) -> LatencyReport:
    """Latency on the profile for `example`'s first row: a whole greedy answer of
    `answer_tokens` tokens (forced, at least 2) where the deployment generates
    (`Deployment.decoding`), else one forward pass. Measured while holding the host's
    measuring lock (no training shares the cores), or estimated by the cost model."""
    from common import measuring

    profile = dep.profile
    if dep.decoding != "one_pass" and profile.runtime == "torch":
        from . import _torch

        assert dep.module is not None
        timed = _torch.measure_generation if dep.decoding == "kv_cache" else _torch.measure_rerun
        with measuring():
            return timed(dep.module, profile, example, answer_tokens)
    if dep.decoding != "one_pass":
        from ._generate import estimate_generation, measure_generation, measure_rerun, ort_parts

        first = example.slice(0, 1)
        if profile.latency_source == "estimated":
            return estimate_generation(dep.generation or dep.path, profile, answer_tokens)
        if dep.generation is not None:
            parts = ort_parts(dep.generation, profile)
            with measuring():
                return measure_generation(parts, profile, first, answer_tokens)
        with measuring():
            return measure_rerun(dep.path, profile, first, answer_tokens)
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
    if dep.generation is not None:
        from search_spaces import generate_accuracy

        from ._generate import ort_parts

        parts = ort_parts(dep.generation, dep.profile)
        value = generate_accuracy(
            parts, data, max_new_tokens=max_new_tokens, batch_size=dep.profile.eval_batch
        )
    elif dep.profile.runtime == "torch" and dep.decoding == "kv_cache":
        from search_spaces import device_parts, generate_accuracy

        assert isinstance(dep.module, VlmModel)
        value = generate_accuracy(
            device_parts(dep.module),
            data,
            max_new_tokens=max_new_tokens,
            batch_size=dep.profile.eval_batch,
        )
    elif dep.profile.runtime == "torch":
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

    if dep.generation is None:
        return placement(dep.path, dep.profile).coverage
    # the share of all the graphs' compute nodes
    where = [placement(path, dep.profile) for path in dep.generation.paths.values()]
    total = sum(w.nodes for w in where)
    return sum(w.coverage * w.nodes for w in where) / total if total else 1.0


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound for small n and p near
    0 or 1, where the normal approximation is not)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
