"""A plain candidate leaves vlmnas as a LLaVA-NeXT that transformers alone loads and
that answers as it did in vlmnas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search_spaces import greedy_decode, is_plain
from tests._archs import TINY_ARCH
from trainers import TrainerConfig, fit, torch_forward
from trainers.data import ImageCache, conversation_messages, encode_eval, save_candidate

pytestmark = pytest.mark.slow  # a training run and a fresh interpreter with transformers

# Run in a fresh interpreter that imports transformers and nothing of vlmnas.
_SCRIPT = """
import json, sys
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration
folder, requests = sys.argv[1], json.loads(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder)
model = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
answers, prompts = [], []
for image, messages in requests:
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image).convert("RGB"), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6)
    new = out[0, inputs["input_ids"].shape[1]:]
    answers.append(processor.tokenizer.decode(new, skip_special_tokens=True))
    prompts.append(inputs["input_ids"][0].tolist())
assert not any(m.split(".")[0] in ("search_spaces", "trainers", "studies") for m in sys.modules)
print(json.dumps([answers, prompts]))
"""


def test_plain_winner_answers_the_same_in_transformers(shapes_data, tmp_path: Path) -> None:
    assert is_plain(TINY_ARCH)
    result = fit(TINY_ARCH, shapes_data, TrainerConfig(max_epochs=2, threads=1), tmp_path / "t")
    folder = save_candidate(result.model, shapes_data.tokenizer, tmp_path / "hf")
    tok = shapes_data.tokenizer
    records = shapes_data.val[:6]
    # vlmnas: the first question of each record, decoded greedily
    val = encode_eval(records, tok, TINY_ARCH, shapes_data.text_len, ImageCache())
    rows = [i * len(r.turns) for i, r in enumerate(records)]
    ours = []
    for row in rows:
        out = greedy_decode(torch_forward(result.model), val.slice(row, row + 1), 6)[0]
        out = out[out >= 0]
        end = np.flatnonzero(out == tok.eos_id)
        ours.append(tok.decode(out[: end[0]] if end.size else out))

    requests = [(str(r.image), conversation_messages(r)[:1]) for r in records]
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(folder), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs, prompts = json.loads(proc.stdout.strip().splitlines()[-1])
    for row, prompt in zip(rows, prompts, strict=True):  # the same tokens went in
        assert prompt == val.prompt_ids[row, : val.prompt_lens[row]].tolist()
    assert theirs == ours


def test_pretrain_writes_a_checkpoint_a_pretrained_study_accepts(tmp_path: Path) -> None:
    from search_spaces import SearchSpace, inspect_backbone
    from tests.integration._cli import vlmnas

    out = tmp_path / "ckpt"
    proc = vlmnas(
        "pretrain",
        f"pretrain.out={out}",
        f"study.workdir={tmp_path / 'runs'}",
        "pretrain.data.train_images=24",
        "pretrain.data.val_images=6",
        "pretrain.trainer.max_epochs=1",
        "trainer.threads=1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "pretrain.json").read_text())
    assert len(record["val_accuracy_history"]) == 1 and record["command"].startswith(
        "vlmnas pretrain"
    )
    space = SearchSpace.load("llava_next_pretrained").bind(inspect_backbone(out))
    assert space.to_arch(space.baseline).backbone == space.backbone.backbone_id
