"""PyTorch backend of the `gpu` profile: cast, save, time and evaluate a candidate in torch.

The model runs as built (`search_spaces.VlmModel`, a transformers LLaVA-NeXT), cast to
the scheme's dtype, on a CUDA GPU (or the CPU, to exercise the same code here). This
module imports only torch, numpy, the standard library and `search_spaces` (which needs
transformers): a deployment host may have nothing else (no onnxruntime, optuna, ray,
mlflow or hydra).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from search_spaces import EncodedVQA, VlmModel, decode_accuracy

from ._report import (
    CPU_REFERENCE,
    LatencyReport,
    Reference,
    TimingSettings,
    cpu_description,
    repeated_reference,
    time_runs,
)

TORCH_SCHEMES = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SCHEME_OF = {dtype: scheme for scheme, dtype in _DTYPES.items()}
# Eager runs on a side stream before capture, as `torch.cuda.graphs` asks: lazy
# initialisation (cuBLAS handles, autotuning) must not happen inside the graph.
_CAPTURE_WARMUP = 3

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # pixel_values, image_index, input_ids


class TorchProfile(TimingSettings, Protocol):
    """The fields of a hardware profile that this backend reads."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def batch(self) -> int: ...
    @property
    def eval_batch(self) -> int: ...


def prepare(model: torch.nn.Module, scheme: str, device: str) -> torch.nn.Module:
    """A deep copy of `model` in eval mode, without gradients, its floating-point
    parameters and buffers cast to `scheme`'s dtype, on `device` ("cuda", "cuda:1", "cpu").

    The original model is left as it was. fp16 and bf16 also run on the CPU (checked with
    torch 2.13), slowly: there they exercise the code, they are not a deployment.
    """
    if scheme not in _DTYPES:
        raise ValueError(f"torch scheme {scheme!r} unknown; allowed {list(TORCH_SCHEMES)}")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but torch {torch.__version__} sees no CUDA device"
        )
    if target.type not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r} unsupported; allowed 'cuda', 'cuda:N' or 'cpu'")
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    return prepared.to(device=target, dtype=_DTYPES[scheme])


