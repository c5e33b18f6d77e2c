from __future__ import annotations

import copy

import optuna
import pytest
import torch
import yaml

from search_spaces import ArchConfig, SearchSpace, SearchSpaceError
from search_spaces._space import CONF_DIR
from tests._archs import VOCAB, random_inputs, random_model


def _raw() -> dict:
    return yaml.safe_load((CONF_DIR / "llava_next.yaml").read_text())


def test_space_to_config_to_model_forward_shapes() -> None:
    space = SearchSpace.load("llava_next")
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = set()
    for _ in range(6):
        trial = study.ask()
        arch = space.sample(trial, {"cpu": ("fp32",)})
        seen.add(arch.arch_id)
        assert arch.quant_for("cpu") == "fp32"
        pixels, index, ids = random_inputs(arch, text_len=12)
        with torch.no_grad():
            logits = random_model(arch)(pixels, index, ids)
        assert logits.shape == (2, ids.shape[1], VOCAB) and torch.isfinite(logits).all()
        study.tell(trial, [0.0, 0.0])
    assert len(seen) > 1, "sampling should vary the architecture"


def test_sampled_params_are_the_dotted_names() -> None:
    space = SearchSpace.load("llava_next")
    trial = optuna.create_study().ask()
    space.sample(trial, {"cpu": ("fp32",)})
    assert {"lm.depth", "lm.width", "vision.depth", "grid_pinpoints", "quant.cpu"} <= set(
        trial.params
    )


def test_arch_id_is_stable_and_weights_id_ignores_quant() -> None:
    a = ArchConfig(quant=(("cpu", "fp32"),))
    b = ArchConfig.from_dict(copy.deepcopy(a.to_dict()))
    assert a == b and a.arch_id == b.arch_id
    c = ArchConfig(quant=(("cpu", "int8_dynamic"),))
    assert c.arch_id != a.arch_id and c.weights_id == a.weights_id


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(bogus=[1]), "unknown key 'bogus'"),
        (lambda d: d["lm"].update(depth=[]), "lm.depth is an empty choice list"),
        (lambda d: d["lm"].update(heads=[3]), "lm.heads=3 does not divide lm.width=64"),
        (lambda d: d["vision"].update(colour=[1]), "unknown key 'vision.colour'"),
        (
            lambda d: d["fusion"].update(placement=["late"]),
            "fusion.placement choice 'late' not allowed",
        ),
        (
            lambda d: d["fusion"].update(share_ratio=[0.5, 1.5]),
            "fusion.share_ratio choice 1.5 outside [0, 1]",
        ),
        (
            lambda d: d["fusion"].update(text_only_from=[2]),
            "fusion.text_only_from=2 is beyond lm.depth=2",
        ),
        (lambda d: d["fusion"].update(gating=[]), "fusion.gating is an empty choice list"),
        (lambda d: d["vision"].update(depth=[1, 2]), "second_last needs vision.depth >= 2"),
        (lambda d: d["grid_pinpoints"].update(bad=[[0, 1]]), "grid_pinpoints.bad"),
        (lambda d: d["lm"].update(width=["wide"]), "lm.width choice 'wide' must be an integer"),
        (lambda d: d["baseline"].update({"lm.colour": 1}), "baseline.lm.colour is not a parameter"),
        (
            lambda d: d["baseline"].update({"fusion.image_attention": "text_only"}),
            "baseline is not a valid architecture",
        ),
        (lambda d: d.pop("baseline"), "missing 'baseline'"),
    ],
)
def test_bad_space_is_one_line_error_naming_key(mutate, needle: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(SearchSpaceError) as err:
        SearchSpace.from_mapping(raw, name="llava_next")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_baseline_values_outside_narrowed_choices_are_sampled() -> None:
    raw = _raw()
    raw["lm"]["width"] = [32]
    space = SearchSpace.from_mapping(raw, name="narrow")
    assert space.baseline_outside() == {"lm.width": 96}
    params = space.baseline_params({"cpu": ("fp32",)})
    assert "lm.width" not in params and params["fusion.placement"] == "early"
    study = optuna.create_study()
    study.enqueue_trial(params)
    assert space.sample(study.ask(), {"cpu": ("fp32",)}).lm.width == 32


@pytest.mark.parametrize("seed", range(4))
def test_trial_zero_samples_nothing_where_a_later_parameter_is_widened(seed: int) -> None:
    """The baseline block predates the recipes; widened in a study, trial 0 still takes
    their defaults instead of a sampled value."""
    raw = _raw()
    raw.setdefault("recipe", {})["augment"] = [True, False]
    raw["recipe"]["align_epochs"] = [2, 0]
    space = SearchSpace.from_mapping(raw, name="wide")
    quant = {"cpu": ("fp32",)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial(space.baseline_params(quant))
    trial = study.ask()
    arch = space.sample(trial, quant)
    assert arch.recipe.augment is False and arch.recipe.align_epochs == 0
    assert set(trial.params) <= set(space.baseline_params(quant))


def test_unknown_space_name_lists_known() -> None:
    with pytest.raises(
        SearchSpaceError, match="known: \\['llava_next', 'llava_next_pretrained', 'tabular'\\]"
    ):
        SearchSpace.load("nope")
