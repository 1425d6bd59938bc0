"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on Muffin.

The tester supplies images with their `<im_patch>` tokens, so eager-vs-SDPA, generation and save/load equivalence run
on the whole vision-language path.
"""

import functools
import unittest

from _multimodal import MuffinModelTester, MuffinModelTestMixin, skip_rope_scaling_tests
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.muffin import MuffinConfig, MuffinForConditionalGeneration, MuffinModel


@skip_rope_scaling_tests
class MuffinModelTest(
    MuffinModelTestMixin, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (MuffinModel, MuffinForConditionalGeneration)
    pipeline_model_mapping = {"image-text-to-text": MuffinForConditionalGeneration}
    model_tester_class = functools.partial(MuffinModelTester, config_class=MuffinConfig, projector_type="linear")
    config_tester_kwargs = {"config_class": MuffinConfig, "has_text_modality": False}
