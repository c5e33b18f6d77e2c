"""Prefill latency of a 7B LLaVA-NeXT under each visual-token-budget knob, on one GPU.

On a CUDA host (needs only torch and transformers: no vlmnas, no network, no model hub):

    pip install torch transformers
    python bench/cuda_prefill.py                            # writes bench/results/cuda_prefill.json
    python bench/cuda_prefill.py --runs 50 --out my.json
    python bench/cuda_prefill.py --layers 4                 # LM cut to 4 layers: a quick check
    python bench/cuda_prefill.py --device cpu --tiny        # smoke run on CPU: 5 runs, fp32

What it builds: `LlavaNextForConditionalGeneration` of llava-v1.6-vicuna-7b size, i.e. a CLIP
ViT-L/14-336 tower (hidden 1024, 24 layers), a 2-layer MLP projector and a Vicuna-7B LM
(hidden 4096, 32 layers, vocab 32064), with random weights in bf16, built straight on the GPU
without running transformers' weight init (weights are then filled with a cheap normal_).
Latency does not depend on the weight values, so the timings stand for the trained model's.

What it measures, per knob, at batch 1 under `torch.inference_mode`:

* vision ms: the vision tower over all AnyRes tiles of one image, the projector and the
  unpad/newline packing into the LM's image tokens (`get_image_features`);
* LM prefill ms: one forward of the language model (`model.model.language_model`, fed
  `inputs_embeds` = ~40 text tokens around the image tokens, building the KV cache) plus the
  LM head on the last position, i.e. the time to first token after the vision part.

Each is timed with `torch.cuda.synchronize()` around every run, after `--warmup` (3) warm-up
runs, over `--runs` (20) runs; the table gives p50 and p95 in ms and cv = stdev / mean. The
JSON at `--out` keeps every sample, the GPU name, the torch/transformers/CUDA versions and
the peak GPU memory per knob.

The knobs (image sizes as (height, width); the base tile is the whole image at 336x336):

* full: max AnyRes, a 672x672 image on the 2x2 grid: 5 tiles, 576 + 48 * 49 = 2928 tokens.
* tiles=3: pinpoints [[336, 672], [672, 336]], a 336x672 image: 1 base + 1x2 grid.
* tiles=2: pinpoints [[336, 336]], the 672x672 image: 1 base + 1 grid tile.
* pool2x2: the full image, each tile's 24x24 projected patch features average-pooled 2x2
  to 12x12 before packing: about a quarter of the tokens (744).
* fastv: FastV with K=2, R=50%: the LM runs its first 2 layers on the full sequence, ranks
  the image tokens by the attention the last token gave them in layer 2 and runs the other
  layers on the text plus the top half of the image tokens (original positions kept).
  This is the real two-stage computation, not just a prefill at the pruned length.
* drop25%: a quarter of the LM layers removed (a contiguous deep block before the last
  layer, as in layer-pruning work; which ones does not change the latency).

Token counts come from transformers' own AnyRes arithmetic (`get_image_features`); the
pooled packing is checked against it at pool 1. Before timing, the script checks that the
FastV code path with nothing pruned gives the plain forward's logits.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

try:  # transformers >= 5
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights

FULL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
IMAGE_TOKEN_ID = 32000
TEXT_BEFORE = 6  # "<s> USER: " in front of the image; the rest of --text-tokens follows it
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# knob -> (grid pinpoints, image (height, width), pooling stride, FastV (K, R), LM layer drop)
KNOBS: dict[str, tuple[list[list[int]], tuple[int, int], int, tuple[int, float] | None, float]] = {
    "full": (FULL_PINPOINTS, (672, 672), 1, None, 0.0),
    "tiles=3": ([[336, 672], [672, 336]], (336, 672), 1, None, 0.0),
    "tiles=2": ([[336, 336]], (672, 672), 1, None, 0.0),
    "pool2x2": (FULL_PINPOINTS, (672, 672), 2, None, 0.0),
    "fastv K=2 R=50%": (FULL_PINPOINTS, (672, 672), 1, (2, 0.5), 0.0),
    "drop25%": (FULL_PINPOINTS, (672, 672), 1, None, 0.25),
}


def make_config(tiny: bool, lm_layers: int | None) -> LlavaNextConfig:
    """llava-v1.6-vicuna-7b's shapes, or (tiny) the same token arithmetic with hidden 64."""
    if tiny:
        vision = dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        )
        text = dict(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
        )
    else:
        vision = dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        )
        text = dict(
            hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008
        )
    if lm_layers is not None:
        text["num_hidden_layers"] = lm_layers
    vision_config = CLIPVisionConfig(
        **vision, image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"
    )
    text_config = LlamaConfig(
        **text,
        num_key_value_heads=text["num_attention_heads"],
        vocab_size=32064,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    return LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_grid_pinpoints=[list(p) for p in FULL_PINPOINTS],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_token_id=IMAGE_TOKEN_ID,
        tie_word_embeddings=False,
    )


