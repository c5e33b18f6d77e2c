"""Export to ONNX, quantize, and run on a profile's runtime: latency, size, accuracy."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from search_spaces import EncodedVQA, decode_accuracy

from ._profile import SCHEMES, HardwareProfile, ProfileError

INPUT_NAMES = ("pixel_values", "tile_mask", "input_ids")
OPSET = 17


def export_onnx(model: torch.nn.Module, path: Path, example: EncodedVQA) -> Path:
    """Export `model` (inputs as in `search_spaces._model`) with a dynamic batch axis.

    Uses the TorchScript exporter: it takes ~0.1 s for these models against several
    seconds for the dynamo exporter, and yields plain MatMul/Softmax graphs that ORT's
    quantizers and execution providers handle. Written atomically.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (
        torch.from_numpy(example.pixel_values[:1]),
        torch.from_numpy(example.tile_mask[:1]),
        torch.from_numpy(example.prompt_ids[:1]),
    )
    tmp = path.with_suffix(".tmp.onnx")
    was_training = model.training
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, "logits")},
            opset_version=OPSET,
            dynamo=False,
        )
    model.train(was_training)
    os.replace(tmp, path)
    return path


def quantize(
    onnx_path: Path, scheme: str, out_path: Path, calibration: EncodedVQA | None = None
) -> Path:
    """The model for `scheme`: `onnx_path` itself for fp32, else written to `out_path`.

    - `int8_dynamic`: int8 per-channel weights, activations quantized at run time
      (MatMul only).
    - `int8_static`: QDQ format, int8 per-channel weights and uint8 activations whose
      ranges come from running `calibration` samples (MatMul only: quantizing the
      attention-mask Add or the Softmax ruins the scores).
    - `int4_weight_only`: 4-bit blockwise weights in MatMulNBits, fp32 activations.

    Every int8 scheme first runs ORT's `quant_pre_process` (shape inference and graph
    optimisation), without which int8 MatMuls barely beat fp32 on this machine.
    """
    if scheme not in SCHEMES:
        raise ProfileError(f"quantization scheme {scheme!r} unknown; allowed {list(SCHEMES)}")
    if scheme == "fp32":
        return Path(onnx_path)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    with tempfile.TemporaryDirectory() as work:
        if scheme == "int4_weight_only":
            _quantize_int4(onnx_path, tmp)
        else:
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            if scheme == "int8_dynamic":
                quantize_dynamic(
                    str(pre),
                    str(tmp),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    op_types_to_quantize=["MatMul"],
                )
            else:
                if calibration is None or len(calibration) == 0:
                    raise ProfileError("int8_static needs calibration samples")
                quantize_static(
                    str(pre),
                    str(tmp),
                    _CalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                )
    os.replace(tmp, out_path)
    return out_path


def _quantize_int4(onnx_path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(onnx_path)), bits=4, block_size=32, is_symmetric=True
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


class _CalibrationReader:
    """Feeds calibration samples one at a time to ORT's static quantizer."""

    def __init__(self, data: EncodedVQA) -> None:
        self._rows = iter(range(len(data)))
        self._data = data

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._rows, None)
        if i is None:
            return None
        part = self._data.slice(i, i + 1)
        return {
            "pixel_values": part.pixel_values,
            "tile_mask": part.tile_mask,
            "input_ids": part.prompt_ids,
        }


def session(onnx_path: Path, profile: HardwareProfile) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = profile.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers: list[Any] = [(profile.execution_provider, dict(profile.provider_options))]
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)


@dataclass(frozen=True)
class LatencyReport:
    """One forward pass (full static sequence, i.e. prefill) at the profile's batch size."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    cv: float  # stdev / mean of the timed runs
    n: int  # timed runs in the reported attempt
    attempts: int
    source: str  # measured | estimated
    runtime: str  # e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    cpu: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(onnx_path: Path, profile: HardwareProfile, example: EncodedVQA) -> LatencyReport:
    """Time one forward pass: warm-up, then timed runs (at least `repeats` and at least
    `min_time_s` seconds), re-measured while cv > max_cv.

    The attempt with the lowest cv is reported. The caller guarantees that nothing else
    runs on the cores meanwhile (the study measures one candidate at a time).
    """
    sess = session(onnx_path, profile)
    feeds = _feeds(example, profile.batch)
    best: tuple[float, list[float]] | None = None
    attempts = 0
    while attempts < profile.max_attempts:
        attempts += 1
        for _ in range(profile.warmup):
            sess.run(None, feeds)
        times: list[float] = []
        # At least `repeats` runs and at least `min_time_s` of them: sub-millisecond
        # models need thousands of runs before one disturbance stops moving the p50.
        while len(times) < profile.repeats or sum(times) < profile.min_time_s * 1000.0:
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000.0)
        cv = statistics.pstdev(times) / statistics.fmean(times)
        if best is None or cv < best[0]:
            best = (cv, times)
        if cv <= profile.max_cv:
            break
    assert best is not None
    cv, times = best
    return LatencyReport(
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        mean_ms=statistics.fmean(times),
        cv=cv,
        n=len(times),
        attempts=attempts,
        source=profile.latency_source,
        runtime=f"onnxruntime {ort.__version__} {profile.execution_provider}",
        cpu=_cpu_description(),
    )


class LatencyCache:
    """Measured latencies by (architecture, scheme, profile, runtime version).

    The key takes the whole profile (threads, batch, timing settings), so changing any of
    them re-measures; so does another onnxruntime version. One JSON file per entry,
    written atomically.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key(self, graph_id: str, scheme: str, profile: HardwareProfile) -> str:
        payload = json.dumps(
            {
                "graph": graph_id,
                "scheme": scheme,
                "profile": asdict(profile),
                "runtime": ort.__version__,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def get(self, key: str) -> LatencyReport | None:
        path = self.root / f"{key}.json"
        return LatencyReport(**json.loads(path.read_text())) if path.is_file() else None

    def put(self, key: str, report: LatencyReport) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp"
        tmp.write_text(json.dumps(report.as_dict()))
        os.replace(tmp, self.root / f"{key}.json")


def evaluate(
    onnx_path: Path, profile: HardwareProfile, data: EncodedVQA, max_new_tokens: int
) -> float:
    """Exact-match accuracy of greedy answers decoded by the model on the profile's runtime."""
    sess = session(onnx_path, profile)

    def forward(pixels: np.ndarray, mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return sess.run(["logits"], {"pixel_values": pixels, "tile_mask": mask, "input_ids": ids})[
            0
        ]

    return decode_accuracy(
        forward, data, max_new_tokens=max_new_tokens, batch_size=profile.eval_batch
    )


def size_mb(onnx_path: Path) -> float:
    """Model size on disk, external data files included."""
    path = Path(onnx_path)
    extra = path.with_name(path.name + ".data")
    total = path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)
    return total / 1e6


def _feeds(example: EncodedVQA, batch: int) -> dict[str, np.ndarray]:
    reps = -(-batch // len(example))
    take = lambda a: np.concatenate([a] * reps)[:batch]  # noqa: E731
    return {
        "pixel_values": take(example.pixel_values),
        "tile_mask": take(example.tile_mask),
        "input_ids": take(example.prompt_ids),
    }


def _cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
        simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        simd = []
    return f"{model} ({os.cpu_count()} cpus; {' '.join(simd) or 'no avx2'})"
