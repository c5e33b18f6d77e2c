"""Export to ONNX, quantize, and run on a profile's runtime: latency, size, accuracy."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from search_spaces import FAMILY, EncodedVQA, decode_accuracy

from ._profile import ORT_SCHEMES, HardwareProfile, ProfileError, register_ep_library
from ._report import (
    CPU_REFERENCE,
    LatencyReport,
    Reference,
    cpu_description,
    cpu_fingerprint,
    repeated_reference,
    time_runs,
)

INPUT_NAMES = ("pixel_values", "image_index", "input_ids")
OPSET = 17
# Enters the latency cache's key: bump it when export or quantization changes the graphs
# that are timed (2: int4 MatMulNBits at accuracy_level 4; generation graphs; 3: a
# generating profile's latency is a whole answer through the KV-cache graphs; 4: the
# NPU profile generates through the fixed-context graphs).
DEPLOY_REVISION = 4


def export_onnx(
    model: torch.nn.Module, path: Path, example: EncodedVQA, *, static: bool = False
) -> Path:
    """Export `model` (inputs as in `search_spaces.VlmModel`) with a dynamic batch axis, or
    with batch 1 fixed when `static` (NPU compilers need fixed shapes).

    Uses the TorchScript exporter: it takes ~0.1 s for these models against several
    seconds for the dynamo exporter, and yields plain MatMul/Softmax graphs that ORT's
    quantizers and execution providers handle. Written atomically.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (
        torch.from_numpy(example.pixel_values[:1]),
        torch.from_numpy(example.image_index[:1]),
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
            dynamic_axes=None
            if static
            else {name: {0: "batch"} for name in (*INPUT_NAMES, "logits")},
            opset_version=OPSET,
            dynamo=False,
        )
    model.train(was_training)
    os.replace(tmp, path)
    return path


def quantize(
    onnx_path: Path,
    scheme: str,
    out_path: Path,
    calibration: EncodedVQA | list[dict[str, np.ndarray]] | None = None,
) -> Path:
    """The model for `scheme`: `onnx_path` itself for fp32, else written to `out_path`.

    - `int8_dynamic`: int8 per-channel weights, activations quantized at run time
      (MatMul only).
    - `int8_static`: QDQ format, int8 per-channel weights and uint8 activations whose
      ranges come from running `calibration` samples (MatMul only: quantizing the
      attention-mask Add or the Softmax ruins the scores).
    - `int4_weight_only`: 4-bit blockwise weights in MatMulNBits, fp32 activations.
    - `w8a8` / `w8a16` (NPU): QDQ with uint8 weights and uint8 / uint16 activations on
      every operator the QNN EP supports, configured by ORT's `get_qnn_qdq_config`
      and calibrated on `calibration`. Expects a static-shape export.

    Every int8 scheme first runs ORT's `quant_pre_process` (shape inference and graph
    optimisation), without which int8 MatMuls barely beat fp32 on this machine.
    """
    if scheme not in ORT_SCHEMES:
        raise ProfileError(f"quantization scheme {scheme!r} unknown; allowed {list(ORT_SCHEMES)}")
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
            if scheme in ("w8a8", "w8a16"):
                _quantize_qnn(pre, tmp, scheme, calibration)
            elif scheme == "int8_dynamic":
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
                    _CalibrationReader(calibration, pre),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                )
    os.replace(tmp, out_path)
    return out_path


