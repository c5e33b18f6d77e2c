from __future__ import annotations

import optuna
import pytest

from search_spaces import SearchSpace
from studies import load_config
from studies._config import SAMPLERS
from studies._samplers import make_sampler


def _run(sampler_name: str, seed: int, n: int = 8) -> list[dict]:
    cfg = load_config(
        [f"study.sampler={sampler_name}", f"study.seed={seed}", "study.population_size=3"]
    )
    space: SearchSpace = cfg.space
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(cfg.study)
    )
    study.enqueue_trial(space.baseline_params({"cpu": ("fp32",)}))
    for _ in range(n):
        trial = study.ask()
        arch = space.sample(trial, {"cpu": ("fp32",)})
        # a cheap stand-in objective with a real trade-off: wider is better and slower
        study.tell(
            trial,
            [arch.lm.width / 128 - 0.1 * arch.lm.depth, arch.image_tokens * arch.lm.width / 1e4],
        )
    return [t.params for t in study.trials]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_drives_the_space_and_is_seeded(name: str) -> None:
    first = _run(name, seed=3)
    assert first[0]["fusion.placement"] == "early"  # the baseline went first
    assert len({str(sorted(p.items())) for p in first}) > 2  # it explores
    assert _run(name, seed=3) == first  # same seed, same sequence
