"""What cheap-first rejection and ASHA save on the `edge_cpu` study.

    python bench/edge_cpu_savings.py            # 3 studies of 30 trials, reduced budget
    python bench/edge_cpu_savings.py --small    # smoke run: 4 trials each, tiny data

Runs the same `edge_cpu` study (same seed, same sampler, same constraints) three times,
each in its own workdir so no cache is shared:

- `both`: cheap-first rejection and ASHA on;
- `no_reject`: every candidate is trained; constraints are checked after training;
- `no_asha`: cheap-first on, ASHA off.

and prints, per study: trials trained, epochs run, wall time, feasible front size and
final hypervolume (reference point: accuracy 0, latency at the constraint's bound).
The training budget is reduced (`--epochs`, `--train-images`) so the three studies fit
in about half an hour on a 2-core machine; the ratios are what matters.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import add_budget_args, run_search, study_budget  # noqa: E402  (bench/ is the script's folder)

from dashboards import tracking_uri_for  # noqa: E402
from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._front import front_of, state_of  # noqa: E402

VARIANTS = {
    "both": ["study.asha.enabled=true"],
    "no_reject": ["study.asha.enabled=true", "study.reject_before_training=false"],
    "no_asha": ["study.asha.enabled=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_args(parser, "runs-savings")
    args = parser.parse_args()
    budget = study_budget(
        args,
        small=[
            "trainer.max_epochs=3",
            "data.train_images=60",
            "data.val_images=10",
            "study.n_trials=4",
            "study.population_size=2",
        ],
    )
    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"budget: {' '.join(budget)}")
    rows = []
    for name, extra in VARIANTS.items():
        workdir = Path(args.workdir).resolve() / name
        wall = run_search(name, ["study=edge_cpu", f"study.workdir={workdir}", *budget, *extra])
        rows.append({"variant": name, "wall_s": wall, **_summary(workdir)})
        print(f"{name}: {wall:.0f} s", flush=True)
    print()
    print(
        "| variant | trials | trained | epochs run | infeasible | pruned | wall time |"
        " front | hypervolume |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['trials']} | {r['trained']} | {r['epochs']} |"
            f" {r['infeasible']} | {r['pruned']} | {r['wall_s'] / 60:.1f} min |"
            f" {r['front']} | {r['hypervolume']:.4f} |"
        )
    (Path(args.workdir) / "savings.json").write_text(json.dumps(rows, indent=1))


def _summary(workdir: Path) -> dict[str, float]:
    study = optuna.load_study(study_name="edge_cpu", storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials = study.get_trials()
    client = MlflowClient(tracking_uri_for(workdir))
    experiment = client.get_experiment_by_name("edge_cpu")
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'trial'"
    )
    epochs = trained = 0
    for child in children:
        # Per-epoch values are logged at steps 1..n; step 0 holds the final value.
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        steps = sum(m.step >= 1 for m in history)
        epochs += steps
        trained += steps > 0
    front = front_of(trials, load_config(["study=edge_cpu"]).study.objectives)
    # Reference: no accuracy, latency at the edge_cpu budget (cpu/latency_p95_ms <= 1.0).
    hv = front.hypervolume([0.0, 1.0])
    return {
        "trials": len(trials),
        "trained": trained,
        "epochs": epochs,
        "infeasible": sum(state_of(t) == "infeasible" for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "front": len(front),
        "hypervolume": hv,
    }


if __name__ == "__main__":
    main()
