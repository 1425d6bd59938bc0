"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on Jiuge."""

import unittest

from peer_utils import GPT2StyleModelTester, PeerModelTestMixin
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM, JiugeModel


class JiugeModelTester(GPT2StyleModelTester):
    config_class = JiugeConfig

    def config_kwargs(self):
        # the form-stressed loss is on: [BODY]=5, line ends 6, sentence ends 7, [EOS]=2
        return dict(
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
        config, inputs = super().prepare_config_and_inputs_for_common()
        inputs["input_ids"][:, 1] = config.body_token_id  # a body, so that the form-stressed weights apply
        return config, inputs


class JiugeModelTest(
    PeerModelTestMixin, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (JiugeModel, JiugeForCausalLM)
    pipeline_model_mapping = {"feature-extraction": JiugeModel, "text-generation": JiugeForCausalLM}
    model_tester_class = JiugeModelTester
    config_tester_kwargs = {"config_class": JiugeConfig, "n_embd": 37}
    pipeline_checkpoints = True
