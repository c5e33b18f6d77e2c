"""Generation on ONNX Runtime through the vision, embedding and KV-cache decoder graphs:
token for token what transformers' `generate` and PyTorch give, for each quantization
scheme a graph that runs, and the time to first token and per token measured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hardware_profiles import HardwareProfile, ProfileError
from hardware_profiles._generate import (
    GRAPH_SCHEMES,
    PARTS,
    STATIC_SCHEMES,
    STEP,
    deploy_generation,
    measure_generation,
    measure_rerun,
    ort_parts,
)
from hardware_profiles._runtime import export_onnx
from search_spaces import (
    EncodedVQA,
    SearchSpace,
    cut_down,
    fixed_context,
    greedy_generate,
    inspect_backbone,
    prefill_feeds,
    torch_parts,
)
from tests._archs import TINY_ARCH
from tests._checkpoints import tiny_llava_checkpoint
from tests.search_spaces.test_kv import VARIANTS, model_of, rows
from tests.search_spaces.test_pretrained import SIZES, _inputs
from trainers import TrainerConfig, fit
from trainers.data import ImageCache, conversation_messages, encode_eval, save_candidate

NPU_SCHEMES = STATIC_SCHEMES  # static-shape graphs only
CPU = HardwareProfile(name="cpu", threads=1, warmup=1, repeats=5, min_time_s=0.0, max_attempts=1)


@pytest.mark.parametrize("fusion", VARIANTS.values(), ids=VARIANTS.keys())
def test_onnx_graphs_generate_the_torch_tokens(fusion, shapes_data, tmp_path: Path) -> None:
    m = model_of(fusion, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    dep = deploy_generation(m, "fp32", tmp_path, val)
    got = greedy_generate(ort_parts(dep, CPU), val, 6)
    np.testing.assert_array_equal(got, greedy_generate(torch_parts(m), val, 6))


@pytest.mark.parametrize("variant", ["plain", "cross-attention"])
@pytest.mark.parametrize("scheme", sorted(set(GRAPH_SCHEMES) - set(NPU_SCHEMES)))
def test_each_scheme_quantizes_its_graphs_and_generates(
    scheme: str, variant: str, shapes_data, tmp_path: Path
) -> None:
    # cross-attention with the full mask and a shared FFN: the exported decoder does
    # not read `token_is_image`, and drops it (calibration must not feed it)
    m = model_of(VARIANTS[variant], len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    dep = deploy_generation(m, scheme, tmp_path, val, calibration=val.slice(0, 4))
    assert set(dep.paths) == set(PARTS)
    ops = {p: {n.op_type for n in onnx.load(str(dep.paths[p])).graph.node} for p in PARTS}
    quantized = {"int8_dynamic": "MatMulInteger", "int8_static": "QuantizeLinear"}
    if scheme == "int4_weight_only":
        assert "MatMulNBits" in ops["decoder"] and "MatMulNBits" not in ops["vision"]
    elif scheme in quantized:
        assert {"decoder", "vision"} <= {p for p in PARTS if quantized[scheme] in ops[p]}
    else:
        assert not any("MatMulInteger" in o or "QuantizeLinear" in o for o in ops.values())
    out = greedy_generate(ort_parts(dep, CPU), val, 6)
    assert ((out >= 0).sum(1) >= 1).all()  # every row answered something
    assert dep.size_mb > 0


@pytest.mark.parametrize("variant", ["plain", "hybrid, token gates", "half shared FFN, text_only"])
def test_fixed_context_graphs_generate_the_torch_tokens(
    variant: str, shapes_data, tmp_path: Path
) -> None:
    """The NPU's static shapes, run on the CPU: vision, embedding, prefill and step
    graphs at batch 1 with fixed shapes give the dynamic graphs' tokens; every tensor of
    every graph has a fixed shape; the manifest says how to drive them."""
    m = model_of(VARIANTS[variant], len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    length = val.prompt_ids.shape[1]
    context = fixed_context(length, 6)
    dep = deploy_generation(m, "fp32", tmp_path, val, context=context)
    assert set(dep.paths) == {*PARTS, STEP}
    for path in dep.paths.values():
        graph = onnx.load(str(path)).graph
        for value in (*graph.input, *graph.output):
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), (path.name, value.name)
    assert dep.manifest["static"] == {"context": context, "prompt_length": length, "batch": 1}
    parts = ort_parts(dep, CPU)
    assert parts.context == context
    expected = greedy_generate(torch_parts(m), val, 6)
    np.testing.assert_array_equal(greedy_generate(parts, val, 6), expected)
    # a static profile refuses dynamic graphs
    static = dataclasses.replace(CPU, static_shapes=True)
    dynamic = deploy_generation(m, "fp32", tmp_path / "dynamic", val)
    with pytest.raises(ProfileError, match="static shapes"):
        ort_parts(dynamic, static)
    with pytest.raises(ProfileError, match="give a context"):
        deploy_generation(m, "w8a16", tmp_path / "no-context", val, calibration=val)


@pytest.mark.parametrize("scheme", NPU_SCHEMES)
def test_npu_schemes_quantize_every_fixed_context_graph(
    scheme: str, shapes_data, tmp_path: Path
) -> None:
    """w8a8 / w8a16: QDQ on all four graphs, calibrated on what each graph sees while
    the float model answers (the step graph on decode steps); run here on the CPU EP.
    The last prompt position's logits stay close to the float model's (cosine): this
    random model's logits spread only ~0.1, so w8a8's rounding flips many of its argmax
    tokens, w8a16 keeps most."""
    m = model_of({}, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    context = fixed_context(val.prompt_ids.shape[1], 3)
    dep = deploy_generation(m, scheme, tmp_path, val, val.slice(0, 8), context)
    for part, path in dep.paths.items():
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "QuantizeLinear" in ops, part
        assert dep.manifest["graphs"][part]["scheme"] == scheme
    ours, float_ = ort_parts(dep, CPU), torch_parts(m, context)
    cos = [
        _cosine(_last_logits(ours, val.slice(i, i + 1)), _last_logits(float_, val.slice(i, i + 1)))
        for i in range(8)
    ]
    assert min(cos) >= {"w8a8": 0.85, "w8a16": 0.99}[scheme], cos
    if scheme == "w8a16":
        got = greedy_generate(ours, val, 3)
        assert (got[:, 0] == greedy_generate(float_, val, 3)[:, 0]).mean() >= 0.8


def _last_logits(parts, row: EncodedVQA) -> np.ndarray:
    """The prefill's logits at the last prompt token of a one-row batch."""
    features = parts.vision({"pixel_values": row.pixel_values})["image_features"]
    embedded = parts.embedding(
        {
            "input_ids": row.prompt_ids,
            "image_features": features,
            "image_index": np.ascontiguousarray(row.image_index),
        }
    )
    lens = row.prompt_lens.astype(np.int64)
    out = parts.decoder(prefill_feeds(parts, embedded, row.prompt_ids, lens))
    return out["logits"][0, int(lens[0]) - 1]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_plain_candidate_generates_what_transformers_generates(shapes_data, tmp_path) -> None:
    """From scratch: trained, saved as a transformers folder, generated by transformers'
    `generate` from the processor's inputs, and by vlmnas from its own encoding."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    result = fit(TINY_ARCH, shapes_data, TrainerConfig(max_epochs=2, threads=1), tmp_path / "t")
    folder = save_candidate(result.model, shapes_data.tokenizer, tmp_path / "hf")
    records = shapes_data.val[:6]
    val = encode_eval(records, shapes_data.tokenizer, TINY_ARCH, shapes_data.text_len, ImageCache())
    parts = ort_parts(deploy_generation(result.model, "fp32", tmp_path / "onnx", val), CPU)
    processor = AutoProcessor.from_pretrained(folder)
    hf = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    eos = shapes_data.tokenizer.eos_id
    for i, record in enumerate(records):
        row = i * len(record.turns)  # the record's first question
        text = processor.apply_chat_template(
            conversation_messages(record)[:1], add_generation_prompt=True
        )
        inputs = processor(
            images=Image.open(record.image).convert("RGB"), text=text, return_tensors="pt"
        )
        assert (
            inputs["input_ids"][0].tolist() == val.prompt_ids[row, : val.prompt_lens[row]].tolist()
        )
        with torch.no_grad():
            theirs = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0]
        theirs = _until(theirs[inputs["input_ids"].shape[1] :].tolist(), eos)
        ours = _until(greedy_generate(parts, val.slice(row, row + 1), 6)[0].tolist(), eos)
        assert ours == theirs


def test_pretrained_checkpoint_generates_what_transformers_generates(tmp_path: Path) -> None:
    """A llava-hf checkpoint (grouped-query attention: 4 query, 2 key-value heads) as
    trial 0 cuts it: the three graphs against `generate` on the checkpoint itself."""
    from transformers import LlavaNextForConditionalGeneration

    folder = tiny_llava_checkpoint(tmp_path / "ckpt", lm_layers=4, seed=1)
    space = SearchSpace.load("llava_next_pretrained").bind(inspect_backbone(folder))
    arch = space.to_arch(space.baseline)
    model = cut_down(space.backbone, arch).eval()
    (pixels, index, ids), n = _inputs(arch, model.image_token_id)
    lens = np.asarray([k + 3 for k in n], dtype=np.int64)
    room = np.zeros((len(lens), 5), np.int64)  # the static sequence holds 5 more tokens
    eos = int(model.hf.config.text_config.eos_token_id)
    batch = EncodedVQA(
        pixel_values=pixels.numpy(),
        tile_mask=np.ones(pixels.shape[:2], np.float32),
        image_index=index.numpy(),
        prompt_ids=np.concatenate([ids.numpy(), room], axis=1),
        prompt_lens=lens,
        answer_ids=np.full((len(lens), 1), -1, np.int64),
        eos_id=eos,
        pad_id=0,
        image_id=model.image_token_id,
    )
    parts = ort_parts(deploy_generation(model, "fp32", tmp_path / "onnx", batch), CPU)
    ours = greedy_generate(parts, batch, 5)
    hf = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    from search_spaces import tiles_of

    for i, (size, k) in enumerate(zip(SIZES, lens, strict=True)):
        with torch.no_grad():
            theirs = hf.generate(
                input_ids=ids[i : i + 1, :k],
                pixel_values=pixels[i : i + 1, : tiles_of(size, arch)],
                image_sizes=torch.tensor([size]),
                max_new_tokens=5,
                do_sample=False,
            )[0, k:]
        assert _until(ours[i].tolist(), eos) == _until(theirs.tolist(), eos), i


def test_generation_is_timed_by_phase(shapes_data, tmp_path: Path) -> None:
    m = model_of({}, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    dep = deploy_generation(m, "fp32", tmp_path, val)
    report = measure_generation(ort_parts(dep, CPU), CPU, val.slice(0, 1), 4)
    p = report.phases
    assert report.n == CPU.repeats and report.reference_ms is not None
    assert 0 < p["vision_ms"] < p["ttft_ms"] and 0 < p["prefill_ms"] < p["ttft_ms"]
    assert p["decode_ms_per_token"] > 0
    assert p["e2e_ms"] == pytest.approx(report.p50_ms)
    # the one-graph way re-runs the whole sequence for each token
    rerun = measure_rerun(export_onnx(m, tmp_path / "one.onnx", val), CPU, val.slice(0, 1), 4)
    assert set(rerun.phases) == {"prefill_ms", "ttft_ms", "decode_ms_per_token", "e2e_ms"}
    with pytest.raises(ValueError, match="at least 2"):
        measure_generation(ort_parts(dep, CPU), CPU, val.slice(0, 1), 1)


def _until(tokens: list[int], eos: int) -> list[int]:
    """The tokens up to and including the first end token, -1 padding dropped."""
    tokens = [t for t in tokens if t >= 0]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def test_deploy_on_a_generating_profile_times_and_scores_whole_answers(
    shapes_data, tmp_path: Path
) -> None:
    """What a cpu trial does: `deploy` writes the three graphs with their manifest,
    `latency` is a whole greedy answer by phase, `accuracy` comes from the graphs'
    generation and equals PyTorch's."""
    from hardware_profiles import GenerationDeployment, accuracy, deploy, latency
    from search_spaces import generate_accuracy

    m = model_of({}, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    dep = deploy(m, CPU, "fp32", tmp_path, val)
    assert dep.decoding == "kv_cache" and dep.generation is not None
    files = {part: graph["file"] for part, graph in dep.generation.manifest["graphs"].items()}
    assert set(files) == set(PARTS)
    assert {p.name for p in dep.path.iterdir()} >= {*files.values(), "generation.json"}
    assert GenerationDeployment.load(dep.path).manifest == dep.generation.manifest
    assert dep.size_mb == pytest.approx(
        sum(p.stat().st_size for p in dep.path.glob("*.onnx")) / 1e6, rel=0.01
    )

    report = latency(dep, val, 3)
    assert report.phases["e2e_ms"] == pytest.approx(report.p50_ms)
    assert report.phases["ttft_ms"] < report.p50_ms

    got = accuracy(dep, val, 6)
    assert got.n == len(val)
    assert got.value == generate_accuracy(torch_parts(m), val, max_new_tokens=6, batch_size=8)

    with pytest.raises(ProfileError, match="no generation.json"):
        GenerationDeployment.load(tmp_path)
