"""Export, then rebuild: the exported vision, embedding and KV-cache decoder graphs run
in plain onnxruntime sessions give the accuracy written in metrics.json, and `vlmnas train candidate=...` retrains the exact
architecture with its seed to the same accuracy (within 2 points)."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from search_spaces import ArchConfig, KVParts, generate_accuracy
from tests.integration._cli import QUICK_TIMING, vlmnas
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
    *QUICK_TIMING,
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

    # The exported graphs in plain onnxruntime sessions, driven by what generation.json
    # says, with the host-side greedy loop, over the validation set.
    data = VQAData.load(Path(config["data"]["root"]))
    arch = ArchConfig.from_dict(config["arch"])
    val = encode_eval(data.val, data.tokenizer, arch, data.text_len, ImageCache())
    generation = folder / config["deployment"]["model"]
    manifest = json.loads((generation / "generation.json").read_text())

    def runner(part):
        graph = manifest["graphs"][part]
        sess = ort.InferenceSession(
            str(generation / graph["file"]), providers=["CPUExecutionProvider"]
        )
        wanted = [i.name for i in sess.get_inputs()]

        def run(feeds):
            out = sess.run(graph["outputs"], {n: feeds[n] for n in wanted})
            return dict(zip(graph["outputs"], out, strict=True))

        return run

    cache = manifest["kv_cache"]
    parts = KVParts(
        vision=runner("vision"),
        embedding=runner("embedding"),
        decoder=runner("decoder"),
        layers=cache["layers"],
        kv_heads=cache["kv_heads"],
        head_dim=cache["head_dim"],
        image_token_id=manifest["image_token_id"],
        extra=manifest["modality_inputs"],
    )
    plain = generate_accuracy(parts, val, max_new_tokens=data.max_answer_tokens)
    assert plain == recorded["cpu/accuracy"]

    run = vlmnas("train", f"candidate={folder / 'config.yaml'}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    retrained = json.loads((folder / "retrained" / "metrics.json").read_text())["metrics"]
    assert abs(retrained["cpu/accuracy"] - recorded["cpu/accuracy"]) <= 0.02
