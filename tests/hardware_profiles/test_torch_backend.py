"""The PyTorch backend of the `gpu` profile: prepare, save, measure, evaluate.

Runs on the CPU here; the CUDA-graph tests run where a CUDA device is present (`gpu`).
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hardware_profiles._torch import TORCH_SCHEMES, capture, evaluate, measure, prepare, save
from search_spaces import FusionConfig, decode_accuracy
from tests._archs import TINY_ARCH, random_inputs, random_model, torch_inputs
from trainers import TrainerConfig, fit, model_for, torch_forward
from trainers.data import ImageCache, encode_eval

REPO = Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# A deployment host may have only torch, numpy and transformers: the backend must need
# none of these. (transformers imports pillow where it is installed, so the check is that
# the backend works where they cannot be imported, not that they stay unimported here.)
NOT_NEEDED = ("onnxruntime", "optuna", "ray", "mlflow", "hydra", "PIL", "lightning")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@dataclasses.dataclass(frozen=True)
class Profile:
    """The fields of a hardware profile that the backend reads, sized for a fast test."""

    name: str = "gpu"
    device: str = "cpu"
    batch: int = 3
    warmup: int = 2
    repeats: int = 5
    min_time_s: float = 0.0
    max_cv: float = 1.0
    max_attempts: int = 1
    disturbed_wait_s: float = 0.1
    disturbed_retries: int = 3
    eval_batch: int = 7  # not a divisor of the validation rows: exercises the last batch
    latency_source: str = "measured"


@pytest.fixture(scope="module")
def val(shapes_data):
    tok = shapes_data.tokenizer
    return encode_eval(shapes_data.val, tok, TINY_ARCH, shapes_data.text_len, ImageCache())


@pytest.fixture(scope="module")
def untrained(shapes_data):
    torch.manual_seed(0)
    return model_for(TINY_ARCH, shapes_data).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data):
    """A model that answers some validation questions (about 1 s of training): with
    accuracy 0 every accuracy comparison would pass vacuously."""
    cfg = TrainerConfig(max_epochs=15, batch_size=16, lr=3e-3, threads=1)
    return fit(TINY_ARCH, shapes_data, cfg, tmp_path_factory.mktemp("torch_backend")).model


@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
def test_prepare_casts_a_copy_to_the_scheme_dtype(untrained, scheme: str) -> None:
    original = copy.deepcopy(untrained).train()
    prepared = prepare(original, scheme, "cpu")
    assert not prepared.training
    floats = [t for t in (*prepared.parameters(), *prepared.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == DTYPES[scheme] for t in floats)
    assert not any(p.requires_grad for p in prepared.parameters())
    # The original is left as it was.
    assert original.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in original.parameters())


def test_prepare_rejects_unknown_scheme_and_device(untrained) -> None:
    with pytest.raises(ValueError, match=r"'int8'.*allowed \['fp32', 'fp16', 'bf16'\]"):
        prepare(untrained, "int8", "cpu")
    with pytest.raises(ValueError, match=r"'meta' unsupported"):
        prepare(untrained, "fp32", "meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_prepare_for_cuda_without_a_device_says_so(untrained) -> None:
    with pytest.raises(ValueError, match="sees no CUDA device"):
        prepare(untrained, "fp16", "cuda")


def test_save_bf16_is_half_the_size_of_fp32(untrained, tmp_path: Path) -> None:
    sizes = {}
    for scheme in ("fp32", "bf16"):
        path = save(prepare(untrained, scheme, "cpu"), tmp_path / "out" / f"{scheme}.pt")
        sizes[scheme] = path.stat().st_size
        state = torch.load(path, weights_only=True)
        assert state.keys() == untrained.state_dict().keys()
        assert state["hf.lm_head.weight"].dtype == DTYPES[scheme]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bf16.pt", "fp32.pt"]
    # Not exactly half: the pickled keys and headers do not shrink.
    assert 0.45 < sizes["bf16"] / sizes["fp32"] < 0.6


@pytest.mark.parametrize("scheme", ["fp32", "bf16"])
def test_measure_on_cpu_reports_eager_runs_at_the_profile_batch(untrained, val, scheme) -> None:
    prepared = prepare(untrained, scheme, "cpu")
    batches: list[int] = []
    prepared.register_forward_hook(lambda _m, args, _out: batches.append(args[2].shape[0]))
    profile = Profile()
    report = measure(prepared, profile, val.slice(0, 2))  # 2 rows repeated to batch 3
    assert report.n >= profile.repeats and report.attempts == 1
    assert 0 < report.p50_ms <= report.p95_ms
    assert report.source == "measured"
    assert "eager" in report.runtime and scheme in report.runtime and "cpu" in report.runtime
    assert report.cpu
    # every run at the profile's batch; more runs than warm-up + n where a disturbed
    # host made the measurement repeat (hardware_profiles/_report.py `time_runs`)
    assert set(batches) == {profile.batch} and len(batches) >= profile.warmup + report.n


def test_measure_rejects_a_model_on_another_device(untrained, val) -> None:
    with pytest.raises(ValueError, match=r"hardware\.gpu\.device='cuda' but the model is on cpu"):
        measure(prepare(untrained, "fp32", "cpu"), Profile(device="cuda"), val.slice(0, 1))


def test_evaluate_fp32_equals_the_trainers_torch_decode(trained, val, shapes_data) -> None:
    tokens = shapes_data.max_answer_tokens
    on_backend = evaluate(prepare(trained, "fp32", "cpu"), Profile(), val, tokens)
    reference = decode_accuracy(torch_forward(trained), val, max_new_tokens=tokens)
    assert reference > 0.1, "the trained model should answer some questions"
    assert on_backend == pytest.approx(reference)


def test_bf16_stays_close_to_fp32(trained, val, shapes_data) -> None:
    fp32, bf16 = prepare(trained, "fp32", "cpu"), prepare(trained, "bf16", "cpu")
    part = val.slice(0, 8)
    with torch.inference_mode():
        ref = fp32(*torch_inputs(part, torch.float32))
        out = bf16(*torch_inputs(part, torch.bfloat16)).float()
    rel_err = float((out - ref).abs().mean() / ref.abs().mean())
    assert rel_err <= 0.05, f"bf16 relative logit error {rel_err:.4f}"
    tokens = shapes_data.max_answer_tokens
    acc, ref_acc = (evaluate(m, Profile(), val, tokens) for m in (bf16, fp32))
    assert abs(acc - ref_acc) <= 0.15, f"bf16 accuracy {acc:.3f} vs fp32 {ref_acc:.3f}"


@pytest.mark.parametrize("scheme", ["fp16", "bf16"])
@pytest.mark.parametrize(
    "fusion",
    [
        FusionConfig(image_attention="image_no_text", share_ratio=0.5),
        FusionConfig(placement="cross_attention", xattn_layers=(0,), gating="token"),
        FusionConfig(placement="hybrid", xattn_layers=(0,), gating="tanh"),
    ],
    ids=["early", "cross_attention", "hybrid"],
)
def test_every_fusion_runs_in_the_scheme_dtype(fusion: FusionConfig, scheme: str) -> None:
    """The masks and biases a candidate builds in its forward follow the model's dtype."""
    arch = dataclasses.replace(TINY_ARCH, fusion=fusion)
    fp32 = random_model(arch)
    pixels, index, ids = random_inputs(arch)
    with torch.inference_mode():
        ref = fp32(pixels, index, ids)
        out = prepare(fp32, scheme, "cpu")(pixels.to(DTYPES[scheme]), index, ids)
    assert out.dtype == DTYPES[scheme] and out.shape == ref.shape
    rel_err = float((out.float() - ref).abs().mean() / ref.abs().mean())
    assert rel_err <= 0.05, f"{scheme} relative logit error {rel_err:.4f}"