def _quantize_qnn(
    src: Path, out: Path, scheme: str, calibration: EncodedVQA | list[dict[str, np.ndarray]] | None
) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize as ort_quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    if calibration is None or len(calibration) == 0:
        raise ProfileError(f"{scheme} needs calibration samples")
    import onnx

    activation = QuantType.QUInt16 if scheme == "w8a16" else QuantType.QUInt8
    # Mixed precision where 8 bits cannot hold the signal: the attention scores entering
    # each Softmax carry the additive mask (0 or -1e4) beside scores of a few units, so
    # one uint8 scale for both flattens every score to the same step and the model
    # answers nothing right (measured: 0.00 against 0.48 in fp32). Those tensors stay
    # 16-bit, as QNN's mixed-precision guide does for attention.
    overrides: dict[str, list[dict[str, Any]]] = {}
    if scheme == "w8a8":
        graph = onnx.load(str(src), load_external_data=False).graph
        for node in graph.node:
            if node.op_type == "Softmax":
                overrides[node.input[0]] = [{"quant_type": QuantType.QUInt16}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = get_qnn_qdq_config(
            str(src),
            _CalibrationReader(calibration, src),
            activation_type=activation,
            weight_type=QuantType.QUInt8,
            init_overrides=overrides or None,
        )
        # 16-bit QDQ needs opset 21; the quantizer upgrades the model and says so.
        ort_quantize(str(src), str(out), config)


def _quantize_int4(onnx_path: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # accuracy_level 4: the kernel quantizes each activation block to int8 and multiplies
    # in integers. At the default (fp32 compute) each weight block is dequantized on every
    # call, and int4 decoded slower than fp32 on a 240 M model (BENCHMARKS.md §15 c).
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(onnx_path)), bits=4, block_size=32, is_symmetric=True, accuracy_level=4
    )
    # It logs a line per MatMul at INFO; in the driver (auto's cheap measurements) that
    # reached the user's console, hundreds of lines a study.
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        log.setLevel(level)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


class _CalibrationReader:
    """Feeds calibration samples one at a time to ORT's static quantizer of `model`: rows
    of encoded examples (the one-graph model's inputs), or ready feeds (a part of the
    generation graphs, `_generate.calibration_feeds`). Only the model's own inputs are
    fed: the ONNX exporter leaves out an input the graph never reads."""

    def __init__(self, data: EncodedVQA | list[dict[str, np.ndarray]], model: Path) -> None:
        import onnx

        self._rows = iter(range(len(data)))
        self._data = data
        graph = onnx.load(str(model), load_external_data=False).graph
        self._inputs = {i.name for i in graph.input}

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._rows, None)
        if i is None:
            return None
        if isinstance(self._data, list):
            feeds = self._data[i]
        else:
            part = self._data.slice(i, i + 1)
            feeds = {
                "pixel_values": part.pixel_values,
                "image_index": part.image_index,
                "input_ids": part.prompt_ids,
            }
        return {name: value for name, value in feeds.items() if name in self._inputs}


def session(
    onnx_path: Path | bytes, profile: HardwareProfile, *, record_placement: bool = False
) -> ort.InferenceSession:
    """An inference session on the profile's execution provider (a plugin EP such as QNN
    is registered first) for an ONNX file or a serialized model. `record_placement`
    keeps which EP runs each node."""
    model = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = profile.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if record_placement:
        opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if profile.ep_library:
        register_ep_library(profile.ep_library, profile.execution_provider)
        devices = [d for d in ort.get_ep_devices() if d.ep_name == profile.execution_provider]
        if not devices:
            raise ProfileError(
                f"hardware.{profile.name}: {profile.execution_provider} has no device"
            )
        opts.add_provider_for_devices(devices, dict(profile.provider_options))
        return ort.InferenceSession(model, sess_options=opts)
    providers: list[Any] = [(profile.execution_provider, dict(profile.provider_options))]
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


@dataclass(frozen=True)
class Placement:
    """Where the runtime placed a model's compute nodes (Q/DQ nodes not counted)."""

    coverage: float  # share of compute nodes the profile's EP runs (1.0 = no fallback)
    nodes: int
    fallback_nodes: tuple[str, ...]
    fallback_ops: tuple[str, ...]  # op types that fell back, sorted, unique
    fallback_subgraphs: int


# The last placements asked for: a trial asks twice for the same files (the latency
# estimate, then the coverage metric: four graphs for a generating NPU deployment), and
# each answer costs a QNN session.
_placements: dict[tuple[object, ...], Placement] = {}
_PLACEMENTS_KEPT = 8


def placement(onnx_path: Path, profile: HardwareProfile) -> Placement:
    """Ask the runtime which execution provider runs each node (ORT's
    `session.record_ep_graph_assignment_info`). Nodes the EP cannot take fall back to
    the CPU: reported here, never a crash. The answer for the same unchanged file and
    profile as one of the last few calls is reused."""
    stat = Path(onnx_path).stat()
    key = (str(Path(onnx_path).resolve()), stat.st_mtime_ns, stat.st_size, profile)
    if key not in _placements:
        while len(_placements) >= _PLACEMENTS_KEPT:
            del _placements[next(iter(_placements))]  # the oldest
        _placements[key] = _placement(onnx_path, profile)
    return _placements[key]


