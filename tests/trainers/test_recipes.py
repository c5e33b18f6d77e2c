"""Training recipes (issue [7]): each test fails if its option were silently ignored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_spaces import (
    ArchConfig,
    SearchSpace,
    SearchSpaceError,
    VisionTowerConfig,
    VlmModel,
)
from search_spaces._adapters import sincos_position_table
from search_spaces._arch import RecipeConfig
from trainers import (
    Teacher,
    TrainerConfig,
    align,
    cache_key,
    distillation_loss,
    fit,
    model_for,
    similarities,
    torch_forward,
    train_rows,
)
from trainers._recipes import answer_logits, answer_width
from trainers.data import LEFT_RIGHT_WORDS, ImageCache, encode_eval

FAST = TrainerConfig(max_epochs=2, batch_size=16, threads=1, lr=3e-3)


def _with(arch: ArchConfig, **recipe) -> ArchConfig:
    return dataclasses.replace(arch, recipe=RecipeConfig(**recipe))


def test_stage1_aligns_projector_and_lowers_contrastive_loss(shapes_data, tiny_arch) -> None:
    torch.manual_seed(0)
    model = model_for(tiny_arch, shapes_data)
    rows, _ = train_rows(tiny_arch, shapes_data, ImageCache(), 0)
    projector = [p.detach().clone() for p in model.projector.parameters()]
    lm = [model.hf.model.language_model.layers, model.hf.lm_head]
    lm_before = [p.detach().clone() for m in lm for p in m.parameters()]
    embed = model.embed.weight.detach().clone()
    losses = align(
        model,
        rows,
        epochs=6,
        batch_size=16,
        lr=3e-3,
        pad_id=shapes_data.tokenizer.pad_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert losses[-1] < losses[0] - 0.05, losses
    assert any(
        not torch.equal(a, b) for a, b in zip(projector, model.projector.parameters(), strict=True)
    )
    # the text side and the LM stay as they were: stage 1 moves the image side only
    lm_after = [p for m in lm for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(lm_before, lm_after, strict=True))
    assert torch.equal(embed, model.embed.weight)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for stage 2


def test_fit_runs_stage1_and_reports_it(shapes_data, tiny_arch, tmp_path: Path) -> None:
    result = fit(_with(tiny_arch, align_epochs=2), shapes_data, FAST, tmp_path)
    assert result.metrics["align_loss_last"] < result.metrics["align_loss_first"]
    plain = fit(tiny_arch, shapes_data, FAST, tmp_path / "plain")
    assert "align_loss_first" not in plain.metrics
    # the recipe changed the trained weights
    a, b = result.model.state_dict(), plain.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_similarity_filter_drops_the_pairs_below_the_threshold(
    shapes_data, tiny_arch, tmp_path: Path
) -> None:
    import lightning as L

    arch = _with(tiny_arch, align_epochs=1)
    # the stage-1 model fit builds, rebuilt the same way: its similarities per pair
    torch.set_num_threads(FAST.threads)
    L.seed_everything(FAST.seed, verbose=False)
    model = model_for(arch, shapes_data)
    rows, _ = train_rows(arch, shapes_data, ImageCache(), 0)
    pad = shapes_data.tokenizer.pad_id
    align(
        model,
        rows,
        epochs=1,
        batch_size=FAST.batch_size,
        lr=FAST.lr,
        pad_id=pad,
        generator=torch.Generator().manual_seed(FAST.seed),
    )
    sims = similarities(model, rows, pad)
    assert sims.shape == (len(rows),) and (sims.abs() <= 1 + 1e-5).all()
    threshold = float(sims.median())
    result = fit(
        _with(tiny_arch, align_epochs=1, filter_threshold=threshold), shapes_data, FAST, tmp_path
    )
    dropped = int((sims < threshold).sum())
    assert 0 < dropped < len(rows)
    assert result.metrics["filtered_pairs"] == dropped
    keep_all = fit(
        _with(tiny_arch, align_epochs=1, filter_threshold=-1.0), shapes_data, FAST, tmp_path / "all"
    )
    assert "filtered_pairs" not in keep_all.metrics
    with pytest.raises(ValueError, match="filter_threshold=1.0 dropped every training pair"):
        fit(_with(tiny_arch, align_epochs=1, filter_threshold=1.0), shapes_data, FAST, tmp_path)


def test_distillation_loss_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 1, -100, -100], [2, -100, -100, -100, 4]])

    def loss(teacher: torch.Tensor, teacher_labels: torch.Tensor = labels) -> torch.Tensor:
        # the teacher's logits at its answer positions, as `Teacher.logits` holds them
        return distillation_loss(logits, answer_logits(teacher, teacher_labels, 2), labels, 2.0)

    assert loss(logits.clone()).item() == pytest.approx(0, abs=1e-6)
    assert loss(torch.randn(2, 5, 7)).item() > 0.01
    # only answer positions count: disagreement elsewhere costs nothing
    other = logits.clone()
    other[labels == -100] = torch.randn_like(other[labels == -100])
    assert loss(other).item() == pytest.approx(0, abs=1e-6)
    # a teacher whose sequences lay the rows out otherwise (three more tokens before the
    # answers: more visual tokens) is matched answer token to answer token
    shifted = torch.cat([torch.randn(2, 3, 7), logits], dim=1)
    shifted_labels = torch.cat([torch.full((2, 3), -100), labels], dim=1)
    assert loss(shifted, shifted_labels).item() == pytest.approx(0, abs=1e-6)


def test_a_student_follows_its_teacher(shapes_data, tiny_arch, tmp_path: Path) -> None:
    """With distill_weight=1 the labels are ignored: a teacher that always answers 'no'
    makes a student that answers 'no', whatever the question."""
    tok = shapes_data.tokenizer
    rows, _ = train_rows(tiny_arch, shapes_data, ImageCache(), 0)
    logits = np.full((len(rows), answer_width(rows), len(tok)), -10.0, dtype=np.float16)
    no = tok.encode("no")[0]
    logits[:, :, no] = 10.0
    teacher = Teacher(key="always-no", logits=logits, val_accuracy=0.0)
    cfg = dataclasses.replace(FAST, max_epochs=4)
    student = fit(
        _with(tiny_arch, distill_weight=1.0, distill_temperature=1.0),
        shapes_data,
        cfg,
        tmp_path,
        teacher=teacher,
    )
    val = encode_eval(shapes_data.val, tok, tiny_arch, shapes_data.text_len, ImageCache())
    from search_spaces import greedy_decode

    answers = greedy_decode(torch_forward(student.model), val, shapes_data.max_answer_tokens)
    firsts = [a[0] if len(a) else -1 for a in answers]
    assert np.mean(np.asarray(firsts) == no) > 0.9
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(_with(tiny_arch, distill_weight=0.5), shapes_data, FAST, tmp_path)


def test_student_cache_key_depends_on_the_teacher(shapes_data, tiny_arch) -> None:
    arch = _with(tiny_arch, distill_weight=0.5)
    a = Teacher("a", np.zeros(1, np.float16), 0.0)
    b = Teacher("b", np.zeros(1, np.float16), 0.0)
    assert cache_key(arch, shapes_data, FAST, a) != cache_key(arch, shapes_data, FAST, b)
    # a candidate that does not distil does not depend on any teacher
    assert cache_key(tiny_arch, shapes_data, FAST, a) == cache_key(tiny_arch, shapes_data, FAST)


def test_augmentation_never_offers_a_flip_on_left_right_rows(shapes_data, tiny_arch) -> None:
    rows, paraphrased = train_rows(_with(tiny_arch, augment=True), shapes_data, ImageCache(), 0)
    allow_flip = rows.tensors[6]
    for record, flip in zip(shapes_data.train, allow_flip.tolist(), strict=True):
        words = {w for q, a in record.turns for w in f"{q} {a}".lower().split()}
        if words & LEFT_RIGHT_WORDS or any(w.strip("?.") in LEFT_RIGHT_WORDS for w in words):
            assert not flip
    assert paraphrased > 0
    teacher_ok = rows.tensors[8]
    assert int((~teacher_ok).sum()) == paraphrased  # paraphrased rows skip distillation


def test_augmentation_changes_the_training_pixels(shapes_data, tiny_arch, tmp_path: Path) -> None:
    """The pixels the model is trained on differ from the encoded ones when augment is on."""
    seen: list[torch.Tensor] = []

    def spy(arch: ArchConfig) -> list[torch.Tensor]:
        seen.clear()
        original = torch.nn.Module.__call__

        def record(module, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(module, VlmModel) and module.training:
                seen.append(args[0].detach().clone())
            return original(module, *args, **kwargs)

        torch.nn.Module.__call__ = record  # type: ignore[method-assign]
        try:
            fit(arch, shapes_data, dataclasses.replace(FAST, max_epochs=1), tmp_path)
        finally:
            torch.nn.Module.__call__ = original  # type: ignore[method-assign]
        return list(seen)

    plain = spy(tiny_arch)
    augmented = spy(_with(tiny_arch, augment=True))
    assert len(plain) == len(augmented) > 0
    # same shuffling seed: the same rows; the augmented pixels differ
    assert any(not torch.equal(p, a) for p, a in zip(plain, augmented, strict=True))


def test_sincos_positions_are_fixed_2d_sinusoids(shapes_data, tiny_arch) -> None:
    vision = dataclasses.replace(tiny_arch.vision, pos_encoding="sincos_2d")
    arch = dataclasses.replace(tiny_arch, vision=vision)
    model = model_for(arch, shapes_data)
    table = model.vision_tower.embeddings.position_embedding.weight
    grid = arch.vision.tile_size // arch.vision.patch_size
    torch.testing.assert_close(table, sincos_position_table(grid, vision.width), rtol=0, atol=0)
    assert table.shape == (1 + grid * grid, vision.width)  # the CLS token, then the patches
    assert (table[0] == 0).all()
    pos, half = table[1:], vision.width // 2
    # patches in one row share the row half, patches in one column the column half
    assert torch.allclose(pos[0, :half], pos[1, :half])
    assert not torch.allclose(pos[0, half:], pos[1, half:])
    assert torch.allclose(pos[0, half:], pos[grid, half:])
    assert not torch.allclose(pos[0, :half], pos[grid, :half])
    # never trained: no gradient reaches it
    assert not table.requires_grad
    rows, _ = train_rows(arch, shapes_data, ImageCache(), 0)
    pixels, _, index, ids, labels = (t[:4] for t in rows.tensors[:5])
    F.cross_entropy(
        model(pixels, index, ids).flatten(0, 1), labels.flatten(), ignore_index=-100
    ).backward()
    assert table.grad is None
    assert model.vision_tower.embeddings.patch_embedding.weight.grad is not None
    learnable = model_for(tiny_arch, shapes_data)
    assert learnable.vision_tower.embeddings.position_embedding.weight.requires_grad


def test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(
    shapes_data, tiny_arch
) -> None:
    rows, _ = train_rows(tiny_arch, shapes_data, ImageCache(), 0)
    pixels, _, index, ids, labels = (t[:8] for t in rows.tensors[:5])
    grads, calls = [], []
    for on in (False, True):
        torch.manual_seed(0)
        model = model_for(tiny_arch, shapes_data).train()
        model.set_checkpointing(on)
        # transformers checkpoints a layer's forward, not its __call__ (the layer's own hooks
        # run once), so the probe is the layer's first submodule; a pre-hook, as a
        # recomputation may stop early, before a forward hook would run
        first = model.hf.model.language_model.layers[0].input_layernorm
        hook = first.register_forward_pre_hook(lambda *_, on=on: calls.append(on))
        logits = model(pixels, index, ids)
        F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
        hook.remove()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert calls == [False, True, True]  # once without, twice with: recomputed in backward
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_recipes_are_search_space_dimensions() -> None:
    space = SearchSpace.load("llava_next")
    data = {
        **{k: v for k, v in _raw("llava_next").items()},
        "recipe": {
            "align_epochs": [0, 2],
            "distill_weight": [0.0, 0.5],
            "distill_temperature": [2.0],
            "augment": [False, True],
            "filter_threshold": [-1.0],
        },
    }
    searched = SearchSpace.from_mapping(data, name="with_recipes")
    values = {p["recipe.align_epochs"] for p in _samples(searched)}
    assert values == {0, 2}
    arch = searched.to_arch(
        {**space.baseline_params({}), "recipe.align_epochs": 2, "recipe.augment": True}
    )
    assert arch.recipe.align_epochs == 2 and arch.recipe.augment is True
    bad = {**data, "recipe": {**data["recipe"], "filter_threshold": [-1.0, 0.7]}}
    with pytest.raises(SearchSpaceError, match="every recipe.align_epochs choice must be > 0"):
        SearchSpace.from_mapping(bad, name="bad")
    with pytest.raises(SearchSpaceError, match="recipe.distill_weight choice 2.0 outside"):
        SearchSpace.from_mapping(
            {**data, "recipe": {**data["recipe"], "distill_weight": [2.0]}}, name="bad"
        )


def test_default_recipe_keeps_earlier_arch_ids() -> None:
    """Fields added with the recipes leave ids of earlier studies, caches and the
    tabular table unchanged at their defaults, and change them away from defaults."""
    base = ArchConfig()
    assert base.arch_id == "c1a133412eec"  # computed before the recipes existed
    assert _with(base, augment=True).weights_id != base.weights_id
    assert _with(base, augment=True).graph_id == base.graph_id == base.weights_id
    sincos = dataclasses.replace(base, vision=VisionTowerConfig(pos_encoding="sincos_2d"))
    assert sincos.arch_id != base.arch_id
    assert ArchConfig.from_dict(_with(base, align_epochs=2).to_dict()).recipe.align_epochs == 2


def _raw(name: str) -> dict:
    import yaml

    from search_spaces._space import CONF_DIR

    return yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())


def _samples(space: SearchSpace) -> list[dict]:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(20):
        trial = study.ask()
        space.sample(trial, {"cpu": ("fp32",)})
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out


def test_the_study_teacher_is_trained_once_then_cached(
    shapes_data, tiny_arch, tmp_path: Path, monkeypatch
) -> None:
    import trainers._cache as cache_module
    from trainers import study_teacher

    cfg = dataclasses.replace(FAST, teacher_epochs=1)
    first = study_teacher(tiny_arch, shapes_data, cfg, tmp_path / "cache", tmp_path / "t1")
    rows, _ = train_rows(tiny_arch, shapes_data, ImageCache(), 0)
    assert first.logits.shape == (len(rows), answer_width(rows), len(shapes_data.tokenizer))
    assert list((tmp_path / "cache").glob("teacher-*.npy"))

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr(cache_module, "fit", no_training)
    again = study_teacher(tiny_arch, shapes_data, cfg, tmp_path / "cache", tmp_path / "t2")
    assert again.key == first.key and np.array_equal(again.logits, first.logits)


def test_an_exported_teacher_folder_is_used_and_checked(
    shapes_data, tiny_arch, tmp_path: Path
) -> None:
    import json

    import yaml

    from trainers import study_teacher

    trained = fit(tiny_arch, shapes_data, FAST, tmp_path / "train")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"arch": tiny_arch.to_dict()}))
    torch.save(trained.model.state_dict(), folder / "model.pt")
    (folder / "word_tokenizer.json").write_text(shapes_data.tokenizer.to_json())
    cfg = dataclasses.replace(FAST, teacher=str(folder))
    teacher = study_teacher(tiny_arch, shapes_data, cfg, tmp_path / "cache", tmp_path / "w")
    assert teacher.key.startswith("export-")
    assert teacher.val_accuracy == pytest.approx(trained.metrics["val_accuracy"], abs=1e-9)
    vocab = json.loads(shapes_data.tokenizer.to_json())
    other = (
        {**vocab, "vocab": [*vocab["vocab"], "extra"]} if isinstance(vocab, dict) else [*vocab, "x"]
    )
    (folder / "word_tokenizer.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="another vocabulary"):
        study_teacher(tiny_arch, shapes_data, cfg, tmp_path / "cache2", tmp_path / "w")


def test_noise_gives_the_stated_share_of_pairs_a_wrong_image(tmp_path: Path) -> None:
    import json

    from trainers.data import ShapesVQAConfig, generate_shapes_vqa

    clean = generate_shapes_vqa(
        tmp_path / "clean", ShapesVQAConfig(seed=1, train_images=40, val_images=4)
    )
    noisy = generate_shapes_vqa(
        tmp_path / "noisy", ShapesVQAConfig(seed=1, train_images=40, val_images=4, noise=0.25)
    )
    a = json.loads((clean / "train.json").read_text())
    b = json.loads((noisy / "train.json").read_text())
    wrong = [i for i, r in enumerate(b) if r.get("mismatched")]
    assert len(wrong) == 10
    assert all(b[i]["image"] != a[i]["image"] for i in wrong)  # never their own image
    assert all(b[i] == a[i] for i in range(40) if i not in wrong)  # the rest untouched
    assert "noise" not in json.loads((clean / "manifest.json").read_text())  # older data valid
    with pytest.raises(ValueError, match="data.noise=1.5"):
        generate_shapes_vqa(tmp_path / "bad", ShapesVQAConfig(noise=1.5))


def test_a_teacher_that_is_not_a_folder_is_refused_at_load(tmp_path: Path) -> None:
    from studies import ConfigError, load_config

    with pytest.raises(ConfigError, match="trainer.teacher='/nowhere': allowed 'baseline'"):
        load_config(["trainer.teacher=/nowhere", f"study.workdir={tmp_path}"])
