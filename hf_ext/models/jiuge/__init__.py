"""Jiuge: GPT-2 for the major forms of classical Chinese poetry (Hu & Sun, LREC 2020, arXiv:2003.11528).

Importing this package registers ``model_type="jiuge"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM`` and ``AutoTokenizer``.
"""

from ...utils.poetry_forms import (
    BUILTIN_FORMS,
    PUNCTUATION,
    SENTENCE_END_PUNCTUATION,
    PoemForm,
    classify_shi,
    couplet_form,
    is_hanzi,
    learn_ci_forms,
    split_lines,
)
from .._registry import register_model
from .configuration_jiuge import JiugeConfig
from .logits_process_jiuge import PoemFormLogitsProcessor
from .modeling_jiuge import (
    JiugeCausalLMOutput,
    JiugeForCausalLM,
    JiugeModel,
    JiugePreTrainedModel,
    form_stressed_weights,
    weighted_lm_loss,
)
from .tokenization_jiuge import JiugeTokenizer, format_sample

register_model(
    "jiuge",
    JiugeConfig,
    models={"AutoModel": JiugeModel, "AutoModelForCausalLM": JiugeForCausalLM},
    tokenizer_class=JiugeTokenizer,
)

__all__ = [
    "BUILTIN_FORMS",
    "PUNCTUATION",
    "SENTENCE_END_PUNCTUATION",
    "JiugeCausalLMOutput",
    "JiugeConfig",
    "JiugeForCausalLM",
    "JiugeModel",
    "JiugePreTrainedModel",
    "JiugeTokenizer",
    "PoemForm",
    "PoemFormLogitsProcessor",
    "classify_shi",
    "couplet_form",
    "form_stressed_weights",
    "format_sample",
    "is_hanzi",
    "learn_ci_forms",
    "split_lines",
    "weighted_lm_loss",
]
