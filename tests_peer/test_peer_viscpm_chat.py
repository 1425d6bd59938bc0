"""transformers' own ModelTesterMixin / ConfigTester and the generation checks on VisCPM-Chat (Muffin's bridge,
mlp2 projector, on a transformers LLM; VisCPM-Chat on its original LLM, CPM-Bee, is test_peer_viscpm_chat_bee.py)."""

import unittest

from _multimodal import MuffinModelTester
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin

from hf_ext.models.viscpm_chat import VisCPMChatConfig, VisCPMChatForConditionalGeneration, VisCPMChatModel


class VisCPMChatModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (VisCPMChatModel, VisCPMChatForConditionalGeneration)
    _is_composite = True
    # the images go with the prompt's image tokens (as transformers' Llava tester does)
    additional_model_inputs = ["pixel_values"]
    # Muffin feeds BEiT-3 its learned queries as embeddings: BEiT-3's word embeddings and masked-image-modelling
    # token are never used, so they get no gradient (by design, docs/conformance.md)
    test_all_params_have_gradient = False
    generate_from_inputs_embeds = False

    def setUp(self):
        self.model_tester = MuffinModelTester(self, VisCPMChatConfig, "mlp2")
        self.config_tester = ConfigTester(self, config_class=VisCPMChatConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()


# The mixin's RoPE-scaling test draws up to 768 random ids from the whole vocabulary, which holds the <im_patch>
# token: a text-only forward pass with an image placeholder and no image raises, by design (docs/conformance.md).
for _name in [n for n in dir(VisCPMChatModelTest) if n.startswith("test_model_rope_scaling_from_config")]:
    setattr(
        VisCPMChatModelTest,
        _name,
        unittest.skip("random ids contain image placeholders without images (by design)")(lambda self: None),
    )