def save(model: torch.nn.Module, path: Path) -> Path:
    """Write `model`'s state_dict (moved to the CPU, dtype kept) with `torch.save`,
    atomically; its size on disk is the profile's `size_mb`. Load it back with
    `torch.load(path, weights_only=True)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def measure(
    model: torch.nn.Module, profile: TorchProfile, example: EncodedVQA, *, cuda_graphs: bool = True
) -> LatencyReport:
    """Time one forward pass of `model` (from `prepare`) at `profile.batch`, `example`'s
    rows repeated to fill the batch: warm-up, then at least `repeats` timed runs and at
    least `min_time_s` seconds, re-measured while cv > max_cv (see `time_runs`).

    On CUDA each run is timed with CUDA events; with `cuda_graphs` the forward pass is
    captured once into a CUDA graph and each run is one `graph.replay()` (no Python or
    kernel-launch overhead, as a serving stack would run it). If capture fails the runs
    are eager and `runtime` says why. On the CPU the runs are eager, timed with
    `time.perf_counter`.
    """
    device, dtype = _device_dtype(model)
    if device.type != torch.device(profile.device).type:
        raise ValueError(
            f"hardware.{profile.name}.device={profile.device!r} but the model is on {device};"
            " prepare() it for the profile's device"
        )
    inputs = _inputs(model, *_fill(example, profile.batch))
    scheme = _SCHEME_OF.get(dtype, str(dtype))
    version = f"torch {torch.__version__}"
    # Entered once, not per run: its cost would be timed with every launch-bound run.
    with torch.inference_mode():
        if device.type == "cpu":
            return time_runs(
                _cpu_run(model, inputs),
                profile,
                runtime=f"{version} eager {scheme} cpu",
                device=cpu_description(),
                reference=reference(device),
            )
        gpu = torch.cuda.get_device_name(device)
        run, mode = _cuda_timed(lambda: model(*inputs)), "eager"
        if cuda_graphs:
            try:
                run, mode = _cuda_graph_run(model, inputs), "cuda graphs"
            except RuntimeError as exc:
                torch.cuda.synchronize(device)
                mode = f"eager (cuda graph capture failed: {type(exc).__name__})"
                warnings.warn(f"{mode}: {exc}", RuntimeWarning, stacklevel=2)
        return time_runs(
            run,
            profile,
            runtime=f"{version} {mode} {scheme} {gpu}",
            device=gpu,
            reference=reference(device),
        )


# The reference workload per device type: (rows, width, layers, runs) of an fp32 MatMul
# chain. On the CPU the ONNX backend's sizes, `_report.CPU_REFERENCE` (~5.6 ms a run in
# torch on one thread of a 2-core AMD EPYC); on a GPU wide enough to be compute-bound
# (17 GFLOP a MatMul, ~0.3 ms at an H100's fp32 peak: not measured here), so that
# another process on the GPU shows up in it, not only a slow host.
_REFERENCE_SIZES = {"cpu": CPU_REFERENCE, "cuda": (2048, 2048, 4, 5)}
# (device, threads) -> the reference, built once per process.
_references: dict[tuple[str, int], Reference] = {}


def reference(device: torch.device) -> Reference:
    """The reference workload on `device` with torch's current thread count, as
    `time_runs` takes it: fixed seeded weights, timed with `time.perf_counter` on the CPU
    and with CUDA events on a GPU. Built on first use and kept for the process."""
    threads = torch.get_num_threads()
    key = (str(device), threads)
    if key not in _references:
        rows, width, layers, runs = _REFERENCE_SIZES[device.type]
        gen = torch.Generator().manual_seed(0)
        weights = [
            (torch.randn(width, width, generator=gen) / width**0.5).to(device)
            for _ in range(layers)
        ]
        x = torch.ones(rows, width, device=device)

        def chain() -> None:
            with torch.inference_mode():
                for _ in range(runs):
                    h = x
                    for w in weights:
                        h = h @ w

        if device.type == "cuda":
            chain()  # first run loads cuBLAS kernels: not the host's speed
            time_ms = _cuda_timed(chain)
            name = f"torch {torch.__version__} {device} threads={threads}"
            _references[key] = Reference(key=name, time_ms=time_ms)
        else:
            chain()

            def unit_ms() -> float:
                start = time.perf_counter()
                chain()
                return (time.perf_counter() - start) * 1000.0

            name = f"torch {torch.__version__} {device} threads={threads}"
            _references[key] = repeated_reference(name, unit_ms)
    return _references[key]


def measure_generation(
    model: torch.nn.Module, profile: TorchProfile, example: EncodedVQA, max_new_tokens: int
) -> LatencyReport:
    """Time greedy generation of `max_new_tokens` (forced, at least 2) with a KV cache by
    `model` (from `prepare`) on its device, `example`'s first row repeated to
    `profile.batch`: the three parts as PyTorch modules, eager, what passes between them
    kept on the device (`search_spaces.device_parts`), the device synchronised before
    each phase's clock; p50/p95 of the whole answer, phases as
    `hardware_profiles.GENERATION_PHASES`. (CUDA graphs do not apply: the cache grows.)"""
    from search_spaces import GenerationTimes, device_parts, greedy_generate

    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: time per token needs at least 2")
    if not isinstance(model, VlmModel):
        raise ValueError(f"{type(model).__name__} is not a VlmModel: it has no KV-cache parts")
    parts = device_parts(model)
    batch = example.slice(0, 1).repeat_to(profile.batch)

    def run() -> tuple[float, dict[str, float]]:
        t = GenerationTimes()
        greedy_generate(parts, batch, max_new_tokens, stop_at_eos=False, times=t)
        return t.e2e_ms, t.phases()

    return _time_answers(run, profile, model, "3 parts with a KV cache")


def measure_rerun(
    model: torch.nn.Module, profile: TorchProfile, example: EncodedVQA, max_new_tokens: int
) -> LatencyReport:
    """Time generation the one-graph way on torch: each of `max_new_tokens` tokens
    re-runs the whole static sequence (what a FastV candidate, which has no KV-cache
    parts, costs), eager, each forward pass waited for by copying its greedy choice to
    the host. Phases as the ONNX backend's `measure_rerun` (no `vision_ms`)."""
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: time per token needs at least 2")
    device, _ = _device_dtype(model)
    inputs = _inputs(model, *_fill(example.slice(0, 1), profile.batch))
    lens = example.slice(0, 1).repeat_to(profile.batch).prompt_lens.astype(np.int64)
    last = torch.from_numpy(lens - 1).to(device)
    rows = torch.arange(profile.batch, device=device)

    def forward() -> None:
        logits = model(*inputs)
        logits[rows, last].argmax(-1).cpu()

    def run() -> tuple[float, dict[str, float]]:
        clock = time.perf_counter
        start = clock()
        forward()
        first = clock()
        steps = []
        for _ in range(max_new_tokens - 1):
            step = clock()
            forward()
            steps.append((clock() - step) * 1000.0)
        e2e = (clock() - start) * 1000.0
        ttft = (first - start) * 1000.0
        return e2e, {
            "prefill_ms": ttft,
            "ttft_ms": ttft,
            "decode_ms_per_token": sum(steps) / len(steps),
            "e2e_ms": e2e,
        }

    return _time_answers(run, profile, model, "full re-run")


