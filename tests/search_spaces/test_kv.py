"""Greedy decoding with a KV cache through the three graphs gives the tokens of the
full re-run (`greedy_decode`), for every fusion variant; FastV has no KV graphs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from search_spaces import (
    DecoderGraph,
    EncodedVQA,
    GenerationTimes,
    fixed_context,
    greedy_decode,
    greedy_generate,
    supports_kv,
    torch_parts,
)
from search_spaces._arch import TokensConfig
from tests.search_spaces.test_fusion import arch
from trainers.data import ImageCache, encode_eval

VARIANTS = {
    "plain": {},
    "hybrid, token gates": {"placement": "hybrid", "xattn_layers": (0, 1), "gating": "token"},
    "cross-attention": {"placement": "cross_attention", "xattn_layers": (1,), "gating": "none"},
    "no shared FFN": {"share_ratio": 0.0},
    "half shared FFN, text_only": {
        "share_ratio": 0.5,
        "image_attention": "text_only",
        "text_only_from": 1,
    },
    "image_no_text": {"image_attention": "image_no_text"},
}


def model_of(fusion: dict, vocab: int):  # -> VlmModel
    from tests._archs import random_model

    m = random_model(arch(**fusion), vocab_size=vocab)
    with torch.no_grad():  # open the zero-initialised gates: the branch must count
        for name, p in m.named_parameters():
            if "alpha" in name:
                p.fill_(0.5)
    return m


def rows(m, shapes_data) -> EncodedVQA:
    return encode_eval(
        shapes_data.val, shapes_data.tokenizer, m.arch, shapes_data.text_len, ImageCache()
    )


def full_rerun(m):  # the one-graph forward on numpy
    def forward(pixels, index, ids):
        with torch.no_grad():
            return m(
                torch.from_numpy(pixels),
                torch.from_numpy(np.ascontiguousarray(index)),
                torch.from_numpy(ids),
            ).numpy()

    return forward


@pytest.mark.parametrize("fusion", VARIANTS.values(), ids=VARIANTS.keys())
def test_kv_cache_generates_the_full_reruns_tokens(fusion, shapes_data) -> None:
    m = model_of(fusion, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    assert len(set(val.prompt_lens.tolist())) > 1  # right padding of differing prompts
    expected = greedy_decode(full_rerun(m), val, 6)
    got = greedy_generate(torch_parts(m), val, 6)
    np.testing.assert_array_equal(got, expected)
    assert (got >= 0).sum() > len(val)  # more than one token per row was compared


@pytest.mark.parametrize("fusion", VARIANTS.values(), ids=VARIANTS.keys())
def test_fixed_context_generates_the_dynamic_caches_tokens(fusion, shapes_data) -> None:
    """A static-shape decoder (the NPU's): the past is always C - 1 slots, empty ones
    masked before the prompt, the oldest dropped each step; same tokens, same shapes."""
    m = model_of(fusion, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    length = val.prompt_ids.shape[1]
    context = fixed_context(length, 6)
    shapes: set[tuple[int, ...]] = set()
    fixed = torch_parts(m, context)
    decoder = fixed.decoder

    def recording(feeds):
        shapes.add(feeds["past_key_values.0.key"].shape[2:3] + feeds["attention_mask"].shape[1:])
        out = decoder(feeds)
        assert out["present.0.key"].shape[2] == feeds["attention_mask"].shape[1]
        return out

    fixed.decoder = recording
    expected = greedy_generate(torch_parts(m), val, 6, stop_at_eos=False)
    np.testing.assert_array_equal(greedy_generate(fixed, val, 6, stop_at_eos=False), expected)
    # two shapes only: the prefill's (C - 1 - S past, C - 1 mask) and each step's
    assert shapes == {(context - 1 - length, context - 1), (context - 1, context)}
    with pytest.raises(ValueError, match="fixed context"):
        greedy_generate(fixed, val, 7)
    with pytest.raises(ValueError, match="at least 2"):
        fixed_context(length, 1)


def test_a_row_that_fills_the_static_sequence_stops_as_in_the_full_rerun(shapes_data) -> None:
    m = model_of({}, len(shapes_data.tokenizer))
    val = rows(m, shapes_data)
    longest = int(val.prompt_lens.max())
    short = dataclasses.replace(
        val, prompt_ids=np.ascontiguousarray(val.prompt_ids[:, : longest + 2])
    )
    expected = greedy_decode(full_rerun(m), short, 6)
    np.testing.assert_array_equal(greedy_generate(torch_parts(m), short, 6), expected)
    assert (expected[val.prompt_lens == longest, 2:] == -1).all()


def test_forced_length_and_phase_times(shapes_data) -> None:
    m = model_of({}, len(shapes_data.tokenizer))
    one = rows(m, shapes_data).slice(0, 1)
    times = GenerationTimes()
    out = greedy_generate(torch_parts(m), one, 5, stop_at_eos=False, times=times)
    assert (out >= 0).all()  # every one of the 5 tokens, end token or not
    assert len(times.decode_ms) == 4
    assert 0 < times.vision_ms < times.ttft_ms and times.prefill_ms < times.ttft_ms
    assert times.e2e_ms == pytest.approx(times.ttft_ms + sum(times.decode_ms))


def test_fastv_has_no_kv_graphs() -> None:
    a = dataclasses.replace(arch(), tokens=TokensConfig(prune_layer=1, prune_ratio=0.5))
    assert not supports_kv(a) and supports_kv(arch())
    from tests._archs import random_model

    with pytest.raises(ValueError, match="FastV"):
        DecoderGraph(random_model(a))
