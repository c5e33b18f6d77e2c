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
from torch.utils.checkpoint import checkpoint

from ._arch import ArchConfig

# Additive mask value: large enough to zero a softmax weight, small enough for fp16.
_MASKED = -1.0e4


class Attention(nn.Module):
    """Multi-head self-attention (`kv=None`) or cross-attention to `kv`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`x`: (B, S, D); `kv`: (B, N, D) or None for self-attention; `bias`: additive,
        broadcastable to (B, heads, S, N), or None."""
        b, s, d = x.shape
        src = x if kv is None else kv
        h, dh = self.heads, d // self.heads
        q = self.q(x).reshape(b, s, h, dh).transpose(1, 2)
        k, v = self.kv(src).reshape(b, src.shape[1], 2, h, dh).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(dh))
        if bias is not None:
            scores = scores + bias
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, s, d))


def _gelu(activation: str) -> nn.Module:
    """`gelu`: exact (an Erf node in ONNX, which the Hexagon NPU cannot run: it falls
    back to the CPU); `gelu_tanh`: the tanh approximation, which the NPU runs."""
    return nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")


def _mlp(width: int, hidden: int, activation: str = "gelu") -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), _gelu(activation), nn.Linear(hidden, width))


class ModalityFFN(nn.Module):
    """Feed-forward whose hidden units are split by modality.

    `round(share_ratio * hidden)` units serve every token; the remaining units exist twice,
    once for text tokens and once for image tokens (share_ratio=1: a plain MLP;
    share_ratio=0: two separate MLPs, a visual expert). Both private branches run on every
    token and the modality mask selects, which keeps the graph static for export.
    """

    def __init__(
        self, width: int, hidden: int, share_ratio: float, activation: str = "gelu"
    ) -> None:
        super().__init__()
        shared = round(share_ratio * hidden)
        private = hidden - shared
        self.shared = _mlp(width, shared, activation) if shared else None
        self.text = _mlp(width, private, activation) if private else None
        self.image = _mlp(width, private, activation) if private else None

    def forward(self, x: torch.Tensor, is_image: torch.Tensor | None) -> torch.Tensor:
        """`x`: (B, S, D); `is_image`: (B, S, 1) float, 1 on image tokens, or None (all text)."""
        out = self.shared(x) if self.shared is not None else torch.zeros_like(x)
        if self.text is not None and self.image is not None:
            if is_image is None:
                return out + self.text(x)
            out = out + (1.0 - is_image) * self.text(x) + is_image * self.image(x)
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block (self-attention + feed-forward)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: int,
        share_ratio: float = 1.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = ModalityFFN(width, mlp_ratio * width, share_ratio, activation)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        is_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x), is_image)


