"""How people review a study: MLflow tracking, plots and the static report on plain trial
records, and the UIs (MLflow, optuna-dashboard). Imports none of the other packages."""

from ._html import Link, write_report
from ._mlflow import STATES, MlflowTracker, TrialRecord, tracking_uri_for
from ._plots import Objective, PlotTrial, figure_divs, write_plots
from ._serve import dashboard_command, optuna_dashboard_command, serve, supervise

__all__ = [
    "STATES",
    "Link",
    "MlflowTracker",
    "Objective",
    "PlotTrial",
    "TrialRecord",
    "dashboard_command",
    "figure_divs",
    "optuna_dashboard_command",
    "serve",
    "supervise",
    "tracking_uri_for",
    "write_plots",
    "write_report",
]
