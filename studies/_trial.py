"""`run_trial`: the one place where a trial's steps are ordered.

1. Cheap objectives first: build the untrained model, deploy it per profile (export and
   quantize, or cast), measure or estimate latency (or take it from the latency cache)
   and size.
2. Train for the trial's budget, reporting validation accuracy every epoch with step 1's
   values beside it, when early stopping listens (or take the weights from the cache
   when this architecture was trained before).
3. Deploy the trained model per profile and measure `<profile>/accuracy` by running it
   on that profile's runtime over the validation set (or a stated subset, with its 95%
   interval); an NPU profile also reports `npu_coverage`.
4. Write the trial's folder (config.yaml, metrics.json, models) and return the metrics.

A study's constraints are checked after step 1 on what is known then (latency, size,
NPU coverage, params): a candidate that breaks one stops there, untrained, with
`info["infeasible"]` naming what it broke. After step 3 every constraint is checked.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from hardware_profiles import (
    LatencyCache,
    accuracy,
    busy,
    coverage,
    deploy,
    latency,
)
from search_spaces import ArchConfig, EncodedVQA, VlmModel, newline_index
from trainers import cached_fit, model_for, needs_training, save_weights, study_teacher
from trainers.data import ImageCache, VQAData, encode_eval

from ._config import VlmnasConfig, text_side

Report = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrialOutcome:
    metrics: dict[str, float]  # the names of ARCHITECTURE.md: "<profile>/<metric>", ...
    series: dict[str, list[float]]  # per-epoch values
    info: dict[str, str]  # latency_source per profile, paths


def _with_known(report: Report, known: dict[str, float]) -> Report:
    def with_known(epoch: int, values: dict[str, float]) -> None:
        report(epoch, {**known, **values})

    return with_known


def run_trial(
    arch: ArchConfig, number: int, cfg: VlmnasConfig, data_root: Path, report: Report | None = None
) -> TrialOutcome:
    trial_dir = cfg.study_dir / "trials" / str(number)
    trial_dir.mkdir(parents=True, exist_ok=True)
    data = VQAData.load(data_root, text_side(cfg))
    images = ImageCache()
    info: dict[str, str] = {"trial_dir": str(trial_dir), "arch_id": arch.arch_id}

    # 1. Cheap objectives on the untrained candidate: latency and size do not depend on
    #    the weights' values, only on the graph and the scheme.
    step = _untrained(arch, cfg, data, images)
    untrained, val, calibration = step.model, step.val, step.calibration
    metrics = dict(step.metrics)
    info.update(step.info)

    # Constraints on what is known now (latency, size, coverage, params): a candidate
    # that breaks one is infeasible whatever its accuracy, so it is not trained.
    broken = violated(cfg, metrics, cheap_only=True)
    if broken and cfg.study.reject_before_training:
        info["infeasible"] = "; ".join(broken)
        return _finish(arch, number, cfg, data_root, data, trial_dir, metrics, info, [])

    # 2. Train, unless these weights were trained before (same architecture part of
    #    arch_id, budget and data): then only the quantized models below are new.
    cache_dir = cfg.workdir / "cache" / "weights"
    teacher = None
    if arch.recipe.distill_weight > 0:  # trained once per study, then from the cache
        teacher = study_teacher(
            cfg.space.to_arch(cfg.space.baseline),
            data,
            cfg.trainer,
            cache_dir,
            cfg.workdir / "cache" / "teacher",
            images,
        )
        metrics["teacher_val_accuracy"] = teacher.val_accuracy
    if report is not None:  # every per-epoch report also carries what step 1 measured,
        report = _with_known(report, dict(metrics))  # which the rungs rank by (_rungs.py)
    if needs_training(arch):
        result, hit = cached_fit(
            arch,
            data,
            cfg.trainer,
            trial_dir,
            cache_dir,
            report=report,
            images=images,
            teacher=teacher,
            model=untrained,  # not built (or for a cut, loaded and cut) a second time
        )
        model, history = result.model, result.val_accuracy_history
        metrics["val_accuracy"] = result.metrics["val_accuracy"]
        for key in ("align_loss_first", "align_loss_last", "filtered_pairs", "paraphrased"):
            if key in result.metrics:  # what the recipe's stage 1 and data hygiene did
                metrics[key] = result.metrics[key]
        metrics["train_s"] = 0.0 if hit else result.metrics["train_s"]
        info["weights"] = "cached" if hit else "trained"
    else:  # a training-free cut of a checkpoint: its weights as they are
        model, history = untrained.eval(), []
        save_weights(model, trial_dir)
        metrics["train_s"] = 0.0
        info["weights"] = "checkpoint"

    # 3. Accuracy on each profile's runtime, with the scheme that profile deploys (on a
    #    stated validation subset where the runtime is an emulator), and for an NPU the
    #    share of the graph it runs.
    for profile in cfg.profiles:
        scheme = arch.quant_for(profile.name)
        start = time.perf_counter()
        with busy():
            dep = deploy(model, profile, scheme, trial_dir, val, calibration, answer_tokens(data))
            acc = accuracy(dep, val, data.max_answer_tokens)
            share = coverage(dep)
        metrics[f"{profile.name}/accuracy"] = acc.value
        metrics[f"{profile.name}/eval_s"] = time.perf_counter() - start
        if acc.n < len(val):
            metrics[f"{profile.name}/accuracy_n"] = float(acc.n)
            metrics[f"{profile.name}/accuracy_ci95_low"] = acc.low
            metrics[f"{profile.name}/accuracy_ci95_high"] = acc.high
        if share is not None:  # measured again on the trained graph
            metrics[f"{profile.name}/npu_coverage"] = share
        info[f"{profile.name}/model"] = str(dep.path)

    broken = violated(cfg, metrics)
    if broken:
        info["infeasible"] = "; ".join(broken)
    return _finish(arch, number, cfg, data_root, data, trial_dir, metrics, info, history)


@dataclass(frozen=True)
class _Untrained:
    model: VlmModel
    val: EncodedVQA
    calibration: EncodedVQA
    metrics: dict[str, float]
    info: dict[str, str]


def _untrained(
    arch: ArchConfig, cfg: VlmnasConfig, data: VQAData, images: ImageCache
) -> _Untrained:
    """Step 1: the untrained candidate, its encoded validation and calibration rows,
    and what is known of it before training (`cheap_metrics`, visual and prompt tokens)."""
    tok = data.tokenizer
    val = encode_eval(data.val, tok, arch, data.text_len, images)
    # Static quantization calibrates activation ranges on training samples, never on
    # the validation set it is scored on.
    calib_images = max((p.calibration_images for p in cfg.profiles), default=0)
    calibration = encode_eval(data.train[:calib_images], tok, arch, data.text_len, images)
    # seeded as `fit` would build it, so that training can start from this one
    untrained = model_for(arch, data, images, seed=cfg.trainer.seed)
    metrics: dict[str, float] = {
        # visual tokens per image (LLaVA-NeXT's AnyRes: they depend on its size), on average
        "image_tokens": float((val.image_index <= newline_index(arch)).sum(1).mean()),
        "prompt_tokens": float(val.prompt_lens.mean()),  # what a prefill runs over
    }
    cheap, info = cheap_metrics(untrained, arch, cfg, data, val, calibration)
    return _Untrained(untrained, val, calibration, {**metrics, **cheap}, info)


def untrained_step(
    arch: ArchConfig, cfg: VlmnasConfig, data: VQAData, images: ImageCache
) -> tuple[dict[str, float], dict[str, str]]:
    """What step 1 of a trial knows of `arch` before any training (metrics, info): the
    `auto` sampler's cheap measurement of a candidate it may never train."""
    step = _untrained(arch, cfg, data, images)
    return step.metrics, step.info


