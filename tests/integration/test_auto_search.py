"""`vlmnas search study.sampler=auto`: untrained candidates are measured in the driver
(MLflow cheap records, not trials), constraint breakers among them are never trained,
the chosen ones run as Optuna trials with the reason they were chosen, and a resumed
study goes on from what it knows."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import TINY, vlmnas

pytestmark = pytest.mark.slow

# 16 visual tokens per tile, 4 when pooled; a grid set's largest grid plus the global
# view fixes the tiles (search_spaces/conf/search_space/llava_next.yaml): 1x1 without
# pooling is 32 tokens, 1x2 and 2x2 are 48 and 80; every pooled set is at most 20.
LIMIT = "image_tokens <= 40"


def _cheap_runs(workdir: Path, name: str) -> list[object]:
    client = MlflowClient(tracking_uri_for(workdir))
    experiment = client.get_experiment_by_name(name)
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'cheap'"
    )


def test_auto_measures_many_trains_few_and_honours_constraints(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    common = [
        f"study.workdir={workdir}",
        "study.name=auto",
        "study.sampler=auto",
        "study.cheap_per_training=3",
        f'study.constraints=["{LIMIT}"]',
        *TINY,
    ]
    run = vlmnas("search", "study.n_trials=4", *common)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4
    assert trials[0].user_attrs.get("baseline")  # the store's queued baseline goes first
    for t in trials[1:]:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert "chosen_by" in t.user_attrs  # "random start" or the improvement it expected
        assert "infeasible" not in t.user_attrs  # auto trains only what meets the limit
    cheap = _cheap_runs(workdir, "auto")
    # up to 3 new candidates measured before each of the 3 trainings auto chose
    assert 3 <= len(cheap) <= 9
    assert all(r.info.status == "FINISHED" for r in cheap)
    assert all("trial_number" not in r.data.tags for r in cheap)
    for r in cheap:
        over = r.data.metrics["image_tokens"] > 40
        assert r.data.tags["state"] == ("infeasible" if over else "measured")
        assert ("infeasible_reason" in r.data.tags) == over
        assert "cpu/latency_p50_ms" in r.data.metrics and "cpu/accuracy" not in r.data.metrics
    trained = {t.user_attrs["arch_id"] for t in trials}
    rejected = {r.data.tags["arch_id"] for r in cheap if r.data.tags["state"] == "infeasible"}
    assert not trained & rejected
    assert "untrained candidates measured" in run.stdout

    # a top-up resumes from the store: the finished trials are known, nothing repeats
    again = vlmnas("search", "study.n_trials=5", *common)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = study.get_trials()
    assert len(trials) == 5
    assert len({t.user_attrs["arch_id"] for t in trials}) == 5
    assert "chosen_by" in trials[-1].user_attrs
