from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hardware_profiles import (
    HardwareProfile,
    ProfileError,
    evaluate,
    export_onnx,
    measure,
    quantize,
    size_mb,
)
from search_spaces import decode_accuracy
from tests._archs import TINY_ARCH, onnx_feeds
from trainers import model_for, torch_forward
from trainers.data import ImageCache, encode_eval


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes_data):
    torch.manual_seed(0)
    model = model_for(TINY_ARCH, shapes_data).eval()
    tok = shapes_data.tokenizer
    val = encode_eval(shapes_data.val, tok, TINY_ARCH, shapes_data.text_len, ImageCache())
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", val)
    return model, val, path


def test_onnx_matches_pytorch_logits(exported) -> None:
    model, val, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    part = val.slice(0, 5)  # batch 5, though exported at batch 1
    assert [i.name for i in sess.get_inputs()] == ["pixel_values", "image_index", "input_ids"]
    (onnx_logits,) = sess.run(["logits"], onnx_feeds(part))
    torch_logits = torch_forward(model)(part.pixel_values, part.image_index, part.prompt_ids)
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_accuracy_on_runtime_equals_pytorch_decode(exported, shapes_data) -> None:
    model, val, path = exported
    profile = HardwareProfile.load("cpu")
    on_ort = evaluate(path, profile, val, shapes_data.max_answer_tokens)
    on_torch = decode_accuracy(
        torch_forward(model), val, max_new_tokens=shapes_data.max_answer_tokens
    )
    assert on_ort == pytest.approx(on_torch)


def test_measure_reports_percentiles(exported) -> None:
    _, val, path = exported
    profile = HardwareProfile(
        name="cpu", threads=1, warmup=2, repeats=20, min_time_s=0.0, max_attempts=1
    )
    report = measure(path, profile, val)
    assert report.n == 20 and report.attempts == 1
    timed = measure(
        path,
        HardwareProfile(
            name="cpu", threads=1, warmup=2, repeats=20, min_time_s=0.2, max_attempts=1
        ),
        val,
    )
    assert timed.n * timed.mean_ms >= 200.0
    assert 0 < report.p50_ms <= report.p95_ms
    assert report.source == "measured" and "onnxruntime" in report.runtime
    assert size_mb(path) == pytest.approx(path.stat().st_size / 1e6)


def test_fp32_quantize_is_the_model_itself(exported, tmp_path: Path) -> None:
    _, _, path = exported
    assert quantize(path, "fp32", tmp_path / "x.onnx") == path
    with pytest.raises(ProfileError, match="unknown"):
        quantize(path, "int3", tmp_path / "x.onnx")


def test_profile_yaml_is_validated() -> None:
    assert HardwareProfile.load("cpu").execution_provider == "CPUExecutionProvider"
    with pytest.raises(ProfileError, match="unknown keys \\['thread'\\]"):
        HardwareProfile.from_mapping("cpu", {"thread": 2})
    with pytest.raises(ProfileError, match="not found; known: \\['cpu'"):
        HardwareProfile.load("tpu")
    with pytest.raises(ProfileError, match="calibration_images=0: must be >= 1"):
        HardwareProfile(name="cpu", calibration_images=0)
    with pytest.raises(ProfileError, match="is not available"):
        HardwareProfile(name="x", execution_provider="NoSuchExecutionProvider").check_available()


def test_latency_cache_round_trip_and_key(exported, tmp_path: Path) -> None:
    import dataclasses

    from hardware_profiles import LatencyCache

    _, val, path = exported
    cache = LatencyCache(tmp_path / "lat")
    profile = HardwareProfile(
        name="cpu", threads=1, warmup=1, repeats=5, min_time_s=0.0, max_attempts=1
    )
    key = cache.key("graph", "fp32", profile)
    assert cache.get(key) is None
    # `ok` whatever else ran meanwhile: a disturbed report is not cached
    # (test_measurement_quality.py), which is not what this test is about
    report = dataclasses.replace(measure(path, profile, val), quality="ok")
    cache.put(key, report)
    assert cache.get(key) == report
    assert cache.key("graph", "int8_dynamic", profile) != key
    assert cache.key("graph", "fp32", dataclasses.replace(profile, threads=2)) != key
    assert cache.key("other", "fp32", profile) != key
