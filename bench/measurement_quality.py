"""How repeatable is a latency figure, and does it agree with an independent timing?

    python bench/measurement_quality.py           # 3 candidates x 2 schemes, 5 repeats
    python bench/measurement_quality.py --small   # smoke run: 1 candidate, 2 repeats

For each candidate (bench/gpu_check.py's small / baseline / large, untrained: latency
does not depend on weight values) and scheme (fp32, int8_dynamic):

- `vlmnas` p50: `hardware_profiles.measure` with the `cpu` profile, run `--repeats`
  times; reported are the mean p50 and the cv of the p50 across repeats;
- plain p50: an independent loop written against onnxruntime alone (same file, 1 intra-op
  thread, sequential execution, 200 warm-up runs, then `--plain-runs` runs), median;
- agreement: vlmnas mean p50 / plain p50.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from gpu_check import CANDIDATES  # noqa: E402

from hardware_profiles import HardwareProfile, export_onnx, measure, quantize  # noqa: E402
from hardware_profiles._report import cpu_description  # noqa: E402
from search_spaces import ArchConfig  # noqa: E402
from studies import load_config  # noqa: E402
from trainers import model_for  # noqa: E402
from trainers.data import ImageCache, encode_eval, prepare_data  # noqa: E402


def plain_p50(path: Path, feeds: dict[str, np.ndarray], runs: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(200):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-measure")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plain-runs", type=int, default=3000)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    names = list(CANDIDATES)
    if args.small:
        names, args.repeats, args.plain_runs = names[:1], 2, 300
    cfg = load_config(
        [f"study.workdir={args.workdir}", "data.train_images=20", "data.val_images=4"]
    )
    data = prepare_data(cfg.data, cfg.workdir)
    cpu = HardwareProfile.load("cpu")
    print(f"machine: {cpu_description()}; {platform.platform()}; onnxruntime {ort.__version__}")
    print(
        f"cpu profile: threads={cpu.threads}, repeats>={cpu.repeats}, min_time_s={cpu.min_time_s}"
    )
    print()
    print(
        "| candidate | scheme | vlmnas p50 ms (mean of repeats) | cv of p50 | plain p50 ms | vlmnas / plain |"
    )
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            arch = ArchConfig.from_dict(CANDIDATES[name])
            images = ImageCache()
            val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
            calibration = encode_eval(data.train[:4], data.tokenizer, arch, data.text_len, images)
            fp32 = export_onnx(model_for(arch, data), Path(tmp) / f"{name}.onnx", val)
            first = val.slice(0, 1)
            feeds = {
                "pixel_values": first.pixel_values,
                "image_index": first.image_index,
                "input_ids": first.prompt_ids,
            }
            for scheme in ("fp32", "int8_dynamic"):
                path = quantize(fp32, scheme, Path(tmp) / f"{name}_{scheme}.onnx", calibration)
                p50s = [measure(path, cpu, val).p50_ms for _ in range(args.repeats)]
                mean = statistics.fmean(p50s)
                cv = statistics.pstdev(p50s) / mean
                plain = plain_p50(path, feeds, args.plain_runs)
                print(
                    f"| {name} | {scheme} | {mean:.4f} | {cv:.3%} | {plain:.4f} |"
                    f" {mean / plain:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
