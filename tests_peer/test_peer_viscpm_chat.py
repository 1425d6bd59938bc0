"""transformers' own ModelTesterMixin / ConfigTester and the generation checks on VisCPM-Chat (Muffin's bridge,
mlp2 projector, on another LLM). Shares Muffin's modeling code: its fixes land with the Muffin branch."""

import unittest

from _multimodal import MuffinModelTester
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin

from hf_ext.models.viscpm_chat import VisCPMChatConfig, VisCPMChatForConditionalGeneration, VisCPMChatModel


class VisCPMChatModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (VisCPMChatModel, VisCPMChatForConditionalGeneration)
    _is_composite = True
    generate_from_inputs_embeds = False

    def setUp(self):
        self.model_tester = MuffinModelTester(self, VisCPMChatConfig, "mlp2")
        self.config_tester = ConfigTester(self, config_class=VisCPMChatConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()
