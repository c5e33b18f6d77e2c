"""A candidate as the three graphs of a generating VLM, and greedy decoding with a KV cache.

Serving systems (and onnxruntime-genai's vision-language models) run a VLM as three parts:

- `VisionGraph`: `pixel_values` (B, T, 3, tile, tile) -> `image_features` (B, T * tokens
  per tile, D), the projected patch features of every tile (the vision tower and the
  projector). Run once per image.
- `EmbeddingGraph`: `input_ids` (B, S), `image_features`, `image_index` (B, N) ->
  `inputs_embeds` (B, S, D): the token embeddings with each `<image>` id replaced by its
  visual token (early fusion). A candidate with adapters (`is_plain` false) also returns
  `image_tokens` (B, N, D), the packed visual tokens its cross-attention reads, and
  `image_mask` (B, N), 1 where a visual token is real.
- `DecoderGraph`: `inputs_embeds` (B, S, D), `attention_mask` (B, P + S) (1 = a real
  key; P past positions, then these S), `position_ids` (B, S) and per LM layer
  `past_key_values.<i>.key` / `.value` (B, H_kv, P, d_head) -> `logits` (B, S, V) and
  `present.<i>.key` / `.value` (B, H_kv, P + S, d_head). A candidate with adapters also
  takes `image_tokens`, `image_mask` and `token_is_image` (B, P + S), 1 for visual
  tokens, which its modality masks and private image FFN read. (The ONNX exporter
  leaves out an input the candidate never reads: runtimes feed a graph by its own
  input names.)

AnyRes packing, which depends on the image's size, stays on the host: `image_index`
(`_packing.py`) says which feature row each visual token takes, so one graph serves every
image size up to the candidate's tile budget. The decoder builds its additive attention
mask itself from `attention_mask` (causal over cache slots, then the candidate's
modality masks), so the caller only tracks which slots are real.

`greedy_generate` runs the three parts through any runtime (`KVParts`: three callables on
numpy arrays), one prefill over the right-padded prompts and then one decoder step per
answer token; it returns the same tokens as `greedy_decode`, which re-runs the whole
sequence for every token (`tests/search_spaces/test_kv.py` checks both, and checks the
plain candidates against transformers' `generate`).

Static shapes (the NPU): with `KVParts.context` set (`fixed_context`: C = S + answer
tokens) the same loop gives every decoder run one of two shapes, the prefill's (past
C - 1 - S empty, masked slots) and each step's (past C - 1 slots, the oldest of the last
present dropped: an empty one while the answer fits). `device_parts` runs the three
parts on a torch model's own device and dtype, the cache staying there.

Not covered: FastV pruning (`tokens.prune_ratio` > 0) drops visual tokens after layer K
inside the prompt's forward, so its layers' caches differ in length; such a candidate
keeps the one-graph, full re-run decoding (`supports_kv` is false).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._arch import ArchConfig
from ._family import VlmModel, _bias, is_plain, modality_masks
from ._generation import EncodedVQA, batched_accuracy, pick


def supports_kv(arch: ArchConfig) -> bool:
    """Whether `arch` runs as the three graphs (everything but FastV pruning)."""
    return arch.tokens.prune_ratio == 0.0


def needs_modality_inputs(arch: ArchConfig) -> bool:
    """Whether the embedding and decoder graphs carry the adapters' extra tensors."""
    return not is_plain(arch)


class VisionGraph(nn.Module):
    def __init__(self, vlm: VlmModel) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vlm.tile_features(pixel_values)


