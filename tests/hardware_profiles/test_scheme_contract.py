"""One contract for every quantization scheme of every profile available here:
export -> quantize -> load -> run -> accuracy, on a trained candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware_profiles import (
    HardwareProfile,
    ProfileError,
    evaluate,
    export_onnx,
    known_profiles,
    quantize,
    session,
)
from trainers import TrainerConfig, fit
from trainers.data import ImageCache, encode_eval

# Stated tolerances against the fp32 model: mean relative logit error, and accuracy
# change in points on the test's validation answers.
TOLERANCE = {
    "fp32": (0.0, 0.0),
    "int8_dynamic": (0.03, 0.10),
    "int8_static": (0.08, 0.10),
    "int4_weight_only": (0.15, 0.15),
}


def _available() -> list[tuple[str, str]]:
    cases = []
    for name in known_profiles():
        profile = HardwareProfile.load(name)
        try:
            profile.check_available()
        except ProfileError:
            continue
        cases += [(name, scheme) for scheme in profile.quant_schemes]
    return cases


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data):
    from tests.conftest import TINY_ARCH

    out = tmp_path_factory.mktemp("trained")
    result = fit(TINY_ARCH, shapes_data, TrainerConfig(max_epochs=3, batch_size=16, threads=1), out)
    images = ImageCache()
    tok = shapes_data.tokenizer
    val = encode_eval(shapes_data.val, tok, TINY_ARCH, shapes_data.text_len, images)
    calibration = encode_eval(shapes_data.train[:8], tok, TINY_ARCH, shapes_data.text_len, images)
    return export_onnx(result.model, out / "fp32.onnx", val), val, calibration


@pytest.mark.parametrize(("profile_name", "scheme"), _available())
def test_scheme_contract(
    profile_name: str, scheme: str, trained, shapes_data, tmp_path: Path
) -> None:
    fp32, val, calibration = trained
    profile = HardwareProfile.load(profile_name)
    model = quantize(fp32, scheme, tmp_path / f"{scheme}.onnx", calibration)
    assert model.is_file()
    feeds = {
        "pixel_values": val.pixel_values[:8],
        "tile_mask": val.tile_mask[:8],
        "input_ids": val.prompt_ids[:8],
    }
    ref = session(fp32, profile).run(["logits"], feeds)[0]
    out = session(model, profile).run(["logits"], feeds)[0]
    max_err, max_drop = TOLERANCE[scheme]
    rel_err = float(np.abs(out - ref).mean() / np.abs(ref).mean())
    assert rel_err <= max_err, f"{scheme}: relative logit error {rel_err:.4f} > {max_err}"
    acc = evaluate(model, profile, val, shapes_data.max_answer_tokens)
    ref_acc = evaluate(fp32, profile, val, shapes_data.max_answer_tokens)
    assert abs(acc - ref_acc) <= max_drop, f"{scheme}: accuracy {acc:.3f} vs fp32 {ref_acc:.3f}"
    if scheme != "fp32":
        assert model.stat().st_size < fp32.stat().st_size


def test_static_quantization_needs_calibration(trained, tmp_path: Path) -> None:
    fp32, _, _ = trained
    with pytest.raises(ProfileError, match="calibration"):
        quantize(fp32, "int8_static", tmp_path / "x.onnx", None)
