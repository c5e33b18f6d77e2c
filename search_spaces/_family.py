"""The model family: transformers' `LlavaNextForConditionalGeneration`, for every candidate.

A candidate is a CLIP vision tower, LLaVA-NeXT's projector and a Llama decoder, built at
the sampled sizes (`hf_config`). The variants LLaVA-NeXT lacks are modules installed into
that model (`_adapters.py`), the way Mllama's cross-attention decoder layers or
open_flamingo's layer wrappers do it; `config.vlmnas` records them, so a saved folder
says what it holds. A candidate with LLaVA-NeXT's own settings (`is_plain`) has none and
is a plain LLaVA-NeXT that transformers loads alone.

`VlmModel` is the static-shape view every runtime uses:

    forward(pixel_values, image_index, input_ids) -> logits

- `pixel_values`: (B, T, 3, tile, tile) float32, the image processor's tiles (base view
  first), zero-padded to the candidate's `max_tiles`
- `image_index`: (B, N) int64, each visual token's row in the per-image feature table
  (`_packing.py`: LLaVA-NeXT's unpad + newline packing, computed on the host)
- `input_ids`: (B, L) int64, right-padded; for early fusion `<image>` is expanded to one
  id per visual token, as LLaVA-NeXT's processor does; cross-attention keeps one
- returns `logits` (B, L, V): `logits[:, t]` predicts `input_ids[:, t + 1]`

It computes what transformers' own forward computes (test_family checks the logits), with
the data-dependent packing moved into `image_index` and the attention mask built here
(causal, plus the modality masks), so one exported graph serves every batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig
from transformers import LlavaNextForConditionalGeneration as HFModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from ._adapters import install_adapters, sincos_position_table
from ._arch import ArchConfig
from ._packing import max_image_tokens, newline_index, pinpoints_px

FAMILY = "transformers-llava-next/1"
"""Enters every cache key that holds weights or measurements of this family's models."""

_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# Additive mask value: zeroes a softmax weight, and stays finite in fp16.
_MASKED = -1.0e4


def is_plain(arch: ArchConfig) -> bool:
    """True when `arch` is LLaVA-NeXT as published: nothing to install."""
    f = arch.fusion
    return (
        f.placement == "early"
        and f.image_attention == "full"
        and f.share_ratio == 1.0
        and arch.vision.pooling == "none"
        and arch.projector_depth == 2
        and arch.tokens.prune_ratio == 0.0
    )


def hf_config(
    arch: ArchConfig,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    max_positions: int = 2048,
) -> LlavaNextConfig:
    """The transformers config of `arch`'s untrained model.

    The vision tower is built only up to the feature layer (`vision.layers_run`), so the
    feature layer is always its last (`vision_feature_layer=-1`): unused layers are
    neither computed nor exported.
    """
    v, lm = arch.vision, arch.lm
    vision = CLIPVisionConfig(
        hidden_size=v.width,
        intermediate_size=v.hidden,
        num_hidden_layers=v.layers_run,
        num_attention_heads=v.heads,
        image_size=v.tile_size,
        patch_size=v.patch_size,
        hidden_act=_ACT[arch.activation],
        projection_dim=v.width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=lm.width,
        intermediate_size=lm.hidden,
        num_hidden_layers=lm.depth,
        num_attention_heads=lm.heads,
        num_key_value_heads=lm.kv_heads or lm.heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        projector_hidden_act=_ACT[arch.activation],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints_px(arch),
        tie_word_embeddings=False,
    )
    config.vlmnas = {"family": FAMILY, "arch": arch.to_dict(), "plain": is_plain(arch)}
    return config


