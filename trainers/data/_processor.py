"""The vlmnas word tokenizer and AnyRes tiling as a transformers LLaVA-NeXT processor.

Every saved model folder carries a tokenizer and processor that load with
`transformers.AutoProcessor.from_pretrained(folder)` / `AutoTokenizer` and no vlmnas import:

- `hf_tokenizer` rebuilds `WordTokenizer` as a `tokenizers` WordLevel model with the same
  vocabulary and ids, the same lower-casing and the same word regex;
- `CHAT_TEMPLATE` renders llava-hf-style messages into text whose tokens are vlmnas's
  conversation format (`conversation_ids`), and `conversation_messages` turns a `Record`
  into such messages;
- `hf_processor` adds a `LlavaNextImageProcessorPil` (the PIL backend: torchvision is not a
  dependency) for the candidate's tile size and grids.

One deliberate difference from `WordTokenizer.encode`: the exact strings `<sep>`, `<eos>`,
`<pad>` and `<unk>` are atomic special tokens here (the chat template writes `<sep>` and
`<eos>` as text), where `WordTokenizer` splits them into `<`, word, `>`. Texts that do not
contain them verbatim encode to the same ids (`<image>` agrees in both, in any case).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import search_spaces
from search_spaces import ArchConfig

from ._llava import IMAGE_TOKEN, Record, WordTokenizer

if TYPE_CHECKING:
    import transformers

SEP_TOKEN = "<sep>"
EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Python's `\s` (str patterns) is wider than Oniguruma's (it includes \x1c-\x1f, \x85, ...):
# spell out the exact set (the characters with `str.isspace()`; the tests check it) so the
# Rust pre-tokenizer drops the same characters `_WORD` skips.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# `_llava._WORD` with `\s` spelled out; matched on the lower-cased text.
WORD_PATTERN = (
    r"<image>|[a-z0-9]+|[^a-z0-9" + "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE) + "]"
)

# Per user message: its items in order (an image item renders as `<image>` and a newline,
# text items are separated by a space), then `<sep>`. Per assistant message: its text, then
# `<eos>`, inside a generation block (`return_assistant_tokens_mask` marks exactly the
# tokens `conversation_ids` marks as answer). A user message already ends with `<sep>`, so
# the generation prompt adds nothing: the model continues with the answer and `<eos>`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set items = message['content'] -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] }}{{ '' if loop.last else ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<sep>' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] }}{{ '' if loop.last else ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<eos>' }}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{ raise_exception('vlmnas conversations have only user and assistant messages, got '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def hf_tokenizer(tok: WordTokenizer) -> transformers.PreTrainedTokenizerFast:
    """`tok` as a fast tokenizer: same vocab and ids, no BOS, decoding joins with spaces.

    `hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)` for any text
    without a verbatim `<sep>`, `<eos>`, `<pad>` or `<unk>` (atomic here; see the module
    doc). Known residue: Python's `str.lower` maps a word-final capital sigma to `ς` where
    the Rust normalizer gives `σ`.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(tok.vocab)}, unk_token=UNK_TOKEN)
    )
    backend.normalizer = normalizers.Lowercase()
    # invert=True: the regex matches are the pieces, the gaps (whitespace only, since the
    # last alternative takes every other character) are the removed delimiters.
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex(WORD_PATTERN), behavior="removed", invert=True
    )
    # No decoder: the tokenizers library then joins tokens with single spaces, as
    # `WordTokenizer.decode` does. No post-processor: nothing added around the text.
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        sep_token=SEP_TOKEN,
        # `image_token` / `image_token_id` attributes, read by LlavaNextProcessor
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def conversation_messages(record: Record) -> list[dict[str, Any]]:
    """The record's turns as llava-hf chat messages: an image item where `<image>` was.

    One `\\n` right after `<image>` is dropped (the template writes it back).
    """
    messages: list[dict[str, Any]] = []
    for question, answer in record.turns:
        content: list[dict[str, Any]] = []
        if IMAGE_TOKEN in question:
            before, after = question.split(IMAGE_TOKEN, 1)
            after = after.removeprefix("\n")
            if before.strip():
                content.append({"type": "text", "text": before})
            content.append({"type": "image"})
            if after.strip():
                content.append({"type": "text", "text": after})
        else:
            content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def hf_processor(tok: WordTokenizer, arch: ArchConfig) -> transformers.LlavaNextProcessor:
    """Tokenizer plus the LLaVA-NeXT image processor `arch`'s candidate is trained with
    (`search_spaces.image_processor`: PIL backend, pixels normalised to [-1, 1]).

    `<image>` expands to the number of image features of a CLIP-style tower with one CLS
    token dropped ("default" feature selection).
    """
    from transformers import LlavaNextProcessor

    image_processor = search_spaces.image_processor(arch)
    # the processor counts visual tokens per tile from the patch size: a pooled tower
    # has half as many per side, as if its patches were twice as large
    patch_size = arch.vision.patch_size * (2 if arch.vision.pooling == "avg2x2" else 1)
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=hf_tokenizer(tok),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def save_candidate(model: search_spaces.VlmModel, tok: Any, folder: Path) -> Path:
    """Write `model` as a transformers folder with its tokenizer, processor and
    generation settings (greedy, stop at `<eos>`), so that

        processor = AutoProcessor.from_pretrained(folder)
        model = LlavaNextForConditionalGeneration.from_pretrained(folder)  # plain ones
        # or search_spaces.load_pretrained(folder), for every candidate

    answer as vlmnas does. `tok` is vlmnas's `WordTokenizer` (kept beside as
    `word_tokenizer.json`, the vocabulary a teacher must share with its students) or a
    checkpoint's `ChatCodec` (its processor is saved, its grids as the candidate's)."""
    gen = model.hf.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = tok.eos_id, tok.pad_id, None
    gen.do_sample = False
    search_spaces.save_pretrained(model, folder)
    if isinstance(tok, WordTokenizer):
        hf_processor(tok, model.arch).save_pretrained(folder)
        (folder / "word_tokenizer.json").write_text(tok.to_json())
    else:  # a checkpoint's own processor (ChatCodec), its grids as the candidate's
        processor = tok.processor
        processor.image_processor = search_spaces.image_processor(model.arch)
        pooled = model.arch.vision.pooling == "avg2x2"
        processor.patch_size = model.arch.vision.patch_size * (2 if pooled else 1)
        processor.save_pretrained(folder)
    return folder
