"""Ablation of the training recipes (issue [7]) on shapes-VQA, each on versus off.

    python bench/recipe_ablation.py            # 3 seeds, the default trainer budget
    python bench/recipe_ablation.py --small    # smoke run: 1 seed, 1 epoch, tiny data

One student architecture (small: 3 AnyRes tiles, pooled to 4 tokens each, LM width 64)
is trained per seed plainly and with one recipe switched on at a time, through
`run_trial` (cpu/accuracy on ONNX Runtime over the validation set, cpu/latency_p50_ms,
training time). The distillation teacher is the space's baseline trained for
`trainer.teacher_epochs` (its own row). Then, on a copy of the data where 20% of the
training pairs carry a wrong image (`data.noise=0.2`), the similarity filter: plain,
stage 1 only, stage 1 + filter, with how many pairs were dropped and how many of those
were the wrong ones. Last, gradient checkpointing's peak memory: one training step of the
baseline (and a deeper variant) at batch 64 in a fresh process each way: the activations
autograd keeps for backward, and peak RSS growth over the process's size before the step.
Use a fresh --workdir: a trial whose weights are in the cache reports 0 s of training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from search_spaces import ArchConfig  # noqa: E402
from search_spaces._arch import RecipeConfig  # noqa: E402
from studies import load_config, run_trial  # noqa: E402
from trainers.data import prepare_data  # noqa: E402

STUDENT = {
    "vision.width": 32,
    "vision.pooling": "avg2x2",
    "grid_pinpoints": "1x2",
    "lm.width": 64,
}
DEEP = {"lm.depth": 8, "vision.depth": 6}  # where checkpointing has layers to save
VARIANTS: dict[str, dict] = {
    "plain": {},
    "stage-1 alignment (4 epochs)": {"recipe": {"align_epochs": 4}},
    "distillation (w 0.5, T 2)": {"recipe": {"distill_weight": 0.5, "distill_temperature": 2.0}},
    "sincos_2d positions": {"pos_encoding": "sincos_2d"},
    "augmentation + paraphrase": {"recipe": {"augment": True}},
    "gradient checkpointing": {"trainer": ["trainer.grad_checkpointing=true"]},
}


def filter_variants(threshold: float) -> dict[str, RecipeConfig]:
    return {
        "plain": RecipeConfig(),
        "stage 1 only": RecipeConfig(align_epochs=4),
        f"stage 1 + filter (drop cos < {threshold:g})": RecipeConfig(
            align_epochs=4, filter_threshold=threshold
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-recipes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--filter-threshold", type=float, default=0.05)
    parser.add_argument(
        "--memory-only", action="store_true", help="only the checkpointing memory table"
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        on, deep = args.memory_probe.split(",")
        print(json.dumps(_memory_probe(on == "on", deep == "deep")))
        return
    if args.memory_only:
        _memory_table()
        return
    base = [f"study.workdir={args.workdir}", "study.name=recipes"]
    if args.small:
        base += [
            "trainer.max_epochs=1",
            "trainer.teacher_epochs=1",
            "data.train_images=60",
            "data.val_images=10",
        ]
        args.seeds = 1
        args.filter_threshold = -0.9  # an untrained model's similarities are near 0
    cfg0 = load_config(base)
    print(f"# machine: {cpu_description()}, Python {platform.python_version()}", flush=True)
    print(
        f"# budget: {cfg0.trainer.max_epochs} epochs x {cfg0.data.train_images} images, "
        f"teacher {cfg0.trainer.teacher_epochs} epochs; {args.seeds} seeds",
        flush=True,
    )
    space = cfg0.space
    quant = {"cpu": ("fp32",)}
    baseline = space.to_arch(space.baseline_params(quant))
    student = space.to_arch({**space.baseline_params(quant), **STUDENT})
    number = 0

    def trial(arch: ArchConfig, overrides: list[str], seed: int, data_overrides=()) -> dict:
        nonlocal number
        cfg = load_config([*base, *overrides, *data_overrides, f"trainer.seed={seed}"])
        data = prepare_data(cfg.data, cfg.workdir)
        start = time.perf_counter()
        out = run_trial(arch, number, cfg, data.root)
        number += 1
        return {**out.metrics, "wall_s": time.perf_counter() - start}

    # The teacher: the baseline at the teacher budget (the same weights-cache entry the
    # students' distillation loads, so it is trained once).
    teacher = trial(baseline, [f"trainer.max_epochs={cfg0.trainer.teacher_epochs}"], 0)
    print(
        f"# teacher: accuracy {teacher['cpu/accuracy']:.3f}, p50 {teacher['cpu/latency_p50_ms']:.3f} ms",
        flush=True,
    )

    rows = {}
    for name, change in VARIANTS.items():
        arch = student
        if "recipe" in change:
            arch = dataclasses.replace(arch, recipe=RecipeConfig(**change["recipe"]))
        if "pos_encoding" in change:
            arch = dataclasses.replace(
                arch, vision=dataclasses.replace(arch.vision, pos_encoding=change["pos_encoding"])
            )
        results = [trial(arch, change.get("trainer", []), seed) for seed in range(args.seeds)]
        rows[name] = results
        print(f"# {name}: " + ", ".join(f"{r['cpu/accuracy']:.3f}" for r in results), flush=True)

    plain = statistics.mean(r["cpu/accuracy"] for r in rows["plain"])
    print(
        "\n| recipe | cpu/accuracy mean ± sd | vs plain | train s (mean) | cpu p50 ms | what the recipe did |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, results in rows.items():
        acc = [r["cpu/accuracy"] for r in results]
        note = ""
        r0 = results[0]
        if "align_loss_first" in r0:
            note = f"contrastive loss {r0['align_loss_first']:.2f} -> {r0['align_loss_last']:.2f} (seed 0)"
        if "paraphrased" in r0:
            note = f"{r0['paraphrased']:.0f} of {cfg0.data.train_images} records paraphrased"
        if "teacher_val_accuracy" in r0:
            kept = (
                statistics.mean(acc) / teacher["cpu/accuracy"]
                if teacher["cpu/accuracy"]
                else float("nan")
            )
            ratio = r0["cpu/latency_p50_ms"] / teacher["cpu/latency_p50_ms"]
            note = f"{kept:.0%} of the teacher's accuracy at {ratio:.0%} of its latency"
        print(
            f"| {name} | {statistics.mean(acc):.3f} ± {_sd(acc):.3f} | {statistics.mean(acc) - plain:+.3f}"
            f" | {statistics.mean(r['train_s'] for r in results):.1f}"
            f" | {statistics.mean(r['cpu/latency_p50_ms'] for r in results):.3f} | {note} |"
        )
    print(
        f"| teacher (baseline, {cfg0.trainer.teacher_epochs} epochs, seed 0) | {teacher['cpu/accuracy']:.3f} | |"
        f" {teacher['train_s']:.1f} | {teacher['cpu/latency_p50_ms']:.3f} | |"
    )

    # Data hygiene on noisy pairs.
    noisy = ["data.noise=0.2"]
    data = prepare_data(load_config([*base, *noisy]).data, load_config([*base, *noisy]).workdir)
    wrong = {
        i
        for i, r in enumerate(json.loads((data.root / "train.json").read_text()))
        if r.get("mismatched")
    }
    print(
        f"\n# noisy data: {len(wrong)} of {len(data.train)} training pairs have a wrong image",
        flush=True,
    )
    print("\n| on data.noise=0.2 | cpu/accuracy mean ± sd | pairs dropped | of them wrong |")
    print("|---|---:|---:|---:|")
    for name, recipe in filter_variants(args.filter_threshold).items():
        arch = dataclasses.replace(student, recipe=recipe)
        results = [trial(arch, [], seed, noisy) for seed in range(args.seeds)]
        acc = [r["cpu/accuracy"] for r in results]
        dropped = [r.get("filtered_pairs") for r in results]
        dropped_text = "-" if dropped[0] is None else " / ".join(f"{d:.0f}" for d in dropped)
        precision = "-"
        if dropped[0] is not None:
            precision = _wrong_share(arch, data, recipe, wrong, base, noisy)
        print(
            f"| {name} | {statistics.mean(acc):.3f} ± {_sd(acc):.3f} | {dropped_text} | {precision} |"
        )

    _memory_table()


def _memory_table() -> None:
    """Gradient checkpointing's memory: one fresh process per row."""
    print("\n| model | checkpointing | kept for backward (MB) | peak RSS growth (MB) | step s |")
    print("|---|---|---:|---:|---:|")
    for deep in ("baseline", "deep"):
        for mode in ("off", "on"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-probe", f"{mode},{deep}"],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            label = "baseline" if deep == "baseline" else "baseline, lm.depth 8, vision.depth 6"
            print(
                f"| {label} | {mode} | {m['saved_mb']:.0f} | {m['peak_mb']:.0f} | {m['step_s']:.2f} |"
            )


def _wrong_share(arch, data, recipe, wrong, base, noisy) -> str:  # type: ignore[no-untyped-def]
    """Seed 0: which pairs the filter drops (recomputed the way fit does)."""
    import lightning as L
    import torch

    from trainers import align, model_for, similarities, train_rows
    from trainers.data import ImageCache

    cfg = load_config([*base, *noisy, "trainer.seed=0"])
    torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, verbose=False)
    model = model_for(arch, data)
    rows, _ = train_rows(arch, data, ImageCache(), cfg.trainer.seed)
    pad = data.tokenizer.pad_id
    align(
        model,
        rows,
        epochs=recipe.align_epochs,
        batch_size=cfg.trainer.batch_size,
        lr=cfg.trainer.lr,
        pad_id=pad,
        generator=torch.Generator().manual_seed(cfg.trainer.seed),
    )
    dropped = (
        (similarities(model, rows, pad) < recipe.filter_threshold).nonzero().flatten().tolist()
    )
    hit = len(set(dropped) & wrong)
    return f"{hit} of {len(dropped)} ({hit / max(len(dropped), 1):.0%}; {len(wrong) / len(data.train):.0%} if dropped at random)"


