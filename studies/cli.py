"""The `vlmnas` command: `vlmnas <command> [hydra overrides ...]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = {
    "search": "run (or resume) the study: sample, train, measure, keep the Pareto front",
    "export": "write the study's Pareto-optimal trials to <workdir>/<study>/export/",
    "dashboard": "serve the MLflow UI and optuna-dashboard for the study on 127.0.0.1 (--port, --optuna-port, --host)",
    "train": "rebuild and retrain an exported winner: vlmnas train candidate=<export>/config.yaml",
    "pretrain": "train the shipped LLaVA-NeXT checkpoint (pretrain.out, default checkpoints/shapes-llava-next)",
    "replay": "replay samplers against a measured table: vlmnas replay table=FILE.csv 'table.params=[...]' 'table.objectives=[col:max,col:min]'",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlmnas",
        description="Hardware-aware architecture search for LLaVA-NeXT-style VLMs.",
        epilog="Overrides are Hydra syntax, e.g. study.name=demo study.n_trials=8 hardware=[cpu]",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*", help="Hydra overrides (key=value)")
        if name == "dashboard":
            p.add_argument("--port", type=int, default=5000, help="MLflow UI port (default: 5000)")
            p.add_argument(
                "--optuna-port",
                type=int,
                default=None,
                help="optuna-dashboard port (default: --port + 1)",
            )
            p.add_argument(
                "--host", default="127.0.0.1", help="bind address (default: loopback only)"
            )
    args = parser.parse_args(argv)

    from hardware_profiles import ProfileError
    from search_spaces import SearchSpaceError
    from trainers.data import DataError

    from ._config import ConfigError, load_config
    from ._search import StudyError

    try:
        if args.command == "train":
            from ._train import train_candidate

            given = dict(o.split("=", 1) for o in args.overrides if "=" in o)
            if set(given) != {"candidate"} or len(args.overrides) != 1:
                raise ConfigError(
                    f"train takes exactly candidate=<export folder>/config.yaml; got {args.overrides}"
                )
            path = Path(given["candidate"]).expanduser().resolve()
            metrics = train_candidate(path)
            recorded = json.loads((path.parent / "metrics.json").read_text())["metrics"]
            for key, value in metrics.items():
                before = recorded.get(key)
                was = f" (exported: {before:.4g})" if isinstance(before, int | float) else ""
                print(f"vlmnas: {key}={value:.4g}{was}")
            print(f"vlmnas: retrained into {path.parent / 'retrained'}")
            return 0
        if args.command == "replay":
            from ._replay import run_cli

            result, out = run_cli(args.overrides)
            for name, summary in result["samplers"].items():
                shares = "  ".join(
                    f"{k.removeprefix('share_after_')}: {v['mean']:.3f}"
                    for k, v in summary.items()
                    if k.startswith("share_after_") and v["mean"] is not None
                )
                reach = summary["trainings_to_95"]
                print(
                    f"vlmnas: {name}: hypervolume share after trainings {shares};"
                    f" 95% reached by {reach['reached']}/{len(summary['seeds'])} seeds"
                )
            print(f"vlmnas: wrote {out} (reference {result['reference']})")
            return 0
        cfg = load_config(args.overrides)
        if args.command == "search":
            from ._search import search

            summary = search(cfg)
            print(
                f"vlmnas: study {summary.study_name!r}: {summary.finished} finished"
                f" ({summary.complete} complete, {summary.failed} failed,"
                f" {summary.infeasible} infeasible);"
                f" Pareto front of {len(summary.front)}:"
            )
            for m in summary.front:
                values = "  ".join(f"{k}={v:.4g}" for k, v in m.values.items())
                print(f"  trial {m.number:>3}  {values}")
            print(
                f"vlmnas: chance level (most common training answer per question kind):"
                f" {summary.chance:.4g}"
            )
        elif args.command == "dashboard":
            from dashboards import MlflowTracker, serve

            from ._storage import existing_storage, storage_url

            if not (cfg.workdir / "mlflow.db").is_file():
                raise ConfigError(
                    f"study.workdir={str(cfg.workdir)!r} has no mlflow.db; run `vlmnas search` first"
                )
            exp = MlflowTracker.for_workdir(cfg.workdir).client.get_experiment_by_name(
                cfg.study.name
            )
            if exp is None:
                raise ConfigError(
                    f"study.name={cfg.study.name!r} has no MLflow experiment in {cfg.workdir}"
                )
            storage = existing_storage(cfg)  # refuses a missing store or study
            study_id = storage.get_study_id_from_name(cfg.study.name)
            return serve(
                cfg.workdir,
                experiment_id=str(exp.experiment_id),
                optuna_storage=cfg.study.storage or storage_url(cfg.workdir),
                optuna_study_id=study_id,
                host=args.host,
                port=args.port,
                optuna_port=args.optuna_port,
            )
        elif args.command == "pretrain":
            from ._pretrain import pretrain

            done = pretrain(cfg, list(args.overrides))
            print(
                f"vlmnas: wrote {done['out']}: val_accuracy={done['val_accuracy']:.4f}"
                f" (chance {done['chance_level']:.4f}), {done['params']:,} parameters,"
                f" {done['train_s']:.0f} s"
            )
        elif args.command == "export":
            from ._export import export_study

            for path in export_study(cfg):
                print(f"vlmnas: exported {path}")
    except (ConfigError, DataError, SearchSpaceError, ProfileError, FileExistsError) as exc:
        print(f"vlmnas: error: {exc}", file=sys.stderr)
        return 2
    except StudyError as exc:
        print(f"vlmnas: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
