"""The npu_htp profile on the QNN execution provider (Qualcomm's HTP emulator on x86):
QDQ models load, node placement is reported, and an operator the NPU cannot run falls
back to the CPU with coverage below 1 instead of crashing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hardware_profiles import (
    HardwareProfile,
    ProfileError,
    accuracy,
    coverage,
    deploy,
    latency,
    placement,
)
from hardware_profiles._generate import ort_parts
from search_spaces import torch_parts
from search_spaces._arch import TokensConfig
from tests.hardware_profiles.test_generate import _cosine, _last_logits
from trainers import model_for
from trainers.data import ImageCache, encode_eval

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module")
def npu() -> HardwareProfile:
    profile = HardwareProfile.load("npu_htp")
    try:
        profile.check_available()
    except ProfileError as exc:
        pytest.skip(str(exc))
    return dataclasses.replace(profile, validation_subset=8)


def _encoded(arch, shapes_data):
    images = ImageCache()
    tok = shapes_data.tokenizer
    val = encode_eval(shapes_data.val, tok, arch, shapes_data.text_len, images)
    calibration = encode_eval(shapes_data.train[:4], tok, arch, shapes_data.text_len, images)
    return val, calibration


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
def test_npu_friendly_candidate_runs_entirely_on_the_npu(
    npu, scheme, tiny_arch, shapes_data, tmp_path: Path
) -> None:
    """The NPU generates through the fixed-context graphs: every node of all four on the
    HTP, accuracy from the emulator's own generation, latency by phase from the cost
    model, decode per token cheaper than the prefill."""
    arch = dataclasses.replace(tiny_arch, activation="gelu_tanh")
    val, calibration = _encoded(arch, shapes_data)
    model = model_for(arch, shapes_data).eval()
    dep = deploy(model, npu, scheme, tmp_path, val, calibration, 3)
    assert dep.decoding == "kv_cache" and dep.generation is not None
    assert dep.generation.manifest["static"]["context"] == val.prompt_ids.shape[1] + 3
    for part, path in dep.generation.paths.items():
        where = placement(path, npu)
        assert where.coverage == 1.0 and where.fallback_ops == (), part
    assert coverage(dep) == 1.0
    acc = accuracy(dep, val, shapes_data.max_answer_tokens)
    assert acc.n == 8 and 0.0 <= acc.low <= acc.value <= acc.high <= 1.0
    report = latency(dep, val, 3)
    p = report.phases
    assert report.source == "estimated" and report.p50_ms == p["e2e_ms"]
    assert p["ttft_ms"] == pytest.approx(p["vision_ms"] + p["prefill_ms"])
    assert p["e2e_ms"] == pytest.approx(p["ttft_ms"] + 2 * p["decode_ms_per_token"])
    assert 0 < p["decode_ms_per_token"] < p["prefill_ms"]
    # The emulator's numerics: the last prompt token's logits near the float model's
    # (w8a8's 8-bit activations drift further; on this untrained model, whose logits
    # spread ~0.1, that flips argmax tokens, so the check is on the logits).
    parts, float_ = (
        ort_parts(dep.generation, npu),
        torch_parts(model, dep.generation.manifest["static"]["context"]),
    )
    cos = [
        _cosine(_last_logits(parts, val.slice(i, i + 1)), _last_logits(float_, val.slice(i, i + 1)))
        for i in range(4)
    ]
    assert min(cos) >= {"w8a8": 0.85, "w8a16": 0.99}[scheme], cos


def test_unshared_image_ffn_loads_on_the_npu(npu, tiny_arch, shapes_data, tmp_path: Path) -> None:
    # fusion.share_ratio=0 once exported a zero-width MatMul (the shared units' slice),
    # on which the HTP emulator died of SIGFPE, taking the trial's worker with it.
    arch = dataclasses.replace(
        tiny_arch,
        activation="gelu_tanh",
        fusion=dataclasses.replace(tiny_arch.fusion, share_ratio=0.0),
    )
    val, calibration = _encoded(arch, shapes_data)
    dep = deploy(model_for(arch, shapes_data), npu, "w8a16", tmp_path, val, calibration)
    assert coverage(dep) == 1.0


def test_unsupported_operator_falls_back_and_lowers_coverage(
    npu, tiny_arch, shapes_data, tmp_path: Path
) -> None:
    # The exact GELU exports as Erf, which the HTP does not run: ORT places those nodes
    # on the CPU. The candidate must still run, with coverage below 1.
    arch = dataclasses.replace(tiny_arch, activation="gelu")
    val, calibration = _encoded(arch, shapes_data)
    dep = deploy(model_for(arch, shapes_data), npu, "w8a8", tmp_path, val, calibration)
    assert dep.generation is not None
    where = placement(dep.generation.paths["vision"], npu)  # CLIP's activation
    assert "Erf" in where.fallback_ops
    assert 0.5 < where.coverage < 1.0
    assert 0.5 < coverage(dep) < 1.0
    assert accuracy(dep, val, shapes_data.max_answer_tokens).n == 8
    # Each CPU island costs two hand-overs in the cost model: slower than without them.
    friendly = dataclasses.replace(tiny_arch, activation="gelu_tanh")
    val2, calibration2 = _encoded(friendly, shapes_data)
    dep2 = deploy(model_for(friendly, shapes_data), npu, "w8a8", tmp_path / "f", val2, calibration2)
    assert latency(dep, val, 2).p50_ms > latency(dep2, val2, 2).p50_ms


def test_fastv_candidate_reruns_the_one_static_graph(
    npu, tiny_arch, shapes_data, tmp_path: Path
) -> None:
    """FastV has no KV-cache graphs: on the NPU it is the one static graph, its estimate
    a full re-run per answer token."""
    arch = dataclasses.replace(
        tiny_arch,
        activation="gelu_tanh",
        lm=dataclasses.replace(tiny_arch.lm, depth=2),
        tokens=TokensConfig(prune_layer=1, prune_ratio=0.5),
    )
    val, calibration = _encoded(arch, shapes_data)
    dep = deploy(model_for(arch, shapes_data), npu, "w8a16", tmp_path, val, calibration)
    assert dep.decoding == "full_rerun" and dep.path.suffix == ".onnx"
    report = latency(dep, val, 3)
    assert "vision_ms" not in report.phases
    assert report.p50_ms == pytest.approx(3 * report.phases["prefill_ms"])
    assert accuracy(dep, val, shapes_data.max_answer_tokens).n == 8


def test_npu_profile_takes_only_qdq_schemes() -> None:
    with pytest.raises(ProfileError, match="'int8_dynamic'; allowed on this profile"):
        dataclasses.replace(HardwareProfile.load("npu_htp"), quant_schemes=("int8_dynamic",))


def test_missing_plugin_package_is_named(monkeypatch) -> None:
    from hardware_profiles import _profile

    monkeypatch.setattr(_profile, "_REGISTERED", set())
    profile = dataclasses.replace(HardwareProfile.load("npu_htp"), ep_library="no_such_qnn_pkg")
    with pytest.raises(ProfileError, match="pip install no-such-qnn-pkg"):
        profile.check_available()
