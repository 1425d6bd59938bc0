"""Tester base shared by CPM-Bee and VisCPM-Chat on CPM-Bee: structured prompts built with the real tokenizer."""

from pathlib import Path

from peer_utils import TinyModelTester

from hf_ext.models.cpmbee import CpmBeeTokenizer

# the tiny vocabulary of hf_ext's CPM-Bee test fixtures
VOCAB = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cpmbee" / "vocab.txt"


class CpmBeePromptTester(TinyModelTester):
    """The structured inputs [`CpmBeeTokenizer.prepare_for_generation`] makes of ``prompts()`` (one row each; the
    shorter rows are left-padded); ``batch_size`` and ``seq_length`` follow from them."""

    def __init__(self, parent):
        super().__init__(parent)
        self.tokenizer = CpmBeeTokenizer(str(VOCAB))
        self.vocab_size = self.tokenizer.vocab_size
        self.encoding, self.prompt_infos = self.tokenizer.prepare_for_generation(self.prompts(), add_answer_bos=True)
        self.batch_size, self.seq_length = self.encoding["input_ids"].shape

    def prompts(self) -> list[dict]:
        """The structured prompts, one per row (a subclass gives them)."""
        raise NotImplementedError

    def cpmbee_config_kwargs(self) -> dict:
        """A tiny `CpmBeeConfig`'s keywords at the tester's sizes."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            dim_ff=2 * self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            dim_head=8,
            position_bias_num_buckets=32,
            position_bias_num_segment_buckets=256,
            position_bias_max_distance=128,
            init_std=0.02,
        )

    def structured_inputs(self) -> dict:
        """A copy of the encoding as the model takes it (the prompts are plain ASCII: no extension-table columns)."""
        if self.encoding["ext_table_ids"].numel():
            raise AssertionError("the tester's prompts must not need extension-table columns")
        return {k: v.clone() for k, v in self.encoding.items() if k not in ("ext_table_ids", "ext_table_sub")}
