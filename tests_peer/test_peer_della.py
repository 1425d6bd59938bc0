"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on DELLA.

The tester fixes the layer latents, so every forward pass is deterministic (drawing them is tested in
tests/models/della/test_della.py)."""

import unittest

import torch
from peer_utils import provide_pipeline_checkpoints
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.della import DellaConfig, DellaForCausalLM, DellaModel


class DellaModelTester:
    def __init__(self, parent, batch_size=2, seq_length=7, vocab_size=99, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.is_training = is_training
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.latent_size = 8

    def get_config(self):
        return DellaConfig(
            vocab_size=self.vocab_size,
            n_embd=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            n_positions=64,
            latent_size=self.latent_size,
            latent_lmf_rank=2,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        num_latents = len(config.latent_layer_ids)
        return config, {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            # fixed layer latents: a deterministic decoder pass (drawing them is tested in tests/models/della/test_della.py)
            "latents": floats_tensor([self.batch_size, num_latents, self.latent_size]),
        }


class DellaModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (DellaModel, DellaForCausalLM)
    pipeline_model_mapping = {"feature-extraction": DellaModel, "text-generation": DellaForCausalLM}

    @classmethod
    def setUpClass(cls):
        # tiny checkpoints for the pipeline mixin (in place of the Hub's hf-internal-testing models)
        provide_pipeline_checkpoints(DellaModelTester(None).get_config(), (DellaModel, DellaForCausalLM))

    def setUp(self):
        self.model_tester = DellaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=DellaConfig, n_embd=37)

    def test_config(self):
        self.config_tester.run_common_tests()
