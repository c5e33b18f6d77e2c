"""Export, then rebuild: the exported ONNX model run in plain onnxruntime gives the
accuracy written in metrics.json, and `vlmnas train candidate=...` retrains the exact
architecture with its seed to the same accuracy (within 2 points)."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from search_spaces import ArchConfig, decode_accuracy
from tests.integration._cli import vlmnas
from trainers.data import ImageCache, VQAData, encode_eval

pytestmark = pytest.mark.slow

LEARNS = [  # a budget on which the tiny candidate learns something (accuracy > 0)
    "trainer.max_epochs=12",
    "trainer.lr=0.003",
    "trainer.threads=1",
    "data.train_images=128",
    "data.val_images=16",
    "search_space.lm.width=[32]",
    "search_space.vision.width=[32]",
    "search_space.fusion.placement=[early]",
]


def test_export_then_retrain_reproduces_the_winner(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    args = [f"study.workdir={workdir}", "study.name=rt", *LEARNS]
    run = vlmnas("search", "study.n_trials=1", *args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run = vlmnas("export", *args, "export.policy=knee")
    assert run.returncode == 0, run.stderr
    (folder,) = sorted((workdir / "rt" / "export").iterdir())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    recorded = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert recorded["cpu/accuracy"] > 0.05, recorded  # the check below would be vacuous at 0
    card = (folder / "model_card.md").read_text()
    assert "| cpu | " in card and "git commit" in card and "measured" in card

    # The exported model in plain onnxruntime, over the validation set.
    data = VQAData.load(Path(config["data"]["root"]))
    arch = ArchConfig.from_dict(config["arch"])
    val = encode_eval(data.val, data.tokenizer, arch, data.text_len, ImageCache())
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def forward(pixels, index, ids):
        feeds = {"pixel_values": pixels, "image_index": index, "input_ids": ids}
        return sess.run(["logits"], feeds)[0]

    plain = decode_accuracy(forward, val, max_new_tokens=data.max_answer_tokens)
    assert plain == recorded["cpu/accuracy"]

    run = vlmnas("train", f"candidate={folder / 'config.yaml'}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    retrained = json.loads((folder / "retrained" / "metrics.json").read_text())["metrics"]
    assert abs(retrained["cpu/accuracy"] - recorded["cpu/accuracy"]) <= 0.02
