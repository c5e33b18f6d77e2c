"""Training-time data hygiene: image augmentation that cannot change an answer, and
question paraphrases. Used for training batches only, never for validation.

Rules:

- A horizontal flip swaps left and right, so it is not allowed for a record whose
  questions or answers mention either (`LEFT_RIGHT_WORDS`, matched on lower-cased word
  tokens).
- Colour jitter can change which colour a pixel reads as, so it is not allowed for a
  record that mentions a colour (`COLOUR_WORDS`: "colour"/"color" and their plurals, the
  shapes-VQA colours, and common colour names).
- The random resized crop and small rotation are always allowed: crop scales stay near 1
  and angles small, so sizes, counts and above/below stay readable. (Objects cut off at a
  tile edge are the price; keep `crop_scale` close to 1.)
- One transform per sample, shared by all its tiles, so the AnyRes tiles stay one view.
  Limitation: the flip mirrors each tile in place; it does not reverse the tile order in
  the grid rows (the grid shape is not known here), so for a multi-column grid the
  flipped sample is not a mirror of the whole image. Trainers should offer the flip only
  where that is acceptable (e.g. single-tile grids).
- Zero is padding: padding tiles stay exactly zero, and padding pixels inside real tiles
  (exactly 0 in every channel, which no normalised 8-bit pixel can be) are not jittered.
- Paraphrases rewrite only questions of the forms the shapes-VQA generator asks, each
  into a form with the same meaning; answers and the `<image>` token are untouched.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace

import torch
import torch.nn.functional as F

from ._llava import _WORD, IMAGE_TOKEN, Record
from ._shapes import COLORS

LEFT_RIGHT_WORDS: frozenset[str] = frozenset(
    {
        "left",
        "right",
        "leftmost",
        "rightmost",
        "lefthand",
        "righthand",
        "leftward",
        "rightward",
        "leftwards",
        "rightwards",
    }
)
COLOUR_WORDS: frozenset[str] = frozenset(
    {
        "color",
        "colour",
        "colors",
        "colours",
        "colored",
        "coloured",
        *COLORS,
        *(
            "red green blue yellow orange purple black white gray grey pink brown cyan magenta"
        ).split(),
    }
)

_TOKEN = re.compile(r"[a-z]+")


def policy_for(record: Record) -> tuple[bool, bool]:
    """`(allow_flip, allow_jitter)` for one record, from every question and answer."""
    words = {w for q, a in record.turns for text in (q, a) for w in _TOKEN.findall(text.lower())}
    return not (words & LEFT_RIGHT_WORDS), not (words & COLOUR_WORDS)


def augment_batch(
    pixels: torch.Tensor,
    tile_mask: torch.Tensor,
    allow_flip: torch.Tensor,
    allow_jitter: torch.Tensor,
    generator: torch.Generator,
    *,
    crop_scale: tuple[float, float] = (0.85, 1.0),
    max_rotation_deg: float = 8.0,
    jitter: float = 0.2,
    flip_p: float = 0.5,
    pad_value: float = -1.0,
) -> torch.Tensor:
    """Randomly transform a training batch; returns a new tensor, the input is untouched.

    `pixels`: (batch, tiles, 3, t, t) float, normalised to [-1, 1]; `pad_value` (-1, the
    image processor's letterbox) marks padding inside a tile, which stays untouched.
    `tile_mask`: (batch, tiles), 1 for real tiles and 0 for padding tiles.
    `allow_flip`, `allow_jitter`: (batch,) bool, from `policy_for`.

    Per sample: a random resized crop keeping a `crop_scale` fraction of the tile area
    (aspect kept, centre anywhere the crop stays inside the tile) and a rotation of up to
    `max_rotation_deg`, in one bilinear resample; then, where allowed, a horizontal flip
    with probability `flip_p` and colour jitter of strength `jitter` (brightness shift,
    contrast around the sample mean, per-channel saturation), clamped to [-1, 1].
    The same `generator` state gives the same output; every random number is drawn
    whatever the masks say, so one sample's policy does not change another's transform.
    """
    if pixels.dim() != 5 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (batch, tiles, 3, t, t), got {tuple(pixels.shape)}")
    b, n_tiles, _, h, w = pixels.shape
    for name, t, shape in (
        ("tile_mask", tile_mask, (b, n_tiles)),
        ("allow_flip", allow_flip, (b,)),
        ("allow_jitter", allow_jitter, (b,)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    lo, hi = crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop_scale={crop_scale} must satisfy 0 < low <= high <= 1")
    if max_rotation_deg < 0 or not 0.0 <= jitter < 1.0 or not 0.0 <= flip_p <= 1.0:
        raise ValueError(
            f"need max_rotation_deg >= 0 (got {max_rotation_deg}), 0 <= jitter < 1 "
            f"(got {jitter}) and 0 <= flip_p <= 1 (got {flip_p})"
        )

    def uniform(low: float, high: float, *size: int) -> torch.Tensor:
        u = torch.rand(size, generator=generator, device=generator.device, dtype=torch.float32)
        return (low + (high - low) * u).to(pixels.device)

    # Draw order is part of the determinism contract: do not reorder.
    side = uniform(lo, hi, b).sqrt()  # area fraction -> side fraction, aspect kept
    centre = uniform(-1.0, 1.0, b, 2) * (1.0 - side)[:, None]
    angle = uniform(-max_rotation_deg, max_rotation_deg, b) * (math.pi / 180.0)
    flip = (uniform(0.0, 1.0, b) < flip_p) & allow_flip.to(pixels.device)
    brightness = uniform(-jitter, jitter, b)
    contrast = uniform(1.0 - jitter, 1.0 + jitter, b)
    saturation = uniform(1.0 - jitter, 1.0 + jitter, b, 3)

    # Output coords -> input coords: rotate, shrink to the crop, move to its centre.
    cos, sin = angle.cos() * side, angle.sin() * side
    theta = torch.stack(
        [torch.stack([cos, -sin, centre[:, 0]], 1), torch.stack([sin, cos, centre[:, 1]], 1)], 1
    )
    theta = theta.repeat_interleave(n_tiles, 0).to(pixels.dtype)  # same per tile of a sample
    # Work with the processor's padding (`pad_value`: 0 pixels normalised, -1 for LLaVA-NeXT's
    # letterbox) at 0, so that what the crop brings in from outside is padding too.
    original = pixels
    pixels = pixels - pad_value
    flat = pixels.reshape(b * n_tiles, 3, h, w)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(pixels.shape)

    out = torch.where(flip[:, None, None, None, None], out.flip(-1), out)

    content = (out != 0).any(dim=2, keepdim=True) & (tile_mask[:, :, None, None, None] > 0)
    count = content.sum(dim=(1, 2, 3, 4)).clamp(min=1) * 3
    bright = out + brightness[:, None, None, None, None]
    mean = (bright * content).sum(dim=(1, 2, 3, 4)) / count
    mean = mean[:, None, None, None, None]
    contrasted = (bright - mean) * contrast[:, None, None, None, None] + mean
    grey = contrasted.mean(dim=2, keepdim=True)
    saturated = grey + (contrasted - grey) * saturation[:, None, :, None, None]
    jittered = torch.where(content, saturated.clamp(-1.0 - pad_value, 1.0 - pad_value), out)
    out = torch.where(allow_jitter.to(pixels.device)[:, None, None, None, None], jittered, out)

    # padding tiles stay as they came (no visual token reads them)
    return torch.where(tile_mask[:, :, None, None, None] > 0, out + pad_value, original)


# Question forms of the shapes-VQA generator -> same-meaning rewrites. Groups capture
# only words from the original question, so the templates' own words are all that is new.
_TEMPLATES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), forms)
    for pattern, forms in (
        (
            r"what shape is the ([a-z]+) object\?",
            ("what is the shape of the {0} object?", "which shape does the {0} object have?"),
        ),
        (
            r"what size is the ([a-z]+) object\?",
            ("what is the size of the {0} object?", "which size does the {0} object have?"),
        ),
        (
            r"how many ([a-z]+) are there\?",
            ("how many {0} can you see?", "what is the number of {0} in the image?"),
        ),
        (
            r"where is the ([a-z]+) object relative to the ([a-z]+) object\?",
            (
                "where is the {0} object compared to the {1} object?",
                "what is the position of the {0} object relative to the {1} object?",
            ),
        ),
        (
            r"is there a ([a-z]+) object\?",
            ("does the image contain a {0} object?", "can you see a {0} object?"),
        ),
    )
)
PARAPHRASE_WORDS: frozenset[str] = frozenset(
    w
    for _, forms in _TEMPLATES
    for form in forms
    for w in _WORD.findall(re.sub(r"\{\d+\}", " ", form).lower())
)
_IMAGE_PREFIX = IMAGE_TOKEN + "\n"


def paraphrase(record: Record, rng: random.Random) -> Record:
    """The record with each known question form replaced by one of its forms, chosen by
    `rng` uniformly among the original and its rewrites (so training still sees the
    wording validation uses). Answers, kinds and the leading `<image>\\n` are kept;
    questions of other forms are left as they are."""
    turns = []
    for question, answer in record.turns:
        prefix = _IMAGE_PREFIX if question.startswith(_IMAGE_PREFIX) else ""
        body = question[len(prefix) :]
        for pattern, forms in _TEMPLATES:
            match = pattern.fullmatch(body)
            if match:
                chosen = rng.choice((None, *forms))
                if chosen is not None:
                    body = chosen.format(*match.groups())
                break
        turns.append((prefix + body, answer))
    return replace(record, turns=tuple(turns))
