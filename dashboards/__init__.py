"""How people review a study: MLflow tracking on plain trial records, and the UI."""

from ._mlflow import STATES, MlflowTracker, TrialRecord, tracking_uri_for
from ._serve import dashboard_command, optuna_dashboard_hint, serve

__all__ = [
    "STATES",
    "MlflowTracker",
    "TrialRecord",
    "dashboard_command",
    "optuna_dashboard_hint",
    "serve",
    "tracking_uri_for",
]