class VlmModel(nn.Module):
    """A candidate: the transformers model `hf` plus how vlmnas runs it (module docstring).
    Holds no parameters of its own; `hf.save_pretrained` is the whole model."""

    def __init__(self, hf: HFModel, arch: ArchConfig) -> None:
        super().__init__()
        self.hf = hf
        self.arch = arch
        self.image_token_id = int(hf.config.image_token_id)
        self.pool = arch.vision.pooling == "avg2x2"

    # -- the parts --------------------------------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return self.hf.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.hf.model.multi_modal_projector

    @property
    def embed(self) -> nn.Embedding:
        return self.hf.model.language_model.embed_tokens

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of every transformer layer while training."""
        if on:
            self.hf.activation_checkpointing_enable({"use_reentrant": False})
        elif self.hf.is_activation_checkpointing:
            self.hf.activation_checkpointing_disable()

    # -- forward ----------------------------------------------------------------------
    def tile_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, t, t) -> projected patch features (B, T * tokens per tile, D)."""
        b, t = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)
        if self.training:
            # Padding tiles (all zero: the processor's own padding is -1) are never read:
            # while training, the tower runs on the real tiles only. Evaluation and export
            # keep the static shape.
            real = flat.flatten(1).abs().amax(1) > 0
            hidden = self.vision_tower(flat[real]).last_hidden_state
            hidden = hidden.new_zeros(len(flat), *hidden.shape[1:]).index_copy(
                0, real.nonzero().squeeze(1), hidden
            )
        else:
            hidden = self.vision_tower(flat).last_hidden_state
        feats = hidden[:, 1:]  # vision_feature_select_strategy="default": drop CLS
        if self.pool:  # (BT, g*g, w) -> (BT, g/2*g/2, w), averaging 2x2 neighbours
            bt, p, w = feats.shape
            g = int(math.isqrt(p))
            feats = feats.reshape(bt, g // 2, 2, g // 2, 2, w).mean(dim=(2, 4)).reshape(bt, -1, w)
        projected = self.projector(feats)
        return projected.reshape(b, t * projected.shape[1], -1)

    def encode_image(
        self, pixel_values: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed visual tokens (B, N, D) and which of them are real (B, N) bool."""
        return self.pack_image(self.tile_features(pixel_values), image_index)

    def pack_image(
        self, features: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`tile_features` packed (LLaVA-NeXT's unpad + newline order, `image_index`):
        the visual tokens (B, N, D) and which of them are real (B, N) bool."""
        b, _, d = features.shape
        newline = self.hf.model.image_newline.to(features.dtype)
        table = torch.cat(
            [features, newline.expand(b, 1, d), torch.zeros_like(features[:, :1])], dim=1
        )
        tokens = torch.gather(table, 1, image_index.unsqueeze(-1).expand(-1, -1, d))
        return tokens, image_index <= newline_index(self.arch)

    def embed_tokens(
        self, input_ids: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input embeddings (B, L, D), each `<image>` id replaced by its visual token
        under early fusion, and where the `<image>` ids are (B, L) bool."""
        embeds = self.embed(input_ids)
        is_image = input_ids == self.image_token_id
        if self.arch.fusion.early:
            # The k-th <image> id of a row takes the row's k-th visual token.
            rank = (torch.cumsum(is_image.to(torch.int64), dim=1) - 1).clamp(0, image.shape[1] - 1)
            spliced = torch.gather(image, 1, rank.unsqueeze(-1).expand(-1, -1, image.shape[-1]))
            embeds = torch.where(is_image.unsqueeze(-1), spliced, embeds)
        return embeds, is_image

    def forward(
        self, pixel_values: torch.Tensor, image_index: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        image, valid = self.encode_image(pixel_values, image_index)
        embeds, is_image = self.embed_tokens(input_ids, image)
        kwargs: dict[str, Any] = {}
        if not is_plain(self.arch):
            kwargs = {
                "vlm_image": image,
                "vlm_image_bias": _bias(valid).to(embeds.dtype)[:, None, None, :],
                "vlm_is_image": is_image.to(embeds.dtype).unsqueeze(-1),
                # per-layer masks only where they differ from the causal one
                "vlm_masks": self._modality_masks(is_image, embeds.dtype)
                if self.arch.fusion.image_attention != "full"
                else None,
            }
        mask = _bias(_causal(input_ids))[:, None].to(embeds.dtype)
        if self.arch.tokens.prune_ratio > 0:
            return self._pruned_forward(embeds, input_ids, is_image, mask, kwargs)
        hidden = self.hf.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False, **kwargs
        ).last_hidden_state
        return self.hf.lm_head(hidden)

    def _pruned_forward(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        is_image: torch.Tensor,
        mask: torch.Tensor,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The LM with FastV's visual-token pruning (`arch.tokens`): layers up to
        `prune_layer` see the whole sequence; after them each row drops the
        `floor(prune_ratio * n)` of its n image tokens that the last prompt token attends
        to least (the attention of layer `prune_layer`, averaged over heads), and the later
        layers run on the shorter sequence at the kept tokens' original positions.

        One static drop count serves every row (the export is one graph): `floor(ratio *
        max_image_tokens)` positions go, the row's own share of image tokens first, then
        trailing padding (which no output reads), then, only where a row has too little
        padding, more of its least-attended image tokens. Logits at dropped positions are 0.
        """
        lm = self.hf.model.language_model
        b, length, _ = embeds.shape
        k = self.arch.tokens.prune_layer
        drop = min(int(self.arch.tokens.prune_ratio * max_image_tokens(self.arch)), length - 1)
        positions = torch.arange(length, device=embeds.device).unsqueeze(0).expand(b, -1)
        rope = lm.rotary_emb(embeds, position_ids=positions)
        masks = kwargs.pop("vlm_masks", None) or [mask] * len(lm.layers)
        text_config: Any = self.hf.config.text_config
        real = torch.ne(input_ids, int(text_config.pad_token_id or 0)).to(torch.int64)
        last = (real.sum(1) - 1).clamp(min=0)  # the last prompt token (right padding)
        trailing = torch.cumsum(real.flip(1), 1).flip(1) == 0
        h = embeds
        for i, layer in enumerate(lm.layers):
            if i == k - 1:  # FastV reads layer K's attention map
                score = _last_token_attention(layer, h, rope, masks[i], last)
            if i == k:
                n_image = is_image.sum(1, keepdim=True)
                share = torch.floor(self.arch.tokens.prune_ratio * n_image.to(score.dtype))
                # rank of each image token by attention within its row, lowest first
                image_score = torch.where(is_image, score, torch.full_like(score, 2.0))
                rank = torch.argsort(torch.argsort(image_score, dim=1), dim=1)
                priority = torch.where(
                    is_image,
                    torch.where(rank < share, score - 3.0, score),  # the row's share first
                    # padding: the last positions first (no ties: one answer on every runtime)
                    torch.where(trailing, -1.5 - positions / length, torch.full_like(score, 9.0)),
                )
                keep = torch.topk(priority, length - drop, dim=1).indices.sort(dim=1).values
                h = _take(h, keep)
                kept_positions = torch.gather(positions, 1, keep)
                rope = lm.rotary_emb(h, position_ids=kept_positions)
                masks = [_take_square(m, keep) for m in masks]
                if "vlm_is_image" in kwargs:
                    kwargs["vlm_is_image"] = _take(kwargs["vlm_is_image"], keep)
            h = layer(h, attention_mask=masks[i], position_embeddings=rope, **kwargs)
        logits = self.hf.lm_head(lm.norm(h))
        out = logits.new_zeros(b, length, logits.shape[-1])
        return out.scatter(1, keep.unsqueeze(-1).expand(-1, -1, logits.shape[-1]), logits)

    def _modality_masks(self, is_image: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per LM layer additive (B, 1, S, S) masks of `fusion.image_attention`."""
        return modality_masks(
            self.arch, _causal(is_image), is_image, is_image, dtype, self.arch.lm.depth
        )


def modality_masks(
    arch: ArchConfig,
    allowed: torch.Tensor,
    q_image: torch.Tensor,
    k_image: torch.Tensor,
    dtype: torch.dtype,
    layers: int,
) -> list[torch.Tensor]:
    """Per LM layer additive (B, 1, S, K) masks of `arch.fusion.image_attention`: the
    (B, S, K) bool `allowed` (causal, and real keys) narrowed by which queries (B, S) and
    keys (B, K) are visual tokens. The whole sequence (`VlmModel`) and a decoder step
    over a cache (`_kv.DecoderGraph`) both build theirs here."""
    fusion = arch.fusion
    img_q, img_k = q_image.unsqueeze(2), k_image.unsqueeze(1)
    if fusion.image_attention == "image_no_text":
        allowed = allowed & ~(img_q & ~img_k)
    base = _bias(allowed).to(dtype)[:, None]
    if fusion.image_attention != "text_only":
        return [base] * layers
    late = _bias(allowed & ~(~img_q & img_k)).to(dtype)[:, None]
    start = fusion.text_only_from or 0
    return [base if i < start else late for i in range(layers)]


def _last_token_attention(
    layer: nn.Module,
    h: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    last: torch.Tensor,
) -> torch.Tensor:
    """(B, S): the attention of each row's token `last` over the sequence in `layer`
    (its input `h`), averaged over heads."""
    attn: Any = layer.self_attn
    b, s, _ = h.shape
    norm: Any = layer.input_layernorm
    x = norm(h)
    dh = attn.head_dim
    q = attn.q_proj(x).view(b, s, -1, dh).transpose(1, 2)
    key = attn.k_proj(x).view(b, s, -1, dh).transpose(1, 2)
    q, key = apply_rotary_pos_emb(q, key, *rope)
    key = repeat_kv(key, attn.num_key_value_groups)
    q_last = torch.gather(q, 2, last.view(b, 1, 1, 1).expand(-1, q.shape[1], 1, dh))
    scores = q_last @ key.transpose(-1, -2) * attn.scaling  # (B, H, 1, S)
    row_mask = torch.gather(mask, 2, last.view(b, 1, 1, 1).expand(-1, 1, 1, s))
    return torch.softmax(scores + row_mask, dim=-1).mean(1)[:, 0]


def _take(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows `keep` (B, S') of x (B, S, ...)."""
    index = keep.view(*keep.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def _take_square(mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Queries and keys `keep` (B, S') of an additive mask (B, 1, S, S)."""
    b, _, s, _ = mask.shape
    rows = torch.gather(mask, 2, keep.view(b, 1, -1, 1).expand(-1, 1, -1, s))
    return torch.gather(rows, 3, keep.view(b, 1, 1, -1).expand(-1, 1, rows.shape[2], -1))


def _causal(ids: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool: query i sees keys <= i."""
    s = ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()
    return causal.unsqueeze(0).expand(ids.shape[0], -1, -1)


def _bias(allowed: torch.Tensor) -> torch.Tensor:
    return torch.where(allowed, 0.0, _MASKED)


def build_model(
    arch: ArchConfig,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> VlmModel:
    """The untrained candidate of `arch` (random init; `seed` fixes it)."""
    config = hf_config(
        arch,
        vocab_size=vocab_size,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    hf = HFModel(config)
    hf.set_attn_implementation("sdpa")
    install_adapters(hf, arch)
    if arch.vision.pos_encoding == "sincos_2d":
        emb = hf.model.vision_tower.embeddings.position_embedding
        emb.weight.data.copy_(
            sincos_position_table(
                arch.vision.tile_size // arch.vision.patch_size, arch.vision.width
            )
        )
        emb.weight.requires_grad_(False)
    return VlmModel(hf, arch)


_SAVED_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("image_newline", "model.image_newline"),
)


def _module_key(saved: str) -> str:
    for old, new in _SAVED_PREFIXES:
        if saved.startswith(old):
            return new + saved[len(old) :]
    return saved


def save_pretrained(model: VlmModel, folder: Path) -> Path:
    """Write `model` as a transformers folder (config.json with the `vlmnas` record,
    model.safetensors). A plain candidate loads with
    `LlavaNextForConditionalGeneration.from_pretrained(folder)`; every candidate loads
    with `load_pretrained(folder)`. The tokenizer and processor are saved beside it by
    the caller (`trainers.save_processor`)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.hf.config.vlmnas = {**model.hf.config.vlmnas, "arch": model.arch.to_dict()}
    model.hf.save_pretrained(folder)
    return folder


def load_pretrained(folder: Path) -> VlmModel:
    """The candidate saved in `folder` by `save_pretrained`, adapters installed."""
    config = LlavaNextConfig.from_pretrained(folder)
    record = getattr(config, "vlmnas", None)
    if not isinstance(record, dict) or "arch" not in record:
        raise ValueError(f"{folder}/config.json has no vlmnas record: not a vlmnas candidate")
    if record.get("family") != FAMILY:
        raise ValueError(
            f"{folder} holds a {record.get('family')!r} model; this vlmnas reads {FAMILY!r}"
        )
    arch = ArchConfig.from_dict(record["arch"])
    hf = HFModel(config)
    install_adapters(hf, arch)
    # transformers saves LLaVA-NeXT under its original checkpoint's key names
    # ("language_model.model.*", "vision_tower.*"); map them back to the module tree.
    state = {_module_key(k): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    expected = set(hf.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"{folder}: its weights do not match the candidate its config records"
            f" (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    hf.load_state_dict(state)
    hf.set_attn_implementation("sdpa")
    if arch.vision.pos_encoding == "sincos_2d":
        hf.model.vision_tower.embeddings.position_embedding.weight.requires_grad_(False)
    return VlmModel(hf.eval(), arch)


def model_from_config(config_file: Path, arch: ArchConfig) -> VlmModel:
    """The structure (random weights) of a candidate whose transformers config was written
    with `config.to_json_file`: how a cut-down candidate's trained weights (`model.pt`)
    are read back without its checkpoint."""
    config = LlavaNextConfig.from_json_file(str(config_file))
    hf = HFModel(config)
    install_adapters(hf, arch)
    hf.set_attn_implementation("sdpa")
    return VlmModel(hf, arch)