def _time_answers(
    run: Callable[[], tuple[float, dict[str, float]]],
    profile: TorchProfile,
    model: torch.nn.Module,
    how: str,
) -> LatencyReport:
    """`time_runs` of whole generations by `model`, labelled with its device and dtype."""
    device, dtype = _device_dtype(model)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    scheme = _SCHEME_OF.get(dtype, str(dtype))
    with torch.inference_mode():
        return time_runs(
            run,
            profile,
            runtime=f"torch {torch.__version__} eager {scheme}, {how}",
            device=where,
            reference=reference(device),
        )


def evaluate(
    model: torch.nn.Module, profile: TorchProfile, data: EncodedVQA, max_new_tokens: int
) -> float:
    """Exact-match accuracy of greedy answers decoded by `model` (from `prepare`) on its
    device and in its dtype, `profile.eval_batch` rows per forward pass."""

    def forward(pixels: np.ndarray, index: np.ndarray, ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(*_inputs(model, pixels, index, ids))
        return logits.float().cpu().numpy()

    return decode_accuracy(
        forward, data, max_new_tokens=max_new_tokens, batch_size=profile.eval_batch
    )


def capture(model: torch.nn.Module, inputs: Inputs) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture `model(*inputs)` into a CUDA graph.

    `inputs` are the graph's static input buffers: copy new values into them (`copy_`)
    before `graph.replay()`, which rewrites the returned static output tensor in place.
    Raises RuntimeError where the forward pass cannot be captured.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(_CAPTURE_WARMUP):
            model(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = model(*inputs)
    return graph, output


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to take a device from")
    return param.device, param.dtype


def _fill(example: EncodedVQA, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`example`'s rows repeated (cyclically) to exactly `batch` rows."""
    rows = example.repeat_to(batch)
    return rows.pixel_values, rows.image_index, rows.prompt_ids


def _inputs(
    model: torch.nn.Module, pixels: np.ndarray, index: np.ndarray, ids: np.ndarray
) -> Inputs:
    """numpy inputs as tensors on `model`'s device, the pixels in its dtype."""
    device, dtype = _device_dtype(model)
    return (
        torch.from_numpy(np.ascontiguousarray(pixels)).to(device=device, dtype=dtype),
        torch.from_numpy(np.ascontiguousarray(index)).to(device=device),
        torch.from_numpy(np.ascontiguousarray(ids)).to(device=device),
    )


def _cpu_run(model: torch.nn.Module, inputs: Inputs) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        model(*inputs)
        return (time.perf_counter() - start) * 1000.0

    return run


def _cuda_timed(step: Callable[[], object]) -> Callable[[], float]:
    """`step` timed on the current stream with CUDA events, in milliseconds."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def run() -> float:
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run


def _cuda_graph_run(model: torch.nn.Module, inputs: Inputs) -> Callable[[], float]:
    graph, output = capture(model, inputs)

    def step() -> torch.Tensor:
        graph.replay()
        return output  # held for the graph's lifetime: replay writes into its memory

    return _cuda_timed(step)
