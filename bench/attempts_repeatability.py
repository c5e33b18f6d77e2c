"""Do the `cpu` profile's extra timing attempts make a latency figure repeat better?

    .venv/bin/python bench/attempts_repeatability.py [--repeats 6]

The profile times at least `min_time_s` of runs and, while the runs' cv is above
`max_cv`, tries again up to `max_attempts` times, reporting the attempt with the lowest
cv. This script deploys three untrained candidates of the `quick` study's space (the
baseline, a deeper and wider LM, pooled image tokens) for the `cpu` profile's generation
latency and measures each `--repeats` times with `max_attempts` 1 and 3, interleaved (one
measurement of every variant per round, so that a change of the host affects all of
them alike). Prints per candidate and setting: the p50s, their spread and sd as a share
of their mean (what a study comparing two candidates measured minutes apart sees), the
same for p50 / reference (the measurement's host reading), and the seconds each
measurement took.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._deploy import deploy, latency  # noqa: E402
from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._trial import answer_tokens  # noqa: E402
from trainers import model_for  # noqa: E402
from trainers.data import ImageCache, encode_eval, prepare_data  # noqa: E402

VARIANTS = {
    "baseline": {},
    "LM 3 x 128": {"lm.depth": 3, "lm.width": 128},
    "pooled": {"vision.pooling": "avg2x2"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    cfg = load_config([f"study.workdir={work}", "data.train_images=300"])
    data = prepare_data(cfg.data, cfg.workdir)
    profile = next(p for p in cfg.profiles if p.name == "cpu")
    tokens = answer_tokens(data)
    images = ImageCache()
    space = cfg.space
    deployed = {}
    for name, change in VARIANTS.items():
        arch = space.to_arch({**space.baseline, **change})
        val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
        calibration = encode_eval(data.train[:16], data.tokenizer, arch, data.text_len, images)
        model = model_for(arch, data, images, seed=0)
        for attempts in (1, 3):
            timed = dataclasses.replace(profile, max_attempts=attempts)
            dep = deploy(
                model, timed, "fp32", work / f"{name}-{attempts}", val, calibration, tokens
            )
            deployed[name, attempts] = (dep, val)
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {k: [] for k in deployed}
    for _ in range(args.repeats):
        for key, (dep, val) in deployed.items():
            start = time.perf_counter()
            report = latency(dep, val, tokens)
            took = time.perf_counter() - start
            results[key].append((report.p50_ms, report.reference_ms or float("nan"), took))
    print(f"machine: {cpu_description()}; {args.repeats} measurements each, interleaved")
    print(
        "| candidate | max_attempts | p50 ms: min-max (median) | sd of the p50s |"
        " sd of p50 / reference | s per measurement |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for (name, attempts), rows in results.items():
        p50 = [r[0] for r in rows]
        rel = [r[0] / r[1] for r in rows]
        print(
            f"| {name} | {attempts} | {min(p50):.2f}-{max(p50):.2f} ({statistics.median(p50):.2f})"
            f" | {_sd_share(p50):.1%} | {_sd_share(rel):.1%}"
            f" | {statistics.fmean(r[2] for r in rows):.2f} |"
        )


def _sd_share(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


if __name__ == "__main__":
    main()
