"""transformers' own ModelTesterMixin / ConfigTester on ELV's explanation-augmented predictor."""

import unittest

from peer_utils import PeerModelTestMixin, TinyModelTester, text_inputs
from tests.test_modeling_common import ModelTesterMixin
from transformers import BertConfig

from hf_ext.trainers.elv import ELVPredictorConfig, ELVPredictorModel


class ELVPredictorModelTester(TinyModelTester):
    num_explanations = 3
    num_labels = 3

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
        shape = [self.batch_size, self.num_explanations, self.seq_length]
        return self.get_config(), text_inputs(shape, self.vocab_size)


class ELVPredictorModelTest(PeerModelTestMixin, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ELVPredictorModel,)
    _is_composite = True
    model_tester_class = ELVPredictorModelTester
    config_tester_kwargs = {"config_class": ELVPredictorConfig, "has_text_modality": False}
