"""`LatencyReport` and the timing loop every backend shares; imports only numpy and stdlib.

Kept apart from the ONNX Runtime backend so that the PyTorch backend runs on a host that
has torch and numpy but no onnxruntime.

Measurement quality. A latency is only worth comparing with another if the host ran as
fast for both. Every measurement therefore also reads a `Reference`, a short fixed
workload on the same runtime and thread count (the median of 3 samples of >= 8 ms each),
before and after the timed runs. The slower reading is the report's `reference_ms`, and
`p50_ms / reference_ms` (the trial's `<profile>/latency_rel`) compares figures taken on
differing or differently loaded machines. The baseline is the median of the last
`BASELINE_WINDOW` (25) readings this process has taken for that runtime and thread
count (none at first: the first measurement is ok). It lives in this module, per
process: a Ray actor is reused across trials, so one baseline spans the trials it runs,
and a new driver starts a new one. A measurement whose reference ran more than 25%
slower than the baseline was taken on a disturbed host: it waits the profile's
`disturbed_wait_s` (2 s) and measures again, up to `disturbed_retries` (3) times, and if
the slowdown persists the report says `quality="disturbed"`, not `"ok"`.

Why a recent median and 25%, not the fastest reading and 10% (until 2026-12-04): on
the 2-core AMD EPYC VM the idle reading spread from 4.1 to 8.2 ms within one minute
(median 5.0; BENCHMARKS §7), so most readings of a long-lived process lay more than 10%
above its fastest one, and the study driver's cheap measurements read as disturbed
three times in four (about 20 s each instead of 4 s). A process competing for the cores
slows the reading 2x or more, well above both the spread and the allowance; a slow
drift of the host's speed moves the median with it (it is `latency_rel`'s business).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class LatencyReport:
    """Timed runs at the profile's batch size: one forward pass of the one-graph model
    (its full static sequence), or one whole greedy generation
    (`hardware_profiles._generate`), whose phases' medians are in `phases`."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    cv: float  # stdev / mean of the timed runs
    n: int  # timed runs in the reported attempt
    attempts: int
    source: str  # measured | estimated
    runtime: str  # e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    cpu: str  # the device that ran it: CPU model, or GPU name for a CUDA profile
    # The reference workload's time around this measurement (None: not measured, as for
    # an estimate, or a report from before references were kept).
    reference_ms: float | None = None
    load_avg: float | None = None  # the host's 1-minute load average when it ended
    quality: str = "ok"  # ok | disturbed: the reference ran > 25% slower than its baseline
    # A generation's phases (vision_ms, prefill_ms, ttft_ms, decode_ms_per_token, e2e_ms):
    # medians over the reported attempt's runs; empty for a one-graph forward pass.
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TimingSettings(Protocol):
    """The timing fields of a hardware profile."""

    @property
    def warmup(self) -> int: ...
    @property
    def repeats(self) -> int: ...
    @property
    def min_time_s(self) -> float: ...
    @property
    def max_cv(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def disturbed_wait_s(self) -> float: ...
    @property
    def disturbed_retries(self) -> int: ...
    @property
    def latency_source(self) -> str: ...


# A reference more than this much slower than its baseline marks the host as disturbed:
# above the idle spread of a reading around its median (most within 20%, BENCHMARKS §7),
# far below what a process competing for the cores does (2x or more).
DISTURBED_SLOWDOWN = 1.25
# Reference runs per reading, of which the median counts: one or two preempted runs (a
# 30-60% outlier on a quiet 2-core host) do not mark a measurement disturbed, a
# competing process slows all of them (5x with two busy loops on 2 cores).
REFERENCE_SAMPLES = 5
# Readings (one per timed attempt: the slower of before and after) whose median is the
# baseline a new reading is compared with.
BASELINE_WINDOW = 25

# The CPU reference workload of both backends (ONNX Runtime and torch): x (rows, width)
# through `layers` fp32 MatMuls with fixed seeded (width, width) weights, `runs` times a
# unit. ~0.2-0.4 ms a chain on one thread of a 2-core AMD EPYC, so 2-4 ms a unit; the
# unit is the fixed work that `reference_ms` times, whatever the host.
CPU_REFERENCE = (64, 256, 4, 10)  # (rows, width, layers, runs)
# A reference sample repeats the unit for at least this long (`repeated_reference`):
# long enough to span scheduler slices, so that a process sharing the core shows up in
# it. Measured on the 2-core AMD EPYC with 3 busy loops: a reading of one 2.2 ms unit
# per sample read 1.1-1.3x its quiet time in a third of the tries (the whole reading
# fitted between two preemptions), one of three units per sample 2.0x or more in all.
REFERENCE_SAMPLE_MS = 8.0

# Reference.key -> this process's last `BASELINE_WINDOW` readings of it (ms), oldest first.
_baselines: dict[str, collections.deque[float]] = {}


@dataclass(frozen=True)
class Reference:
    """A short fixed workload on a measurement's runtime and thread count.

    `time_ms` runs it and returns its milliseconds; it is the same work every time, so a
    change in its time is a change in the host (load, clock, another machine), never in
    the candidate. `key` names the runtime and thread count: baselines are only kept,
    and compared, per key.
    """

    key: str
    time_ms: Callable[[], float]


def repeated_reference(key: str, unit_ms: Callable[[], float]) -> Reference:
    """A `Reference` named `key` whose sample runs `unit_ms` (one unit of fixed work,
    returns its milliseconds) back to back for at least `REFERENCE_SAMPLE_MS` and returns
    the milliseconds per unit: the figure stays the unit's time on every host (so that
    `latency_rel` compares across machines) while a sample spans scheduler slices. The
    repeat count is set here, from the fastest of 3 timings of the unit, once per
    process and reference: a slow host later shows as slower units, not fewer of them."""
    repeats = max(1, math.ceil(REFERENCE_SAMPLE_MS / min(unit_ms() for _ in range(3))))

    def time_ms() -> float:
        return sum(unit_ms() for _ in range(repeats)) / repeats

    return Reference(key=key, time_ms=time_ms)


def baseline_ms(key: str, reference_ms: float) -> float:
    """The baseline `reference_ms` is compared with: the median of this process's
    previous readings for `key` (the last `BASELINE_WINDOW`), or `reference_ms` itself
    when it is the first; `reference_ms` then joins the window. A recent median, not the
    fastest reading ever: the host's idle spread and a slow drift of its speed stay
    within the allowance, a sudden competitor does not. Slow readings join the window
    too, so a host that stays slower for good (a lowered clock) is its new normal after
    about half a window, instead of every later measurement being retried."""
    window = _baselines.setdefault(key, collections.deque(maxlen=BASELINE_WINDOW))
    baseline = statistics.median(window) if window else reference_ms
    window.append(reference_ms)
    return baseline


def latency_quality(reference_ms: float, baseline: float) -> str:
    """`disturbed` when the reference ran more than `DISTURBED_SLOWDOWN` times its
    baseline, else `ok`."""
    return "disturbed" if reference_ms > baseline * DISTURBED_SLOWDOWN else "ok"


# What a generation measurement reports (hardware_profiles/_generate.py), in
# `LatencyReport.phases` and as `<profile>/<name>` metrics; a full re-run has no vision_ms.
GENERATION_PHASES = ("vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "e2e_ms")

# One timed run: its milliseconds, or its milliseconds and its phases' (a generation).
Run = Callable[[], float] | Callable[[], tuple[float, dict[str, float]]]


def time_runs(
    run_ms: Run,
    profile: TimingSettings,
    *,
    runtime: str,
    device: str,
    reference: Reference | None = None,
) -> LatencyReport:
    """Time `run_ms` (one forward pass or generation, returns its milliseconds, or those
    and a dict of its phases' milliseconds): warm-up, then timed runs
    (at least `repeats` and at least `min_time_s` seconds), re-measured while cv > max_cv.

    The attempt with the lowest cv is reported. The caller guarantees that nothing else
    runs on the device meanwhile (the study measures one candidate at a time).

    With a `reference`, it is timed before and after, and a measurement whose reference
    ran slow (`latency_quality`) is repeated after a pause, up to the profile's
    `disturbed_retries` times: a cv check alone misses a host that is uniformly slower
    throughout (another process on the cores, a lowered clock).
    """
    for retry in range(profile.disturbed_retries + 1):
        before = _reading(reference) if reference is not None else None
        cv, times, phases, attempts = _timed_attempts(run_ms, profile)
        reference_ms: float | None = None
        quality = "ok"
        if reference is not None and before is not None:
            reference_ms = max(before, _reading(reference))
            quality = latency_quality(reference_ms, baseline_ms(reference.key, reference_ms))
        if quality == "ok" or retry == profile.disturbed_retries:
            break
        time.sleep(profile.disturbed_wait_s)
    return LatencyReport(
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        mean_ms=statistics.fmean(times),
        cv=cv,
        n=len(times),
        attempts=attempts,
        source=profile.latency_source,
        runtime=runtime,
        cpu=device,
        reference_ms=reference_ms,
        load_avg=load_average(),
        quality=quality,
        phases={k: statistics.median(p[k] for p in phases) for k in phases[0]} if phases else {},
    )


def _reading(reference: Reference) -> float:
    """The reference's time now: the median of `REFERENCE_SAMPLES` runs."""
    return statistics.median(reference.time_ms() for _ in range(REFERENCE_SAMPLES))


def _timed_attempts(
    run_ms: Run, profile: TimingSettings
) -> tuple[float, list[float], list[dict[str, float]], int]:
    """(cv, run times, run phases, attempts) of the attempt with the lowest cv."""
    best: tuple[float, list[float], list[dict[str, float]]] | None = None
    attempts = 0
    while attempts < profile.max_attempts:
        attempts += 1
        for _ in range(profile.warmup):
            run_ms()
        times: list[float] = []
        phases: list[dict[str, float]] = []
        # At least `repeats` runs and at least `min_time_s` of them: sub-millisecond
        # models need thousands of runs before one disturbance stops moving the p50.
        while len(times) < profile.repeats or sum(times) < profile.min_time_s * 1000.0:
            result = run_ms()
            if isinstance(result, tuple):
                times.append(result[0])
                phases.append(result[1])
            else:
                times.append(result)
        cv = statistics.pstdev(times) / statistics.fmean(times)
        if best is None or cv < best[0]:
            best = (cv, times, phases)
        if cv <= profile.max_cv:
            break
    assert best is not None
    return best[0], best[1], best[2], attempts


def load_average() -> float | None:
    """The host's 1-minute load average; None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@functools.cache
def _cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (Linux); elsewhere the
    platform's processor name and no flags. Read once per process: every latency cache
    key and report asks."""
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return model, tuple(flags)


def cpu_fingerprint() -> str:
    """A short hash of the CPU model, all its flags and the CPU count: what a latency
    measured on this host depends on beyond the profile. Two hosts with the same model
    but other flags (a VM that hides AVX-512) run other kernels, so they differ here."""
    model, flags = _cpu_model_and_flags()
    text = f"{model}|{' '.join(sorted(flags))}|{os.cpu_count()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cpu_description() -> str:
    """The CPU for people: model, CPU count and the SIMD flags that matter to kernels."""
    model, flags = _cpu_model_and_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({os.cpu_count()} cpus; {' '.join(simd) or 'no avx2'})"
