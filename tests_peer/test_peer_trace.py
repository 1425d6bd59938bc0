"""transformers' own ModelTesterMixin / ConfigTester / PipelineTesterMixin and the generation checks on TRACE."""

import unittest

import torch
from peer_utils import provide_pipeline_checkpoints
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.trace import TraceConfig, TraceForCausalLM, TraceModel
from hf_ext.models.trace.modeling_trace import compute_latent_index


class TraceModelTester:
    def __init__(
        self,
        parent,
        batch_size=2,
        seq_length=7,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        latent_size=8,
        max_segments=4,
        separator_token_id=3,
        is_training=True,
        segmentation="separator",
        transition="free",
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.latent_size = latent_size
        self.max_segments = max_segments
        self.separator_token_id = separator_token_id
        self.is_training = is_training
        self.segmentation = segmentation
        self.transition = transition

    def get_config(self):
        return TraceConfig(
            vocab_size=self.vocab_size,
            n_embd=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            n_positions=64,
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
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            # fixed segment latents: the decoder pass is deterministic (drawing them is the VAE's job, tested in
            # tests/models/trace/test_trace.py); the generic tests exercise the decoder with its latent fusion
            "latents": floats_tensor([self.batch_size, self.max_segments, self.latent_size]),
            # the segment of each position, as the model derives it from the tokens: needed when the text is given
            # as `inputs_embeds`
            "latent_index": compute_latent_index(input_ids, config),
        }
        return config, inputs_dict

    def generation_inputs(self, inputs_dict):
        # during generation the index grows with the text: the model recomputes it at every step
        inputs_dict.pop("latent_index")
        return inputs_dict


class TraceModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (TraceModel, TraceForCausalLM)
    pipeline_model_mapping = {"feature-extraction": TraceModel, "text-generation": TraceForCausalLM}
    # "separator" segmentation reads the tokens to know each position's segment: a prompt given as embeddings has
    # none (generation from embeddings is checked with "fixed" segmentation below)
    generate_from_inputs_embeds = False

    @classmethod
    def setUpClass(cls):
        # tiny checkpoints for the pipeline mixin (in place of the Hub's hf-internal-testing models)
        provide_pipeline_checkpoints(TraceModelTester(None).get_config(), (TraceModel, TraceForCausalLM))

    def setUp(self):
        self.model_tester = TraceModelTester(self)
        self.config_tester = ConfigTester(self, config_class=TraceConfig, n_embd=37, separator_token_ids=[3])

    def test_config(self):
        self.config_tester.run_common_tests()


class TraceFixedSegmentsModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """Fixed-length segments and the exact idempotent transition (the other branches of the forward pass)."""

    all_model_classes = (TraceModel, TraceForCausalLM)

    def setUp(self):
        self.model_tester = TraceModelTester(self, segmentation="fixed", transition="exact_idempotent")
        self.config_tester = ConfigTester(self, config_class=TraceConfig, n_embd=37, segmentation="fixed")

    def test_config(self):
        self.config_tester.run_common_tests()
