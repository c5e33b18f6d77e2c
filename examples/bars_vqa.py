"""Write a small bar-chart VQA data set in LLaVA-Instruct format (a user data set).

It comes from a different generator than the embedded shapes-VQA data, to show that any
LLaVA-format folder works with `vlmnas search data=llava data.root=DIR`:

    python examples/bars_vqa.py /tmp/bars --train 400 --val 80
    vlmnas search data=llava data.root=/tmp/bars study.name=bars

Each image is a bar chart of 2-4 coloured bars; questions ask which bar is tallest, how
many bars there are, and whether one bar is taller than another.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "orange": (240, 140, 20),
}
NUMBERS = ("zero", "one", "two", "three", "four")


def make_record(rng: random.Random, root: Path, ident: str) -> dict:
    n = rng.randint(2, 4)
    colors = rng.sample(sorted(COLORS), n)
    heights = rng.sample(range(8, 60), n)
    width = rng.choice((64, 96, 128))
    image = Image.new("RGB", (width, 64), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    slot = width // n
    for i, (c, h) in enumerate(zip(colors, heights, strict=True)):
        draw.rectangle((i * slot + 3, 63 - h, (i + 1) * slot - 3, 63), fill=COLORS[c])
    image.save(root / "images" / f"{ident}.png")
    a, b = rng.sample(range(n), 2)
    turns = [
        ("<image>\nwhich bar is the tallest?", colors[heights.index(max(heights))]),
        ("how many bars are there?", NUMBERS[n]),
        (
            f"is the {colors[a]} bar taller than the {colors[b]} bar?",
            "yes" if heights[a] > heights[b] else "no",
        ),
    ]
    conv = [
        m
        for q, ans in turns
        for m in ({"from": "human", "value": q}, {"from": "gpt", "value": ans})
    ]
    return {"id": ident, "image": f"images/{ident}.png", "conversations": conv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    (args.root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("val", args.val)):
        records = [make_record(rng, args.root, f"{split}{i:05d}") for i in range(count)]
        (args.root / f"{split}.json").write_text(json.dumps(records, indent=1))
    print(f"wrote {args.train} + {args.val} records to {args.root}")


if __name__ == "__main__":
    main()
