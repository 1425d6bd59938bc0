"""transformers' own ModelTesterMixin / ConfigTester and the generation checks on CPM-Bee.

CPM-Bee's forward pass takes the structured inputs of [`CpmBeeTokenizer.prepare_for_generation`] (context mask,
segment ids, the segment-relation table, positions, ...): the tester builds them with the real tokenizer (the tiny
vocabulary of `tests/fixtures/cpmbee`) from two structured prompts of different lengths, so the common tests run the
bidirectional-context / causal-answer attention, the segment buckets and a left-padded row.
"""

import unittest
from pathlib import Path

import torch
from peer_utils import provide_pipeline_checkpoints
from tests.generation.test_utils import GenerationTesterMixin
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import ModelTesterMixin
from tests.test_pipeline_mixin import PipelineTesterMixin

from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeForCausalLM, CpmBeeModel, CpmBeeTokenizer

VOCAB = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cpmbee" / "vocab.txt"
# two prompts of different lengths (the shorter row is left-padded), plain ASCII so the ext table stays empty
PROMPTS = [{"input": "hello world", "<ans>": ""}, {"question": "what is it?", "<ans>": ""}]
# per-token structured inputs: one value per position
PER_TOKEN = (
    "input_id_sub",
    "position_ids",
    "context",
    "sample_ids",
    "num_segments",
    "segment_ids",
    "segment_rel_offset",
    "span",
)


class CpmBeeModelTester:
    def __init__(self, parent, is_training=True):
        self.parent = parent
        self.is_training = is_training
        self.tokenizer = CpmBeeTokenizer(str(VOCAB))
        self.encoding, _ = self.tokenizer.prepare_for_generation(PROMPTS, add_answer_bos=True)
        self.batch_size, self.seq_length = self.encoding["input_ids"].shape
        self.vocab_size = self.tokenizer.vocab_size
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4

    def get_config(self):
        return CpmBeeConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            dim_ff=64,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            dim_head=8,
            position_bias_num_buckets=32,
            position_bias_num_segment_buckets=256,
            position_bias_max_distance=128,
            init_std=0.02,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        inputs = {k: v.clone() for k, v in self.encoding.items() if k not in ("ext_table_ids", "ext_table_sub")}
        if self.encoding["ext_table_ids"].numel():
            raise AssertionError("the tester's prompts must not need extension-table columns")
        return config, inputs

    def generation_inputs(self, inputs):
        """The generation checks extend `input_ids` and `attention_mask` only (an argmax loop over full forward
        passes): they run CPM-Bee as the plain causal LM its defaults make of it. Structured-prompt generation
        (stock `generate` vs an uncached greedy loop that extends every structured input) is tested in
        `tests/models/cpmbee/test_cpmbee.py` (docs/conformance.md)."""
        return {k: v for k, v in inputs.items() if k not in PER_TOKEN and k != "segment_rel"}


class CpmBeeModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (CpmBeeModel, CpmBeeForCausalLM)
    # plain text in, CPM-Bee as a causal LM (its structured prompts need `CpmBeeTokenizer.prepare_for_generation`)
    pipeline_model_mapping = {"feature-extraction": CpmBeeModel, "text-generation": CpmBeeForCausalLM}
    # the output projection is the input embedding plus per-batch extension columns, with CPM-Bee's own scaling
    # (`CpmBeeEmbeddingExt`, not an `nn.Embedding`/`nn.Linear` pair): transformers' resizing does not apply
    test_resize_embeddings = False

    @classmethod
    def setUpClass(cls):
        # tiny checkpoints for the pipeline mixin (in place of the Hub's hf-internal-testing models)
        provide_pipeline_checkpoints(CpmBeeModelTester(None).get_config(), (CpmBeeModel, CpmBeeForCausalLM))

    def setUp(self):
        self.model_tester = CpmBeeModelTester(self)
        self.config_tester = ConfigTester(self, config_class=CpmBeeConfig, hidden_size=37)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_structured_inputs_change_the_output(self):
        # the tester's structured inputs are used: dropping them (plain causal LM) changes the context tokens' states
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        model = CpmBeeModel(config).eval()
        plain = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            structured = model(**inputs).last_hidden_state
            causal = model(**plain).last_hidden_state
        real = inputs["attention_mask"].bool()
        self.assertFalse(torch.allclose(structured[real], causal[real], atol=1e-4))
