"""`export`: hand the winners of a finished study over, one self-describing folder each.

Selection policies (`export.policy`):

- `pareto`: every member of the feasible front;
- `knee`: the front member nearest the ideal point once each objective is scaled to
  [0, 1] over the front (the balanced choice);
- `max_accuracy`: the most accurate feasible trial whose `<profile>/latency_p50_ms` is
  within `export.latency_budget_ms`;
- `min_latency`: the fastest feasible trial whose `<profile>/accuracy` is at least
  `export.accuracy_floor`.

`export.profile` names the profile whose deployed model is exported and whose metrics
the last two policies read (default: the first selected profile). Each winner's folder
`<workdir>/<study>/export/<trial>/` is a transformers LLaVA-NeXT folder (`config.json`,
`model.safetensors`, tokenizer and processor files: `from_pretrained` loads it, and a
plain candidate needs nothing of vlmnas) next to the deployed model: `generation/` for a
profile that generates with a KV cache (cpu: `vision.onnx`, `embedding.onnx`,
`decoder.onnx` and `generation.json`, their tensor names and the cache's shape), else
`model.onnx` (one graph: npu_htp, or a FastV candidate) or `model.pt` (a torch profile);
`config.yaml` (the vlmnas candidate and deployment),
`word_tokenizer.json`, `metrics.json` and `model_card.md`. It is written atomically and
replaces an older export of the same trial.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml

from search_spaces import ArchConfig, is_plain
from trainers import load_trained
from trainers.data import save_candidate

from ._config import ConfigError, VlmnasConfig, text_side
from ._front import front_of, state_of
from ._storage import load_study

PACKAGES = (
    "vlmnas",
    "torch",
    "transformers",
    "peft",
    "onnxruntime",
    "onnxruntime-qnn",
    "onnx",
    "lightning",
    "optuna",
    "ray",
    "mlflow",
)


def export_study(cfg: VlmnasConfig) -> list[Path]:
    """Select winners by `cfg.export.policy` and write one folder per winner."""
    # load_config checked the policy, its inputs and that the profile is selected.
    profile = cfg.export.profile or cfg.profiles[0].name
    trials = load_study(cfg).get_trials(deepcopy=False)
    chosen = select(cfg, trials, profile)
    out_root = cfg.study_dir / "export"
    out_root.mkdir(parents=True, exist_ok=True)
    return [_write_winner(cfg, t, profile, out_root) for t in chosen]


def select(
    cfg: VlmnasConfig, trials: list[optuna.trial.FrozenTrial], profile: str
) -> list[optuna.trial.FrozenTrial]:
    """The trials `cfg.export.policy` picks; raises `ConfigError` when none qualifies."""
    spec = cfg.export
    feasible = [t for t in trials if state_of(t) == "complete" and _metrics_file(t).is_file()]
    if not feasible:
        raise ConfigError(f"study {cfg.study.name!r} has no complete feasible trials to export")
    by_number = {t.number: t for t in feasible}
    front = [by_number[n] for n in front_of(trials, cfg.study.objectives).members if n in by_number]
    if spec.policy == "pareto":
        return front
    if spec.policy == "knee":
        return [knee(front, [o.direction for o in cfg.study.objectives])]
    metrics = {t.number: _read(t)["metrics"] for t in feasible}
    acc, lat = f"{profile}/accuracy", f"{profile}/latency_p50_ms"
    if spec.policy == "max_accuracy":
        ok = [t for t in feasible if metrics[t.number].get(lat, math.inf) <= spec.latency_budget_ms]
        if not ok:
            raise ConfigError(
                f"no feasible trial has {lat} <= {spec.latency_budget_ms}; fastest:"
                f" {min(metrics[t.number].get(lat, math.inf) for t in feasible):.4g} ms"
            )
        return [max(ok, key=lambda t: (metrics[t.number][acc], -metrics[t.number][lat]))]
    ok = [t for t in feasible if metrics[t.number].get(acc, -math.inf) >= spec.accuracy_floor]
    if not ok:
        raise ConfigError(
            f"no feasible trial has {acc} >= {spec.accuracy_floor}; best:"
            f" {max(metrics[t.number].get(acc, -math.inf) for t in feasible):.4g}"
        )
    return [min(ok, key=lambda t: (metrics[t.number][lat], -metrics[t.number][acc]))]


def knee(front: list[optuna.trial.FrozenTrial], directions: list[str]) -> optuna.trial.FrozenTrial:
    """The member nearest the ideal point, each objective scaled to [0, 1] over the front
    with 1 the best value."""
    scaled = []
    for i, direction in enumerate(directions):
        column = [t.values[i] for t in front]
        lo, hi = min(column), max(column)
        span = hi - lo or 1.0
        scaled.append(
            [(v - lo) / span if direction == "maximize" else (hi - v) / span for v in column]
        )
    distance = [
        math.sqrt(sum((1.0 - scaled[i][k]) ** 2 for i in range(len(directions))))
        for k in range(len(front))
    ]
    return front[distance.index(min(distance))]


def _metrics_file(trial: optuna.trial.FrozenTrial) -> Path:
    return Path(str(trial.user_attrs.get("trial_dir", ""))) / "metrics.json"


def _read(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return json.loads(_metrics_file(trial).read_text())


def _write_winner(
    cfg: VlmnasConfig, trial: optuna.trial.FrozenTrial, profile: str, out_root: Path
) -> Path:
    src = Path(str(trial.user_attrs["trial_dir"]))
    record = _read(trial)
    model = Path(record["info"][f"{profile}/model"])
    dst = out_root / str(trial.number)
    tmp = Path(tempfile.mkdtemp(prefix=f".{trial.number}-", dir=out_root))
    try:
        config = yaml.safe_load((src / "config.yaml").read_text())
        arch = ArchConfig.from_dict(config["arch"])
        config["deployment"] = {
            "profile": profile,
            "scheme": record["info"].get(f"{profile}/scheme", "fp32"),
            "model": "generation/" if model.is_dir() else "model" + model.suffix,
            "hardware": {p.name: _profile_dict(p) for p in cfg.profiles},
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # the transformers folder: config.json, model.safetensors, tokenizer, processor
        save_candidate(load_trained(arch, src), text_side(cfg, src), tmp)
        if model.is_dir():  # the vision, embedding and KV-cache decoder graphs
            _copy_generation(model, tmp / "generation")
        else:
            shutil.copyfile(model, tmp / ("model" + model.suffix))
        objectives = dict(zip([o.metric for o in cfg.study.objectives], trial.values, strict=True))
        exported = {
            **record,
            "objectives": objectives,
            "trial_number": trial.number,
            "profile": profile,
            "policy": cfg.export.policy,
        }
        (tmp / "metrics.json").write_text(json.dumps(exported, indent=1))
        (tmp / "model_card.md").write_text(model_card(cfg, trial, config, record, profile))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _copy_generation(src: Path, dst: Path) -> None:
    """A trial's generation folder as `vision.onnx`, `embedding.onnx`, `decoder.onnx`
    (the deployed scheme's files, not the fp32 ones they were quantized from) and the
    `generation.json` that describes them."""
    from hardware_profiles import GenerationDeployment

    gen = GenerationDeployment.load(src)
    dst.mkdir()
    manifest = copy.deepcopy(gen.manifest)
    for part, path in gen.paths.items():
        shutil.copyfile(path, dst / f"{part}.onnx")
        manifest["graphs"][part]["file"] = f"{part}.onnx"
    (dst / "generation.json").write_text(json.dumps(manifest, indent=1))


def _profile_dict(profile: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(profile)
    data["provider_options"] = dict(profile.provider_options)
    data["cost_model"] = dict(profile.cost_model)
    data["quant_schemes"] = list(profile.quant_schemes)
    return data


def model_card(
    cfg: VlmnasConfig,
    trial: optuna.trial.FrozenTrial,
    config: dict[str, Any],
    record: dict[str, Any],
    profile: str,
) -> str:
    """A short Markdown card: what the model is, how it scores where, how it was made."""
    arch = config["arch"]
    metrics, info = record["metrics"], record["info"]
    fusion = arch.get("fusion", {})
    lines = [
        f"# vlmnas model: study `{cfg.study.name}`, trial {trial.number}",
        "",
        "## What it is",
        "",
        f"A LLaVA-NeXT-style vision-language model answering short questions about an image"
        f" ({int(metrics.get('params', 0)):,} parameters; `arch_id` {config['arch_id']}).",
        f"- vision tower: {arch['vision']['depth']} layers, width {arch['vision']['width']},"
        f" {arch['vision']['heads']} heads, {arch['vision'].get('pooling', 'none')} pooling,"
        f" features from the {arch['vision'].get('feature_layer', 'last')} layer",
        f"- language model: {arch['lm']['depth']} layers, width {arch['lm']['width']},"
        f" {arch['lm']['heads']} heads",
        f"- fusion: {fusion.get('placement', 'early')}, gating {fusion.get('gating', 'none')},"
        f" FFN share ratio {fusion.get('share_ratio', 1.0)}; AnyRes grids"
        f" {arch.get('grid_pinpoints')}; activation {arch.get('activation', 'gelu')}",
        f"- exported for `{profile}` with scheme"
        f" `{config['deployment']['scheme']}` as `{config['deployment']['model']}`",
        *(
            [f"- cut down from the checkpoint `{cfg.space.backbone.path}`"]
            if getattr(cfg.space, "backbone", None) is not None
            else []
        ),
        "",
        "## Loading it",
        "",
        "This folder is a transformers LLaVA-NeXT folder (config.json, model.safetensors,"
        " tokenizer, processor, chat template)"
        + (
            ": a plain LLaVA-NeXT, `LlavaNextForConditionalGeneration.from_pretrained(folder)`"
            " and `AutoProcessor.from_pretrained(folder)` load it without vlmnas."
            if is_plain(ArchConfig.from_dict(arch))
            else "; it holds modules LLaVA-NeXT lacks (recorded under `vlmnas` in"
            " config.json): load it with `search_spaces.load_pretrained(folder)`."
        ),
        "",
        "## Metrics per profile",
        "",
        "| profile | scheme | accuracy | latency p50 ms | latency p95 ms | size MB | latency source |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for p in cfg.profiles:
        n = p.name
        acc = f"{metrics.get(f'{n}/accuracy', float('nan')):.3f}"
        if f"{n}/accuracy_n" in metrics:
            acc += (
                f" [{metrics[f'{n}/accuracy_ci95_low']:.2f}, {metrics[f'{n}/accuracy_ci95_high']:.2f}]"
                f" on {int(metrics[f'{n}/accuracy_n'])} rows"
            )
        lines.append(
            f"| {n} | {info.get(f'{n}/scheme', '?')} | {acc} |"
            f" {metrics.get(f'{n}/latency_p50_ms', float('nan')):.3f} |"
            f" {metrics.get(f'{n}/latency_p95_ms', float('nan')):.3f} |"
            f" {metrics.get(f'{n}/size_mb', float('nan')):.2f} |"
            f" {info.get(f'{n}/latency_source', '?')} |"
        )
    if any(k.endswith("/npu_coverage") for k in metrics):
        lines.append("")
        lines += [
            f"NPU coverage ({k.split('/')[0]}): {v:.3f} of compute nodes on the NPU"
            for k, v in metrics.items()
            if k.endswith("/npu_coverage")
        ]
    lines += [
        "",
        "Accuracy is exact match of greedy answers, computed by running the deployed model on"
        " the profile's runtime. An `estimated` latency comes from the profile's cost model"
        " (hardware_profiles/_cost.py), not from a device.",
        "",
        "## Data and training",
        "",
        f"- data: `{config['data']['root']}` (text length {config['data']['text_len']},"
        f" answers up to {config['data']['max_answer_tokens']} tokens)",
        "- training: " + ", ".join(f"{k}={v}" for k, v in config["trainer"].items()),
        f"- validation accuracy of the PyTorch model: {metrics.get('val_accuracy', float('nan')):.3f}",
        "- rebuild and retrain: `vlmnas train candidate=<this folder>/config.yaml`",
        "",
        "## Provenance",
        "",
        f"- study `{cfg.study.name}` (sampler {cfg.study.sampler}, seed {cfg.study.seed}),"
        f" trial {trial.number}, export policy `{cfg.export.policy}`",
        f"- objectives: {', '.join(f'{o.metric} ({o.direction})' for o in cfg.study.objectives)};"
        f" constraints: {', '.join(cfg.study.constraints) or 'none'}",
        f"- git commit: {_git_commit()}",
        "- packages: " + ", ".join(f"{name} {version}" for name, version in _versions().items()),
        "",
    ]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
