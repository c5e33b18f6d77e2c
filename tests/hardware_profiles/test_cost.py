"""The NPU cost model against hand counts on small graphs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hardware_profiles import HardwareProfile, ProfileError, wilson_interval
from hardware_profiles._cost import estimate_latency

PARAMS = {
    "peak_int8_tops": 1.0,  # 1e12 op/s
    "efficiency": 1.0,
    "a16_slowdown": 2.0,
    "bandwidth_gbps": 1000.0,  # 1e12 byte/s
    "op_overhead_us": 1.0,
    "fallback_gflops": 1.0,  # 1e9 op/s
    "fallback_sync_us": 10.0,
}


def _matmul_graph(path: Path, m: int, k: int, n: int) -> Path:
    """x (m, k) @ W (k, n) -> Relu, with W an initializer."""
    import numpy as np

    w = numpy_helper.from_array(np.zeros((k, n), dtype=np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_hand_counted_matmul(tmp_path: Path) -> None:
    path = _matmul_graph(tmp_path / "g.onnx", m=100, k=200, n=300)
    est = estimate_latency(path, PARAMS, activation_bytes=1)
    macs = 100 * 200 * 300
    compute_s = 2 * macs / 1e12
    bytes_mm = 100 * 200 + 200 * 300 + 100 * 300  # all at 1 byte (w8a8)
    bytes_relu = 2 * 100 * 300
    expected_ms = (max(compute_s, bytes_mm / 1e12) + 1e-6 + bytes_relu / 1e12 + 1e-6) * 1e3
    assert est.gmacs == pytest.approx(macs / 1e9)
    assert est.nodes == 2
    assert est.latency_ms == pytest.approx(expected_ms)
    # 16-bit activations halve the matrix rate and double activation bytes.
    assert estimate_latency(path, PARAMS, activation_bytes=2).latency_ms > est.latency_ms


def test_fallback_costs_cpu_time_and_handovers(tmp_path: Path) -> None:
    path = _matmul_graph(tmp_path / "g.onnx", m=10, k=20, n=30)
    base = estimate_latency(path, PARAMS, activation_bytes=1)
    est = estimate_latency(
        path, PARAMS, activation_bytes=1, fallback_nodes=["relu"], fallback_subgraphs=1
    )
    assert est.sync_ms == pytest.approx(2 * 10e-3)
    assert est.fallback_ms == pytest.approx((10 * 30 / 1e9 + 1e-6) * 1e3)
    assert est.latency_ms > base.latency_ms


def test_estimated_profile_needs_every_cost_parameter() -> None:
    with pytest.raises(ProfileError, match="cost_model lacks \\['peak_int8_tops'"):
        HardwareProfile.from_mapping(
            "npu",
            {
                "execution_provider": "QNNExecutionProvider",
                "quant_schemes": ["w8a8"],
                "latency_source": "estimated",
                "cost_model": {k: v for k, v in PARAMS.items() if k != "peak_int8_tops"},
            },
        )
    with pytest.raises(ProfileError, match="unknown keys \\['tops'\\]"):
        HardwareProfile.from_mapping("cpu", {"cost_model": {"tops": 1}})


def test_wilson_interval_matches_the_textbook_value() -> None:
    # 8 of 10: Wilson 95% interval (0.490, 0.943).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 64)
    assert low == 0.0 and 0.0 < high < 0.07
