"""Rows for small parquet files in the exact schema of the Hub's ``openbmb/RLHF-V-Dataset``, with real PNG images.

Written with :func:`dataset_builders.rlhf_v.write_rlhf_v_parquet` (the one RLHF-V writer); used by the tests (the real dataset is ~0.9 GB, CC BY-NC 4.0, and not reachable offline). Each row is a
synthetic scene of coloured shapes drawn with PIL; the question asks for a description, the rejected answer
hallucinates one detail (a colour, a count or a position) and the chosen answer is the human-style correction of
that segment, as in RLHF-V's segment-level corrections.
"""

from __future__ import annotations

import io
import json
import random

__all__ = ["make_rlhf_v_rows"]

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
NUMBERS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = ("describe the image in detail .", "what is in the image ?")


def _draw(shape: str, color: str, count: int, position: str, size: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    r = max(2, size // 8)
    for k in range(count):
        offset = (k - (count - 1) / 2) * 2.5 * r
        cx, cy = {
            "left": (size * 0.25, size / 2 + offset),
            "right": (size * 0.75, size / 2 + offset),
            "top": (size / 2 + offset, size * 0.25),
            "bottom": (size / 2 + offset, size * 0.75),
        }[position]
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_rlhf_v_rows(n: int = 8, image_size: int = 32, seed: int = 0, start_idx: int = 0) -> list[dict]:
    """``n`` rows in the RLHF-V schema (``image`` as ``{"bytes": png, "path": name}``, ``text`` a JSON string)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        count, position = rng.choice(list(NUMBERS)), rng.choice(POSITIONS)
        kind = ("color", "number", "position")[i % 3]
        wrong_color = rng.choice([c for c in COLORS if c != color])
        wrong_count = rng.choice([c for c in NUMBERS if c != count])
        wrong_position = rng.choice([p for p in POSITIONS if p != position])
        noun = shape if count == 1 else shape + "s"

        def describe(c=color, k=count, p=position, nn=noun):
            verb = "is" if k == 1 else "are"
            return f"there {verb} {NUMBERS[k]} {c} {nn} on the {p} of the image . the background is white ."

        chosen = describe()
        if kind == "color":
            rejected = describe(c=wrong_color)
        elif kind == "number":
            rejected = describe(k=wrong_count, nn=shape if wrong_count == 1 else shape + "s")
        else:
            rejected = describe(p=wrong_position)
        idx = start_idx + i
        name = f"synthetic/{idx:05d}.png"
        rows.append(
            {
                "ds_name": "RLHF-V-Dataset",
                "image": {"bytes": _draw(shape, color, count, position, image_size), "path": name},
                "text": json.dumps({"question": QUESTIONS[i % 2], "chosen": chosen, "rejected": rejected}),
                "origin_dataset": "synthetic-shapes",
                "origin_split": json.dumps({"model": "synthetic", "type": "detailed_description", "edit": kind}),
                "idx": idx,
                "image_path": name,
            }
        )
    return rows
