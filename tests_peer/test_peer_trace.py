"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on TRACE."""

import unittest

from peer_utils import GPT2StyleModelTester, PeerModelTestMixin
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin, floats_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.trace import TraceConfig, TraceForCausalLM, TraceModel
from hf_ext.models.trace.modeling_trace import compute_latent_index


class TraceModelTester(GPT2StyleModelTester):
    config_class = TraceConfig
    latent_size = 8
    max_segments = 4
    separator_token_id = 3
    segmentation = "separator"
    transition = "free"

    def config_kwargs(self):
        return dict(
            latent_size=self.latent_size,
            latent_lmf_rank=2,
            segmentation=self.segmentation,
            segment_length=3,
            separator_token_ids=[self.separator_token_id],
            max_segments=self.max_segments,
            transition=self.transition,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        # fixed segment latents: the decoder pass is deterministic (drawing them is the VAE's job, tested in
        # tests/models/trace/test_trace.py); the generic tests exercise the decoder with its latent fusion
        inputs["latents"] = floats_tensor([self.batch_size, self.max_segments, self.latent_size])
        # the segment of each position, as the model derives it from the tokens: needed when the text is given as
        # `inputs_embeds`
        inputs["latent_index"] = compute_latent_index(inputs["input_ids"], config)
        return config, inputs

    def generation_inputs(self, inputs_dict):
        # during generation the index grows with the text: the model recomputes it at every step
        inputs_dict.pop("latent_index")
        return inputs_dict


class TraceModelTest(
    PeerModelTestMixin, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (TraceModel, TraceForCausalLM)
    pipeline_model_mapping = {"feature-extraction": TraceModel, "text-generation": TraceForCausalLM}
    # "separator" segmentation reads the tokens to know each position's segment: a prompt given as embeddings has
    # none (generation from embeddings is checked with "fixed" segmentation below)
    generate_from_inputs_embeds = False
    model_tester_class = TraceModelTester
    config_tester_kwargs = {"config_class": TraceConfig, "n_embd": 37, "separator_token_ids": [3]}
    pipeline_checkpoints = True


class TraceFixedSegmentsModelTester(TraceModelTester):
    segmentation = "fixed"
    transition = "exact_idempotent"


class TraceFixedSegmentsModelTest(PeerModelTestMixin, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """Fixed-length segments and the exact idempotent transition (the other branches of the forward pass)."""

    all_model_classes = (TraceModel, TraceForCausalLM)
    model_tester_class = TraceFixedSegmentsModelTester
    config_tester_kwargs = {"config_class": TraceConfig, "n_embd": 37, "segmentation": "fixed"}