def test_importing_the_backend_needs_no_onnxruntime() -> None:
    # A name set to None in sys.modules fails to import and importlib.util.find_spec finds
    # nothing: the subprocess sees a host without these packages.
    code = textwrap.dedent(
        f"""
        import sys
        for name in {NOT_NEEDED!r}:
            sys.modules[name] = None
        from hardware_profiles._torch import prepare
        from tests._archs import TINY_ARCH, random_inputs, random_model
        model = prepare(random_model(TINY_ARCH), "bf16", "cpu")
        pixels, index, ids = random_inputs(TINY_ARCH)
        print(tuple(model(pixels.bfloat16(), index, ids).shape))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"the torch backend failed without {NOT_NEEDED}"
        " (hardware_profiles/__init__.py must not import the ONNX Runtime backend eagerly):\n"
        + result.stderr[-2000:]
    )
    assert result.stdout.strip().startswith("(2, "), result.stdout


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
def test_measure_replays_a_cuda_graph(untrained, val, scheme: str) -> None:
    prepared = prepare(untrained, scheme, "cuda")
    report = measure(prepared, Profile(device="cuda"), val.slice(0, 2))
    assert "cuda graphs" in report.runtime and scheme in report.runtime
    assert report.n >= Profile.repeats and 0 < report.p50_ms <= report.p95_ms
    assert report.cpu == torch.cuda.get_device_name()
    eager = measure(prepared, Profile(device="cuda"), val.slice(0, 2), cuda_graphs=False)
    assert "eager" in eager.runtime and "cuda graphs" not in eager.runtime


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
def test_graph_replay_equals_eager(untrained, val, scheme: str) -> None:
    prepared = prepare(untrained, scheme, "cuda")
    dtype = DTYPES[scheme]
    static = torch_inputs(val.slice(0, 4), dtype, "cuda")
    graph, output = capture(prepared, static)
    # Replay on new values copied into the static buffers: the graph must read them.
    fresh = torch_inputs(val.slice(4, 8), dtype, "cuda")
    for buffer, value in zip(static, fresh, strict=True):
        buffer.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    with torch.inference_mode():
        eager = prepared(*fresh)
    torch.testing.assert_close(output, eager)


def test_generation_with_a_kv_cache_on_the_module_device(untrained, val) -> None:
    """What the gpu profile times and scores, run here on the CPU: the three parts of
    the prepared module, the cache kept as torch tensors, the same tokens as the
    reference parts (fp32), and phases by `measure_generation`; bf16 runs too."""
    from hardware_profiles._torch import measure_generation, measure_rerun
    from search_spaces import device_parts, greedy_generate, torch_parts

    fp32 = prepare(untrained, "fp32", "cpu")
    got = greedy_generate(device_parts(fp32), val, 4)
    np.testing.assert_array_equal(got, greedy_generate(torch_parts(untrained), val, 4))
    bf16 = greedy_generate(device_parts(prepare(untrained, "bf16", "cpu")), val, 4)
    assert bf16.shape == got.shape and (bf16[:, 0] >= 0).all()

    report = measure_generation(fp32, Profile(), val, 3)
    p = report.phases
    assert report.n == Profile().repeats and report.reference_ms is not None
    assert 0 < p["vision_ms"] < p["ttft_ms"] and p["decode_ms_per_token"] > 0
    assert p["e2e_ms"] == pytest.approx(report.p50_ms)
    assert "KV cache" in report.runtime
    rerun = measure_rerun(fp32, Profile(), val, 3)
    assert set(rerun.phases) == {"prefill_ms", "ttft_ms", "decode_ms_per_token", "e2e_ms"}
    with pytest.raises(ValueError, match="at least 2"):
        measure_generation(fp32, Profile(), val, 1)


def test_a_torch_profile_deploys_for_generation(untrained, val, shapes_data, tmp_path) -> None:
    """`deploy` on a torch profile: `kv_cache` where the candidate has the parts (its
    accuracy from that generation equals the ONNX-free reference), `one_pass` with
    `generation: false`."""
    from hardware_profiles import HardwareProfile, accuracy, deploy, latency
    from search_spaces import generate_accuracy, torch_parts

    gpu = dataclasses.replace(
        HardwareProfile.load("gpu"), device="cpu", warmup=1, repeats=3, min_time_s=0.0
    )
    dep = deploy(untrained, gpu, "fp32", tmp_path, val)
    assert dep.decoding == "kv_cache"
    expected = generate_accuracy(torch_parts(untrained), val, max_new_tokens=4, batch_size=8)
    assert accuracy(dep, val, 4).value == expected
    assert latency(dep, val, 2).phases["e2e_ms"] > 0
    one = deploy(untrained, dataclasses.replace(gpu, generation=False), "fp32", tmp_path, val)
    assert one.decoding == "one_pass" and latency(one, val, 2).phases == {}
