from __future__ import annotations

import numpy as np
import torch

from search_spaces import EncodedVQA, build_model, exact_match, greedy_decode


def _inputs(arch, length=10, img_pos=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = arch.max_tiles
    ids = torch.randint(5, 30, (1, length), generator=g)
    ids[0, img_pos] = 2
    return torch.randn(1, t, 3, 32, 32, generator=g), torch.ones(1, t), ids


def test_image_splice_is_causal_and_placed_at_image_token(tiny_arch) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch, vocab_size=30, max_text_len=10, image_token_id=2).eval()
    pixels, mask, ids = _inputs(tiny_arch, img_pos=3)
    other = torch.randn_like(pixels)
    with torch.no_grad():
        a, b = model(pixels, mask, ids), model(other, mask, ids)
    # text before <image> cannot see the image; from <image> on every position does
    assert torch.allclose(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().amax(-1).min() > 1e-4


def test_padding_tiles_are_invisible(tiny_arch) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch, vocab_size=30, max_text_len=10, image_token_id=2).eval()
    pixels, mask, ids = _inputs(tiny_arch, img_pos=0)
    mask[0, 2:] = 0
    changed = pixels.clone()
    changed[0, 2:] = torch.randn_like(changed[0, 2:])
    with torch.no_grad():
        assert torch.allclose(model(pixels, mask, ids), model(changed, mask, ids), atol=1e-5)
        changed[0, 1] += 1.0  # a real tile does matter
        assert not torch.allclose(model(pixels, mask, ids), model(changed, mask, ids), atol=1e-5)


def test_greedy_decode_and_exact_match_with_scripted_model() -> None:
    # a fake "model" that answers token 7 then end token (4) whatever it is asked
    def forward(pixels, mask, ids):
        logits = np.zeros((*ids.shape, 10), dtype=np.float32)
        prev = ids
        logits[..., 7] = np.where(prev == 7, 0, 1)
        logits[..., 4] = np.where(prev == 7, 2, 0)
        return logits

    prompts = np.array([[2, 5, 3, 0, 0, 0], [2, 6, 6, 3, 0, 0]])
    batch = EncodedVQA(
        pixel_values=np.zeros((2, 1, 3, 4, 4), np.float32),
        tile_mask=np.ones((2, 1), np.float32),
        prompt_ids=prompts,
        prompt_lens=np.array([3, 4]),
        answer_ids=np.array([[7, -1], [7, 7]]),
        eos_id=4,
        pad_id=0,
    )
    out = greedy_decode(forward, batch, max_new_tokens=3)
    assert out.tolist() == [[7, 4, -1], [7, 4, -1]]
    assert exact_match(out, batch).tolist() == [True, False]
