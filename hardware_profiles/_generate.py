"""Generation on ONNX Runtime: a candidate as vision, embedding and KV-cache decoder graphs
(`search_spaces._kv`), each exported, quantized and run in its own session, and the time
to first token and per output token measured on them.

Export: TorchScript, as the one-graph export (`_runtime.export_onnx`), with dynamic batch,
sequence and cache axes; the cache crosses the decoder's boundary as flat tensors
(`past_key_values.<i>.key`, ..., `present.<i>.key`, ...), onnxruntime-genai's names.
For a static-shape profile (the QNN HTP) with a fixed context instead: batch 1, the
padded prompt length, and the decoder exported twice, for the prefill and for one new
token (`decoder_step`), over past slots of fixed length (`search_spaces.fixed_context`).

Quantization per graph (`GRAPH_SCHEMES`): the decoder takes the profile's scheme; the
vision graph takes the same int8 scheme where the decoder's is int8 and stays fp32 for
int4 (MatMulNBits is a weight-bandwidth saving for decode, where the vision tower runs
once); the embedding graph (a table lookup and a gather) stays fp32 on the CPU. The
NPU's w8a8 / w8a16 (QDQ) go on all four static graphs. Static int8 calibrates the
vision graph on the calibration rows' tiles and the decoder on their prompts' prefill;
w8a8 / w8a16 calibrate each graph on what it sees while the float model answers
(`calibration_feeds`).

Where the profile's latency is estimated (the HTP emulator's timing is not the
device's), `estimate_generation` adds up the cost model (`_cost.py`) per graph.

Timing (`measure_generation`): one timed run is one greedy generation at the profile's
batch with the answer length forced to `max_new_tokens`, split into phases
(`GenerationTimes`); a report's p50/p95 are of the end-to-end time, and its `phases`
hold the medians over the reported attempt's runs of `vision_ms`, `prefill_ms`,
`ttft_ms`, `decode_ms_per_token` ((t_last - t_first) / (n - 1), as vLLM defines time per
output token) and `e2e_ms`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from search_spaces import (
    Arrays,
    DecoderGraph,
    EmbeddingGraph,
    EncodedVQA,
    GenerationTimes,
    KVParts,
    VisionGraph,
    VlmModel,
    greedy_generate,
    kv_names,
    kv_shape,
    needs_modality_inputs,
    torch_parts,
)

from ._profile import HardwareProfile, ProfileError
from ._report import LatencyReport, cpu_description, time_runs
from ._runtime import OPSET, quantize, reference, session

PARTS = ("vision", "embedding", "decoder")
# A static-shape (fixed-context) deployment's fourth graph: the decoder exported a second
# time for one new token over C - 1 past slots; its "decoder" is the prefill's.
STEP = "decoder_step"
# The scheme each graph gets for a deployed scheme (module docstring); the step graph
# takes the decoder's.
GRAPH_SCHEMES: dict[str, dict[str, str]] = {
    "fp32": {"vision": "fp32", "embedding": "fp32", "decoder": "fp32"},
    "int8_dynamic": {"vision": "int8_dynamic", "embedding": "fp32", "decoder": "int8_dynamic"},
    "int8_static": {"vision": "int8_static", "embedding": "fp32", "decoder": "int8_static"},
    "int4_weight_only": {"vision": "fp32", "embedding": "fp32", "decoder": "int4_weight_only"},
    "w8a8": {"vision": "w8a8", "embedding": "w8a8", "decoder": "w8a8"},
    "w8a16": {"vision": "w8a16", "embedding": "w8a16", "decoder": "w8a16"},
}


# The NPU's schemes: QDQ on every graph, for static-shape (fixed-context) graphs only.
STATIC_SCHEMES = ("w8a8", "w8a16")


def role(part: str) -> str:
    """What graph `part` is: the step graph is a decoder (its names and scheme)."""
    return "decoder" if part == STEP else part


def graph_scheme(scheme: str, part: str) -> str:
    """The scheme graph `part` gets in a deployment of `scheme`."""
    return GRAPH_SCHEMES[scheme][role(part)]


MANIFEST = "generation.json"


@dataclass(frozen=True)
class GenerationDeployment:
    """The three ONNX files of one candidate and scheme, and what a runtime needs to
    drive them (`manifest`, written next to them as `generation.json`)."""

    scheme: str
    paths: dict[str, Path]  # part -> file
    manifest: dict[str, Any]

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.paths.values()) / 1e6

    @classmethod
    def load(cls, folder: Path) -> GenerationDeployment:
        """The deployment in `folder` (a trial's `generation_<profile>_<scheme>/` or an
        export's `generation/`), from its `generation.json`."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ProfileError(f"{folder}: no {MANIFEST}; not a vlmnas generation folder")
        manifest = json.loads(path.read_text())
        paths = {part: Path(folder) / g["file"] for part, g in manifest["graphs"].items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ProfileError(f"{folder}: {MANIFEST} names missing files {missing}")
        return cls(manifest["scheme"], paths, manifest)


def write_manifest(
    vlm: VlmModel,
    scheme: str,
    files: dict[str, str],
    folder: Path,
    context: int | None = None,
    prompt_length: int | None = None,
) -> dict[str, Any]:
    """`generation.json`: the graphs' files, schemes and tensor names, the cache's shape,
    and the host-side steps, enough to run them with no vlmnas model at hand. A
    static-shape deployment also records its fixed `context` and `prompt_length`."""
    names = kv_names(vlm)
    layers, heads, head_dim = kv_shape(vlm)
    host = (
        "AnyRes packing on the host: image_index (B, N) names the feature row of each"
        " visual token (search_spaces/_packing.py); the decoder takes a 2-D attention"
        " mask over cache slots, past then new, and greedy decoding feeds present.* back"
        " as past_key_values.* (search_spaces/_kv.py greedy_generate)"
    )
    if context is not None:
        host += (
            f"; static shapes, batch 1: input_ids right-padded to {prompt_length}; the"
            f" decoder (prefill) takes {context - 1 - (prompt_length or 0)} empty past slots"
            f" (mask 0) before the prompt, decoder_step one token over {context - 1} past"
            " slots, and each step keeps the last C - 1 slots of present.* as the next past"
        )
    manifest: dict[str, Any] = {
        "format": "vlmnas-generation/1",
        "scheme": scheme,
        "graphs": {
            part: {
                "file": files[part],
                "scheme": graph_scheme(scheme, part),
                "inputs": names[f"{role(part)}_in"],
                "outputs": names[f"{role(part)}_out"],
            }
            for part in files
        },
        "kv_cache": {"layers": layers, "kv_heads": heads, "head_dim": head_dim},
        "image_token_id": vlm.image_token_id,
        "modality_inputs": needs_modality_inputs(vlm.arch),
        "host": host,
    }
    if context is not None:
        manifest["static"] = {"context": context, "prompt_length": prompt_length, "batch": 1}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def export_parts(
    vlm: VlmModel, out_dir: Path, example: EncodedVQA, context: int | None = None
) -> dict[str, Path]:
    """The fp32 vision, embedding and decoder graphs of `vlm` under `out_dir`: with
    dynamic batch, sequence and cache axes, or, with a fixed `context` C, static shapes
    at batch 1 for `example`'s padded prompt length S and tile count, and a fourth graph,
    `decoder_step` (`STEP`): the prefill decoder takes C - 1 - S past slots and the step
    decoder C - 1 (`search_spaces.fixed_context`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = kv_names(vlm)
    layers, heads, head_dim = kv_shape(vlm)
    was_training = vlm.training
    vlm.eval()
    pixels = torch.from_numpy(example.pixel_values[:1])
    index = torch.from_numpy(np.ascontiguousarray(example.image_index[:1]))
    # Example lengths of at least 2 everywhere: a tracer may fix an axis it sees at 1.
    length = example.prompt_ids.shape[1] if context is not None else 3
    ids = torch.from_numpy(np.ascontiguousarray(example.prompt_ids[:1, :length]))
    vision, embedding = VisionGraph(vlm), EmbeddingGraph(vlm)
    with torch.no_grad():
        features = vision(pixels)
        emb = embedding(ids, features, index)
    embeds = emb[0] if isinstance(emb, tuple) else emb

    def decoder_args(seq: int, past_len: int) -> tuple[torch.Tensor, ...]:
        args: list[torch.Tensor] = [
            embeds[:, :seq],
            torch.ones(1, past_len + seq, dtype=torch.int64),
            torch.arange(past_len, past_len + seq).unsqueeze(0),
        ]
        if needs_modality_inputs(vlm.arch):
            assert isinstance(emb, tuple)
            args += [torch.zeros(1, past_len + seq), emb[1], emb[2]]
        return (*args, *[torch.zeros(1, heads, past_len, head_dim)] * (2 * layers))

    dynamic = None if context is not None else _dynamic_axes(layers)
    prefill = decoder_args(length, 2 if context is None else context - 1 - length)
    jobs = [
        ("vision", vision, (pixels,)),
        ("embedding", embedding, (ids, features, index)),
        ("decoder", DecoderGraph(vlm), prefill),
    ]
    if context is not None:
        jobs.append((STEP, DecoderGraph(vlm), decoder_args(1, context - 1)))
    paths: dict[str, Path] = {}
    for part, module, args in jobs:
        ins, outs = names[f"{role(part)}_in"], names[f"{role(part)}_out"]
        path = out_dir / f"{part}_fp32.onnx"
        tmp = path.with_suffix(".tmp.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                args,
                str(tmp),
                input_names=ins,
                output_names=outs,
                dynamic_axes=None if dynamic is None else {n: dynamic[n] for n in (*ins, *outs)},
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
        paths[part] = path
    vlm.train(was_training)
    return paths


def _dynamic_axes(layers: int) -> dict[str, dict[int, str]]:
    """The dynamic-shape graphs' free axes: batch, sequence, past and total slots."""
    axes: dict[str, dict[int, str]] = {
        "pixel_values": {0: "batch"},
        "image_features": {0: "batch"},
        "input_ids": {0: "batch", 1: "sequence"},
        "image_index": {0: "batch"},
        "inputs_embeds": {0: "batch", 1: "sequence"},
        "image_tokens": {0: "batch"},
        "image_mask": {0: "batch"},
        "attention_mask": {0: "batch", 1: "total"},
        "token_is_image": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    for i in range(layers):
        for kv in ("key", "value"):
            axes[f"past_key_values.{i}.{kv}"] = {0: "batch", 2: "past"}
            axes[f"present.{i}.{kv}"] = {0: "batch", 2: "total"}
    return axes


def deploy_generation(
    vlm: VlmModel,
    scheme: str,
    out_dir: Path,
    example: EncodedVQA,
    calibration: EncodedVQA | None = None,
    context: int | None = None,
) -> GenerationDeployment:
    """Export the graphs (static shapes with a fixed `context`: `export_parts`) and
    quantize each for `scheme` (`GRAPH_SCHEMES`)."""
    if scheme not in GRAPH_SCHEMES:
        raise ProfileError(
            f"scheme {scheme!r} has no generation graphs; allowed {list(GRAPH_SCHEMES)}"
        )
    static_scheme = scheme in STATIC_SCHEMES
    if static_scheme and context is None:
        raise ProfileError(f"scheme {scheme!r} is for static-shape (NPU) graphs: give a context")
    fp32 = export_parts(vlm, out_dir, example, context)
    calibrated = scheme == "int8_static" or static_scheme
    feeds = calibration_feeds(vlm, calibration, context) if calibrated else {}
    if calibrated and not feeds.get("decoder"):
        raise ProfileError(f"{scheme} needs calibration samples")
    paths = {
        part: quantize(
            path, graph_scheme(scheme, part), out_dir / f"{part}_{scheme}.onnx", feeds.get(part)
        )
        for part, path in fp32.items()
    }
    prompt_length = example.prompt_ids.shape[1] if context is not None else None
    manifest = write_manifest(
        vlm, scheme, {k: p.name for k, p in paths.items()}, out_dir, context, prompt_length
    )
    return GenerationDeployment(scheme, paths, manifest)


def calibration_feeds(
    vlm: VlmModel, calibration: EncodedVQA | None, context: int | None = None
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Static quantization's inputs per graph: what each graph is fed while the float
    model answers each calibration row (2 tokens with a fixed context, else 1) (`greedy_generate` on
    `torch_parts`). The vision graph gets the rows' tiles and the decoder their prompts'
    prefill; with a fixed `context`, also the embedding graph (its ids padded as the
    static runner pads them) and the step decoder the decode step."""
    if calibration is None or len(calibration) == 0:
        return {}
    parts = torch_parts(vlm, context)
    length = calibration.prompt_ids.shape[1]
    feeds: dict[str, list[dict[str, np.ndarray]]] = {p: [] for p in (*PARTS, STEP)}

    def recording(part: str, run: Callable[[Arrays], Arrays]) -> Callable[[Arrays], Arrays]:
        def record(given: Arrays) -> Arrays:
            if part == "embedding":
                padded = _pad_ids(given, length)
                feeds[part].append(padded)
                return _cut_embeds(run(padded), given["input_ids"].shape[1])
            step = part == "decoder" and given["inputs_embeds"].shape[1] == 1
            if not step:
                feeds[part].append(given)
            elif context is not None:
                feeds[STEP].append(given)
            return run(given)

        return record

    parts.vision = recording("vision", parts.vision)
    parts.decoder = recording("decoder", parts.decoder)
    if context is not None:
        parts.embedding = recording("embedding", parts.embedding)
    for i in range(len(calibration)):
        row = calibration.slice(i, i + 1)
        if context is None:  # the prompt alone, as a dynamic-shape prefill runs it
            row = dataclasses.replace(
                row, prompt_ids=np.ascontiguousarray(row.prompt_ids[:, : int(row.prompt_lens[0])])
            )
        # one answer token is the prefill alone; a second one runs the decode step,
        # which only the fixed-context step graph is calibrated on
        greedy_generate(parts, row, 1 if context is None else 2, stop_at_eos=False)
    return {part: rows for part, rows in feeds.items() if rows}


def _pad_ids(feeds: Arrays, length: int) -> Arrays:
    """The embedding graph's feeds with `input_ids` right-padded (id 0) to `length`: a
    static graph embeds a decode step's one token as a whole padded prompt."""
    ids = feeds["input_ids"]
    pad = np.zeros((ids.shape[0], length - ids.shape[1]), dtype=ids.dtype)
    return {**feeds, "input_ids": np.concatenate([ids, pad], axis=1)}


def _cut_embeds(out: Arrays, tokens: int) -> Arrays:
    """The embedding graph's outputs for the first `tokens` of its padded ids."""
    return {**out, "inputs_embeds": out["inputs_embeds"][:, :tokens]}


def ort_parts(dep: GenerationDeployment, profile: HardwareProfile) -> KVParts:
    """The deployment's graphs in ONNX Runtime sessions on `profile`. A static-shape
    deployment (`manifest["static"]`) runs at batch 1, row by row, its embedding graph
    on padded ids (`_pad_ids`), and its decoder calls go to the prefill or the step
    graph by their length."""
    static = dep.manifest.get("static")
    if profile.static_shapes and static is None:
        raise ProfileError(
            f"hardware.{profile.name} has static shapes: its deployment needs the"
            " fixed-context graphs (deploy with max_new_tokens)"
        )
    sessions = {part: session(path, profile) for part, path in dep.paths.items()}

    def runner(part: str) -> Callable[[Arrays], Arrays]:
        sess = sessions[part]
        outs = [o.name for o in sess.get_outputs()]
        wanted = [i.name for i in sess.get_inputs()]

        def run(feeds: Arrays) -> Arrays:
            result = sess.run(outs, {n: feeds[n] for n in wanted})
            return dict(zip(outs, result, strict=True))

        return run if static is None else _row_by_row(run)

    decoder = runner("decoder")
    embedding = runner("embedding")
    if static is not None:
        prefill, step, embed = decoder, runner(STEP), embedding
        length = int(static["prompt_length"])

        def decoder(feeds: Arrays) -> Arrays:
            return (step if feeds["inputs_embeds"].shape[1] == 1 else prefill)(feeds)

        def embedding(feeds: Arrays) -> Arrays:
            return _cut_embeds(embed(_pad_ids(feeds, length)), feeds["input_ids"].shape[1])

    cache = dep.manifest["kv_cache"]
    return KVParts(
        vision=runner("vision"),
        embedding=embedding,
        decoder=decoder,
        layers=int(cache["layers"]),
        kv_heads=int(cache["kv_heads"]),
        head_dim=int(cache["head_dim"]),
        image_token_id=int(dep.manifest["image_token_id"]),
        extra=bool(dep.manifest["modality_inputs"]),
        context=None if static is None else int(static["context"]),
    )


def _row_by_row(run: Callable[[Arrays], Arrays]) -> Callable[[Arrays], Arrays]:
    """`run` (a batch-1 static graph) over each row of a batch, outputs concatenated."""

    def rows(feeds: Arrays) -> Arrays:
        n = next(iter(feeds.values())).shape[0]
        if n == 1:
            return run(feeds)
        outs = [run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    return rows


def measure_generation(
    parts: KVParts, profile: HardwareProfile, example: EncodedVQA, max_new_tokens: int
) -> LatencyReport:
    """Time greedy generation of `max_new_tokens` (forced) for `example`'s rows repeated
    to the profile's batch (module docstring)."""
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: time per token needs at least 2")
    batch = example.repeat_to(profile.batch)

    def run() -> tuple[float, dict[str, float]]:
        t = GenerationTimes()
        greedy_generate(parts, batch, max_new_tokens, stop_at_eos=False, times=t)
        return t.e2e_ms, t.phases()

    return time_runs(
        run,
        profile,
        runtime=f"onnxruntime {ort.__version__} {profile.execution_provider}, 3 graphs",
        device=cpu_description(),
        reference=reference(profile),
    )


def measure_rerun(
    onnx_path: Path, profile: HardwareProfile, example: EncodedVQA, max_new_tokens: int
) -> LatencyReport:
    """Time generation the one-graph way (`greedy_decode`): every one of `max_new_tokens`
    tokens re-runs the whole static sequence. What a FastV candidate (no KV-cache graphs)
    costs, and the baseline the KV cache is measured against. The vision tower runs
    inside every forward pass, so there is no `vision_ms`; `prefill_ms` is the first
    forward pass."""
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: time per token needs at least 2")
    from ._runtime import _feeds

    sess = session(onnx_path, profile)
    feeds = _feeds(example, profile.batch)
    rows = np.arange(profile.batch)
    last = example.repeat_to(profile.batch).prompt_lens

    def run() -> tuple[float, dict[str, float]]:
        clock = time.perf_counter
        start = clock()
        logits = sess.run(["logits"], feeds)[0]
        prefill = clock()
        logits[rows, last - 1].argmax(-1)
        first = clock()
        steps = []
        for _ in range(max_new_tokens - 1):
            step = clock()
            logits = sess.run(["logits"], feeds)[0]
            logits[rows, last - 1].argmax(-1)
            steps.append((clock() - step) * 1000.0)
        e2e = (clock() - start) * 1000.0
        return e2e, {
            "prefill_ms": (prefill - start) * 1000.0,
            "ttft_ms": (first - start) * 1000.0,
            "decode_ms_per_token": sum(steps) / len(steps),
            "e2e_ms": e2e,
        }

    return time_runs(
        run,
        profile,
        runtime=f"onnxruntime {ort.__version__} {profile.execution_provider}, full re-run",
        device=cpu_description(),
        reference=reference(profile),
    )


def estimate_generation(
    dep: GenerationDeployment | Path, profile: HardwareProfile, max_new_tokens: int
) -> LatencyReport:
    """The cost model's time (`_cost.py`, each graph with the runtime's placement of its
    nodes) for a greedy answer of `max_new_tokens`, by phase. With the fixed-context
    graphs: vision; prefill = embedding + prefill decoder; each later token = embedding
    (the static graph embeds the padded ids again) + step decoder, the one-token graph
    whose matrix nodes the model finds bound by weight bandwidth (one row against every
    weight). A one-graph deployment (a FastV candidate, `dep` its ONNX file) re-runs the
    whole sequence for every token."""
    from ._runtime import estimate

    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: time per token needs at least 2")
    if isinstance(dep, GenerationDeployment):
        est = {part: estimate(path, profile) for part, path in dep.paths.items()}
        step = est[STEP] if STEP in est else est["decoder"]
        vision = est["vision"].p50_ms
        prefill = est["embedding"].p50_ms + est["decoder"].p50_ms
        per_token = est["embedding"].p50_ms + step.p50_ms
        phases = {"vision_ms": vision, "prefill_ms": prefill, "ttft_ms": vision + prefill}
        runtime = est["decoder"].runtime + f", {len(est)} graphs"
    else:
        one = estimate(dep, profile)
        per_token = prefill = one.p50_ms
        phases = {"prefill_ms": prefill, "ttft_ms": prefill}
        runtime = one.runtime + ", full re-run"
    e2e = phases["ttft_ms"] + (max_new_tokens - 1) * per_token
    phases.update(decode_ms_per_token=per_token, e2e_ms=e2e)
    # one graph's estimate (source, host, no reference) with the answer's figures
    first = est["decoder"] if isinstance(dep, GenerationDeployment) else one
    return dataclasses.replace(
        first, p50_ms=e2e, p95_ms=e2e, mean_ms=e2e, runtime=runtime, phases=phases
    )
