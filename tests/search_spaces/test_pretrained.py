"""A checkpoint cut down: the folder checks, and each knob doing what it names."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search_spaces import (
    BackboneError,
    SearchSpace,
    SearchSpaceError,
    cut_down,
    image_index,
    image_processor,
    inspect_backbone,
    is_plain,
    pad_indices,
    tiles_of,
)
from tests._checkpoints import tiny_llava_checkpoint

SIZES = [(64, 64), (64, 96), (64, 128)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_llava_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", lm_layers=4)


@pytest.fixture(scope="module")
def space(folder):
    return SearchSpace.load("llava_next_pretrained").bind(inspect_backbone(folder))


def _inputs(arch, image_id, sizes=SIZES, text=(7, 8, 9), seed=0):
    """Processed random images and prompts: <image> expanded as the processor does."""
    rng = np.random.default_rng(seed)
    proc = image_processor(arch)
    pixels = np.zeros((len(sizes), arch.max_tiles, 3, 32, 32), np.float32)
    indices = []
    for i, (h, w) in enumerate(sizes):
        tiles = proc(
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), return_tensors="np"
        )["pixel_values"][0]
        pixels[i, : len(tiles)] = tiles
        indices.append(image_index((h, w), arch))
    n = [len(i) for i in indices]
    ids = np.zeros((len(sizes), max(n) + len(text) + 2), np.int64)
    for i, k in enumerate(n):
        ids[i, :k] = image_id if arch.fusion.early else 0
        ids[i, k : k + len(text)] = text
    return [
        torch.from_numpy(pixels),
        torch.from_numpy(pad_indices(indices, arch)),
        torch.from_numpy(ids),
    ], n


def _reference(folder, args, n, sizes=SIZES, **config):
    """The checkpoint's logits through transformers' own forward, one image at a time."""
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(folder, **config).eval()
    out = []
    with torch.no_grad():
        for i, (size, k) in enumerate(zip(sizes, n, strict=True)):
            t = 1 + (hf.config.image_grid_pinpoints and tiles_of(size, _arch_of(hf)) - 1)
            out.append(
                hf(
                    input_ids=args[2][i : i + 1, : k + 3],
                    pixel_values=args[0][i : i + 1, :t],
                    image_sizes=torch.tensor([size]),
                ).logits
            )
    return out


def _arch_of(hf):
    from search_spaces._backbone import backbone_arch

    return backbone_arch(hf.config)


def _check_against_reference(model, folder, args, n, **config):
    with torch.no_grad():
        ours = model(*args)
    for i, ref in enumerate(_reference(folder, args, n, **config)):
        torch.testing.assert_close(ours[i : i + 1, : ref.shape[1]], ref, rtol=1e-4, atol=1e-5)


def test_trial_zero_is_the_checkpoint_unchanged(folder, space):
    arch = space.to_arch(space.baseline)
    model = cut_down(space.backbone, arch).eval()
    args, n = _inputs(arch, model.image_token_id)
    _check_against_reference(model, folder, args, n)


@pytest.mark.parametrize("seed", range(8))
def test_trial_zero_as_the_driver_enqueues_it_samples_nothing(space, seed):
    """The driver enqueues `baseline_params` as trial 0; a knob missing there (such as
    the conditional fusion.share_ratio) would be sampled, and trial 0 would no longer
    be the checkpoint."""
    import optuna

    quant = {"cpu": ("fp32", "int8_dynamic")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial(space.baseline_params(quant))
    trial = study.ask()
    arch = space.sample(trial, quant)
    assert trial.params == space.baseline_params(quant)
    assert is_plain(arch)
    assert arch == space.to_arch(space.baseline_params(quant))


def test_feature_layer_truncates_the_tower(folder, space):
    arch = space.to_arch({**space.baseline, "vision.feature_layer": -1})
    model = cut_down(space.backbone, arch).eval()
    assert len(model.vision_tower.encoder.layers) == 3  # the checkpoint's -2 kept 2
    args, n = _inputs(arch, model.image_token_id)
    _check_against_reference(model, folder, args, n, vision_feature_layer=-1)
    arch = space.to_arch(space.baseline)  # -2: the last layer is not in the model
    assert len(cut_down(space.backbone, arch).vision_tower.encoder.layers) == 2


def test_max_tiles_restricts_processor_and_model_together(space):
    arch = space.to_arch({**space.baseline, "tokens.max_tiles": 3})
    assert arch.grid_pinpoints == ((1, 1), (1, 2), (2, 1))
    assert image_processor(arch).image_grid_pinpoints == [[32, 32], [32, 64], [64, 32]]
    model = cut_down(space.backbone, arch)
    assert model.hf.config.image_grid_pinpoints == [[32, 32], [32, 64], [64, 32]]
    full = space.to_arch(space.baseline)
    assert len(image_index((64, 64), arch)) < len(image_index((64, 64), full))


def test_pooling_quarters_the_tokens_per_tile(space):
    arch = space.to_arch({**space.baseline, "tokens.pooling": "avg2x2"})
    assert arch.vision.tokens_per_tile * 4 == space.backbone.arch.vision.tokens_per_tile
    model = cut_down(space.backbone, arch).eval()
    args, _ = _inputs(arch, model.image_token_id)
    with torch.no_grad():
        feats = model.tile_features(args[0])
    assert feats.shape[1] == arch.max_tiles * arch.vision.tokens_per_tile


def test_fastv_drops_the_least_attended_share_of_each_image(space):
    arch = space.to_arch({**space.baseline, "tokens.prune_ratio": 0.5, "tokens.prune_layer": 2})
    model = cut_down(space.backbone, arch).eval()
    args, n = _inputs(arch, model.image_token_id)
    seen = []
    layers = model.hf.model.language_model.layers
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, a, kw: seen.append(a[0].shape[1]), with_kwargs=True
        )
        for layer in layers
    ]
    with torch.no_grad():
        model(*args)
    for h in hooks:
        h.remove()
    length = args[2].shape[1]
    dropped = int(0.5 * max(n))
    assert seen[:2] == [length, length] and seen[2:] == [length - dropped] * 2
    # the unpruned model agrees on the text before the image: nothing depends on pruning
    baseline = cut_down(space.backbone, space.to_arch(space.baseline)).eval()
    with torch.no_grad():
        a, b = model(*args), baseline(*args)
    last = [k + 2 for k in n]
    assert all(not torch.allclose(a[i, j], b[i, j]) for i, j in enumerate(last))


def test_drop_layers_removes_the_lowest_block_influence(folder, space):
    from search_spaces import block_influence

    arch = space.to_arch({**space.baseline, "lm.drop_layers": 1})
    base = space.to_arch(space.baseline)
    model0 = cut_down(space.backbone, base).eval()
    args, _ = _inputs(base, model0.image_token_id)
    scores = block_influence(model0, [tuple(args)])
    model = cut_down(space.backbone, arch, [tuple(args)]).eval()
    dropped = model.hf.config.vlmnas["dropped_layers"]
    assert dropped == [int(np.argmin(scores))]
    layers = model.hf.model.language_model.layers
    assert len(layers) == model.hf.config.text_config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]


@pytest.mark.parametrize(
    "params",
    [
        {
            "fusion.placement": "hybrid",
            "fusion.xattn_layers": "upper_half",
            "fusion.gating": "tanh",
        },
        {"fusion.share_ratio": 0.5},
    ],
    ids=["hybrid", "share_ratio"],
)
def test_adapters_leave_the_checkpoint_unchanged_before_training(folder, space, params):
    arch = space.to_arch({**space.baseline, **params})
    model = cut_down(space.backbone, arch).eval()
    args, n = _inputs(arch, model.image_token_id)
    _check_against_reference(model, folder, args, n)
    trainable = [
        p for name, p in model.named_parameters() if ".xattn." in name or ".image_mlp." in name
    ]
    assert trainable


def _copy(folder: Path, tmp: Path) -> Path:
    dst = tmp / "ckpt"
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "no such folder"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
        (lambda d: (d / "processor_config.json").unlink(), "no processor"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({**json.loads((d / "config.json").read_text()), "model_type": "llava"})
            ),
            "model_type='llava'; need 'llava_next'",
        ),
    ],
    ids=["missing", "no-config", "no-weights", "no-processor", "no-tokenizer", "not-next"],
)
def test_a_bad_folder_is_refused_in_one_line(folder, tmp_path, damage, message):
    bad = _copy(folder, tmp_path)
    damage(bad)
    with pytest.raises(BackboneError, match=message) as err:
        inspect_backbone(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_knob_choices_are_checked_against_the_checkpoint(folder):
    space = SearchSpace.load("llava_next_pretrained")
    bad = dataclasses.replace(space, choices={**space.choices, "lm.drop_layers": (0, 3)})
    with pytest.raises(SearchSpaceError, match="lm.drop_layers=3; allowed 0..2"):
        bad.bind(inspect_backbone(folder))
    bad = dataclasses.replace(space, choices={**space.choices, "vision.feature_layer": (-1, -4)})
    with pytest.raises(SearchSpaceError, match="vision.feature_layer=-4"):
        bad.bind(inspect_backbone(folder))
