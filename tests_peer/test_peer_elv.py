"""transformers' own ModelTesterMixin / ConfigTester on ELV's explanation-augmented predictor."""

import unittest

import torch
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, ids_tensor
from transformers import BertConfig

from hf_ext.trainers.elv import ELVPredictorConfig, ELVPredictorModel


class ELVPredictorModelTester:
    def __init__(self, parent, batch_size=2, num_explanations=3, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_explanations = num_explanations
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_labels = 3

    def get_config(self):
        encoder = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=37,
            max_position_embeddings=64,
        )
        return ELVPredictorConfig(encoder=encoder, num_labels=self.num_labels)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        shape = [self.batch_size, self.num_explanations, self.seq_length]
        input_ids = ids_tensor(shape, self.vocab_size)
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class ELVPredictorModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ELVPredictorModel,)
    _is_composite = True

    def setUp(self):
        self.model_tester = ELVPredictorModelTester(self)
        self.config_tester = ConfigTester(self, config_class=ELVPredictorConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()
