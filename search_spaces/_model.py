"""The LLaVA-NeXT-style model family: ViT tower -> MLP projector -> causal decoder LM.

Shapes (B batch, T tiles incl. global view, P patches per tile, L text tokens,
N = T * P image tokens, S = L - 1 + N spliced sequence, D LM width, V vocabulary):

- `pixel_values`: (B, T, 3, tile, tile) float32, from `anyres_tiles`
- `tile_mask`: (B, T) float32, 1 for real tiles, 0 for padding tiles
- `input_ids`: (B, L) int64, exactly one `<image>` token per row, right-padded
- returns `logits`: (B, L, V), one row per *text* position: the logits at the
  `<image>` position are those of the last real image token, so `logits[:, t]` always
  predicts `input_ids[:, t + 1]` and decoding never needs to know N.

Attention is written out (matmul + softmax) rather than `scaled_dot_product_attention`
so the ONNX graph is plain MatMul/Softmax that every execution provider and ORT's
quantizers handle.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._arch import ArchConfig

# Additive mask value: large enough to zero a softmax weight, small enough for fp16.
_MASKED = -1.0e4


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x`: (B, S, D); `bias`: additive (B, 1, S, S) or None."""
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(d // self.heads))
        if bias is not None:
            scores = scores + bias
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    """ViT applied to each tile independently: (B*T, 3, t, t) -> (B*T, P, Dv)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        cfg = arch.vision
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.patches_per_tile, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(tiles).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class LlavaNextModel(nn.Module):
    """Early fusion (LLaVA): projected image tokens replace `<image>` in the LM sequence."""

    def __init__(
        self, arch: ArchConfig, *, vocab_size: int, max_text_len: int, image_token_id: int
    ) -> None:
        super().__init__()
        self.arch = arch
        self.image_token_id = image_token_id
        self.max_text_len = max_text_len
        d = arch.lm.width
        self.vision = VisionTower(arch)
        if arch.projector_depth == 2:
            self.projector: nn.Module = nn.Sequential(
                nn.Linear(arch.vision.width, d), nn.GELU(), nn.Linear(d, d)
            )
        else:
            self.projector = nn.Linear(arch.vision.width, d)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos_embed = nn.Parameter(
            torch.randn(1, max_text_len - 1 + arch.image_tokens, d) * 0.02
        )
        self.blocks = nn.ModuleList(
            Block(d, arch.lm.heads, arch.lm.mlp_ratio) for _ in range(arch.lm.depth)
        )
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)
        # GPT-2 init: with nn.Embedding's N(0, 1) default, text residuals start ~10x
        # larger than anything attention adds, and the image signal is drowned out.
        nn.init.normal_(self.embed.weight, std=0.02)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, t, t) -> image tokens in LM width (B, T*P, D)."""
        b, t = pixel_values.shape[:2]
        feats = self.vision(pixel_values.flatten(0, 1))
        return self.projector(feats).reshape(b, t * feats.shape[1], -1)

    def forward(
        self, pixel_values: torch.Tensor, tile_mask: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        b, length = input_ids.shape
        if length != self.max_text_len:
            raise ValueError(f"input_ids has {length} tokens, model built for {self.max_text_len}")
        image = self.encode_image(pixel_values)
        n = image.shape[1]
        image_valid = tile_mask.repeat_interleave(n // tile_mask.shape[1], dim=1)
        text = self.embed(input_ids)

        # Splice: output position p takes image token p - img_pos while that lies in
        # [0, N), else the text token it displaced (gather keeps the graph static).
        img_pos = (input_ids == self.image_token_id).to(torch.int64).argmax(dim=1, keepdim=True)
        positions = torch.arange(length - 1 + n, device=input_ids.device).unsqueeze(0)
        rel = positions - img_pos
        in_image = (rel >= 0) & (rel < n)
        text_src = torch.where(rel < 0, positions, positions - n + 1)
        src = torch.where(in_image, rel, n + text_src)
        tokens = torch.cat([image, text], dim=1)
        x = torch.gather(tokens, 1, src.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        valid = torch.gather(torch.cat([image_valid, torch.ones_like(text[..., 0])], 1), 1, src)
        x = x + self.pos_embed

        s = x.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        allowed = causal.unsqueeze(0) & (valid > 0.5).unsqueeze(1)
        bias = torch.where(allowed, 0.0, _MASKED).to(x.dtype).unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias)

        # Back to text coordinates: text position i sits at i before the image and at
        # i + N - 1 after it; the <image> slot maps to the last *real* image token
        # (padding tiles come last and must not leak into any output).
        text_pos = torch.arange(length, device=input_ids.device).unsqueeze(0)
        last_real = img_pos + image_valid.sum(1, keepdim=True).to(torch.int64) - 1
        out_pos = torch.where(
            text_pos < img_pos,
            text_pos,
            torch.where(text_pos == img_pos, last_real, text_pos + n - 1),
        )
        x = torch.gather(x, 1, out_pos.unsqueeze(-1).expand(b, -1, x.shape[-1]))
        return self.lm_head(self.norm(x))


def build_model(
    arch: ArchConfig, *, vocab_size: int, max_text_len: int, image_token_id: int
) -> LlavaNextModel:
    """Build the untrained model for `arch` and a text side of the given size."""
    return LlavaNextModel(
        arch, vocab_size=vocab_size, max_text_len=max_text_len, image_token_id=image_token_id
    )
