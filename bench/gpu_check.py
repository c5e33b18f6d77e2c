"""Latency under the PyTorch `gpu` backend: eager against CUDA-graph replay, per dtype.

    PYTHONPATH=. python bench/gpu_check.py                       # on a CUDA host
    PYTHONPATH=. python bench/gpu_check.py --device cpu          # smoke run here, eager only
    PYTHONPATH=. python bench/gpu_check.py --batch 8 --out gpu.json

For three untrained candidates (the search space's smallest corner, its LLaVA-NeXT
baseline and its largest corner) and each of fp32, fp16 and bf16, times one forward pass
with `hardware_profiles._torch.measure`, eager and (on CUDA) graph-replayed, and prints a
Markdown table with the machine it ran on. Inputs are synthetic, in the shapes
`trainers.data.encode_eval` gives the shapes-VQA data (random pixels and token ids):
latency does not depend on their values, and the script needs only torch, numpy,
transformers and pyyaml. It checks that nothing heavier (onnxruntime, optuna, ray,
mlflow, hydra, lightning) was imported on the way. (Pillow is not in that list:
transformers imports it where it is installed, though the backend does not need it;
tests/hardware_profiles/test_torch_backend.py runs the backend where none of them can be
imported.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardware_profiles._report import cpu_description
from hardware_profiles._torch import TORCH_SCHEMES, measure, prepare
from search_spaces import (
    ArchConfig,
    EncodedVQA,
    build_model,
    image_index,
    max_image_tokens,
    pad_indices,
    tiles_of,
)

# A deployment host may have none of these; the PyTorch backend must not need them.
NOT_NEEDED = ("onnxruntime", "optuna", "ray", "mlflow", "hydra", "lightning")

# Text side of the shapes-VQA data set (3000 training images): 46 words, conversations of
# up to 43 tokens. Special ids as `trainers.data.WordTokenizer` numbers them.
VOCAB, TEXT_LEN = 46, 43
PAD_ID, IMAGE_ID, SEP_ID, EOS_ID, FIRST_WORD_ID = 0, 2, 3, 4, 5

CANDIDATES = {
    # The space's smallest corner (conf/search_space/llava_next.yaml): 2 tiles of 4 pooled
    # visual tokens, a linear projector.
    "small": {
        "vision": {"depth": 2, "width": 32, "heads": 2, "pooling": "avg2x2"},
        "lm": {"depth": 2, "width": 64, "heads": 4},
        "grid_pinpoints": [[1, 1]],
        "projector_depth": 1,
    },
    # The space's baseline: LLaVA-NeXT early fusion, 5 tiles of 16 visual tokens.
    "baseline": {
        "vision": {"depth": 2, "width": 64, "heads": 4, "feature_layer": "second_last"},
        "lm": {"depth": 2, "width": 96, "heads": 4},
        "grid_pinpoints": [[1, 1], [1, 2], [2, 1], [2, 2]],
        "projector_depth": 2,
    },
    # The largest corner: the widest and deepest LM, hybrid fusion with a token-gated
    # cross-attention block in front of every LM layer.
    "large": {
        "vision": {"depth": 2, "width": 64, "heads": 4},
        "lm": {"depth": 3, "width": 128, "heads": 4},
        "grid_pinpoints": [[1, 1], [1, 2], [2, 1], [2, 2]],
        "projector_depth": 2,
        "fusion": {"placement": "hybrid", "xattn_layers": [0, 1, 2], "gating": "token"},
    },
}


@dataclass(frozen=True)
class Profile:
    """The fields of the `gpu` hardware profile that `measure` reads."""

    name: str
    device: str
    batch: int
    warmup: int
    repeats: int
    min_time_s: float
    max_cv: float
    max_attempts: int
    eval_batch: int = 64
    latency_source: str = "measured"


def synthetic_example(arch: ArchConfig, rows: int, rng: np.random.Generator) -> EncodedVQA:
    """`rows` questions shaped like `encode_eval`'s: each image fills one grid of
    `arch.grid_pinpoints` exactly (its tiles real, zero padding tiles after them), its
    `image_index` padded to `max_image_tokens`; the prompt is `<image>` (expanded to one id
    per visual token for early fusion), the question's words, then the separator,
    right-padded to the candidate's sequence length (`trainers.data.sequence_len`)."""
    tiles, side = arch.max_tiles, arch.vision.tile_size
    grids = [arch.grid_pinpoints[i] for i in rng.integers(len(arch.grid_pinpoints), size=rows)]
    sizes = [(r * side, c * side) for r, c in grids]
    real = np.asarray([tiles_of(hw, arch) for hw in sizes])
    tile_mask = (np.arange(tiles) < real[:, None]).astype(np.float32)
    pixels = rng.uniform(-1.0, 1.0, (rows, tiles, 3, side, side)).astype(np.float32)
    pixels *= tile_mask[:, :, None, None, None]
    indices = [image_index(hw, arch) for hw in sizes]
    early = arch.fusion.early
    length = TEXT_LEN - 1 + max_image_tokens(arch) if early else TEXT_LEN
    text_lens = rng.integers(8, TEXT_LEN - 2, size=rows)  # with <image> and the separator
    prompt_ids = np.full((rows, length), PAD_ID, dtype=np.int64)
    prompt_lens = np.zeros(rows, dtype=np.int64)
    for row, (text_len, index) in enumerate(zip(text_lens, indices, strict=True)):
        n_image = len(index) if early else 1
        words = rng.integers(FIRST_WORD_ID, VOCAB, size=text_len - 2)
        prompt = [IMAGE_ID] * n_image + words.tolist() + [SEP_ID]
        prompt_ids[row, : len(prompt)] = prompt
        prompt_lens[row] = len(prompt)
    return EncodedVQA(
        pixel_values=pixels,
        tile_mask=tile_mask,
        image_index=pad_indices(indices, arch, max_image_tokens(arch)),
        prompt_ids=prompt_ids,
        prompt_lens=prompt_lens,
        answer_ids=rng.integers(FIRST_WORD_ID, VOCAB, size=(rows, 1)),
        eos_id=EOS_ID,
        pad_id=PAD_ID,
    )