class EmbeddingGraph(nn.Module):
    def __init__(self, vlm: VlmModel) -> None:
        super().__init__()
        self.vlm = vlm
        self.extra = needs_modality_inputs(vlm.arch)

    def forward(
        self, input_ids: torch.Tensor, image_features: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, valid = self.vlm.pack_image(image_features, image_index)
        embeds, _ = self.vlm.embed_tokens(input_ids, image)
        if not self.extra:
            return embeds
        return embeds, image, valid.to(embeds.dtype)


class _FlatCache:
    """What `LlamaAttention` asks of a cache (`update`), over flat past tensors: each
    layer's keys and values are its past ones followed by the new ones, kept as the
    layer's present. (transformers' `DynamicCache` cannot cross a traced graph's
    boundary; this object lives inside the graph only.)"""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.past = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = list(past)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        past_key, past_value = self.past[layer_idx]
        key = torch.cat([past_key, key], dim=2)
        value = torch.cat([past_value, value], dim=2)
        self.present[layer_idx] = (key, value)
        return key, value


class DecoderGraph(nn.Module):
    def __init__(self, vlm: VlmModel) -> None:
        super().__init__()
        if not supports_kv(vlm.arch):
            raise ValueError(
                "a FastV candidate (tokens.prune_ratio > 0) has no KV-cache decoder graph"
            )
        self.vlm = vlm
        self.extra = needs_modality_inputs(vlm.arch)
        self.layers = len(vlm.hf.model.language_model.layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """`rest`: (`token_is_image`, `image_tokens`, `image_mask`) for a candidate with
        adapters, then the past keys and values, layer by layer."""
        extra, flat = (rest[:3], rest[3:]) if self.extra else ((), rest)
        past = [(flat[2 * i], flat[2 * i + 1]) for i in range(self.layers)]
        cache = _FlatCache(past)
        lm = self.vlm.hf.model.language_model
        dtype = inputs_embeds.dtype
        s = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        # Query i sits in slot (total - s + i) and sees the real keys of slots up to it.
        query_slot = torch.arange(s, device=inputs_embeds.device) + (total - s)
        key_slot = torch.arange(total, device=inputs_embeds.device)
        allowed = (key_slot[None, :] <= query_slot[:, None])[None] & (
            attention_mask[:, None, :] > 0
        )
        kwargs: dict[str, Any] = {}
        masks = None
        if self.extra:
            token_is_image, image_tokens, image_mask = extra
            is_image = token_is_image > 0.5
            q_image = is_image[:, total - s :]
            kwargs = {
                "vlm_image": image_tokens,
                "vlm_image_bias": _bias(image_mask > 0.5).to(dtype)[:, None, None, :],
                # the float input sliced, not the boolean cast back: the QNN HTP could
                # not compose a bool -> float Cast under 16-bit QDQ
                "vlm_is_image": token_is_image[:, total - s :].to(dtype).unsqueeze(-1),
            }
            if self.vlm.arch.fusion.image_attention != "full":  # else the causal one
                masks = modality_masks(
                    self.vlm.arch, allowed, q_image, is_image, dtype, self.layers
                )
        bias = _bias(allowed).to(dtype)[:, None]
        rope = lm.rotary_emb(inputs_embeds, position_ids=position_ids)
        h = inputs_embeds
        for i, layer in enumerate(lm.layers):
            h = layer(
                h,
                attention_mask=bias if masks is None else masks[i],
                position_ids=position_ids,
                position_embeddings=rope,
                cache=cache,
                **kwargs,
            )
        logits = self.vlm.hf.lm_head(lm.norm(h))
        present = [t for kv in cache.present for t in kv]
        return (logits, *present)


def kv_shape(vlm: VlmModel) -> tuple[int, int, int]:
    """(layers, key-value heads, head size) of the candidate's LM cache."""
    text: Any = vlm.hf.config.text_config
    heads = int(text.num_key_value_heads or text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    return len(vlm.hf.model.language_model.layers), heads, head_dim


def kv_names(vlm: VlmModel) -> dict[str, list[str]]:
    """The graphs' input and output names (onnxruntime-genai's, where it has them)."""
    layers = kv_shape(vlm)[0]
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    extra = needs_modality_inputs(vlm.arch)
    return {
        "vision_in": ["pixel_values"],
        "vision_out": ["image_features"],
        "embedding_in": ["input_ids", "image_features", "image_index"],
        "embedding_out": ["inputs_embeds", *(["image_tokens", "image_mask"] if extra else [])],
        "decoder_in": [
            "inputs_embeds",
            "attention_mask",
            "position_ids",
            *(["token_is_image", "image_tokens", "image_mask"] if extra else []),
            *past,
        ],
        "decoder_out": ["logits", *present],
    }


# -- running them ------------------------------------------------------------------------

# Named arrays in and out of a part: numpy (between device parts also torch tensors left
# on the device, `device_parts`).
Arrays = dict[str, np.ndarray]


@dataclass
class KVParts:
    """The three parts on some runtime, each taking and returning named numpy arrays
    (names as `input_names`), plus what the loop needs to know about the cache."""

    vision: Callable[[Arrays], Arrays]
    embedding: Callable[[Arrays], Arrays]
    decoder: Callable[[Arrays], Arrays]
    layers: int
    kv_heads: int
    head_dim: int
    image_token_id: int
    extra: bool  # the adapters' tensors go in and out
    dtype: Any = np.float32
    # A static-shape decoder's fixed context C (None: dynamic shapes). Its past always
    # holds C - 1 slots: the prefill's past is C - 1 - S empty (masked) slots before the
    # S prompt slots, and each decode step drops the oldest slot of its present (an
    # empty one while the answer fits), so that every decoder run sees the same shapes.
    context: int | None = None
    # Waits for the device (CUDA) before a phase's clock is read; None: runs are synchronous.
    sync: Callable[[], None] | None = None

    @classmethod
    def of(
        cls,
        vlm: VlmModel,
        runner: Callable[[str], Callable[[Arrays], Arrays]],
        context: int | None = None,
    ) -> KVParts:
        """The parts of `vlm`, each part's callable from `runner(part)`."""
        layers, heads, head_dim = kv_shape(vlm)
        return cls(
            vision=runner("vision"),
            embedding=runner("embedding"),
            decoder=runner("decoder"),
            layers=layers,
            kv_heads=heads,
            head_dim=head_dim,
            image_token_id=vlm.image_token_id,
            extra=needs_modality_inputs(vlm.arch),
            context=context,
        )

    def empty_slots(self, prompt_length: int) -> int:
        """Empty past slots before a prompt of `prompt_length` (padded) tokens: 0 with
        dynamic shapes, C - 1 - S with a fixed context."""
        if self.context is None:
            return 0
        return self.context - 1 - prompt_length


def fixed_context(prompt_length: int, max_new_tokens: int) -> int:
    """The context C of a static-shape decoder for prompts padded to `prompt_length`
    and answers of up to `max_new_tokens` (at least 2) tokens: C = S + max_new_tokens,
    so the prefill's past has max_new_tokens - 1 >= 1 empty slots (never a zero-size
    tensor), one for each decode step to drop."""
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens}: a fixed context needs at least 2")
    return prompt_length + max_new_tokens


@dataclass
class GenerationTimes:
    """Milliseconds of one generation (batch as given), by phase.

    `vision_ms`: the vision graph; `prefill_ms`: embedding + decoder over the prompt;
    `ttft_ms`: vision + prefill + choosing the first token; `decode_ms`: each later
    token's embedding + decoder step + choice, in order."""

    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)

    @property
    def e2e_ms(self) -> float:
        return self.ttft_ms + sum(self.decode_ms)

    def phases(self) -> dict[str, float]:
        """The reported phases (`hardware_profiles.GENERATION_PHASES`); time per output
        token is (t_last - t_first) / (n - 1), the mean of the decode steps."""
        return {
            "vision_ms": self.vision_ms,
            "prefill_ms": self.prefill_ms,
            "ttft_ms": self.ttft_ms,
            "decode_ms_per_token": sum(self.decode_ms) / len(self.decode_ms),
            "e2e_ms": self.e2e_ms,
        }


def torch_parts(vlm: VlmModel, context: int | None = None) -> KVParts:
    """The three graphs as PyTorch modules on the CPU (the reference every runtime's
    parts are checked against); with `context`, driven as a fixed-context decoder."""
    names = kv_names(vlm)
    graphs = {
        "vision": VisionGraph(vlm).eval(),
        "embedding": EmbeddingGraph(vlm).eval(),
        "decoder": DecoderGraph(vlm).eval(),
    }

    def runner(part: str) -> Callable[[Arrays], Arrays]:
        module, ins, outs = graphs[part], names[f"{part}_in"], names[f"{part}_out"]

        def run(feeds: Arrays) -> Arrays:
            with torch.no_grad():
                result = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in ins))
            result = result if isinstance(result, tuple) else (result,)
            return {n: t.numpy() for n, t in zip(outs, result, strict=True)}

        return run

    return KVParts.of(vlm, runner, context)