def build_model(config: LlavaNextConfig, device: str, dtype: torch.dtype, attn: str) -> nn.Module:
    """Allocate the model on `device` in `dtype` with transformers' weight init switched off,
    then fill the weights cheaply (normal_ on the device; norms 1, biases 0)."""
    with torch.device(device), no_init_weights():
        model = LlavaNextForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif "norm" in name:  # layer_norm1, pre_layrnorm, input_layernorm, norm, ...
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    return model.eval()


@contextmanager
def pinpoints(model: nn.Module, grid: list[list[int]]) -> Iterator[None]:
    """Restrict AnyRes to `grid` for the duration (the model reads them from its config)."""
    configs = {id(c): c for c in (model.config, model.model.config)}.values()
    saved = model.config.image_grid_pinpoints
    for c in configs:
        c.image_grid_pinpoints = grid
    try:
        yield
    finally:
        for c in configs:
            c.image_grid_pinpoints = saved


@contextmanager
def drop_layers(lm: nn.Module, fraction: float) -> Iterator[int]:
    """Remove round(fraction * n) decoder layers (a block ending before the last layer); fix
    `num_hidden_layers` and each `self_attn.layer_idx` (the KV cache slot). Yields the count."""
    layers, n = lm.layers, len(lm.layers)
    drop = round(n * fraction)
    dropped = set(range(n - 1 - drop, n - 1)) if drop else set()
    kept = [layer for i, layer in enumerate(layers) if i not in dropped]
    saved_types = getattr(lm.config, "layer_types", None)
    lm.layers = nn.ModuleList(kept)
    lm.config.num_hidden_layers = len(kept)
    if saved_types is not None:
        lm.config.layer_types = [t for i, t in enumerate(saved_types) if i not in dropped]
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    try:
        yield len(kept)
    finally:
        lm.layers = layers
        lm.config.num_hidden_layers = n
        if saved_types is not None:
            lm.config.layer_types = saved_types
        for i, layer in enumerate(layers):
            layer.self_attn.layer_idx = i


def random_image(config: LlavaNextConfig, size: tuple[int, int], device: str, dtype: torch.dtype):
    """Preprocessed pixels of one image of `size` (h, w): (tiles, 3, 336, 336), and image_sizes."""
    side = config.vision_config.image_size
    tiles = image_size_to_num_patches(size, config.image_grid_pinpoints, side)
    pixels = torch.randn(tiles, 3, side, side, device=device, dtype=dtype)
    return pixels, torch.tensor([list(size)], device=device)


def image_tokens(
    model: nn.Module, pixels: torch.Tensor, sizes: torch.Tensor, pool: int
) -> torch.Tensor:
    """The image's LM tokens, (n, hidden). pool 1: transformers' own `get_image_features`.
    pool > 1: the same steps, with each tile's patch grid average-pooled pool x pool after
    the projector, then packed (unpad + one newline token per row) as transformers does."""
    if pool == 1:
        return model.model.get_image_features(pixels, sizes, return_dict=True).pooler_output[0]
    config = model.config
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    features = model.model.multi_modal_projector(hidden[config.vision_feature_layer][:, 1:])
    return pack_pooled(model, features, sizes[0], pool)


