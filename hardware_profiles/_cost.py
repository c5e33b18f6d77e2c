"""An analytic latency model for a device this machine can only emulate (the Hexagon NPU).

The estimate walks the quantized ONNX graph (static shapes) node by node:

- Quantize/DequantizeLinear cost nothing: the NPU folds them into its integer kernels.
- Matrix nodes (MatMul, Gemm, Conv) on the NPU take
  `max(2 * MACs / (peak_int8_tops * efficiency / slowdown), bytes / bandwidth)`,
  where `slowdown` is `a16_slowdown` for 16-bit activations (w8a16) and 1 for w8a8.
- Every other node on the NPU is memory-bound: `bytes / bandwidth`.
- Each node on the NPU adds `op_overhead_us`.
- A node the NPU cannot run (CPU fallback, as the QNN EP placed it) takes
  `flops / fallback_gflops` plus `op_overhead_us`, and each CPU subgraph costs two
  hand-overs of `fallback_sync_us` (NPU -> CPU -> NPU).

`bytes` counts every input and output tensor once, activations at 1 or 2 bytes per
element (w8a8 / w8a16) and weights at 1 byte. The numbers live in the profile's YAML
(`cost_model:`), so a team can fit them to its phone. The result is an estimate: it
ranks candidates by work, memory traffic, operator count and fallbacks, which is what
drives latency on such devices, but it is not a measurement, and every figure it
produces is tagged `latency_source=estimated`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

FREE_OPS = {"QuantizeLinear", "DequantizeLinear"}
MATRIX_OPS = {"MatMul", "Gemm", "Conv"}


@dataclass(frozen=True)
class CostEstimate:
    latency_ms: float
    npu_ms: float
    fallback_ms: float
    sync_ms: float
    gmacs: float  # multiply-accumulates in the matrix nodes, in billions
    nodes: int  # compute nodes (Q/DQ excluded)


def estimate_latency(
    onnx_path: Path,
    params: Mapping[str, float],
    activation_bytes: int,
    fallback_nodes: Iterable[str] = (),
    fallback_subgraphs: int = 0,
) -> CostEstimate:
    """Estimated latency of one forward pass of `onnx_path` (static shapes).

    `fallback_nodes` are node names the runtime placed on the CPU; `fallback_subgraphs`
    the number of CPU subgraphs between NPU parts.
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    shapes = _shapes(graph)
    # Q/DQ keep their input's shape; ONNX's inference leaves some 16-bit ones unknown.
    for node in graph.node:
        if node.op_type in FREE_OPS and shapes.get(node.output[0]) is None:
            shapes[node.output[0]] = shapes.get(node.input[0])
    weights = {init.name for init in graph.initializer}
    # A DequantizeLinear of an initializer yields a weight: count it at 1 byte.
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights.add(node.output[0])
    fallback = set(fallback_nodes)
    slowdown = params["a16_slowdown"] if activation_bytes >= 2 else 1.0
    matrix_rate = params["peak_int8_tops"] * 1e12 * params["efficiency"] / slowdown  # op/s
    bandwidth = params["bandwidth_gbps"] * 1e9  # byte/s
    overhead = params["op_overhead_us"] * 1e-6
    npu_s = fallback_s = 0.0
    macs_total = 0.0
    nodes = 0
    for node in graph.node:
        if node.op_type in FREE_OPS:
            continue
        nodes += 1
        out_elems = sum(_numel(shapes.get(name)) for name in node.output)
        macs = _macs(node, shapes)
        macs_total += macs
        flops = 2.0 * macs if macs else float(out_elems)
        nbytes = sum(
            _numel(shapes.get(name)) * (1 if name in weights else activation_bytes)
            for name in (*node.input, *node.output)
            if name
        )
        if node.name in fallback:
            fallback_s += flops / (params["fallback_gflops"] * 1e9) + overhead
        elif node.op_type in MATRIX_OPS:
            npu_s += max(flops / matrix_rate, nbytes / bandwidth) + overhead
        else:
            npu_s += nbytes / bandwidth + overhead
    sync_s = 2 * fallback_subgraphs * params["fallback_sync_us"] * 1e-6
    return CostEstimate(
        latency_ms=(npu_s + fallback_s + sync_s) * 1e3,
        npu_ms=npu_s * 1e3,
        fallback_ms=fallback_s * 1e3,
        sync_ms=sync_s * 1e3,
        gmacs=macs_total / 1e9,
        nodes=nodes,
    )


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...] | None]:
    shapes: dict[str, tuple[int, ...] | None] = {}
    for info in (*graph.input, *graph.output, *graph.value_info):
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
        else:
            shapes[info.name] = None
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> float:
    if node.op_type not in MATRIX_OPS:
        return 0.0
    out = shapes.get(node.output[0])
    a = shapes.get(node.input[0])
    b = shapes.get(node.input[1])
    if out is None or a is None or b is None:
        return 0.0
    if node.op_type == "MatMul":
        return float(math.prod(out) * a[-1])
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return float(math.prod(out) * (a[0] if trans_a else a[-1]))
    # Conv: weight (out_channels, in_channels / groups, *kernel)
    return float(math.prod(out) * math.prod(b[1:]))