class Gate(nn.Module):
    """Multiplier on a fused branch; zero at initialisation except for `none`.

    - `none`: 1 (no gate)
    - `tanh`: tanh(alpha), one scalar (Flamingo)
    - `channel`: tanh(alpha), one per channel
    - `token`: tanh(alpha) * sigmoid(W h + b), per token, from the text hidden state h
    """

    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("tanh", "token"):
            self.alpha = nn.Parameter(torch.zeros(1))
        elif kind == "channel":
            self.alpha = nn.Parameter(torch.zeros(width))
        if kind == "token":
            self.proj = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return branch
        gate = torch.tanh(self.alpha)
        if self.kind == "token":
            gate = gate * torch.sigmoid(self.proj(h))
        return gate * branch


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE: text attends to image tokens, then a feed-forward,
    each added through its own gate."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: int, gating: str, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.xattn = Attention(width, heads)
        self.gate_attn = Gate(gating, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = _mlp(width, mlp_ratio * width, activation)
        self.gate_mlp = Gate(gating, width)

    def forward(self, x: torch.Tensor, image: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`x`: (B, S, D) LM hidden states; `image`: (B, N, D); `bias`: (B, 1, 1, N)."""
        x = x + self.gate_attn(x, self.xattn(self.norm1(x), bias, kv=image))
        return x + self.gate_mlp(x, self.mlp(self.norm2(x)))


def sincos_1d(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer sinusoids: (n,) positions -> (n, width), sin in the first half."""
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(width // 2, dtype=torch.float32) / (width // 2)
    )
    angle = positions.to(torch.float32)[:, None] * freq[None, :]
    out = torch.zeros(len(positions), width)
    out[:, : width // 2] = torch.sin(angle)
    out[:, width // 2 : 2 * (width // 2)] = torch.cos(angle)
    return out


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """Fixed 2D sinusoidal positions of a grid x grid patch layout, row-major:
    (grid * grid, width), half the channels for the row, half for the column."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = width // 2
    return torch.cat(
        [sincos_1d(rows.flatten(), half), sincos_1d(cols.flatten(), width - half)], dim=1
    )


def _run(block: nn.Module, checkpointed: bool, *args: torch.Tensor | None) -> torch.Tensor:
    """`block(*args)`, through activation checkpointing when training with it on: the
    block's activations are recomputed in the backward pass instead of kept."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class VisionTower(nn.Module):
    """ViT applied to each tile independently: (B*T, 3, t, t) -> (B*T, tokens per tile, Dv)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        cfg = arch.vision
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.grid = cfg.tile_size // cfg.patch_size
        if cfg.pos_encoding == "sincos_2d":  # fixed: a buffer, not a parameter
            # unscaled, as in MAE: the patch embeddings are of order 1 too
            self.register_buffer("pos_embed", sincos_2d(self.grid, cfg.width)[None])
        else:
            self.pos_embed = nn.Parameter(torch.randn(1, cfg.patches_per_tile, cfg.width) * 0.02)
        self.checkpointed = False
        # Only the layers up to the selected feature layer are built and run.
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, activation=arch.activation)
            for _ in range(cfg.layers_run)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.pool = cfg.pooling == "avg2x2"

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(tiles).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = _run(block, self.checkpointed, x)
        x = self.norm(x)
        if self.pool:  # (BT, g*g, w) -> (BT, g/2*g/2, w), averaging 2x2 neighbours
            bt, _, w = x.shape
            g = self.grid
            x = x.reshape(bt, g // 2, 2, g // 2, 2, w).mean(dim=(2, 4)).reshape(bt, -1, w)
        return x


class LlavaNextModel(nn.Module):
    """ViT tower -> projector -> causal LM, fused as `arch.fusion` says.

    Early fusion (LLaVA) splices the projected image tokens into the LM sequence at
    `<image>`; cross-attention fusion (Flamingo) keeps them outside and lets gated
    cross-attention blocks in front of the chosen LM layers read them; hybrid does both.
    """

    def __init__(
        self, arch: ArchConfig, *, vocab_size: int, max_text_len: int, image_token_id: int
    ) -> None:
        super().__init__()
        self.arch = arch
        self.image_token_id = image_token_id
        self.max_text_len = max_text_len
        d, lm, fusion = arch.lm.width, arch.lm, arch.fusion
        self.vision = VisionTower(arch)
        if arch.projector_depth == 2:
            self.projector: nn.Module = nn.Sequential(
                nn.Linear(arch.vision.width, d), _gelu(arch.activation), nn.Linear(d, d)
            )
        else:
            self.projector = nn.Linear(arch.vision.width, d)
        self.embed = nn.Embedding(vocab_size, d)
        seq_len = max_text_len - 1 + arch.image_tokens if fusion.early else max_text_len
        self.pos_embed = nn.Parameter(torch.randn(1, seq_len, d) * 0.02)
        share = fusion.share_ratio if fusion.early else 1.0
        self.blocks = nn.ModuleList(
            Block(d, lm.heads, lm.mlp_ratio, share, arch.activation) for _ in range(lm.depth)
        )
        self.xattn = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(
                    d, lm.heads, lm.mlp_ratio, fusion.gating, arch.activation
                )
                for i in fusion.xattn_layers
            }
        )
        if arch.vision.pos_encoding == "sincos_2d":
            # The tile's slot (0: global view, then the grid's tiles row-major), as a
            # fixed code added to every image token of that tile.
            # (scaled to the projector's output, whose entries are of order 0.1)
            slots = sincos_1d(torch.arange(arch.max_tiles), d) * 0.1
            self.register_buffer(
                "tile_code", slots.repeat_interleave(arch.vision.tokens_per_tile, 0)[None]
            )
        else:
            self.tile_code = None
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)
        self.checkpointed = False
        # GPT-2 init: with nn.Embedding's N(0, 1) default, text residuals start ~10x
        # larger than anything attention adds, and the image signal is drowned out.
        nn.init.normal_(self.embed.weight, std=0.02)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, t, t) -> image tokens in LM width (B, T * tokens per tile, D)."""
        b, t = pixel_values.shape[:2]
        feats = self.vision(pixel_values.flatten(0, 1))
        image = self.projector(feats).reshape(b, t * feats.shape[1], -1)
        return image if self.tile_code is None else image + self.tile_code

    def set_checkpointing(self, on: bool) -> None:
        """Gradient (activation) checkpointing of every transformer block while training:
        less memory for activations, one more forward pass per block in backward."""
        self.checkpointed = on
        self.vision.checkpointed = on

    def forward(
        self, pixel_values: torch.Tensor, tile_mask: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        b, length = input_ids.shape
        if length != self.max_text_len:
            raise ValueError(f"input_ids has {length} tokens, model built for {self.max_text_len}")
        fusion = self.arch.fusion
        image = self.encode_image(pixel_values)
        n = image.shape[1]
        image_valid = tile_mask.repeat_interleave(n // tile_mask.shape[1], dim=1)
        text = self.embed(input_ids)
        img_pos = (input_ids == self.image_token_id).to(torch.int64).argmax(dim=1, keepdim=True)

        if fusion.early:
            # Splice: output position p takes image token p - img_pos while that lies in
            # [0, N), else the text token it displaced (gather keeps the graph static).
            positions = torch.arange(length - 1 + n, device=input_ids.device).unsqueeze(0)
            rel = positions - img_pos
            in_image = (rel >= 0) & (rel < n)
            src = torch.where(in_image, rel, n + torch.where(rel < 0, positions, positions - n + 1))
            tokens = torch.cat([image, text], dim=1)
            x = torch.gather(tokens, 1, src.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            valid = (
                torch.gather(torch.cat([image_valid, torch.ones_like(text[..., 0])], 1), 1, src)
                > 0.5
            )
            is_image: torch.Tensor | None = in_image.to(x.dtype).unsqueeze(-1)
        else:
            x, valid, in_image, is_image = (
                text,
                torch.ones_like(input_ids, dtype=torch.bool),
                None,
                None,
            )
        x = x + self.pos_embed

        biases = self._self_attention_biases(valid, in_image, x.dtype)
        image_bias = torch.where(image_valid > 0.5, 0.0, _MASKED).to(x.dtype)[:, None, None, :]
        for i, block in enumerate(self.blocks):
            if str(i) in self.xattn:
                x = _run(self.xattn[str(i)], self.checkpointed, x, image, image_bias)
            x = _run(block, self.checkpointed, x, biases[i], is_image)

        if fusion.early:
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

    def _self_attention_biases(
        self, valid: torch.Tensor, in_image: torch.Tensor | None, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """Additive (B, 1, S, S) mask per LM layer: causal, padding tiles hidden, and the
        modality mask of `fusion.image_attention`."""
        fusion = self.arch.fusion
        s = valid.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=valid.device).tril()
        allowed = causal.unsqueeze(0) & valid.unsqueeze(1)  # [b, query, key]
        text_only = allowed
        if in_image is not None:
            img_q, img_k = in_image.unsqueeze(2), in_image.unsqueeze(1)
            if fusion.image_attention == "image_no_text":
                allowed = allowed & ~(img_q & ~img_k)
            # Text queries stop seeing image keys (image tokens keep seeing each other).
            text_only = allowed & ~(~img_q & img_k)

        def bias(mask: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, 0.0, _MASKED).to(dtype).unsqueeze(1)

        base = bias(allowed)
        if fusion.image_attention != "text_only":
            return [base] * len(self.blocks)
        assert fusion.text_only_from is not None
        late = bias(text_only)
        return [base if i < fusion.text_only_from else late for i in range(len(self.blocks))]


def build_model(
    arch: ArchConfig, *, vocab_size: int, max_text_len: int, image_token_id: int
) -> LlavaNextModel:
    """Build the untrained model for `arch` and a text side of the given size."""
    return LlavaNextModel(
        arch, vocab_size=vocab_size, max_text_len=max_text_len, image_token_id=image_token_id
    )
