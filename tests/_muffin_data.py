"""A one-image preference row for the Muffin training tests (not collected by pytest)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from PIL import Image

PROMPT, CHOSEN, REJECTED = "what is in the image ?", "a red square .", "a blue circle ."


def random_image() -> Image.Image:
    """A 40 x 30 image of uniform noise (always the same)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def preference_dataset(n: int = 2, extra: dict | None = None) -> Dataset:
    """`n` copies of one conversational preference row (:data:`PROMPT`, :data:`CHOSEN`, :data:`REJECTED`) on
    :func:`random_image`, with the `extra` columns."""
    row = {
        "images": [random_image()],
        "prompt": [{"role": "user", "content": PROMPT}],
        "chosen": [{"role": "assistant", "content": CHOSEN}],
        "rejected": [{"role": "assistant", "content": REJECTED}],
    }
    row.update(extra or {})
    return Dataset.from_list([row] * n)