def cheap_metrics(
    untrained: torch.nn.Module,
    arch: ArchConfig,
    cfg: VlmnasConfig,
    data: VQAData,
    val: EncodedVQA,
    calibration: EncodedVQA,
) -> tuple[dict[str, float], dict[str, str]]:
    """Step 1: params, and per profile latency (measured, estimated or from the latency
    cache), size and NPU coverage of the untrained model."""
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    tok = data.tokenizer
    metrics["params"] = float(sum(p.numel() for p in untrained.parameters()))
    latency_cache = LatencyCache(cfg.workdir / "cache" / "latency")
    tokens = answer_tokens(data)
    with tempfile.TemporaryDirectory() as tmp:
        for profile in cfg.profiles:
            scheme = arch.quant_for(profile.name)
            with busy():  # export and quantization are CPU work: not during a timing run
                dep = deploy(untrained, profile, scheme, Path(tmp), val, calibration, tokens)
            key = latency_cache.key(
                f"{arch.graph_id}-{data.text_len}x{len(tok)}-{dep.decoding}-{tokens}",
                scheme,
                profile,
            )
            measured = latency_cache.get(key)
            if measured is None:
                measured = latency(dep, val, tokens)
                latency_cache.put(key, measured)
            # generating profiles: p50 / p95 of a whole answer (end to end)
            metrics[f"{profile.name}/latency_p50_ms"] = measured.p50_ms
            metrics[f"{profile.name}/latency_p95_ms"] = measured.p95_ms
            metrics[f"{profile.name}/latency_cv"] = measured.cv
            for name, value in measured.phases.items():  # vision_ms, ..., e2e_ms
                metrics[f"{profile.name}/{name}"] = value
            if measured.reference_ms:  # measured with the host's reference workload
                metrics[f"{profile.name}/reference_ms"] = measured.reference_ms
                metrics[f"{profile.name}/latency_rel"] = measured.p50_ms / measured.reference_ms
            metrics[f"{profile.name}/size_mb"] = dep.size_mb
            info[f"{profile.name}/latency_source"] = measured.source
            info[f"{profile.name}/latency_quality"] = measured.quality
            info[f"{profile.name}/runtime"] = measured.runtime
            info[f"{profile.name}/device"] = measured.cpu
            info[f"{profile.name}/scheme"] = scheme
            info[f"{profile.name}/generation"] = dep.decoding
            with busy():
                share = coverage(dep)
            if share is not None:
                metrics[f"{profile.name}/npu_coverage"] = share
    return metrics, info


