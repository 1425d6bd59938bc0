"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on Jiuge."""

import unittest

import torch
from peer_utils import provide_pipeline_checkpoints
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, ids_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM, JiugeModel


class JiugeModelTester:
    def __init__(self, parent, batch_size=2, seq_length=7, vocab_size=99, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.is_training = is_training
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4

    def get_config(self):
        # the form-stressed loss is on: [BODY]=5, line ends 6, sentence ends 7, [EOS]=2
        return JiugeConfig(
            vocab_size=self.vocab_size,
            n_embd=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            n_positions=64,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=0,
            form_token_id=3,
            title_token_id=4,
            body_token_id=5,
            line_end_token_ids=[6],
            sentence_end_token_ids=[7],
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_ids[:, 1] = config.body_token_id  # a body, so that the form-stressed weights apply
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class JiugeModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (JiugeModel, JiugeForCausalLM)
    pipeline_model_mapping = {"feature-extraction": JiugeModel, "text-generation": JiugeForCausalLM}

    @classmethod
    def setUpClass(cls):
        # tiny checkpoints for the pipeline mixin (in place of the Hub's hf-internal-testing models)
        provide_pipeline_checkpoints(JiugeModelTester(None).get_config(), (JiugeModel, JiugeForCausalLM))

    def setUp(self):
        self.model_tester = JiugeModelTester(self)
        self.config_tester = ConfigTester(self, config_class=JiugeConfig, n_embd=37)

    def test_config(self):
        self.config_tester.run_common_tests()
