"""Helpers shared by the peer testers (``make test-peer``)."""

from __future__ import annotations

import json
import os
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


def register_tiny_model(model, tokenizer, tokenizer_class_name: str, processor_class_names=()) -> None:
    """Save ``model`` (and its tokenizer) where the pipeline mixin looks for ``tiny-random-<Architecture>``."""
    arch = type(model).__name__
    path = tiny_model_dir() / model.config.model_type / arch
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    summary_file = tiny_model_dir() / "reports" / "tiny_model_summary.json"
    summary = json.loads(summary_file.read_text())
    summary[arch] = {
        "tokenizer_classes": [tokenizer_class_name] if tokenizer_class_name else [],
        "processor_classes": list(processor_class_names),
        "model_classes": [arch],
    }
    tmp = summary_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, summary_file)


def ones_mask(batch: int, seq: int) -> torch.Tensor:
    return torch.ones(batch, seq, dtype=torch.long)
