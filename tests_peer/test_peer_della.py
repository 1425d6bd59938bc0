"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on DELLA.

The tester fixes the layer latents, so every forward pass is deterministic (drawing them is tested in
tests/models/della/test_della.py)."""

import unittest

from peer_utils import GPT2StyleModelTester, PeerModelTestMixin
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin, floats_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.della import DellaConfig, DellaForCausalLM, DellaModel


class DellaModelTester(GPT2StyleModelTester):
    config_class = DellaConfig
    latent_size = 8

    def config_kwargs(self):
        return dict(latent_size=self.latent_size, latent_lmf_rank=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        # fixed layer latents: a deterministic decoder pass (drawing them is tested in tests/models/della/test_della.py)
        inputs["latents"] = floats_tensor([self.batch_size, len(config.latent_layer_ids), self.latent_size])
        return config, inputs


class DellaModelTest(
    PeerModelTestMixin, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (DellaModel, DellaForCausalLM)
    pipeline_model_mapping = {"feature-extraction": DellaModel, "text-generation": DellaForCausalLM}
    model_tester_class = DellaModelTester
    config_tester_kwargs = {"config_class": DellaConfig, "n_embd": 37}
    pipeline_checkpoints = True
