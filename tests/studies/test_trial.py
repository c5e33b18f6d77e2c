"""`run_trial` on a candidate cut from a checkpoint: what it loads and what it trains."""

from __future__ import annotations

from pathlib import Path

from studies import load_config, run_trial
from studies._config import text_side
from tests._checkpoints import tiny_llava_checkpoint
from tests.integration._cli import QUICK_TIMING
from trainers.data import prepare_data


def test_a_trained_cut_loads_the_checkpoint_once(tmp_path: Path, monkeypatch) -> None:
    # Step 1 cuts the checkpoint to time the untrained candidate; training starts from
    # that model, so the folder is read once per trial, not once per step.
    from transformers import LlavaNextForConditionalGeneration

    folder = tiny_llava_checkpoint(tmp_path / "ckpt", lm_layers=4)
    cfg = load_config(
        [
            f"study.workdir={tmp_path / 'runs'}",
            "search_space=llava_next_pretrained",
            f"backbone.path={folder}",
            *QUICK_TIMING,
            "trainer.max_epochs=1",
            "trainer.threads=1",
            "data.train_images=16",
            "data.val_images=4",
        ]
    )
    data = prepare_data(cfg.data, cfg.workdir, text_side(cfg))
    space = cfg.space
    hybrid = {"fusion.placement": "hybrid", "fusion.xattn_layers": "upper_half"}
    arch = space.to_arch({**space.baseline, **hybrid, "fusion.gating": "tanh", "lm.drop_layers": 1})
    loads: list[str] = []
    load = LlavaNextForConditionalGeneration.from_pretrained.__func__  # type: ignore[attr-defined]

    def counted(cls, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(str(path))
        return load(cls, path, *args, **kwargs)

    monkeypatch.setattr(LlavaNextForConditionalGeneration, "from_pretrained", classmethod(counted))
    outcome = run_trial(arch, 1, cfg, data.root)
    assert outcome.info["weights"] == "trained"
    assert outcome.metrics["train_s"] > 0
    assert loads == [str(folder)]
