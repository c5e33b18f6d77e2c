"""Every value of every search-space dimension builds, trains, exports, runs in ORT and
quantizes under every CPU scheme.

Marked slow: 60 cases of an ONNX export and three quantizations each, three minutes or more
on 2 cores. The quick loop (-m 'not slow') keeps the model-level checks of
tests/search_spaces/ (fusion placements, gates, sharing), not this export of every value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from hardware_profiles import HardwareProfile, export_onnx, quantize
from search_spaces import SearchSpace
from tests._archs import onnx_feeds
from trainers import model_for, torch_forward
from trainers.data import ImageCache, encode_eval, encode_train

pytestmark = pytest.mark.slow

SPACE = SearchSpace.load("llava_next")
# A small point of the space; each case below changes one dimension of it.
BASE = {
    **SPACE.baseline,
    "vision.width": 32,
    "vision.heads": 2,
    "lm.width": 64,
    "grid_pinpoints": "1x2",
}
# What a conditional dimension needs to apply.
NEEDS = {
    "fusion.xattn_layers": {"fusion.placement": "cross_attention", "fusion.gating": "tanh"},
    "fusion.gating": {"fusion.placement": "hybrid", "fusion.xattn_layers": "all"},
    "fusion.text_only_from": {"fusion.image_attention": "text_only"},
}
CASES = [
    (key, value)
    for key, choices in {**SPACE.choices, "grid_pinpoints": tuple(SPACE.pinpoint_sets)}.items()
    for value in choices
]


def _params(key: str, value) -> dict:
    params = {**BASE, **NEEDS.get(key, {}), key: value}
    placement = params["fusion.placement"]
    if placement != "early":
        params.setdefault("fusion.xattn_layers", "all")
        params.setdefault("fusion.gating", "none")
    if placement == "cross_attention":
        for k in ("fusion.image_attention", "fusion.share_ratio", "fusion.text_only_from"):
            params.pop(k, None)
    if params.get("fusion.image_attention") == "text_only":
        params.setdefault("fusion.text_only_from", SPACE.choices["fusion.text_only_from"][0])
    return params


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_dimension_value_builds_trains_exports_and_runs(
    key, value, shapes_data, tmp_path: Path
) -> None:
    arch = SPACE.to_arch(_params(key, value))
    tok = shapes_data.tokenizer
    torch.manual_seed(0)
    model = model_for(arch, shapes_data)
    images = ImageCache()
    pixels, _, index, ids, labels = encode_train(
        shapes_data.train[:8], tok, arch, shapes_data.text_len, images
    ).tensors

    # one training step moves every parameter that the loss reaches
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.cross_entropy(
        model(pixels, index, ids).flatten(0, 1), labels.flatten(), ignore_index=-100
    )
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

    model.eval()
    val = encode_eval(shapes_data.val[:3], tok, arch, shapes_data.text_len, images)
    path = export_onnx(model, tmp_path / "m.onnx", val)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = onnx_feeds(val)
    (onnx_logits,) = sess.run(["logits"], feeds)
    expected = torch_forward(model)(val.pixel_values, val.image_index, val.prompt_ids)
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-4)

    # every CPU scheme quantizes this graph and runs it
    calibration = encode_eval(shapes_data.train[:2], tok, arch, shapes_data.text_len, images)
    for scheme in HardwareProfile.load("cpu").quant_schemes:
        quantized = quantize(path, scheme, tmp_path / f"{scheme}.onnx", calibration)
        (logits,) = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(
            ["logits"], feeds
        )
        assert logits.shape == onnx_logits.shape and np.isfinite(logits).all()