def answer_tokens(data: VQAData) -> int:
    """The answer length latency is timed at: the study's longest answer with its end
    token, at least 2 (time per output token needs two tokens)."""
    return max(2, data.max_answer_tokens)


def violated(cfg: VlmnasConfig, metrics: dict[str, float], cheap_only: bool = False) -> list[str]:
    """The study's constraints that `metrics` break (those known before training only,
    when `cheap_only`); each as text with the measured value."""
    broken = []
    for constraint in cfg.study.parsed_constraints:
        if cheap_only and not constraint.cheap:
            continue
        value = metrics.get(constraint.metric)
        if value is not None and constraint.violation(value) > 0:
            broken.append(f"{constraint} (measured {value:.4g})")
    return broken


def _finish(
    arch: ArchConfig,
    number: int,
    cfg: VlmnasConfig,
    data_root: Path,
    data: VQAData,
    trial_dir: Path,
    metrics: dict[str, float],
    info: dict[str, str],
    history: list[float],
) -> TrialOutcome:
    """4. The trial's folder: enough to rebuild, retrain and rerun it."""
    trial_config = {
        "arch": arch.to_dict(),
        "arch_id": arch.arch_id,
        "weights_id": arch.weights_id,
        "trainer": asdict(cfg.trainer),
        "data": {
            "root": str(data_root),
            "text_len": data.text_len,
            "max_answer_tokens": data.max_answer_tokens,
            "config": asdict(cfg.data),  # enough to generate shapes-VQA data again
        },
        "study": {"name": cfg.study.name, "trial_number": number},
    }
    _write_atomic(trial_dir / "config.yaml", yaml.safe_dump(trial_config, sort_keys=False))
    _write_atomic(
        trial_dir / "metrics.json",
        json.dumps({"metrics": metrics, "val_accuracy_history": history, "info": info}, indent=1),
    )
    return TrialOutcome(metrics, {"val_accuracy": history}, info)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
