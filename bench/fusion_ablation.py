"""Ablation of fusion placement x gating and of modality FFN sharing on shapes-VQA.

    python bench/fusion_ablation.py                 # full: 11 variants x 3 seeds
    python bench/fusion_ablation.py --small         # smoke run: checks it works

Every row is the space's baseline architecture (at a 3-tile grid to fit the machine) with
one fusion setting changed, trained with the default trainer budget for each seed, then
exported and measured by the same `run_trial` the search uses: cpu/accuracy on ONNX
Runtime over the validation set, cpu/latency_p50_ms, parameter count. Prints a Markdown
table (mean and sample standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from studies import load_config, run_trial
from trainers.data import prepare_data

VARIANTS = [
    ("early", "none", 1.0),
    *[("cross_attention", g, 1.0) for g in ("none", "tanh", "channel", "token")],
    *[("hybrid", g, 1.0) for g in ("none", "tanh", "channel", "token")],
    ("early", "none", 0.5),
    ("early", "none", 0.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-bench")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--small", action="store_true", help="1 seed, 1 epoch, tiny data: a smoke run"
    )
    args = parser.parse_args()
    overrides = [f"study.workdir={args.workdir}", "study.name=fusion_ablation"]
    seeds = args.seeds
    if args.small:
        overrides += ["trainer.max_epochs=1", "data.train_images=60", "data.val_images=10"]
        seeds = 1
    base_cfg = load_config(overrides)
    data = prepare_data(base_cfg.data, base_cfg.workdir)
    data_root, chance = data.root, data.prior_baseline()
    space = base_cfg.space
    quant = {p.name: p.quant_schemes for p in base_cfg.profiles}

    rows = []
    number = 0
    for placement, gating, share in VARIANTS:
        params = {
            **space.baseline_params(quant),
            "grid_pinpoints": "1x2",
            "fusion.placement": placement,
        }
        if placement != "early":
            params.update({"fusion.xattn_layers": "all", "fusion.gating": gating})
        if placement == "cross_attention":
            params.pop("fusion.image_attention")
            params.pop("fusion.share_ratio")
        else:
            params["fusion.share_ratio"] = share
        arch = space.to_arch(params)
        results = []
        for seed in range(seeds):
            cfg = load_config([*overrides, f"trainer.seed={seed}"])
            start = time.perf_counter()
            outcome = run_trial(arch, number, cfg, data_root)
            number += 1
            results.append((outcome.metrics, time.perf_counter() - start))
            print(
                f"# {placement} {gating} share={share} seed={seed}: {outcome.metrics['cpu/accuracy']:.3f}",
                flush=True,
            )
        rows.append((placement, gating, share, results))

    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )
    print(f"Chance level (most common training answer per question kind): {chance:.3f}")
    print()
    print(
        "| placement | gating | share_ratio | cpu/accuracy mean ± sd | min-max | cpu/latency_p50_ms | params | s per run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for placement, gating, share, results in rows:
        acc = [m["cpu/accuracy"] for m, _ in results]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lat = statistics.median(m["cpu/latency_p50_ms"] for m, _ in results)
        print(
            f"| {placement} | {gating} | {share} | {statistics.fmean(acc):.3f} ± {sd:.3f} | {min(acc):.3f}-{max(acc):.3f} |"
            f" {lat:.3f} | {int(results[0][0]['params']):,} | {statistics.fmean(t for _, t in results):.0f} |"
        )


if __name__ == "__main__":
    main()
