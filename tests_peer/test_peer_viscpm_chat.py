"""transformers' own ModelTesterMixin / ConfigTester and the generation checks on VisCPM-Chat (Muffin's bridge,
mlp2 projector, on a transformers LLM; VisCPM-Chat on its original LLM, CPM-Bee, is test_peer_viscpm_chat_bee.py)."""

import functools
import unittest

from _multimodal import MuffinModelTester, MuffinModelTestMixin, skip_rope_scaling_tests
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin

from hf_ext.models.viscpm_chat import VisCPMChatConfig, VisCPMChatForConditionalGeneration, VisCPMChatModel


@skip_rope_scaling_tests
class VisCPMChatModelTest(MuffinModelTestMixin, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (VisCPMChatModel, VisCPMChatForConditionalGeneration)
    model_tester_class = functools.partial(MuffinModelTester, config_class=VisCPMChatConfig, projector_type="mlp2")
    config_tester_kwargs = {"config_class": VisCPMChatConfig, "has_text_modality": False}
