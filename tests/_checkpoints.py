"""A tiny LLaVA-NeXT checkpoint in llava-hf's format, built offline for the tests.

`tiny_llava_checkpoint` writes what a user's llava-hf folder (llava-v1.6-vicuna-7b,
llava-v1.6-mistral-7b) holds, at a size that runs in milliseconds, the way transformers'
own `tests/models/llava_next` build theirs: a CLIP vision tower read at
`vision_feature_layer` (-2, as LLaVA does), a Llama decoder with grouped-query attention,
random weights, a word-level fast tokenizer with `<image>` and `</s>`, a chat template,
and a `LlavaNextProcessor` (PIL image backend: torchvision is not installed). Everything
loads with `LlavaNextForConditionalGeneration.from_pretrained(folder)` and
`AutoProcessor.from_pretrained(folder)`, without the network and without vlmnas.
"""

from __future__ import annotations

from pathlib import Path

import torch

TILE = 32  # CLIP image_size: the tile side, in pixels
PATCH = 8
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]  # (height, width) in pixels
IMAGE_TOKEN = "<image>"
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]
WORDS = [
    # the chat formats' own words
    "USER", "ASSISTANT", ":", "[", "]", "/", "INST", "\n",
    # the questions and answers of a shapes task
    "what", "which", "how", "many", "is", "are", "the", "a", "of", "in", "there",
    "shape", "colour", "color", "object", "objects", "image", "left", "right",
    "circle", "square", "triangle", "red", "green", "blue", "yellow",
    "yes", "no", "one", "two", "three", "?", ".", ",",
]  # fmt: skip

# Per chat format: the rendering of one turn, as llava-hf's templates write it.
#   vicuna  (llava-v1.6-vicuna-*):   "USER: <image>\n{q} ASSISTANT: {a}</s>"
#   mistral (llava-v1.6-mistral-*):  "[INST] <image>\n{q} [/INST] {a}</s>"
_TURNS = {
    "vicuna": ("USER: ", " ASSISTANT:", " ASSISTANT:"),
    "mistral": ("[INST] ", " [/INST]", " [/INST]"),
}


def chat_template(chat: str) -> str:
    """A llava-hf-style Jinja chat template of the `chat` format (`_TURNS`): per user
    message its images as `<image>\\n`, then its text; per assistant message ` {a}</s>`;
    `add_generation_prompt` ends the prompt where the assistant starts."""
    if chat not in _TURNS:
        raise ValueError(f"chat={chat!r}; allowed: {sorted(_TURNS)}")
    user, before_answer, prompt = _TURNS[chat]
    return (
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}"
        "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ '" + user + "' }}"
        "{%- for item in items if item['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
        "{%- for item in items if item['type'] == 'text' -%}"
        "{{ item['text'] }}{{ '' if loop.last else ' ' }}"
        "{%- endfor -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ '" + before_answer + " ' }}"
        "{%- generation -%}"
        "{%- for item in items if item['type'] == 'text' -%}"
        "{{ item['text'] }}{{ '' if loop.last else ' ' }}"
        "{%- endfor -%}"
        "{{ '</s>' }}"
        "{%- endgeneration -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '" + prompt + "' }}{%- endif -%}"
    )


def tiny_tokenizer(chat: str = "vicuna"):  # -> transformers.PreTrainedTokenizerFast
    """A `tokenizers` WordLevel fast tokenizer over `SPECIAL + WORDS`: words and single
    punctuation marks are tokens, `\\n` is one, other whitespace separates; no BOS/EOS is
    added (the chat template writes `</s>`); decoding joins tokens with spaces."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # invert=True: the matches are the pieces, the gaps (spaces, tabs) are dropped
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        # the `image_token` / `image_token_id` attributes LlavaNextProcessor reads
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.chat_template = chat_template(chat)
    return tok


def tiny_llava_checkpoint(
    folder: Path,
    *,
    seed: int = 0,
    vision_layers: int = 3,
    lm_layers: int = 4,
    feature_layer: int = -2,
    chat: str = "vicuna",
) -> Path:
    """Write a random tiny llava-hf LLaVA-NeXT checkpoint to `folder` and return it.

    CLIP ViT: width 32, 4 heads, MLP 37 (deliberately not a multiple of the width),
    32 px tiles of 8 px patches (16 patches + CLS), `vision_layers` layers read at
    `feature_layer`. Llama: width 32, 4 query / 2 key-value heads, MLP 64, `lm_layers`
    layers, the tokenizer's vocabulary. AnyRes grids `PINPOINTS`; `<image>` is the image
    token; greedy generation stopping at `</s>`. Random init from `seed`.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )
    from transformers.image_utils import PILImageResampling

    tok = tiny_tokenizer(chat)
    ids = tok.get_vocab()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=TILE,
        patch_size=PATCH,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(ids),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=lm_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=ids[PAD_TOKEN],
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        tie_word_embeddings=False,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE_TOKEN],
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = None, ids[EOS_TOKEN], ids[PAD_TOKEN]
    gen.do_sample = False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
        resample=PILImageResampling.BICUBIC,
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=tok.chat_template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder
