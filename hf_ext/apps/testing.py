"""Tiny, offline checkpoints for the apps' tests, screenshots and Space-export examples (no Hub access)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["save_tiny_vlm"]


def save_tiny_vlm(path: str | Path, model_type: str = "muffin", seed: int = 0, max_new_tokens: int = 12) -> Path:
    """Save a random tiny Muffin (or VisCPM-Chat, ``model_type="viscpm_chat"``) and its processor to ``path``.

    Its generation config only lets the model emit lower-case word pieces (``Ġ?[a-z]{2,}`` tokens; EOS suppressed),
    each at most once, so a random model still writes ``max_new_tokens`` tokens of readable text that an annotator can correct.
    """
    from ..models.muffin import tiny_muffin

    model, processor = tiny_muffin(model_type=model_type, seed=seed)
    vocab = processor.tokenizer.get_vocab()
    allowed = {i for token, i in vocab.items() if re.fullmatch(r"Ġ?[a-z]{2,}", token)}
    size = model.config.text_config.vocab_size
    model.generation_config.suppress_tokens = sorted(set(range(size)) - allowed)
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.do_sample = False
    model.generation_config.no_repeat_ngram_size = 1  # every word piece at most once: varied text
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
