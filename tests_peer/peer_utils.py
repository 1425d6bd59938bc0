"""Helpers shared by the peer testers (``make test-peer``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

_TINY_DIR: Path | None = None


def tiny_model_dir() -> Path:
    """Folder that plays the role of the Hub's ``hf-internal-testing`` tiny models for the pipeline mixin.

    ``reports/tiny_model_summary.json`` lists the hf_ext architectures with a tiny checkpoint; the checkpoints
    themselves are written by ``pipeline_tiny_models`` (``conftest``) before the pipeline tests run.
    """
    global _TINY_DIR
    if _TINY_DIR is None:
        _TINY_DIR = Path(tempfile.mkdtemp(prefix="hf_ext_tiny_models_"))
        (_TINY_DIR / "reports").mkdir()
        (_TINY_DIR / "reports" / "tiny_model_summary.json").write_text(json.dumps({}))
    return _TINY_DIR


def provide_pipeline_checkpoints(config, model_classes) -> None:
    """Write tiny checkpoints of ``model_classes`` (with a tiny BPE tokenizer) where the pipeline mixin finds them.

    This replaces the Hub's ``hf-internal-testing/tiny-random-<Architecture>`` repositories: ``config`` (a tester's
    config) gets the tokenizer's vocabulary size and special tokens, and the mixin's summary lists the checkpoint.
    """
    import tests.test_pipeline_mixin as pipeline_mixin

    from hf_ext.testing import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer()
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    for model_class in model_classes:
        name = model_class.__name__
        torch.manual_seed(0)
        model = model_class(config).eval()
        if model.can_generate():
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        path = tiny_model_dir() / config.model_type / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        pipeline_mixin.tiny_model_summary[name] = {
            "tokenizer_classes": [type(tokenizer).__name__],
            "processor_classes": [],
            "model_classes": [name],
        }


def ones_mask(batch: int, seq: int) -> torch.Tensor:
    return torch.ones(batch, seq, dtype=torch.long)