def _placement(onnx_path: Path, profile: HardwareProfile) -> Placement:
    sess = session(onnx_path, profile, record_placement=True)
    ours = fallback = 0
    names: list[str] = []
    ops: set[str] = set()
    subgraphs = 0
    for sub in sess.get_provider_graph_assignment_info():
        nodes = [
            n for n in sub.get_nodes() if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        ]
        if sub.ep_name == profile.execution_provider:
            ours += len(nodes)
        else:
            fallback += len(nodes)
            names += [n.name for n in nodes]
            ops.update(n.op_type for n in nodes)
            subgraphs += 1 if nodes else 0
    total = ours + fallback
    return Placement(
        coverage=ours / total if total else 1.0,
        nodes=total,
        fallback_nodes=tuple(names),
        fallback_ops=tuple(sorted(ops)),
        fallback_subgraphs=subgraphs,
    )


def measure(onnx_path: Path, profile: HardwareProfile, example: EncodedVQA) -> LatencyReport:
    """Time one forward pass: warm-up, then timed runs (at least `repeats` and at least
    `min_time_s` seconds), re-measured while cv > max_cv.

    The attempt with the lowest cv is reported. The caller keeps other work off the
    cores meanwhile (`hardware_profiles.measuring()`). A profile whose latency_source is
    `estimated` gets the cost model's figure instead (`estimate`).
    """
    if profile.latency_source == "estimated":
        return estimate(onnx_path, profile)
    sess = session(onnx_path, profile)
    feeds = _feeds(example, profile.batch)

    def run_ms() -> float:
        start = time.perf_counter()
        sess.run(None, feeds)
        return (time.perf_counter() - start) * 1000.0

    return time_runs(
        run_ms,
        profile,
        runtime=f"onnxruntime {ort.__version__} {profile.execution_provider}",
        device=cpu_description(),
        reference=reference(profile),
    )


# The reference workload's sizes are `_report.CPU_REFERENCE`, shared with the torch backend.
_REFERENCE_ROWS, _REFERENCE_WIDTH, _REFERENCE_LAYERS, _REFERENCE_RUNS = CPU_REFERENCE
# (execution provider, its options, threads) -> the reference, built once per process.
_references: dict[tuple[object, ...], Reference] = {}


def reference(profile: HardwareProfile) -> Reference:
    """The reference workload on `profile`'s execution provider, thread count and session
    options (`session`), as `time_runs` takes it; built on first use and kept for the
    process, so its time is the host's, not a new session's."""
    key = (
        profile.execution_provider,
        profile.provider_options,
        profile.ep_library,
        profile.threads,
    )
    if key not in _references:
        sess = session(_reference_model(), profile)
        feeds = {"x": np.ones((_REFERENCE_ROWS, _REFERENCE_WIDTH), np.float32)}
        sess.run(None, feeds)  # first run allocates and plans: not the host's speed

        def unit_ms() -> float:
            start = time.perf_counter()
            for _ in range(_REFERENCE_RUNS):
                sess.run(None, feeds)
            return (time.perf_counter() - start) * 1000.0

        name = (
            f"onnxruntime {ort.__version__} {profile.execution_provider} threads={profile.threads}"
        )
        _references[key] = repeated_reference(name, unit_ms)
    return _references[key]


