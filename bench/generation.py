"""Generation on ONNX Runtime CPU, 1 thread: the KV cache against the full re-run, and
each quantization scheme's vision, prefill and decode, side by side in one run.

    python bench/generation.py small   # BENCHMARKS §15 a, b: ~3 min
    python bench/generation.py large   # BENCHMARKS §15 c: ~10-20 min, ~3 GB of disk in /tmp
    python bench/generation.py npu     # BENCHMARKS §15 d: the emulated HTP, ~5 min

small:
  a. The Quick start's baseline candidate (untrained: latency does not depend on weight
     values) on its shapes-VQA prompt: time to first token, time per output token and
     end to end through the three KV-cache graphs (`hardware_profiles/_generate.py`)
     against re-running the one static graph per token (`greedy_decode`), at the
     study's answer length and at 16 tokens.
  b. The shipped checkpoint (`pretrained_cpu`'s trial 0) on held-out data: accuracy of
     KV-cache generation per scheme, and the full re-run's fp32 accuracy beside it.
large:
  c. A LLaVA-NeXT of about 240 M parameters with random weights (CLIP 6 x 512 on 64 px
     tiles of 8 px patches, 2 tiles: 129 visual tokens; Llama 12 x 1024, MLP 2816, a
     32,000-token vocabulary), one prompt of the shapes data: vision, prefill, decode per
     token and size for each scheme.
npu:
  d. The npu_htp profile (QNN HTP emulator; latency from the cost model) through the
     fixed-context graphs: the shipped checkpoint's accuracy per scheme on the emulator
     and its estimated phases, then a LLaVA-NeXT of about 60 M parameters with random
     weights, whose estimated decode per token is set beside its weight bytes over the
     profile's bandwidth (decode at batch 1 reads every weight once per token).

Prints Markdown tables; each figure is the p50 (end to end) or the median phase over the
timed runs, with the machine's description.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles import (  # noqa: E402
    HardwareProfile,
    coverage,
    deploy,
    latency,
    measuring,
)
from hardware_profiles._generate import (  # noqa: E402
    GRAPH_SCHEMES,
    STATIC_SCHEMES,
    deploy_generation,
    measure_generation,
    measure_rerun,
    ort_parts,
)
from hardware_profiles._report import cpu_description  # noqa: E402
from hardware_profiles._runtime import evaluate, export_onnx  # noqa: E402
from search_spaces import (  # noqa: E402
    ArchConfig,
    EncodedVQA,
    KVParts,
    LanguageModelConfig,
    VisionTowerConfig,
    build_model,
    exact_match,
    fixed_context,
    greedy_generate,
)
from studies import load_config  # noqa: E402
from studies._config import text_side  # noqa: E402
from trainers import model_for  # noqa: E402
from trainers.data import ImageCache, encode_eval, prepare_data  # noqa: E402

PROFILE = dict(name="cpu", threads=1, warmup=2, min_time_s=1.0, max_attempts=3)
NPU_SCHEMES = STATIC_SCHEMES  # static-shape graphs only
CPU_SCHEMES = [s for s in GRAPH_SCHEMES if s not in NPU_SCHEMES]


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def small() -> None:
    profile = HardwareProfile(**PROFILE, repeats=20)
    with tempfile.TemporaryDirectory() as work:
        cfg = load_config([f"study.workdir={work}", "study.name=gen"])
        data = prepare_data(cfg.data, cfg.workdir, None)
        arch = cfg.space.to_arch(cfg.space.baseline)
        images = ImageCache()
        val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
        model = model_for(arch, data, images).eval()
        one = val.slice(0, 1)
        dep = deploy_generation(model, "fp32", Path(work) / "kv", val)
        parts = ort_parts(dep, profile)
        graph = export_onnx(model, Path(work) / "one.onnx", val)
        print(
            f"a. {cpu_description()}; baseline {arch.arch_id}, prompt of "
            f"{int(one.prompt_lens[0])} tokens (static sequence {one.prompt_ids.shape[1]})\n"
        )
        print(_row(["decoding", "answer tokens", "ttft ms", "ms per output token", "e2e ms"]))
        print(_row(["---"] * 5))
        for tokens in sorted({max(2, data.max_answer_tokens), 16}):
            for name in ("KV cache (3 graphs)", "full re-run (1 graph)"):
                with measuring():
                    if name.startswith("KV"):
                        r = measure_generation(parts, profile, one, tokens)
                    else:
                        r = measure_rerun(graph, profile, one, tokens)
                p = r.phases
                print(
                    _row(
                        [
                            name,
                            tokens,
                            f"{p['ttft_ms']:.3f}",
                            f"{p['decode_ms_per_token']:.3f}",
                            f"{r.p50_ms:.3f} (cv {r.cv:.3f})",
                        ]
                    )
                )

        cfg = load_config(
            ["study=pretrained_cpu", "hardware=[cpu]", f"study.workdir={work}", "study.name=ckpt"]
        )
        data = prepare_data(cfg.data, cfg.workdir, text_side(cfg))
        arch = cfg.space.to_arch(cfg.space.baseline)
        val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
        calib = encode_eval(data.train[:16], data.tokenizer, arch, data.text_len, images)
        model = model_for(arch, data, images).eval()
        n = data.max_answer_tokens
        rerun = evaluate(export_onnx(model, Path(work) / "ckpt.onnx", val), profile, val, n)
        print(
            f"\nb. shipped checkpoint, {len(val)} held-out answers (data seed {cfg.data.seed});"
            f" full re-run fp32: {rerun:.3f}\n"
        )
        print(_row(["scheme", "accuracy (KV cache)", "change (points)", "size MB"]))
        print(_row(["---"] * 4))
        base = None
        for scheme in CPU_SCHEMES:
            dep = deploy_generation(model, scheme, Path(work) / scheme, val, calib)
            acc = _accuracy(ort_parts(dep, profile), val, n)
            base = acc if base is None else base
            print(_row([scheme, f"{acc:.3f}", f"{100 * (acc - base):+.1f}", f"{dep.size_mb:.2f}"]))


def large() -> None:
    profile = HardwareProfile(**PROFILE, repeats=3)
    arch = ArchConfig(
        vision=VisionTowerConfig(
            depth=6, width=512, heads=8, mlp_ratio=4, patch_size=8, tile_size=64
        ),
        lm=LanguageModelConfig(depth=12, width=1024, heads=16, intermediate=2816),
        grid_pinpoints=((1, 1),),
    )
    with tempfile.TemporaryDirectory() as work:
        cfg = load_config([f"study.workdir={work}", "study.name=gen"])
        data = prepare_data(cfg.data, cfg.workdir, None)
        images = ImageCache()
        val = encode_eval(data.val[:8], data.tokenizer, arch, data.text_len, images)
        calib = encode_eval(data.train[:4], data.tokenizer, arch, data.text_len, images)
        model = _random_model(arch, data.tokenizer, vocab_size=32000)
        params = sum(p.numel() for p in model.parameters())
        one = val.slice(0, 1)
        tokens = 16
        print(
            f"c. {cpu_description()}; {params / 1e6:.0f} M parameters, prompt of "
            f"{int(one.prompt_lens[0])} tokens, {tokens} answer tokens forced\n"
        )
        print(
            _row(
                [
                    "scheme",
                    "vision ms",
                    "prefill ms",
                    "ttft ms",
                    "ms per output token",
                    "e2e ms",
                    "size MB",
                    "prefill speed-up",
                    "decode speed-up",
                ]
            )
        )
        print(_row(["---"] * 9))
        base: dict[str, float] = {}
        for scheme in CPU_SCHEMES:
            dep = deploy_generation(model, scheme, Path(work) / scheme, val, calib)
            parts = ort_parts(dep, profile)
            with measuring():
                r = measure_generation(parts, profile, one, tokens)
            p = r.phases
            base = base or p
            print(
                _row(
                    [
                        scheme,
                        f"{p['vision_ms']:.1f}",
                        f"{p['prefill_ms']:.1f}",
                        f"{p['ttft_ms']:.1f}",
                        f"{p['decode_ms_per_token']:.1f}",
                        f"{r.p50_ms:.0f}",
                        f"{dep.size_mb:.0f}",
                        f"{base['prefill_ms'] / p['prefill_ms']:.2f}x",
                        f"{base['decode_ms_per_token'] / p['decode_ms_per_token']:.2f}x",
                    ]
                )
            )
            shutil.rmtree(Path(work) / scheme)  # keep the disk free for the next scheme


def _random_model(arch: ArchConfig, tok: Any, vocab_size: int) -> Any:
    """A LLaVA-NeXT of `arch` with random weights (latency does not depend on them)."""
    return build_model(
        arch,
        vocab_size=vocab_size,
        image_token_id=tok.image_id,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
        seed=0,
    ).eval()


def _accuracy(parts: KVParts, val: EncodedVQA, n: int) -> float:
    """Exact-match accuracy of KV-cache greedy answers, 64 rows at a time."""
    right = sum(
        int(
            exact_match(greedy_generate(parts, val.slice(s, s + 64), n), val.slice(s, s + 64)).sum()
        )
        for s in range(0, len(val), 64)
    )
    return right / len(val)


def npu() -> None:
    npu = HardwareProfile.load("npu_htp")
    npu.check_available()
    rows = 200  # held-out answers scored on the emulator
    with tempfile.TemporaryDirectory() as work:
        cfg = load_config(
            ["study=pretrained_cpu", "hardware=[cpu]", f"study.workdir={work}", "study.name=ckpt"]
        )
        data = prepare_data(cfg.data, cfg.workdir, text_side(cfg))
        arch = cfg.space.to_arch(cfg.space.baseline)
        images = ImageCache()
        val = encode_eval(data.val[:rows], data.tokenizer, arch, data.text_len, images)
        calib = encode_eval(data.train[:16], data.tokenizer, arch, data.text_len, images)
        model = model_for(arch, data, images).eval()
        n = data.max_answer_tokens
        tokens = max(2, n)
        context = fixed_context(val.prompt_ids.shape[1], tokens)
        fp32 = deploy_generation(model, "fp32", Path(work) / "fp32", val, context=context)
        base = _accuracy(ort_parts(fp32, HardwareProfile(**PROFILE, repeats=3)), val, n)
        print(
            f"d. {cpu_description()}; shipped checkpoint, {len(val)} held-out answers, fixed"
            f" context {context} (prompt {val.prompt_ids.shape[1]} + {tokens});"
            f" the fp32 static graphs on the CPU EP: {base:.3f}\n"
        )
        head = ["scheme", "accuracy (HTP emulator)", "change (points)", "coverage"]
        print(_row([*head, "vision ms", "prefill ms", "ttft ms", "ms per token"]))
        print(_row(["---"] * 8))
        for scheme in NPU_SCHEMES:
            dep = deploy(model, npu, scheme, Path(work) / scheme, val, calib, tokens)
            assert dep.generation is not None
            acc = _accuracy(ort_parts(dep.generation, npu), val, n)
            p = latency(dep, val, tokens).phases  # the cost model's estimate
            cells = [scheme, f"{acc:.3f}", f"{100 * (acc - base):+.1f}", f"{coverage(dep):.3f}"]
            phases = ("vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token")
            print(_row(cells + [f"{p[k]:.3f}" for k in phases]))

        arch = ArchConfig(
            vision=VisionTowerConfig(
                depth=4, width=384, heads=6, mlp_ratio=4, patch_size=8, tile_size=64
            ),
            lm=LanguageModelConfig(depth=8, width=768, heads=12, intermediate=2048),
            grid_pinpoints=((1, 1),),
        )
        cfg = load_config([f"study.workdir={work}", "study.name=gen"])
        data = prepare_data(cfg.data, cfg.workdir, None)
        val = encode_eval(data.val[:4], data.tokenizer, arch, data.text_len, images)
        model = _random_model(arch, data.tokenizer, vocab_size=len(data.tokenizer))
        params = sum(p.numel() for p in model.parameters())
        lm_weights = sum(
            p.numel()
            for name, p in model.named_parameters()
            if "language_model.layers" in name and p.dim() == 2
        )
        tokens = 16
        bandwidth = npu.cost_params["bandwidth_gbps"] * 1e9
        print(
            f"\n{params / 1e6:.0f} M parameters ({lm_weights / 1e6:.0f} M in the LM layers'"
            f" matrices), static prompt of {val.prompt_ids.shape[1]} positions, {tokens}"
            f" answer tokens; cost model {dict(npu.cost_params)}\n"
        )
        head = ["scheme", "vision ms", "prefill ms", "ttft ms", "ms per token"]
        print(_row([*head, "LM weight bytes / bandwidth ms", "e2e ms"]))
        print(_row(["---"] * 7))
        for scheme in NPU_SCHEMES:
            dep = deploy(model, npu, scheme, Path(work) / f"big_{scheme}", val, val, tokens)
            p = latency(dep, val, tokens).phases
            phases = ("vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token")
            bound = f"{lm_weights / bandwidth * 1e3:.2f}"  # 1 byte a weight
            print(_row([scheme] + [f"{p[k]:.2f}" for k in phases] + [bound, f"{p['e2e_ms']:.1f}"]))
            shutil.rmtree(Path(work) / f"big_{scheme}")


if __name__ == "__main__":
    modes = {"small": small, "large": large, "npu": npu}
    modes[sys.argv[1] if len(sys.argv) > 1 else "small"]()