def pack_pooled(
    model: nn.Module, features: torch.Tensor, size: torch.Tensor, pool: int
) -> torch.Tensor:
    """`LlavaNextModel.pack_image_features` for one image, after pool x pool average pooling of
    each tile's (side x side) grid of projected features (tiles, side * side, hidden)."""
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    tiles, _, dim = features.shape
    grid = features.view(tiles, side, side, dim).permute(0, 3, 1, 2)
    if pool > 1:
        grid = nn.functional.avg_pool2d(grid, pool)
    side = grid.shape[-1]
    base = grid[0].flatten(1).transpose(0, 1)  # (side * side, dim)
    rows, cols = get_anyres_image_grid_shape(
        size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    grid = grid[1:].view(rows, cols, dim, side, side).permute(2, 0, 3, 1, 4)
    grid = unpad_image(grid.reshape(dim, rows * side, cols * side), size)
    newline = model.model.image_newline[:, None, None].expand(dim, grid.shape[1], 1).to(grid)
    grid = torch.cat((grid, newline), dim=-1).flatten(1).transpose(0, 1)
    return torch.cat((base, grid), dim=0)


def prompt_embeds(model: nn.Module, image: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """(1, text + image tokens, hidden): random text token embeddings with the image inserted
    after the first TEXT_BEFORE of them, as `LlavaNextModel.forward` would scatter it."""
    ids = torch.randint(0, IMAGE_TOKEN_ID, (1, text_tokens), device=image.device)
    text = model.model.language_model.embed_tokens(ids)
    before, after = text[:, :TEXT_BEFORE], text[:, TEXT_BEFORE:]
    return torch.cat((before, image[None].to(text.dtype), after), dim=1)


def lm_prefill(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """Prefill: the LM over the whole prompt, filling a KV cache, then the last token's logits."""
    out = model.model.language_model(inputs_embeds=embeds, use_cache=True)
    return model.lm_head(out.last_hidden_state[:, -1:])


def fastv_prefill(
    model: nn.Module, embeds: torch.Tensor, image_start: int, image_len: int, k: int, ratio: float
) -> torch.Tensor:
    """FastV prefill: LlamaModel.forward's steps written out, with the image tokens pruned after
    layer k. The layer-k attention of the last token (averaged over heads) ranks the image
    tokens; the top (1 - ratio) of them and all text tokens go on, at their original positions."""
    lm = model.model.language_model
    config = lm.config
    length = embeds.shape[1]
    cache = DynamicCache(config=config)
    positions = torch.arange(length, device=embeds.device)[None]
    mask = create_causal_mask(
        config=config,
        inputs_embeds=embeds,
        attention_mask=None,
        cache=cache,
        position_ids=positions,
    )
    cos, sin = lm.rotary_emb(embeds, position_ids=positions)
    hidden = embeds
    for layer in lm.layers[: k - 1]:
        hidden = layer(
            hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True
        )
    # Layer k, and its last token's attention probabilities over the whole prompt.
    layer = lm.layers[k - 1]
    attn = layer.self_attn
    query = attn.q_proj(layer.input_layernorm(hidden[:, -1:]))
    query = query.view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, heads, 1, head_dim)
    query, _ = apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])
    hidden = layer(
        hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True
    )
    keys = cache.layers[k - 1].keys.repeat_interleave(attn.num_key_value_groups, dim=1)
    scores = torch.softmax((query @ keys.transpose(-1, -2)).float() * attn.scaling, dim=-1)
    image_scores = scores.mean(dim=1)[0, -1, image_start : image_start + image_len]
    keep = image_len - int(image_len * ratio)
    top = image_scores.topk(keep).indices.sort().values + image_start
    index = torch.cat(
        (
            torch.arange(image_start, device=embeds.device),
            top,
            torch.arange(image_start + image_len, length, device=embeds.device),
        )
    )
    hidden, cos, sin = hidden[:, index], cos[:, index], sin[:, index]
    # Plain causal mask over the kept tokens (no cache, no positions: those would make it
    # see a 'past' or packed sequences); the later layers' cache slots start empty.
    mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=None, cache=None)
    for layer in lm.layers[k : config.num_hidden_layers]:
        hidden = layer(
            hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True
        )
    hidden = lm.norm(hidden)
    return model.lm_head(hidden[:, -1:])


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def time_ms(fn: Callable[[], object], device: str, warmup: int, runs: int) -> dict:
    """Run fn warmup times, then time `runs` runs, each between two synchronizes."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    mean = statistics.fmean(samples)
    return {
        "p50_ms": percentile(samples, 0.5),
        "p95_ms": percentile(samples, 0.95),
        "mean_ms": mean,
        "cv": statistics.stdev(samples) / mean if len(samples) > 1 else 0.0,
        "samples_ms": [round(s, 4) for s in samples],
    }


def checks(model: nn.Module, text_tokens: int, device: str, dtype: torch.dtype) -> dict:
    """The pooled path's packing against transformers' at pool 1, and FastV's code path with
    nothing pruned against the plain forward."""
    with pinpoints(model, FULL_PINPOINTS):
        pixels, sizes = random_image(model.config, (672, 672), device, dtype)
        ours = image_tokens(model, pixels, sizes, pool=1)
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        features = model.model.multi_modal_projector(
            hidden[model.config.vision_feature_layer][:, 1:]
        )
        packed = pack_pooled(model, features, sizes[0], pool=1)
    embeds = prompt_embeds(model, ours, text_tokens)
    plain = lm_prefill(model, embeds).float()
    fastv = fastv_prefill(model, embeds, TEXT_BEFORE, ours.shape[0], k=2, ratio=0.0).float()
    scale = plain.abs().max().item()
    return {
        "pack_matches_transformers": packed.shape == ours.shape
        and bool(torch.allclose(packed, ours)),
        "fastv_unpruned_max_rel_diff": (fastv - plain).abs().max().item() / scale,
    }


def run(args: argparse.Namespace) -> dict:
    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(0)
    config = make_config(args.tiny, args.layers)
    start = time.perf_counter()
    model = build_model(config, device, dtype, args.attn)
    build_s = time.perf_counter() - start
    lm = model.model.language_model
    print(
        f"built in {build_s:.1f} s: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
        f"LM {len(lm.layers)} layers, {args.dtype}, attention {model.config._attn_implementation}"
    )
    rows, vision_cache = [], {}
    with torch.inference_mode():
        sanity = checks(model, args.text_tokens, device, dtype)
        print(f"checks: {sanity}")
        for knob, (grid, size, pool, fastv, drop) in KNOBS.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            with pinpoints(model, grid):
                pixels, sizes = random_image(model.config, size, device, dtype)
                image = image_tokens(model, pixels, sizes, pool)
                key = (str(grid), size, pool)
                if key not in vision_cache:  # fastv and drop25% share full's vision work
                    vision_fn = partial(image_tokens, model, pixels, sizes, pool)
                    vision_cache[key] = time_ms(vision_fn, device, args.warmup, args.runs)
                vision = vision_cache[key]
            embeds = prompt_embeds(model, image, args.text_tokens)
            n_image = image.shape[0]
            kept = None
            if fastv:
                k, ratio = fastv
                kept = n_image - int(n_image * ratio)
                prefill = partial(fastv_prefill, model, embeds, TEXT_BEFORE, n_image, k, ratio)
            else:
                prefill = partial(lm_prefill, model, embeds)
            with drop_layers(lm, drop) as lm_layers:
                timing = time_ms(prefill, device, args.warmup, args.runs)
            row = {
                "knob": knob,
                "pinpoints": grid,
                "image_hw": list(size),
                "tiles": pixels.shape[0],
                "image_tokens": n_image,
                "prompt_tokens": embeds.shape[1],
                "image_tokens_after_layer_k": kept,
                "lm_layers": lm_layers,
                "vision": vision,
                "lm_prefill": timing,
                "total_p50_ms": vision["p50_ms"] + timing["p50_ms"],
            }
            if device.startswith("cuda"):
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(row)
            print(f"  {knob}: {n_image} image tokens, LM {timing['p50_ms']:.2f} ms p50")
    on_cuda = device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "dtype": args.dtype,
        "attn_implementation": model.config._attn_implementation,
        "model": "tiny LLaVA-NeXT (hidden 64)" if args.tiny else "LLaVA-NeXT-Vicuna-7B, random",
        "lm_layers": len(lm.layers),
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "text_tokens": args.text_tokens,
        "batch": 1,
        "warmup": args.warmup,
        "runs": args.runs,
        "build_s": build_s,
        "checks": sanity,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['model']}, LM {result['lm_layers']} layers, {result['dtype']}, "
        f"{result['attn_implementation']}, on {result['device']} "
        f"(torch {result['torch']}, transformers {result['transformers']}); batch 1, "
        f"{result['text_tokens']} text tokens, {result['runs']} runs after {result['warmup']} warm-up",
        "",
        "| knob | tiles | image tokens | vision ms p50 | LM prefill ms p50 | p95 | cv | vision + LM ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        v, t = r["vision"], r["lm_prefill"]
        tokens = str(r["image_tokens"])
        if r["image_tokens_after_layer_k"] is not None:
            tokens += f" -> {r['image_tokens_after_layer_k']}"
        knob = r["knob"] + (f" ({r['lm_layers']} layers)" if r["knob"].startswith("drop") else "")
        lines.append(
            f"| {knob} | {r['tiles']} | {tokens} | {v['p50_ms']:.2f} | {t['p50_ms']:.2f} "
            f"| {t['p95_ms']:.2f} | {t['cv']:.3f} | {r['total_p50_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda (default), cuda:N or cpu (use --tiny there)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="hidden-64 model with the real token counts"
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="LM decoder layers (default: 32, tiny 4)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2"
    )
    parser.add_argument("--text-tokens", type=int, default=40)
    parser.add_argument(
        "--warmup", type=int, help="warm-up runs per measurement (default 3, tiny 1)"
    )
    parser.add_argument("--runs", type=int, help="timed runs per measurement (default 20, tiny 5)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cuda_prefill.json"))
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "fp32" if args.device == "cpu" else "bf16"
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.runs is None:
        args.runs = 5 if args.tiny else 20
    if args.runs < 2 or args.text_tokens <= TEXT_BEFORE or (args.layers or 2) < 2:
        parser.error(
            f"need --runs >= 2, --layers >= 2 (FastV's K) and --text-tokens > {TEXT_BEFORE}"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu --tiny for a smoke run")

    result = run(args)
    table = markdown(result)
    print()
    print(table)
    result["table"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
