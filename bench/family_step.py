"""Training-step time of the baseline candidate: this model family against the old one.

The old family (vlmnas's own `search_spaces/_model.py`, deleted in the move to
transformers' LLaVA-NeXT) is loaded from git history, so both run side by side in one
process on the same batch of shapes-VQA rows (the Quick start's data and baseline; batch
32, 2 threads, AdamW): forward + backward + step, median of `--steps` after warm-up.

    .venv/bin/python bench/family_step.py [--steps 30] [--rev d51bc6f]

Prints a table; BENCHMARKS.md §13 holds the figures with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from search_spaces import SearchSpace, build_model  # noqa: E402
from trainers.data import ImageCache, ShapesVQAConfig, VQAData, encode_train, generate_shapes_vqa  # noqa: E402  # noqa: E402


def _old_family(rev: str):
    """The old `_model.py` and `_anyres.py` at `rev`, importable as a package."""
    root = Path(tempfile.mkdtemp()) / "old_family"
    root.mkdir()
    for name in ("_model.py", "_anyres.py", "_arch.py"):
        text = subprocess.run(
            ["git", "show", f"{rev}:search_spaces/{name}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (root / name).write_text(text)
    (root / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(
        "old_family", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["old_family"] = package
    model = importlib.import_module("old_family._model")
    anyres = importlib.import_module("old_family._anyres")
    arch = importlib.import_module("old_family._arch")
    return model, anyres, arch


_OLD_KEYS = {
    "vision": (
        "depth",
        "width",
        "heads",
        "mlp_ratio",
        "patch_size",
        "tile_size",
        "feature_layer",
        "pooling",
        "pos_encoding",
    ),
    "lm": ("depth", "width", "heads", "mlp_ratio"),
}


def _time(step, steps: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rev", default="d51bc6f", help="a commit that still has _model.py")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)

    root = generate_shapes_vqa(
        Path(tempfile.mkdtemp()) / "shapes", ShapesVQAConfig(seed=0, train_images=64, val_images=4)
    )
    data = VQAData.load(root)
    tok = data.tokenizer
    space = SearchSpace.load("llava_next")
    arch = space.to_arch(space.baseline)
    rows = encode_train(data.train[: args.batch], tok, arch, data.text_len, ImageCache())
    pixels, _, index, ids, labels = rows.tensors

    results = {}
    new = build_model(arch, vocab_size=len(tok), image_token_id=tok.image_id, seed=0).train()
    for attn in ("sdpa", "eager"):
        new.hf.set_attn_implementation(attn)
        opt = torch.optim.AdamW(new.parameters(), lr=1e-3)

        def step_new(opt: torch.optim.Optimizer = opt) -> None:
            loss = F.cross_entropy(new(pixels, index, ids).flatten(0, 1), labels.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()

        results[f"transformers LLaVA-NeXT ({attn})"] = (_time(step_new, args.steps), ids.shape[1])

    old_model, old_anyres, old_arch = _old_family(args.rev)
    # the old ArchConfig lacks the fields added since (all at their defaults here)
    old_fields = {f.name for f in dataclasses.fields(old_arch.ArchConfig)}
    oarch = old_arch.ArchConfig.from_dict(
        {
            k: (
                {kk: vv for kk, vv in v.items() if kk in _OLD_KEYS.get(k, v)}
                if isinstance(v, dict)
                else v
            )
            for k, v in arch.to_dict().items()
            if k in old_fields
        }
    )
    old = old_model.build_model(
        oarch, vocab_size=len(tok), max_text_len=data.text_len, image_token_id=tok.image_id
    )
    cache = ImageCache()
    tiles = [
        old_anyres.anyres_tiles(
            cache.get(r.image), oarch.grid_pinpoints, oarch.vision.tile_size, oarch.max_tiles
        )
        for r in data.train[: args.batch]
    ]
    opix = torch.from_numpy(np.stack([t[0] for t in tiles]))
    omask = torch.from_numpy(np.stack([t[1] for t in tiles]))
    oids = torch.full((args.batch, data.text_len), tok.pad_id)
    olabels = torch.full((args.batch, data.text_len), -100)
    from trainers.data._llava import conversation_ids

    for i, r in enumerate(data.train[: args.batch]):
        c, is_answer = conversation_ids(tok, r)
        oids[i, : len(c)] = torch.tensor(c)
        for t in range(len(c) - 1):
            if is_answer[t + 1]:
                olabels[i, t] = c[t + 1]
    oopt = torch.optim.AdamW(old.parameters(), lr=1e-3)

    def step_old() -> None:
        loss = F.cross_entropy(
            old(opix, omask, oids).flatten(0, 1), olabels.flatten(), ignore_index=-100
        )
        oopt.zero_grad()
        loss.backward()
        oopt.step()

    results["old vlmnas family"] = (
        _time(step_old, args.steps),
        data.text_len - 1 + oarch.image_tokens,
    )
    print(f"machine: {cpu_description()}, torch {torch.__version__}, 2 threads, batch {args.batch}")
    print("| model | sequence | ms per step (median) |\n|---|---|---|")
    for name, (ms, seq) in results.items():
        print(f"| {name} | {seq} | {ms:.1f} |")


if __name__ == "__main__":
    main()
