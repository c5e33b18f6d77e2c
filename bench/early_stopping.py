"""Early stopping on `edge_cpu`: epochs to reach the front, MO-ASHA against ASHA and none.

    python bench/early_stopping.py             # train 30 candidates fully, then replay
    python bench/early_stopping.py --small     # smoke run: 6 candidates, tiny data

1. Train: one `edge_cpu` study (sampler `random`, its constraints, reduced budget:
   `--epochs` on `--train-images`) in which every candidate that passes the constraints
   known before training is trained its full budget and validated after every epoch
   (`study.asha.enabled=true` with a grace period of the whole budget: reports, no rung).
   Each trial folder's `metrics.json` keeps the learning curve (`val_accuracy_history`),
   the final `cpu/accuracy` and the latency known before training.
2. Replay: the trained candidates arrive in `--orders` random orders, one at a time, as
   `max_concurrent: 1` runs them; each order is replayed with the same `ParetoRungs` the
   search uses (`studies/_rungs.py`, the preset's grace period and reduction factor):
   `none` trains everyone, `asha` ranks by val_accuracy alone (what the project used
   before), `moasha` by non-dominated rank over (val_accuracy so far, p95 latency). A
   pruned candidate costs the epochs it ran and is off the front, as in a search.

Reported per policy (mean over orders): epochs run, the hypervolume share it ends with
(of the front when every candidate is trained fully), and epochs until 95% of it is
reached (orders that never reach it count as not reached). The preset's latency constraints (p95 <= 1.0 ms, ttft <= 0.8 ms) exclude
every candidate of the LLaVA-NeXT family on the 2-core machine (1.9-4 ms there), so
the study keeps only its size constraint (`cpu/size_mb <= 1.5`) and the reference
point is accuracy 0 and 1.1x the slowest trained candidate's p95 latency.
A replay isolates the stopping rule: the sampler's choices do not react to what was
pruned (in a search they would), so every policy sees the same candidates.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import add_budget_args, run_search, study_budget  # noqa: E402  (bench/ is the script's folder)

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._pareto import hypervolume  # noqa: E402
from studies._rungs import ParetoRungs, milestones  # noqa: E402

ACC, LAT = "cpu/accuracy", "cpu/latency_p95_ms"
DIRECTIONS = ["maximize", "minimize"]
POLICIES = ("none", "asha", "moasha")


def train(workdir: Path, budget: list[str]) -> list[dict]:
    """Candidates trained fully: their curve, final accuracy and latency."""
    if not (workdir / "optuna.db").exists():
        wall = run_search("train", ["study=edge_cpu", f"study.workdir={workdir}", *budget])
        print(f"trained in {wall / 60:.1f} min", flush=True)
    study = optuna.load_study(study_name="edge_cpu", storage=f"sqlite:///{workdir / 'optuna.db'}")
    rows = []
    for t in study.get_trials():
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        saved = json.loads(Path(t.user_attrs["trial_dir"], "metrics.json").read_text())
        history = saved["val_accuracy_history"]
        if not history:  # infeasible before training: never trained, costs no epoch
            continue
        m = saved["metrics"]
        rows.append(
            {
                "number": t.number,
                "curve": history,
                "accuracy": m[ACC],
                "latency": m[LAT],
                # broke a constraint only known after training: trained, off the front
                "feasible": "infeasible" not in t.user_attrs,
            }
        )
    return rows


def replay(
    rows: list[dict], order: list[int], policy: str, grace: int, factor: int, ref: list[float]
) -> dict:
    epochs_total = len(rows[0]["curve"])
    rungs = ParetoRungs(
        rungs=milestones(grace, factor, epochs_total) if policy != "none" else [],
        reduction_factor=factor,
        metrics=["val_accuracy", LAT] if policy == "moasha" else ["val_accuracy"],
        directions=DIRECTIONS if policy == "moasha" else ["maximize"],
    )
    spent, pruned, front, trace = 0, 0, [], []  # trace: (epochs so far, hypervolume then)
    for i in order:
        row = rows[i]
        ran = epochs_total
        for epoch, acc in enumerate(row["curve"], 1):
            if rungs.stop(str(i), {"epoch": epoch, "val_accuracy": acc, LAT: row["latency"]}):
                ran = epoch
                break
        spent += ran
        pruned += ran < epochs_total
        if ran == epochs_total and row["feasible"]:
            front.append([row["accuracy"], row["latency"]])
        trace.append((spent, hypervolume(front, DIRECTIONS, ref)))
    return {"epochs": spent, "trace": trace, "pruned": pruned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_args(parser, "runs-early-stopping")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--grace", type=int, help="rungs' grace period (default: the preset's)")
    parser.add_argument("--factor", type=int, help="reduction factor (default: the preset's)")
    args = parser.parse_args()
    small = ["trainer.max_epochs=3", "data.train_images=60", "data.val_images=10"]
    budget = study_budget(args, small=[*small, "study.n_trials=6"])
    if args.small:
        args.epochs = 3
    budget += [
        "study.constraints=['cpu/size_mb <= 1.5']",
        "study.sampler=random",
        "study.asha.enabled=true",
        f"study.asha.grace_period={args.epochs}",  # validate every epoch, stop nothing
    ]
    preset = load_config(["study=edge_cpu"]).study.asha
    grace = args.grace or preset.grace_period
    factor = args.factor or preset.reduction_factor
    print(f"machine: {cpu_description()}; {platform.platform()}")
    at = milestones(grace, factor, args.epochs)
    print(f"budget: {' '.join(budget)}")
    print(f"rungs: grace {grace}, factor {factor}: epochs {at}")
    rows = train(Path(args.workdir).resolve(), budget)
    ref = [0.0, 1.1 * max(r["latency"] for r in rows)]
    full = hypervolume(
        [[r["accuracy"], r["latency"]] for r in rows if r["feasible"]], DIRECTIONS, ref
    )
    print(
        f"{len(rows)} candidates trained fully; their front's hypervolume {full:.4f}"
        f" (reference: accuracy 0, p95 {ref[1]:.3f} ms)"
    )
    rng = random.Random(0)
    results: dict[str, list[dict]] = {p: [] for p in POLICIES}
    for _ in range(args.orders):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for policy in POLICIES:
            results[policy].append(replay(rows, order, policy, grace, factor, ref))
    print()
    print(
        "| policy | epochs run | pruned | final hypervolume share | epochs to 95% | reached 95% |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for policy, runs in results.items():
        to95 = [next((e for e, hv in r["trace"] if hv >= 0.95 * full), None) for r in runs]
        reached = [e for e in to95 if e is not None]
        row = {
            "epochs": statistics.fmean(r["epochs"] for r in runs),
            "pruned": statistics.fmean(r["pruned"] for r in runs),
            "share": statistics.fmean(r["trace"][-1][1] / full for r in runs) if full else 0.0,
            "share_min": min(r["trace"][-1][1] / full for r in runs) if full else 0.0,
            "to95": statistics.fmean(reached) if reached else None,
            "reached": len(reached) / len(runs),
        }
        summary[policy] = row
        to95_text = f"{row['to95']:.1f}" if row["to95"] is not None else "-"
        print(
            f"| {policy} | {row['epochs']:.1f} | {row['pruned']:.1f} |"
            f" {row['share']:.3f} (min {row['share_min']:.3f}) | {to95_text} |"
            f" {row['reached']:.0%} |"
        )
    out = Path(args.workdir) / f"early_stopping_g{grace}_f{factor}.json"
    out.write_text(
        json.dumps({"rows": rows, "reference": ref, "full_hypervolume": full, "summary": summary})
    )


if __name__ == "__main__":
    main()
