"""MLflow tracking: one experiment and parent run per study, one child run per trial.

Works on plain `TrialRecord`s, so it knows nothing of Optuna, Ray or training. The store
is SQLite (`<workdir>/mlflow.db`) with artifacts under `<workdir>/mlartifacts/`; any
MLflow tracking URI works in its place.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STATES = ("complete", "pruned", "failed", "infeasible")
_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "infeasible": "FINISHED"}
_ROLE = "vlmnas.role"


@dataclass(frozen=True)
class TrialRecord:
    """What a finished trial hands to the dashboards."""

    number: int
    state: str  # one of STATES
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[Path, ...] = ()
    series: Mapping[str, list[float]] = field(default_factory=dict)  # per-epoch values

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"TrialRecord.state={self.state!r}; allowed {list(STATES)}")


def tracking_uri_for(workdir: Path) -> str:
    # timeout: SQLite waits this long for a lock instead of failing at once.
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}?timeout=30"


class MlflowTracker:
    """Writes a study to MLflow: `start_study`, then `log_trial` per trial, `end_study`."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.artifact_root = artifact_root
        self._experiments: dict[str, str] = {}

    @classmethod
    def for_workdir(cls, workdir: Path) -> MlflowTracker:
        return cls(tracking_uri_for(workdir), Path(workdir).resolve() / "mlartifacts")

    def experiment_id(self, study_name: str) -> str:
        if study_name in self._experiments:
            return self._experiments[study_name]
        self._experiments[study_name] = self._experiment_id(study_name)
        return self._experiments[study_name]

    def _experiment_id(self, study_name: str) -> str:
        exp = self.client.get_experiment_by_name(study_name)
        if exp is not None:
            return str(exp.experiment_id)
        location = (self.artifact_root / study_name).as_uri() if self.artifact_root else None
        # The MLflow 3 UI opens an experiment in its GenAI view unless told this kind.
        return str(
            self.client.create_experiment(
                study_name,
                artifact_location=location,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        )

    def start_study(self, study_name: str, config: Mapping[str, Any]) -> str:
        """The study's parent run id: reused when the study already has one."""
        exp_id = self.experiment_id(study_name)
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{_ROLE}` = 'study'", max_results=1
        )
        if found:
            run_id = str(found[0].info.run_id)
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(exp_id, run_name=study_name, tags={_ROLE: "study"})
            run_id = str(run.info.run_id)
        self._log_yaml(run_id, "study_config.yaml", config)
        return run_id

    def trial_runs(self, study_name: str, parent_run_id: str) -> dict[int, str]:
        """Trial number -> run id of the study's child runs (one search, for a driver
        that starts on a study with trials already logged)."""
        exp_id = self.experiment_id(study_name)
        children = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=50000,
        )
        return {
            int(run.data.tags["trial_number"]): str(run.info.run_id)
            for run in children
            if "trial_number" in run.data.tags
        }

    def log_trial(
        self, study_name: str, parent_run_id: str, record: TrialRecord, *, run_id: str | None = None
    ) -> str:
        """Create the trial's child run, or replace the contents of `run_id`; returns
        the run's id. (No search: the driver knows its runs, see `trial_runs`.)"""
        from mlflow.entities import Metric, Param, RunTag

        if run_id is None:
            run = self.client.create_run(
                self.experiment_id(study_name),
                run_name=f"trial-{record.number}",
                tags={
                    "mlflow.parentRunId": parent_run_id,
                    _ROLE: "trial",
                    "trial_number": str(record.number),
                },
            )
            run_id = str(run.info.run_id)
        now = _now_ms()
        metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items() if _finite(v)]
        for name, values in record.series.items():
            metrics += [
                Metric(name, float(v), now, step) for step, v in enumerate(values, 1) if _finite(v)
            ]
        params = [Param(k, str(v)[:6000]) for k, v in record.params.items()]
        tags = [RunTag(k, str(v)[:5000]) for k, v in {**record.tags, "state": record.state}.items()]
        for start in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(
                run_id,
                metrics=metrics[start : start + 900],
                params=params if start == 0 else [],
                tags=tags if start == 0 else [],
            )
        for path in record.artifacts:
            if Path(path).exists():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=_STATUS[record.state])
        return run_id

    def log_cheap(
        self,
        study_name: str,
        parent_run_id: str,
        *,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
    ) -> str:
        """A cheap record: an untrained candidate whose latency, size and coverage were
        measured (`study.sampler=auto`), as a child run tagged `vlmnas.role=cheap`. It
        has no trial number: trial views and the front leave it out."""
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(
            self.experiment_id(study_name),
            run_name=f"cheap-{tags.get('arch_id', '')}"[:250],
            tags={"mlflow.parentRunId": parent_run_id, _ROLE: "cheap"},
        )
        run_id = str(run.info.run_id)
        now = _now_ms()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if _finite(v)][:900],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def log_files(
        self, run_id: str, paths: Sequence[Path], folders: Mapping[str, Sequence[Path]] = {}
    ) -> None:
        """Log files as artifacts of `run_id`; those listed under a folder name go there."""
        for path in paths:
            folder = next((name for name, group in folders.items() if path in group), None)
            self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def tag_front(self, changes: Mapping[str, bool]) -> None:
        """Set `pareto=true|false` on the runs (by id) whose front membership changed."""
        for run_id, on_front in changes.items():
            self.client.set_tag(run_id, "pareto", "true" if on_front else "false")

    def mark_front(
        self,
        study_name: str,
        parent_run_id: str,
        front: set[int],
        models: Mapping[int, Sequence[Path]] | None = None,
    ) -> None:
        """Tag every trial run `pareto=true|false` (changed tags only), and log the
        deployed models of front members given in `models` once, under `models/`."""
        exp_id = self.experiment_id(study_name)
        children = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=50000,
        )
        for run in children:
            if "trial_number" not in run.data.tags:  # a cheap record, not a trial
                continue
            run_id = str(run.info.run_id)
            number = int(run.data.tags["trial_number"])
            on_front = "true" if number in front else "false"
            if run.data.tags.get("pareto") != on_front:
                self.client.set_tag(run_id, "pareto", on_front)
            files = (models or {}).get(number, ())
            if files and run.data.tags.get("models_logged") != "true":
                for path in files:
                    if Path(path).is_file():
                        self.client.log_artifact(run_id, str(path), artifact_path="models")
                self.client.set_tag(run_id, "models_logged", "true")

    def end_study(self, parent_run_id: str, *, failed: bool = False) -> None:
        self.client.set_terminated(parent_run_id, status="FAILED" if failed else "FINISHED")

    def _log_yaml(self, run_id: str, name: str, data: Mapping[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(
                yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False)
            )
            self.client.log_artifact(run_id, str(path))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