def machine(device: str) -> dict[str, str]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_description(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": f"{props.total_memory / 2**30:.0f}",
            "cuda": str(torch.version.cuda),
            "cudnn": str(torch.backends.cudnn.version()),
            "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    return info


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    cuda = args.device == "cuda"
    profile = Profile(
        name="gpu",
        device=args.device,
        batch=args.batch,
        warmup=args.warmup,
        repeats=args.repeats,
        min_time_s=args.min_time_s,
        max_cv=0.05,
        max_attempts=3 if cuda else 1,
    )
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for name, config in CANDIDATES.items():
        arch = ArchConfig.from_dict(config)
        model = build_model(
            arch,
            vocab_size=VOCAB,
            image_token_id=IMAGE_ID,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
            seed=0,
        )
        example = synthetic_example(arch, args.batch, rng)
        for scheme in TORCH_SCHEMES:
            prepared = prepare(model, scheme, args.device)
            eager = measure(prepared, profile, example, cuda_graphs=False)
            graph = measure(prepared, profile, example, cuda_graphs=True) if cuda else None
            rows.append(
                {
                    "candidate": name,
                    "arch_id": arch.arch_id,
                    "params": sum(p.numel() for p in model.parameters()),
                    "scheme": scheme,
                    "batch": args.batch,
                    "eager": eager.as_dict(),
                    "graph": graph.as_dict() if graph else None,
                    "speedup": eager.p50_ms / graph.p50_ms if graph else None,
                }
            )
            print(f"  {name} {scheme}: {eager.runtime}", file=sys.stderr)
            del prepared
            if cuda:
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def ms(report: dict[str, Any] | None, key: str) -> str:
        return f"{report[key]:.3f}" if report else "-"

    lines = [
        "| candidate | params | scheme | eager p50 ms | eager p95 ms | graph p50 ms "
        "| graph p95 ms | speedup |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        graph = r["graph"]
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        if graph and "cuda graphs" not in graph["runtime"]:
            speedup += " (capture failed)"
        lines.append(
            f"| {r['candidate']} | {r['params']:,} | {r['scheme']} "
            f"| {ms(r['eager'], 'p50_ms')} | {ms(r['eager'], 'p95_ms')} "
            f"| {ms(graph, 'p50_ms')} | {ms(graph, 'p95_ms')} | {speedup} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=1, help="rows per forward pass")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--warmup", type=int, help="untimed runs per attempt")
    parser.add_argument("--repeats", type=int, help="timed runs per attempt, at least")
    parser.add_argument("--min-time-s", type=float, help="timed seconds per attempt, at least")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch={args.batch}: must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: torch {torch.__version__} sees no CUDA device (--device cpu runs"
            " the smoke check)"
        )
    cuda = args.device == "cuda"
    # CPU defaults make a smoke run of a few seconds; the CUDA ones a measurement.
    for key, on_cuda, on_cpu in (("warmup", 20, 2), ("repeats", 100, 10), ("min_time_s", 1.0, 0)):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine(args.device)
    print("## PyTorch `gpu` backend: eager vs CUDA graphs\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(
        f"- batch {args.batch}; warmup {args.warmup}, >= {args.repeats} runs and"
        f" >= {args.min_time_s} s per attempt; {torch.get_num_threads()} CPU threads"
    )
    print()
    rows = run(args)
    print(table(rows))
    imported = [name for name in NOT_NEEDED if sys.modules.get(name) is not None]
    if imported:
        print(f"\nWARNING: imported {imported}, which a deployment host may lack")
    else:
        print(f"\nimport check: none of {list(NOT_NEEDED)} was imported")
    if args.out:
        payload = {
            "machine": info,
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "not_needed_but_imported": imported,
            "results": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, args.out)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
