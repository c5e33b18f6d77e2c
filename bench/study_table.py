"""Print a finished study as a Markdown table for BENCHMARKS.md.

    python bench/study_table.py runs quick

Reads `<workdir>/optuna.db` and each trial's `metrics.json`; prints one row per trial
(front members marked), the chance level of the data, and the Spearman rank correlation
between parameter count and CPU latency (does latency follow model size?).

A study of a pretrained space (`study=pretrained_cpu`, whose parameters are knobs of a
checkpoint rather than sizes) gets one row per trial with the knobs it changed from
the baseline trial (the checkpoint as it is), its image tokens (mean per validation
image), where its weights came from (checkpoint, trained, cached), accuracy, latency
and size.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import optuna
import yaml

from search_spaces import ArchConfig
from studies import pareto_front
from trainers.data import VQAData


def forward_macs(arch: ArchConfig, text_len: int, vocab: int) -> float:
    """Multiply-accumulates of one forward pass (matmuls only), counted from the shapes."""
    v, lm = arch.vision, arch.lm
    p, t = v.patches_per_tile, arch.max_tiles
    per_layer = lambda n, w, r: n * (4 + 2 * r) * w * w + 2 * n * n * w  # noqa: E731
    vision = t * (p * 3 * v.patch_size**2 * v.width + v.depth * per_layer(p, v.width, v.mlp_ratio))
    n = arch.image_tokens
    projector = n * (v.width * lm.width + (lm.width * lm.width if arch.projector_depth == 2 else 0))
    s = text_len - 1 + n
    language = lm.depth * per_layer(s, lm.width, lm.mlp_ratio) + text_len * lm.width * vocab
    return float(vision + projector + language)


def _fusion(arch: ArchConfig) -> str:
    f = arch.fusion
    parts = [f.placement]
    if f.cross:
        parts.append(f"{f.gating} gate @ layers {list(f.xattn_layers)}")
    if f.early:
        parts.append(f"{f.image_attention}, share {f.share_ratio}")
    if arch.vision.pooling != "none":
        parts.append("pooled")
    return "; ".join(parts)


def _ranks(x: list[float]) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("study")
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=args.study, storage=f"sqlite:///{args.workdir / 'optuna.db'}"
    )
    trials = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    config = yaml.safe_load((Path(trials[0].user_attrs["trial_dir"]) / "config.yaml").read_text())
    data = VQAData.load(Path(config["data"]["root"]))
    rows = []
    for t in trials:
        folder = Path(t.user_attrs["trial_dir"])
        saved = json.loads((folder / "metrics.json").read_text())
        m = saved["metrics"]
        arch = ArchConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text())["arch"])
        row = {**m, "image_tokens": arch.image_tokens, "arch": arch, "info": saved["info"]}
        # what the trial measured: the mean per validation image (arch's is the most)
        row["image_tokens_per_image"] = m.get("image_tokens", float("nan"))
        rows.append((t, row))
    directions = [
        "maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        for d in study.directions
    ]
    front = set(pareto_front([t.values for t in trials], directions))
    p = args.profile
    print(f"Machine: {platform.processor() or platform.machine()}, {platform.platform()}")
    print()
    if "lm.depth" not in trials[0].params:  # a pretrained space: knobs of a checkpoint
        _knob_table(rows, front, p)
        print(
            f"\nChance level (most common training answer per question kind): {data.prior_baseline():.3f}"
        )
        return
    print(
        f"| trial | front | fusion | lm depth x width | vision depth x width | grids (image tokens) | params | MMACs | {p}/latency_p50_ms (cv) | {p}/accuracy | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, (t, m) in enumerate(rows):
        pr = t.params
        print(
            f"| {t.number}{' (baseline)' if t.user_attrs.get('baseline') else ''} | {'*' if i in front else ''} |"
            f" {_fusion(m['arch'])} | {pr['lm.depth']} x {pr['lm.width']} |"
            f" {pr['vision.depth']} x {pr['vision.width']} | {pr['grid_pinpoints']} ({m['image_tokens']}) | {m['params']:,.0f} |"
            f" {forward_macs(m['arch'], data.text_len, len(data.tokenizer)) / 1e6:.1f} |"
            f" {m[f'{p}/latency_p50_ms']:.3f} ({m[f'{p}/latency_cv']:.3f}) | {m[f'{p}/accuracy']:.3f} |"
            f" {m['train_s']:.0f} |"
        )
    latency = _ranks([m[f"{p}/latency_p50_ms"] for _, m in rows])
    params = _ranks([m["params"] for _, m in rows])
    macs = _ranks([forward_macs(m["arch"], data.text_len, len(data.tokenizer)) for _, m in rows])
    print()
    print(
        f"Chance level (most common training answer per question kind): {data.prior_baseline():.3f}"
    )
    print(
        f"Spearman rank correlation of {p}/latency_p50_ms with params: {np.corrcoef(params, latency)[0, 1]:.2f},"
    )
    print(f"with forward MACs: {np.corrcoef(macs, latency)[0, 1]:.2f}")


def _knob_table(rows: list[tuple[optuna.trial.FrozenTrial, dict]], front: set[int], p: str) -> None:
    base = next((t for t, _ in rows if t.user_attrs.get("baseline")), rows[0][0]).params
    print(
        f"| trial | front | knobs (changed from the checkpoint) | image tokens | weights | {p}/accuracy | {p}/latency_p50_ms (cv) | size MB | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (t, m) in enumerate(rows):
        info, tokens = m["info"], m["image_tokens_per_image"]
        changed = [f"{k}={v}" for k, v in t.params.items() if base.get(k) != v]
        print(
            f"| {t.number}{' (baseline)' if t.user_attrs.get('baseline') else ''} | {'*' if i in front else ''} |"
            f" {', '.join(changed) or '(none)'} | {tokens:.0f} | {info.get('weights', '')} |"
            f" {m[f'{p}/accuracy']:.3f} | {m[f'{p}/latency_p50_ms']:.3f} ({m[f'{p}/latency_cv']:.3f}) |"
            f" {m.get(f'{p}/size_mb', float('nan')):.2f} | {m['train_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