def device_parts(vlm: VlmModel, context: int | None = None) -> KVParts:
    """The three graphs as PyTorch modules on `vlm`'s own device and in its dtype (a
    torch deployment, `hardware_profiles._torch.prepare`), keeping what passes between
    them there: numpy inputs (pixels, ids, masks, positions, the empty past) are copied
    to the device, floats in the model's dtype; tensors (image features, embeddings, the
    cache) pass as they are; only the logits come back to the host, as float32 numpy,
    for the greedy choice (a copy of every position's logits at the prefill: fine for
    this project's vocabularies). On CUDA, `sync` waits for the device."""
    param = next(vlm.parameters())
    device, dtype = param.device, param.dtype
    names = kv_names(vlm)
    graphs = {
        "vision": VisionGraph(vlm).eval(),
        "embedding": EmbeddingGraph(vlm).eval(),
        "decoder": DecoderGraph(vlm).eval(),
    }

    def to_device(value: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        tensor = torch.from_numpy(np.ascontiguousarray(value)).to(device)
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    def runner(part: str) -> Callable[[Arrays], Arrays]:
        module, ins, outs = graphs[part], names[f"{part}_in"], names[f"{part}_out"]

        def run(feeds: Arrays) -> Arrays:
            with torch.inference_mode():
                result = module(*(to_device(feeds[n]) for n in ins))
            result = result if isinstance(result, tuple) else (result,)
            return {
                n: t.float().cpu().numpy() if n == "logits" else t
                for n, t in zip(outs, result, strict=True)
            }

        return run

    parts = KVParts.of(vlm, runner, context)
    if device.type == "cuda":
        parts.sync = functools.partial(torch.cuda.synchronize, device)
    return parts


def prefill_feeds(
    parts: KVParts, embedded: Arrays, prompt_ids: np.ndarray, lens: np.ndarray
) -> Arrays:
    """The decoder's inputs for the prefill of right-padded prompts (B, S) of `lens`
    tokens, embedded by the embedding graph: every slot, the padding masked out (never
    read), no past (with a fixed context: its empty slots, masked)."""
    n, length = prompt_ids.shape
    slots = parts.empty_slots(length)
    if slots < 0:
        raise ValueError(f"prompts of {length} tokens do not fit the context of {parts.context}")
    empty = np.zeros((n, parts.kv_heads, slots, parts.head_dim), dtype=parts.dtype)
    real = (np.arange(length)[None, :] < lens[:, None]).astype(np.int64)
    feeds = {
        "inputs_embeds": embedded["inputs_embeds"],
        "attention_mask": np.concatenate([np.zeros((n, slots), np.int64), real], axis=1),
        "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (n, length)).copy(),
        **{
            f"past_key_values.{i}.{kv}": empty
            for i in range(parts.layers)
            for kv in ("key", "value")
        },
    }
    if parts.extra:
        is_image = (prompt_ids == parts.image_token_id).astype(parts.dtype)
        feeds.update(
            token_is_image=np.concatenate([np.zeros((n, slots), parts.dtype), is_image], 1),
            image_tokens=embedded["image_tokens"],
            image_mask=embedded["image_mask"],
        )
    return feeds


def greedy_generate(
    parts: KVParts,
    batch: EncodedVQA,
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
    times: GenerationTimes | None = None,
) -> np.ndarray:
    """Greedy answers with a KV cache: (N, max_new_tokens) int64 padded with -1, the
    tokens `greedy_decode` returns. With `stop_at_eos` false every row generates
    `max_new_tokens` (the forced answer length that time per output token is measured
    at). `times`, if given, receives the phases' milliseconds."""
    clock = time.perf_counter
    start = clock()
    n, length = batch.prompt_ids.shape
    if parts.context is not None and length + max_new_tokens > parts.context:
        raise ValueError(
            f"{max_new_tokens} answer tokens after prompts of {length} do not fit the"
            f" decoder's fixed context of {parts.context} (`fixed_context`)"
        )
    lens = batch.prompt_lens.astype(np.int64)
    rows = np.arange(n)
    sync = parts.sync if times is not None and parts.sync is not None else lambda: None
    features = parts.vision({"pixel_values": batch.pixel_values})["image_features"]
    sync()
    after_vision = clock()
    image_index = np.ascontiguousarray(batch.image_index)

    def embed(ids: np.ndarray) -> Arrays:
        return parts.embedding(
            {"input_ids": ids, "image_features": features, "image_index": image_index}
        )

    feeds = prefill_feeds(parts, embed(batch.prompt_ids), batch.prompt_ids, lens)
    mask = feeds["attention_mask"]
    if parts.extra:
        token_is_image = feeds["token_is_image"]
        extra = {"image_tokens": feeds["image_tokens"], "image_mask": feeds["image_mask"]}
    out = parts.decoder(feeds)
    sync()
    after_prefill = clock()
    next_ids = pick(out["logits"][rows, lens - 1], batch)
    first = clock()
    if times is not None:
        times.vision_ms = (after_vision - start) * 1000.0
        times.prefill_ms = (after_prefill - after_vision) * 1000.0
        times.ttft_ms = (first - start) * 1000.0
        times.decode_ms = []

    result = np.full((n, max_new_tokens), -1, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for step in range(max_new_tokens):
        step_start = clock()
        if step > 0:  # feed the previous step's token, at the position after the last
            ids = next_ids.astype(np.int64)[:, None]
            emb = embed(ids)
            # A fixed context keeps the last C - 1 slots as the past: the dropped oldest
            # one is empty (the length check above).
            drop = 0 if parts.context is None else mask.shape[1] - (parts.context - 1)
            assert not mask[:, :drop].any()
            mask = np.concatenate([mask[:, drop:], np.ones((n, 1), dtype=np.int64)], axis=1)
            feeds = {
                "inputs_embeds": emb["inputs_embeds"],
                "attention_mask": mask,
                "position_ids": (lens + step - 1)[:, None],
                **{
                    f"past_key_values.{i}.{kv}": out[f"present.{i}.{kv}"][:, :, drop:]
                    for i in range(parts.layers)
                    for kv in ("key", "value")
                },
            }
            if parts.extra:
                token_is_image = token_is_image[:, drop:]
                token_is_image = np.concatenate(
                    [token_is_image, (ids == parts.image_token_id).astype(parts.dtype)], axis=1
                )
                feeds.update(extra, token_is_image=token_is_image)
            out = parts.decoder(feeds)
            next_ids = pick(out["logits"][:, -1], batch)
        if stop_at_eos:
            # As `greedy_decode`, which writes into the static sequence: a row takes no
            # token once it has ended its answer or filled the sequence.
            take = ~done & (lens + step < length)
            done |= take & (next_ids == batch.eos_id)
        else:
            take = np.ones(n, dtype=bool)
        result[take, step] = next_ids[take]
        if times is not None and step > 0:
            times.decode_ms.append((clock() - step_start) * 1000.0)
        if stop_at_eos and not (~done & (lens + step + 1 < length)).any():
            break
    return result


def generate_accuracy(
    parts: KVParts, data: EncodedVQA, *, max_new_tokens: int, batch_size: int = 64
) -> float:
    """Exact-match accuracy of greedy answers generated with the KV cache over all of
    `data` (`decode_accuracy`'s, through the three graphs)."""
    return batched_accuracy(
        lambda part: greedy_generate(parts, part, max_new_tokens), data, batch_size
    )
