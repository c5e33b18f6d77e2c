"""A checkpoint's own tokenizer and chat template as the text side of a data set.

`WordTokenizer` is vlmnas's text side for models it trains from scratch; a candidate cut
from a checkpoint must see prompts the way that checkpoint was trained to read them. A
`ChatCodec` renders each LLaVA-JSON conversation with the checkpoint's
`apply_chat_template` (vicuna-, mistral- or vlmnas-style, whatever the folder defines)
and tokenizes it with the checkpoint's tokenizer, as its processor does. The answer
tokens are found by rendering every prefix: the tokens a turn's answer adds after the
generation prompt (its end token included) are what training predicts and decoding must
reproduce.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ._llava import DataError, Record
from ._processor import conversation_messages


class ChatCodec:
    """The text side of a data set for a checkpoint: the interface the encoders use
    (`conversation`, `encode`, `decode`, `image_id`, `eos_id`, `pad_id`, `len`,
    `to_json`), backed by the checkpoint's tokenizer and chat template."""

    def __init__(self, processor: Any, *, image_token_id: int, vocab_size: int, where: str):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.where = where
        if not getattr(processor, "chat_template", None) and not getattr(
            self.tokenizer, "chat_template", None
        ):
            raise DataError(f"{where}: the checkpoint defines no chat template")
        self.image_id = int(image_token_id)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"{where}: the checkpoint's tokenizer has no end-of-text token")
        self.eos_id = int(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else eos)
        self._vocab_size = int(vocab_size)

    def __len__(self) -> int:
        return self._vocab_size

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )
        return list(self.tokenizer(text).input_ids)

    def conversation(self, record: Record) -> tuple[list[int], list[bool]]:
        """Token ids of the whole conversation in the checkpoint's format and, per token,
        whether the assistant wrote it (answer and end token)."""
        messages = conversation_messages(record)
        full = self._render(messages, False)
        is_answer = [False] * len(full)
        for k in range(1, len(messages), 2):
            prompt = self._render(messages[:k], True)
            through = self._render(messages[: k + 1], False)
            if through[: len(prompt)] != prompt or full[: len(through)] != through:
                raise DataError(
                    f"{self.where}: its chat template does not render record"
                    f" {record.ident!r} turn by turn (a prefix renders differently)"
                )
            for t in range(len(prompt), len(through)):
                is_answer[t] = True
        if full.count(self.image_id) != 1:
            raise DataError(
                f"{self.where}: record {record.ident!r} renders with"
                f" {full.count(self.image_id)} image tokens (id {self.image_id}); need 1"
            )
        return full, is_answer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: Any) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def to_json(self) -> str:
        """What the tokenizer and template are, for cache keys."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else json.dumps(self.tokenizer.get_vocab())
        template = self.processor.chat_template or self.tokenizer.chat_template
        digest = hashlib.sha256((vocab + str(template)).encode()).hexdigest()[:16]
        return json.dumps({"type": "chat", "tokenizer": digest})


def checkpoint_codec(path: Any, *, image_token_id: int, vocab_size: int) -> ChatCodec:
    """The `ChatCodec` of the checkpoint folder `path` (its processor, PIL backend)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, backend="pil")
    return ChatCodec(
        processor,
        image_token_id=image_token_id,
        vocab_size=vocab_size,
        where=f"backbone.path={str(path)!r}",
    )
