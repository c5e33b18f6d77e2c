"""Each cut-down knob alone against the checkpoint, side by side in one run.

    python bench/knob_ablation.py [backbone.path=DIR] [more overrides]

Builds the `pretrained_cpu` study's config (the shipped checkpoint unless `backbone.path`
says otherwise) and runs `studies.run_trial` for trial 0 (the checkpoint unchanged) and
for each knob turned alone, training-free (no LoRA, no adapters), on the `cpu` profile:
accuracy on the validation set and ONNX Runtime latency, measured the way every trial
measures them (one measurement at a time, p50 with its cv). Prints a Markdown table
with the change against the checkpoint, for BENCHMARKS.md §14.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config, run_trial  # noqa: E402
from studies._config import text_side  # noqa: E402
from trainers.data import prepare_data  # noqa: E402

# (label, knob values) turned alone; the published claim each is read against
KNOBS = [
    ("checkpoint (trial 0)", {}, ""),
    ("max_tiles=3", {"tokens.max_tiles": 3}, ""),
    ("max_tiles=2", {"tokens.max_tiles": 2}, ""),
    ("pooling avg2x2", {"tokens.pooling": "avg2x2"}, ""),
    (
        "FastV K=2 R=50%",
        {"tokens.prune_ratio": 0.5, "tokens.prune_layer": 2},
        "FastV: ~45% fewer FLOPs at no loss",
    ),
    ("vision.feature_layer=-2", {"vision.feature_layer": -2}, ""),
    (
        "lm.drop_layers=1 (25%)",
        {"lm.drop_layers": 1},
        "ShortGPT: ~25% of layers removed, ~92% of performance kept",
    ),
    (
        "int4 weight-only",
        {"quant.cpu": "int4_weight_only"},
        "int4: 1-3 points lost on VLM benchmarks",
    ),
    ("int8 static (QDQ)", {"quant.cpu": "int8_static"}, ""),
]


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as work:
        cfg = load_config(
            [
                "study=pretrained_cpu",
                "hardware=[cpu]",
                f"study.workdir={work}",
                "study.name=knobs",
                *overrides,
            ]
        )
        data = prepare_data(cfg.data, cfg.workdir, text_side(cfg))
        space = cfg.space
        rows = []
        for number, (label, knobs, claim) in enumerate(KNOBS):
            values = {**space.baseline, "quant.cpu": "fp32", **knobs}
            arch = space.to_arch(values)
            out = run_trial(arch, number, cfg, data.root)
            m = out.metrics
            rows.append(
                (
                    label,
                    m["cpu/accuracy"],
                    m["cpu/latency_p50_ms"],
                    m["cpu/latency_cv"],
                    m["image_tokens"],
                    m["cpu/size_mb"],
                    claim,
                )
            )
    print(f"machine: {cpu_description()}; checkpoint: {space.backbone.path}")
    base_acc, base_ms = rows[0][1], rows[0][2]
    print(
        "| knob | image tokens | cpu/accuracy | change | p50 ms (cv) | change | size MB | claim |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, acc, ms, cv, tokens, size, claim in rows:
        print(
            f"| {label} | {tokens:.0f} | {acc:.3f} | {acc - base_acc:+.3f} | {ms:.3f} ({cv:.3f})"
            f" | {100 * (ms / base_ms - 1):+.0f}% | {size:.2f} | {claim} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
