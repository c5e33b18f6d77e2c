"""How people review a study: MLflow tracking on plain trial records."""

from ._mlflow import STATES, MlflowTracker, TrialRecord, tracking_uri_for

__all__ = ["STATES", "MlflowTracker", "TrialRecord", "tracking_uri_for"]
