"""The variants LLaVA-NeXT lacks, as modules installed into a transformers LLaVA-NeXT.

- `VlmDecoderLayer` takes the place of a `LlamaDecoderLayer` (a subclass, keeping its
  submodules and their weight names) and adds, where the candidate asks for them:
  - a gated cross-attention block in front of the layer (Flamingo's GATED XATTN-DENSE:
    text attends to the visual tokens, then a feed-forward, each through its own gate,
    zero-initialised so the layer starts as it was);
  - a private feed-forward for image tokens (`fusion.share_ratio` < 1): the first
    `round(share_ratio * I)` hidden units of the layer's MLP serve every token, the rest
    serve text only, and image tokens get their own copy of those, initialised from them;
  - its own attention mask (`fusion.image_attention`), passed in by `VlmModel`.
- `LinearProjector` replaces LLaVA-NeXT's two-layer projector for `projector_depth=1`.

What a layer needs per forward arrives as keyword arguments that transformers' Llama
passes through to every decoder layer (`vlm_image`, `vlm_image_bias`, `vlm_is_image`,
`vlm_masks`); `VlmModel.forward` supplies them. `install_adapters` is the one place that
decides what goes where, from the `ArchConfig` that `config.vlmnas` records.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm

from ._arch import ArchConfig


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


class CrossAttention(nn.Module):
    """Multi-head attention of text queries over the visual tokens, written out as
    MatMul + Softmax (plain ONNX for every execution provider)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q_proj(x).reshape(b, s, h, dh).transpose(1, 2)
        k = self.k_proj(kv).reshape(b, kv.shape[1], h, dh).transpose(1, 2)
        v = self.v_proj(kv).reshape(b, kv.shape[1], h, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(dh)) + bias
        y = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, s, d))


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE in Llama's style (RMSNorm, gated MLP)."""

    def __init__(self, config: Any, gating: str) -> None:
        super().__init__()
        d = config.hidden_size
        self.norm1 = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.attn = CrossAttention(d, config.num_attention_heads)
        self.gate_attn = Gate(gating, d)
        self.norm2 = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        self.gate_mlp = Gate(gating, d)

    def forward(self, x: torch.Tensor, image: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.gate_attn(x, self.attn(self.norm1(x), image, bias))
        return x + self.gate_mlp(x, self.mlp(self.norm2(x)))


class ImageMLP(nn.Module):
    """The private hidden units of a layer's MLP, for image tokens only."""

    def __init__(self, mlp: LlamaMLP, shared: int) -> None:
        super().__init__()
        self.shared = shared
        private = mlp.intermediate_size - shared
        d = mlp.hidden_size
        bias = mlp.gate_proj.bias is not None
        self.gate_proj = nn.Linear(d, private, bias=bias)
        self.up_proj = nn.Linear(d, private, bias=bias)
        self.down_proj = nn.Linear(private, d, bias=bias)
        self.act_fn = mlp.act_fn
        with torch.no_grad():  # start as a copy of the units it replaces
            self.gate_proj.weight.copy_(mlp.gate_proj.weight[shared:])
            self.up_proj.weight.copy_(mlp.up_proj.weight[shared:])
            self.down_proj.weight.copy_(mlp.down_proj.weight[:, shared:])
            if bias:
                self.gate_proj.bias.copy_(mlp.gate_proj.bias[shared:])
                self.up_proj.bias.copy_(mlp.up_proj.bias[shared:])

    def forward(self, x: torch.Tensor, mlp: LlamaMLP, is_image: torch.Tensor) -> torch.Tensor:
        """`mlp(x)` for text tokens; the shared units plus these for image tokens."""
        hidden = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        s = self.shared
        text = mlp.down_proj(hidden)
        image = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        if s:  # share_ratio 0 shares no unit: no zero-width MatMul in the graph (the
            # QNN HTP emulator dies of SIGFPE on one)
            image = image + nn.functional.linear(hidden[..., :s], mlp.down_proj.weight[:, :s])
        if mlp.down_proj.bias is not None:
            image = image + mlp.down_proj.bias
        return text + is_image * (image - text)


class VlmDecoderLayer(LlamaDecoderLayer):
    """A Llama decoder layer with the candidate's adapters (module docstring)."""

    def __init__(self, layer: LlamaDecoderLayer, config: Any, layer_idx: int) -> None:
        nn.Module.__init__(self)  # adopt `layer`'s submodules instead of building new ones
        self.gradient_checkpointing = False
        self.hidden_size = layer.hidden_size
        self.self_attn = layer.self_attn
        self.mlp = layer.mlp
        self.input_layernorm = layer.input_layernorm
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.layer_idx = layer_idx
        self.xattn: GatedCrossAttentionBlock | None = None
        self.image_mlp: ImageMLP | None = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        vlm_image: torch.Tensor | None = None,
        vlm_image_bias: torch.Tensor | None = None,
        vlm_is_image: torch.Tensor | None = None,
        vlm_masks: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.xattn is not None:
            assert vlm_image is not None and vlm_image_bias is not None
            hidden_states = self.xattn(hidden_states, vlm_image, vlm_image_bias)
        if vlm_masks is not None:
            attention_mask = vlm_masks[self.layer_idx]
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        normed = self.post_attention_layernorm(hidden_states)
        if self.image_mlp is not None and vlm_is_image is not None:
            return residual + self.image_mlp(normed, self.mlp, vlm_is_image)
        return residual + self.mlp(normed)


class LinearProjector(nn.Module):
    """`projector_depth=1`: LLaVA-1's linear projector (weights named as LLaVA-NeXT's
    first projector layer)."""

    def __init__(self, vision_width: int, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_width, width)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


def install_adapters(hf: Any, arch: ArchConfig) -> None:
    """Install what `arch` needs beyond LLaVA-NeXT into the transformers model `hf`
    (nothing for a plain candidate)."""
    config = hf.config
    text_config = config.text_config
    if arch.projector_depth == 1:
        hf.model.multi_modal_projector = LinearProjector(
            config.vision_config.hidden_size, text_config.hidden_size
        )
    f = arch.fusion
    needs_layer = f.cross or f.share_ratio < 1.0 or f.image_attention != "full"
    if not needs_layer:
        return
    layers = hf.model.language_model.layers
    for i, layer in enumerate(layers):
        new = VlmDecoderLayer(layer, text_config, i)
        if i in f.xattn_layers:
            new.xattn = GatedCrossAttentionBlock(text_config, f.gating)
        if f.early and f.share_ratio < 1.0:
            new.image_mlp = ImageMLP(layer.mlp, round(f.share_ratio * layer.mlp.intermediate_size))
        layers[i] = new


def sincos_1d(positions: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer sinusoids: (n,) positions -> (n, width), sin in the first half."""
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(width // 2, dtype=torch.float32) / max(width // 2, 1)
    )
    angle = positions.to(torch.float32)[:, None] * freq[None, :]
    out = torch.zeros(len(positions), width)
    out[:, : width // 2] = torch.sin(angle)
    out[:, width // 2 : 2 * (width // 2)] = torch.cos(angle)
    return out


def sincos_position_table(grid: int, width: int) -> torch.Tensor:
    """CLIP's position table as fixed 2D sinusoids: row 0 (the CLS token) zero, then the
    grid x grid patches row-major, half the channels for the row, half for the column."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = width // 2
    patches = torch.cat(
        [sincos_1d(rows.flatten(), half), sincos_1d(cols.flatten(), width - half)], dim=1
    )
    return torch.cat([torch.zeros(1, width), patches])
