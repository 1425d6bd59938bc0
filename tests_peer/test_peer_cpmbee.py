"""transformers' own ModelTesterMixin / ConfigTester and the generation checks on CPM-Bee.

CPM-Bee's forward pass takes the structured inputs of [`CpmBeeTokenizer.prepare_for_generation`] (context mask,
segment ids, the segment-relation table, positions, ...): the tester builds them with the real tokenizer (the tiny
vocabulary of `tests/fixtures/cpmbee`) from two structured prompts of different lengths, so the common tests run the
bidirectional-context / causal-answer attention, the segment buckets and a left-padded row.
"""

import unittest

import torch
from _cpmbee import CpmBeePromptTester
from peer_utils import PeerModelTestMixin, forward_twice
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_modeling_common import ModelTesterMixin
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeForCausalLM, CpmBeeModel
from hf_ext.models.cpmbee.tokenization_cpmbee import CPMBEE_STRUCTURED_INPUTS


class CpmBeeModelTester(CpmBeePromptTester):
    def prompts(self):
        # two prompts of different lengths (the shorter row is left-padded), plain ASCII so the ext table stays empty
        return [{"input": "hello world", "<ans>": ""}, {"question": "what is it?", "<ans>": ""}]

    def get_config(self):
        return CpmBeeConfig(**self.cpmbee_config_kwargs())

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), self.structured_inputs()

    def generation_inputs(self, inputs):
        """The generation checks extend `input_ids` and `attention_mask` only (an argmax loop over full forward
        passes): they run CPM-Bee as the plain causal LM its defaults make of it. Structured-prompt generation
        (stock `generate` vs an uncached greedy loop that extends every structured input) is tested in
        `tests/models/cpmbee/test_cpmbee.py` (docs/conformance.md)."""
        return {k: v for k, v in inputs.items() if k not in CPMBEE_STRUCTURED_INPUTS}


class CpmBeeModelTest(
    PeerModelTestMixin, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (CpmBeeModel, CpmBeeForCausalLM)
    # plain text in, CPM-Bee as a causal LM (its structured prompts need `CpmBeeTokenizer.prepare_for_generation`)
    pipeline_model_mapping = {"feature-extraction": CpmBeeModel, "text-generation": CpmBeeForCausalLM}
    # the output projection is the input embedding plus per-batch extension columns, with CPM-Bee's own scaling
    # (`CpmBeeEmbeddingExt`, not an `nn.Embedding`/`nn.Linear` pair): transformers' resizing does not apply
    test_resize_embeddings = False
    model_tester_class = CpmBeeModelTester
    config_tester_kwargs = {"config_class": CpmBeeConfig, "hidden_size": 37}
    pipeline_checkpoints = True

    def test_structured_inputs_change_the_output(self):
        # the tester's structured inputs are used: dropping them (plain causal LM) changes the context tokens' states
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        plain = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        structured, causal = forward_twice(CpmBeeModel, config, inputs, plain, output="last_hidden_state")
        real = inputs["attention_mask"].bool()
        self.assertFalse(torch.allclose(structured[real], causal[real], atol=1e-4))
