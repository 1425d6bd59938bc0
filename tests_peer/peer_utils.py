"""Helpers shared by the peer testers (``make test-peer``)."""

from __future__ import annotations

import json
import tempfile
import unittest
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


def text_inputs(shape: list[int], vocab_size: int) -> dict[str, torch.Tensor]:
    """Random token ids of ``shape`` and an all-ones attention mask (the mixins' ``ids_tensor`` draws the ids)."""
    from tests.test_modeling_common import ids_tensor

    input_ids = ids_tensor(shape, vocab_size)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def forward_twice(model_class, config, inputs: dict, other_inputs: dict, output: str = "logits"):
    """``output`` of one seeded random ``model_class(config)`` in eval mode on ``inputs``, then on ``other_inputs``.

    For the checks that an input really reaches the model: the two results must differ.
    """
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        return getattr(model(**inputs), output), getattr(model(**other_inputs), output)


def skip_tests_starting_with(prefix: str, reason: str):
    """Class decorator: every test of the class (mixin tests included) whose name starts with ``prefix`` skips."""

    def decorate(cls):
        for name in [n for n in dir(cls) if n.startswith(prefix)]:
            setattr(cls, name, unittest.skip(reason)(lambda self: None))
        return cls

    return decorate


class TinyModelTester:
    """The sizes the text testers here share, as attributes the mixins read from ``self.model_tester``: a batch of 2
    rows of 7 tokens from a 99-token vocabulary, 2 layers of width 32 with 4 heads. A subclass adds ``get_config`` and
    ``prepare_config_and_inputs_for_common`` and overrides any size as a class attribute."""

    batch_size = 2
    seq_length = 7
    vocab_size = 99
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    is_training = True

    def __init__(self, parent):
        self.parent = parent


class GPT2StyleModelTester(TinyModelTester):
    """Tester of the GPT-2-based causal LMs (DELLA, TRACE, Jiuge): a ``config_class`` taking GPT-2's ``n_embd`` /
    ``n_layer`` / ``n_head`` names, random ids and a full mask. ``config_kwargs`` gives the model's own settings."""

    config_class = None

    def config_kwargs(self) -> dict:
        return {}

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size,
            n_embd=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            n_positions=64,
            **self.config_kwargs(),
        )

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), text_inputs([self.batch_size, self.seq_length], self.vocab_size)


class PeerModelTestMixin:
    """``setUp`` and ``test_config`` of every peer test class; put it first among the bases.

    Attributes:
        model_tester_class: the tester (called with the test case).
        config_tester_kwargs: keywords of transformers' ``ConfigTester`` (``config_class`` included).
        pipeline_checkpoints: write tiny checkpoints of ``all_model_classes`` for the pipeline mixin first (in place
            of the Hub's ``hf-internal-testing`` models), see :func:`provide_pipeline_checkpoints`.
    """

    model_tester_class = None
    config_tester_kwargs: dict = {}
    pipeline_checkpoints = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.pipeline_checkpoints:
            provide_pipeline_checkpoints(cls.model_tester_class(None).get_config(), cls.all_model_classes)

    def setUp(self):
        from tests.test_configuration_common import ConfigTester

        super().setUp()
        self.model_tester = self.model_tester_class(self)
        self.config_tester = ConfigTester(self, **self.config_tester_kwargs)

    def test_config(self):
        self.config_tester.run_common_tests()
