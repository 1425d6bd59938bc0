"""Tiny, offline checkpoint folders for the apps' tests, screenshots and Space-export examples (no Hub access).

``save_tiny_<thing>(path, ...)`` saves what ``tiny_<thing>(...)`` builds (model and tokenizer / processor, or the
whole pipeline) with ``save_pretrained`` and returns ``path``. Where a random model generates text, its saved
generation config only lets it emit word pieces, each at most once, so that its samples read as (random) words that an
annotator can correct.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "save_tiny_gpt2",
    "save_tiny_iap_pipeline",
    "save_tiny_jiuge",
    "save_tiny_muffin",
    "save_tiny_text_vae",
    "save_tiny_viscpm_paint_pipeline",
]


def _generate_words(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pattern: str, vocab_size: int, max_new_tokens: int
) -> None:
    """Suppress every token that does not match ``pattern`` in ``model.generation_config`` (readable samples)."""
    allowed = {i for token, i in tokenizer.get_vocab().items() if re.fullmatch(pattern, token)}
    model.generation_config.suppress_tokens = sorted(set(range(vocab_size)) - allowed)
    model.generation_config.max_new_tokens = max_new_tokens


def _save(path: str | Path, *objects) -> Path:
    path = Path(path)
    for obj in objects:
        obj.save_pretrained(path)
    return path


def save_tiny_muffin(path: str | Path, model_type: str = "muffin", seed: int = 0, max_new_tokens: int = 12) -> Path:
    """Save [`tiny_muffin`]`(model_type, seed)` (Muffin, or VisCPM-Chat with `model_type="viscpm_chat"`) and its
    processor to `path`.

    Its generation config lets the model emit only lower-case word pieces (`Ġ?[a-z]{2,}` tokens; EOS suppressed), each
    at most once, greedily: a random model still writes `max_new_tokens` tokens of varied, readable text.
    """
    from hf_ext.testing.muffin import tiny_muffin

    model, processor = tiny_muffin(model_type=model_type, seed=seed)
    vocab_size = model.config.text_config.vocab_size
    _generate_words(model, processor.tokenizer, r"Ġ?[a-z]{2,}", vocab_size, max_new_tokens)
    model.generation_config.do_sample = False
    model.generation_config.no_repeat_ngram_size = 1  # every word piece at most once: varied text
    return _save(path, model, processor)


def save_tiny_gpt2(path: str | Path, seed: int = 0) -> Path:
    """Save [`tiny_gpt2`]`(seed=seed)` and its byte-level BPE tokenizer ([`tiny_bpe_tokenizer`]) to `path`: a causal
    LM checkpoint for the command line and `from_pretrained`."""
    from hf_ext.testing.text_models import tiny_gpt2
    from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer()
    return _save(path, tiny_gpt2(tokenizer, seed=seed), tokenizer)


def save_tiny_jiuge(path: str | Path, seed: int = 0) -> Path:
    """Save [`tiny_jiuge`]`(seed=seed)` and its character tokenizer ([`tiny_jiuge_tokenizer`]) to `path`."""
    from hf_ext.testing.text_models import tiny_jiuge, tiny_jiuge_tokenizer

    tokenizer = tiny_jiuge_tokenizer()
    return _save(path, tiny_jiuge(tokenizer, seed=seed), tokenizer)


def save_tiny_text_vae(path: str | Path, model_type: str = "della", seed: int = 0) -> Path:
    """Save [`tiny_text_vae`]`(model_type, seed=seed)` (DELLA, or TRACE with `model_type="trace"`) and its byte-level
    BPE tokenizer to `path`; its generation config keeps to word pieces and `.` (16 new tokens)."""
    from hf_ext.testing.text_models import tiny_text_vae
    from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer()
    model = tiny_text_vae(model_type, tokenizer, seed=seed)
    _generate_words(model, tokenizer, r"Ġ?([a-z]{2,}|\.)", len(tokenizer), max_new_tokens=16)
    return _save(path, model, tokenizer)


def save_tiny_viscpm_paint_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save [`tiny_viscpm_paint_pipeline`]`(seed=seed)` to `path` (32 px images)."""
    from hf_ext.testing.diffusion import tiny_viscpm_paint_pipeline

    return _save(path, tiny_viscpm_paint_pipeline(seed=seed))


def save_tiny_iap_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save [`tiny_iap_pipeline`]`(seed=seed)` to `path` (32 px images)."""
    from hf_ext.testing.iap import tiny_iap_pipeline

    return _save(path, tiny_iap_pipeline(seed=seed))