def _reference_model() -> bytes:
    """The reference graph, built in memory: x (64, 256) through 4 MatMuls with fixed
    (seeded) 256 x 256 weights, scaled so that values stay near 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width, layers = _REFERENCE_WIDTH, _REFERENCE_LAYERS
    weights = [
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"
        )
        for i in range(layers)
    ]
    names = ["x", *(f"h{i}" for i in range(1, layers)), "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(layers)]
    shape = [_REFERENCE_ROWS, width]
    graph = helper.make_graph(
        nodes,
        "vlmnas_reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def estimate(onnx_path: Path, profile: HardwareProfile) -> LatencyReport:
    """The cost model's latency (`_cost.py`) for the runtime's placement of the nodes."""
    from ._cost import estimate_latency

    where = placement(onnx_path, profile)
    scheme_bytes = 2 if _activation_bits(onnx_path) > 8 else 1
    cost = estimate_latency(
        onnx_path,
        profile.cost_params,
        scheme_bytes,
        fallback_nodes=where.fallback_nodes,
        fallback_subgraphs=where.fallback_subgraphs,
    )
    return LatencyReport(
        p50_ms=cost.latency_ms,
        p95_ms=cost.latency_ms,
        mean_ms=cost.latency_ms,
        cv=0.0,
        n=0,
        attempts=0,
        source="estimated",
        runtime=f"cost model over onnxruntime {ort.__version__} {profile.execution_provider} placement",
        cpu=cpu_description(),
    )


def _activation_bits(onnx_path: Path) -> int:
    """8 or 16: the integer width most QuantizeLinear nodes produce (w8a8 keeps a few
    tensors at 16 bits; w8a16 has all its activations there)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    consts = {init.name: init.data_type for init in model.graph.initializer}
    sixteen = {onnx.TensorProto.UINT16, onnx.TensorProto.INT16}
    widths = [
        16 if consts.get(node.input[2]) in sixteen else 8
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2
    ]
    return 16 if widths.count(16) > len(widths) / 2 else 8


class LatencyCache:
    """Measured latencies by (architecture, scheme, profile, runtime versions, CPU).

    The key takes the whole profile (threads, batch, timing settings) and
    `DEPLOY_REVISION`, so changing any of them, or how graphs are built, re-measures; so
    does another onnxruntime or torch version, and another CPU (its model and flags,
    `cpu_fingerprint`) or GPU: a workdir moved to another machine
    measures again instead of reusing the old machine's figures. One JSON file per
    entry, written atomically. A `disturbed` report is not kept, so that the next trial
    of that graph measures it again rather than inheriting a figure from a busy host.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key(self, graph_id: str, scheme: str, profile: HardwareProfile) -> str:
        payload = json.dumps(
            {
                "family": FAMILY,
                "deploy": DEPLOY_REVISION,
                "graph": graph_id,
                "scheme": scheme,
                "profile": asdict(profile),
                "runtime": ort.__version__,
                "torch": torch.__version__,
                "cpu": cpu_fingerprint(),
                "gpu": _gpu_name(profile),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def get(self, key: str) -> LatencyReport | None:
        path = self.root / f"{key}.json"
        return LatencyReport(**json.loads(path.read_text())) if path.is_file() else None

    def put(self, key: str, report: LatencyReport) -> None:
        if report.quality == "disturbed":
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"  # unique: drivers may share the cache
        tmp.write_text(json.dumps(report.as_dict()))
        os.replace(tmp, self.root / f"{key}.json")


def _gpu_name(profile: HardwareProfile) -> str:
    """The CUDA device a torch profile runs on ("" for every other profile, or without
    CUDA: such a profile cannot be measured here anyway)."""
    if profile.runtime != "torch" or not profile.device.startswith("cuda"):
        return ""
    if not torch.cuda.is_available():
        return ""
    return torch.cuda.get_device_name(torch.device(profile.device))


def evaluate(
    onnx_path: Path, profile: HardwareProfile, data: EncodedVQA, max_new_tokens: int
) -> float:
    """Exact-match accuracy of greedy answers decoded by the model on the profile's
    runtime, over the first `profile.validation_subset` rows of `data` (all if 0)."""
    if profile.validation_subset:
        data = data.slice(0, profile.validation_subset)
    sess = session(onnx_path, profile)

    def forward(pixels: np.ndarray, index: np.ndarray, ids: np.ndarray) -> np.ndarray:
        feeds = {"pixel_values": pixels, "image_index": index, "input_ids": ids}
        return sess.run(["logits"], feeds)[0]

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
    rows = example.repeat_to(batch)
    return {
        "pixel_values": rows.pixel_values,
        "image_index": rows.image_index,
        "input_ids": rows.prompt_ids,
    }
