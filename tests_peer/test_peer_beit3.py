"""transformers' own ModelTesterMixin / ConfigTester on BEiT-3 (image + text inputs through the multiway layers)."""

import unittest

from peer_utils import PeerModelTestMixin, text_inputs
from tests.test_modeling_common import ModelTesterMixin, floats_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.beit3 import Beit3Config, Beit3Model, tiny_beit3_config


class Beit3ModelTester:
    def __init__(self, parent, batch_size=2, seq_length=5, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.text_length = seq_length
        self.is_training = is_training
        config = tiny_beit3_config()
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.vocab_size = config.vocab_size
        # the sequence the layers see: CLS + patches, then the text
        self.seq_length = 1 + (config.image_size // config.patch_size) ** 2 + seq_length
        # masked image modelling (`bool_masked_pos`): one masked patch out of num_patches
        self.num_masks = 1
        self.mask_length = (config.image_size // config.patch_size) ** 2

    def get_config(self):
        return tiny_beit3_config()

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        text = text_inputs([self.batch_size, self.text_length], self.vocab_size)
        pixel_values = floats_tensor([self.batch_size, config.num_channels, self.image_size, self.image_size])
        return config, {"pixel_values": pixel_values, **text}


class Beit3ModelTest(PeerModelTestMixin, ModelTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (Beit3Model,)
    pipeline_model_mapping = {}
    # the text goes with the image (the attention mask covers the text part)
    additional_model_inputs = ["input_ids"]
    model_tester_class = Beit3ModelTester
    config_tester_kwargs = {"config_class": Beit3Config, "has_text_modality": True, "hidden_size": 48}
