"""Why shapes-VQA models stop near 0.5: do they read the colour words? (BENCHMARKS §14)

    python bench/colour_binding.py checkpoint [--folder checkpoints/shapes-llava-next]
    python bench/colour_binding.py train {control,hint,describe} [--epochs 8 --batch 32 ...]

`checkpoint` looks at a saved plain candidate (the shipped checkpoint by default) on the
validation data it was not trained on (its `pretrain.json` names the data):
- accuracy per question kind (attribute split into shape and size, counting into
  "objects" and "<shape>s");
- colour dependence: for 100 validation images, "is there a <c> object?" for each of the
  6 colours, greedy answers against the truth read from the pixels, and in how many
  images the answer changes with the colour at all;
- a linear probe: whether each colour is present, read by logistic regression from the
  mean and the max of an image's visual tokens (the projector's output, what the LM
  gets), fitted on 2,000 training images, scored on the validation images.

`train` trains the search space's baseline (the Quick start's trial 0) with the default
trainer on the Quick start's data, with one change to the training text, and prints the
accuracy per question kind:
- `control`: none;
- `hint`: the first question starts with the colours the image holds, as words
  ("colours purple red yellow . what shape is ..."), in training and validation: the
  answer to every existence question is then in the text itself;
- `describe`: the generator's description turn (`data.describe=true`), a last turn
  "describe the objects." -> "red circle large , blue square small", in training only.

Validation accuracy is printed after every epoch: the change, where it comes, is a jump
(BENCHMARKS §14 stopped a 48-epoch run at epoch 10, after the jump).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from search_spaces import SearchSpace, load_pretrained
from search_spaces._generation import exact_match, greedy_decode
from trainers import TrainerConfig, fit
from trainers._fit import torch_forward
from trainers.data import (
    DataConfig,
    ImageCache,
    Record,
    VQAData,
    WordTokenizer,
    encode_eval,
    prepare_data,
)
from trainers.data._llava import _images
from trainers.data._shapes import COLORS


def objects(image: Path) -> list[tuple[float, str, str, str]]:
    """(x, colour, shape, size) of each object, left to right, read from the pixels
    (colours are unique within an image and drawn without anti-aliasing)."""
    im = np.asarray(Image.open(image).convert("RGB"))
    out = []
    for colour, rgb in COLORS.items():
        mask = (im == np.array(rgb)).all(-1)
        if not mask.any():
            continue
        ys, xs = mask.nonzero()
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = mask.sum() / (h * w)
        shape = "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"
        out.append((float(xs.mean()), colour, shape, "large" if max(h, w) > 14 else "small"))
    return sorted(out)


def per_kind(model: torch.nn.Module, data: VQAData, records: list[Record]) -> dict[str, float]:
    enc = encode_eval(records, data.tokenizer, model.arch, data.text_len, ImageCache())
    ok = exact_match(greedy_decode(torch_forward(model), enc, data.max_answer_tokens), enc)
    by: dict[str, list[bool]] = collections.defaultdict(list)
    turns = [(k, q) for r in records for k, (q, _) in zip(r.kinds, r.turns, strict=True)]
    for (kind, question), hit in zip(turns, ok, strict=True):
        by[kind].append(hit)
        if kind == "attribute":
            by["attribute: shape" if "shape" in question else "attribute: size"].append(hit)
        if kind == "counting":
            by["counting: objects" if "objects" in question else "counting: <shape>s"].append(hit)
    return {"all": float(ok.mean()), **{k: float(np.mean(v)) for k, v in sorted(by.items())}}


def colour_dependence(model: torch.nn.Module, data: VQAData, n: int = 100) -> None:
    records, truth = [], []
    for r in data.val[:n]:
        present = {c for _, c, _, _ in objects(r.image)}
        for c in COLORS:
            q = f"<image>\nis there a {c} object?"
            records.append(dataclasses.replace(r, turns=((q, "yes"),), kinds=("existence",)))
            truth.append("yes" if c in present else "no")
    enc = encode_eval(records, data.tokenizer, model.arch, data.text_len, ImageCache())
    pred = greedy_decode(torch_forward(model), enc, data.max_answer_tokens)
    words = [
        data.tokenizer.decode([t for t in p if t >= 0]).replace("<eos>", "").strip() for p in pred
    ]
    said = np.array(words).reshape(n, len(COLORS))
    true = np.array(truth).reshape(n, len(COLORS))
    varies = sum(len(set(row)) > 1 for row in said)
    print(
        f"colour dependence ({n} images x {len(COLORS)} colours): accuracy {(said == true).mean():.3f},"
        f" 'yes' said {(said == 'yes').mean():.2f} (true {(true == 'yes').mean():.2f}),"
        f" answer changes with the colour in {varies} of {n} images"
    )


def probe(model: torch.nn.Module, data: VQAData, n_train: int = 2000) -> None:
    def features(records: list[Record]) -> torch.Tensor:
        pixels, _, index, _ = _images(records, model.arch, ImageCache())
        out = []
        with torch.no_grad():
            for s in range(0, len(records), 128):
                image, valid = model.encode_image(
                    torch.from_numpy(pixels[s : s + 128]), torch.from_numpy(index[s : s + 128])
                )
                v = valid.unsqueeze(-1).float()
                mean = (image * v).sum(1) / v.sum(1)
                top = image.masked_fill(~valid.unsqueeze(-1), -1e9).amax(1)
                out.append(torch.cat([mean, top], 1))
        return torch.cat(out)

    def present(records: list[Record]) -> torch.Tensor:
        rows = [[c in {o[1] for o in objects(r.image)} for c in COLORS] for r in records]
        return torch.tensor(rows, dtype=torch.float32)

    train, val = data.train[:n_train], data.val
    x_tr, x_va = features(train), features(val)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_va = (x_tr - mu) / sd, (x_va - mu) / sd
    y_tr, y_va = present(train), present(val)
    torch.manual_seed(0)
    w = torch.zeros(x_tr.shape[1], len(COLORS), requires_grad=True)
    b = torch.zeros(len(COLORS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x_tr @ w + b, y_tr)
        (loss + 1e-3 * w.square().sum()).backward()
        opt.step()
    acc = ((x_va @ w + b > 0).float() == y_va).float().mean(0)
    base = torch.maximum(y_va.mean(0), 1 - y_va.mean(0))
    print("linear probe, colour present (validation accuracy / base rate):")
    for c, a_, b_ in zip(COLORS, acc.tolist(), base.tolist(), strict=True):
        print(f"  {c:7s} {a_:.2f} / {b_:.2f}")


def checkpoint(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    model = load_pretrained(folder).eval()
    tok = WordTokenizer.from_json((folder / "word_tokenizer.json").read_text())
    built = json.loads((folder / "pretrain.json").read_text())["data"]
    keys = ("seed", "train_images", "val_images", "describe")
    cfg = DataConfig(**{k: built[k] for k in keys if k in built})
    data = prepare_data(cfg, Path(args.workdir), tok)
    kinds = per_kind(model, data, data.val)
    print(f"{folder}: accuracy per question kind on {len(data.val)} validation images")
    for k, v in kinds.items():
        print(f"  {k:20s} {v:.3f}")
    colour_dependence(model, data)
    probe(model, data)


def train(args: argparse.Namespace) -> None:
    data = prepare_data(DataConfig(describe=args.variant == "describe"), Path(args.workdir))
    if args.variant == "hint":

        def hinted(r: Record) -> Record:
            colours = " ".join(sorted(c for _, c, _, _ in objects(r.image)))
            first = r.turns[0][0].replace("<image>\n", f"<image>\ncolours {colours} . ")
            return dataclasses.replace(r, turns=((first, r.turns[0][1]), *r.turns[1:]))

        train, val = [hinted(r) for r in data.train], [hinted(r) for r in data.val]
        data = VQAData.from_records(data.root, train, val)
    space = SearchSpace.load("llava_next")
    arch = space.to_arch(space.baseline)
    cfg = TrainerConfig(
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch,
        threads=args.threads,
    )

    def report(epoch: int, metrics: dict[str, float]) -> None:
        print(f"epoch {epoch}: val_accuracy {metrics['val_accuracy']:.3f}", flush=True)

    start = time.perf_counter()
    result = fit(arch, data, cfg, Path(args.workdir) / f"binding-{args.variant}", report=report)
    train_s = time.perf_counter() - start
    kinds = per_kind(result.model.eval(), data, data.val)
    print(
        f"{args.variant}: {args.epochs} epochs, lr {args.lr}, batch"
        f" {args.batch}, {train_s:.0f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench-binding")
    sub = parser.add_subparsers(dest="command", required=True)
    ck = sub.add_parser("checkpoint")
    ck.add_argument("--folder", default="checkpoints/shapes-llava-next")
    tr = sub.add_parser("train")
    tr.add_argument("variant", choices=("control", "hint", "describe"))
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint(args) if args.command == "checkpoint" else train(args)


if __name__ == "__main__":
    main()
