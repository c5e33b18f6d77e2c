"""Quantization on the target: each scheme's speed-up over fp32 and its accuracy change.

    python bench/quant_speedup.py             # 3 candidate sizes, default training budget
    python bench/quant_speedup.py --small     # smoke run: tiny data, 1 epoch

For three candidates (the search space's smallest corner, its LLaVA-NeXT baseline and its
largest corner; bench/gpu_check.py defines them, here with the NPU-friendly tanh GELU):

- cpu: every CPU scheme's p50 latency, measured in one run by the same `latency()` the
  search uses (ONNX Runtime, 1 thread), in `--rounds` interleaved rounds
  (fp32, int8_dynamic, ..., fp32, int8_dynamic, ...); the median p50 per scheme is
  reported, with the speed-up over fp32 and the accuracy change over the whole
  validation set.
- npu_htp: w8a8 and w8a16 on the QNN EP (HTP emulator): accuracy on the profile's
  validation subset with its 95% Wilson interval, next to fp32 on the same rows; the
  estimated latency with the cost model's assumptions printed; node coverage.

The published claim this checks: "INT8: 2.5x faster, 1.2% accuracy loss".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_check import CANDIDATES  # noqa: E402

from hardware_profiles import (  # noqa: E402
    HardwareProfile,
    ProfileError,
    accuracy,
    coverage,
    deploy,
    latency,
)
from hardware_profiles._report import cpu_description  # noqa: E402
from search_spaces import ArchConfig  # noqa: E402
from studies import load_config  # noqa: E402
from trainers import fit  # noqa: E402
from trainers.data import ImageCache, encode_eval, prepare_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-quant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="tiny data, 1 epoch: a smoke run")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    overrides = [f"study.workdir={args.workdir}"]
    if args.small:
        overrides += ["trainer.max_epochs=1", "data.train_images=60", "data.val_images=10"]
        args.rounds = 1
    cfg = load_config(overrides)
    data = prepare_data(cfg.data, cfg.workdir)
    # one graph, one forward pass on both: what this benchmark's table measured
    # (generation.py times the KV-cache and fixed-context graphs)
    cpu = dataclasses.replace(HardwareProfile.load("cpu"), generation=False)
    npu: HardwareProfile | None = dataclasses.replace(
        HardwareProfile.load("npu_htp"), generation=False
    )
    try:
        npu.check_available()
    except ProfileError as exc:
        print(f"npu_htp left out: {exc}")
        npu = None
    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, trainer {cfg.trainer}")
    started = time.perf_counter()
    rows = []
    for name, spec in CANDIDATES.items():
        arch = dataclasses.replace(ArchConfig.from_dict(spec), activation="gelu_tanh")
        images = ImageCache()
        val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
        calibration = encode_eval(
            data.train[: cpu.calibration_images], data.tokenizer, arch, data.text_len, images
        )
        out = cfg.workdir / "quant" / name
        t0 = time.perf_counter()
        model = fit(arch, data, cfg.trainer, out).model.eval()
        train_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        deps = {s: deploy(model, cpu, s, out, val, calibration) for s in cpu.quant_schemes}
        p50s: dict[str, list[float]] = {s: [] for s in deps}
        for _ in range(args.rounds):
            for scheme, dep in deps.items():
                p50s[scheme].append(latency(dep, val, 2).p50_ms)
        fp32_ms = statistics.median(p50s["fp32"])
        fp32_acc = accuracy(deps["fp32"], val, data.max_answer_tokens).value
        for scheme, dep in deps.items():
            ms = statistics.median(p50s[scheme])
            acc = accuracy(dep, val, data.max_answer_tokens)
            rows.append(
                {
                    "candidate": name,
                    "params": params,
                    "train_s": round(train_s, 1),
                    "profile": "cpu",
                    "scheme": scheme,
                    "p50_ms": ms,
                    "p50_rounds": p50s[scheme],
                    "speedup": fp32_ms / ms,
                    "accuracy": acc.value,
                    "fp32_accuracy": fp32_acc,
                    "rows": acc.n,
                    "size_mb": dep.size_mb,
                    "latency_source": "measured",
                }
            )
        if npu is not None:
            subset = val.slice(0, npu.validation_subset)
            fp32_sub = accuracy(deps["fp32"], subset, data.max_answer_tokens)
            npu_ms = {}
            for scheme in npu.quant_schemes:
                dep = deploy(model, npu, scheme, out, val, calibration)
                est = latency(dep, val, 2)
                npu_ms[scheme] = est.p50_ms
                acc = accuracy(dep, val, data.max_answer_tokens)
                rows.append(
                    {
                        "candidate": name,
                        "params": params,
                        "profile": "npu_htp",
                        "scheme": scheme,
                        "p50_ms": est.p50_ms,
                        "accuracy": acc.value,
                        "ci95": [acc.low, acc.high],
                        "fp32_accuracy": fp32_sub.value,
                        "rows": acc.n,
                        "size_mb": dep.size_mb,
                        "npu_coverage": coverage(dep),
                        "latency_source": est.source,
                    }
                )
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(table(rows))
    if npu is not None:
        print()
        print("NPU cost-model assumptions (hardware_profiles/conf/hardware/npu_htp.yaml):")
        for key, value in npu.cost_params.items():
            print(f"- {key}: {value:g}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def table(rows: list[dict]) -> str:
    lines = [
        "| candidate | params | profile | scheme | p50 ms | speed-up vs fp32 | accuracy | fp32 accuracy | change (points) | rows | size MB | source |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        acc = f"{r['accuracy']:.3f}"
        if "ci95" in r:
            acc += f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
        if r.get("npu_coverage") is not None:
            acc += f" (coverage {r['npu_coverage']:.2f})"
        lines.append(
            f"| {r['candidate']} | {r['params']:,} | {r['profile']} | {r['scheme']} |"
            f" {r['p50_ms']:.3f} | {speed} | {acc} | {r['fp32_accuracy']:.3f} |"
            f" {100 * (r['accuracy'] - r['fp32_accuracy']):+.1f} | {r['rows']} |"
            f" {r['size_mb']:.2f} | {r['latency_source']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
