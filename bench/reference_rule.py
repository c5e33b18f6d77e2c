"""How often the disturbed-host rule fires on an idle host and on a busy one.

    python bench/reference_rule.py            # 60 idle readings, then 8 with busy loops

Takes readings of the `cpu` profile's reference workload as `time_runs` does (before
and after a pause, the slower counts) with nothing else running, then with one more
spinning process than there are cores. For each reading it applies the rule in
`hardware_profiles/_report.py` (the median of the recent readings, 25% allowance) and,
for comparison, the rule used until 2026-12-04 (the fastest reading of the process, 10%
allowance), and prints how many readings each calls disturbed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware_profiles import HardwareProfile  # noqa: E402
from hardware_profiles._report import (  # noqa: E402
    _reading,
    baseline_ms,
    cpu_description,
    latency_quality,
)
from hardware_profiles._runtime import reference  # noqa: E402


def main() -> None:
    ref = reference(HardwareProfile.load("cpu"))
    fastest = float("inf")

    def one(pause_s: float) -> tuple[float, bool, bool]:
        nonlocal fastest
        before = _reading(ref)
        time.sleep(pause_s)
        reading = max(before, _reading(ref))
        now = latency_quality(reading, baseline_ms(ref.key, reading)) == "disturbed"
        fastest = min(fastest, reading)
        return reading, now, reading > 1.10 * fastest

    print(f"machine: {cpu_description()}")
    idle = [one(0.5) for _ in range(60)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spin = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range((cores or 2) + 1)
    ]
    try:
        time.sleep(0.5)
        busy = [one(0.3) for _ in range(8)]
    finally:
        for proc in spin:
            proc.kill()
    print("| host | readings | ms (min-max) | disturbed: recent median +25% | fastest +10% |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in (("idle", idle), ("busy", busy)):
        ms = [r for r, _, _ in rows]
        print(
            f"| {name} | {len(rows)} | {min(ms):.2f}-{max(ms):.2f} |"
            f" {sum(now for _, now, _ in rows)} | {sum(old for _, _, old in rows)} |"
        )


if __name__ == "__main__":
    main()