def _memory_probe(checkpointing: bool, deep: bool) -> dict[str, float]:
    """One forward + backward at batch 64: the bytes autograd keeps for backward outside
    checkpointed blocks (saved-tensor hooks), and the growth of peak RSS."""
    import resource

    import torch
    import torch.nn.functional as F

    from trainers import model_for, train_rows
    from trainers.data import ImageCache

    cfg = load_config(["study.workdir=runs-recipes", "data.train_images=64", "data.val_images=10"])
    data = prepare_data(cfg.data, cfg.workdir)
    params = cfg.space.baseline_params({"cpu": ("fp32",)})
    if deep:
        params = {**params, **DEEP}
    arch = cfg.space.to_arch(params)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = model_for(arch, data)
    model.set_checkpointing(checkpointing)
    rows, _ = train_rows(arch, data, ImageCache(), 0)
    pixels, mask, ids, labels = (t[:64] for t in rows.tensors[:4])
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    # Reset the process's peak-RSS mark (Linux), so setup (data generation) cannot hide
    # the step's peak; fall back to the lifetime peak elsewhere.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(pixels, mask, ids)
    F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
    step = time.perf_counter() - start
    try:
        after = _status_kb("VmHWM")
    except OSError:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"saved_mb": saved[0] / 2**20, "peak_mb": (after - before) / 1024, "step_s": step}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


if __name__ == "__main__":
    main()
