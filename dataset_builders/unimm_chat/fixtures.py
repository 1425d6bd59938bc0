"""Small parquet files in the exact schema of ``Yirany/UniMM-Chat`` (synthetic shape scenes drawn with PIL)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

__all__ = ["make_unimm_chat_rows", "write_unimm_chat_parquet"]

_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}


def make_unimm_chat_rows(n: int = 4, seed: int = 0, image_size: int = 32) -> list[dict]:
    """`n` rows: a coloured square on a white image and a two-round human/gpt dialogue about it."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color = rng.choice(sorted(_COLORS))
        img = Image.new("RGB", (image_size, image_size), "white")
        ImageDraw.Draw(img).rectangle([4, 4, image_size - 5, image_size - 5], fill=_COLORS[color])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        conversation = [
            {"from": "human", "value": "<image>\nwhat is in the image ?"},
            {"from": "gpt", "value": f"a {color} square ."},
            {"from": "human", "value": "what color is it ?"},
            {"from": "gpt", "value": f"it is {color} ."},
        ]
        rows.append(
            {
                "ds_name": "unimm-chat",
                "image": {"bytes": buf.getvalue(), "path": f"{i:012d}.png"},
                "conversation": json.dumps(conversation),
                "origin_dataset": "synthetic",
                "idx": i,
                "image_path": f"COCO_train2014_{i:012d}.jpg",
            }
        )
    return rows


def write_unimm_chat_parquet(path: str | Path, rows: list[dict] | None = None) -> Path:
    """Write `rows` (default: :func:`make_unimm_chat_rows`) to a parquet file with the Hub dataset's features."""
    from datasets import Dataset, Features, Image, Value

    features = Features(
        {
            "ds_name": Value("string"),
            "image": Image(),
            "conversation": Value("string"),
            "origin_dataset": Value("string"),
            "idx": Value("int64"),
            "image_path": Value("string"),
        }
    )
    path = Path(path)
    Dataset.from_list(rows if rows is not None else make_unimm_chat_rows(), features=features).to_parquet(str(path))
    return path
