"""CPM-Bee (OpenBMB's bilingual 10B LLM behind VisCPM-Chat and VisCPM-Paint) in transformers style.

Importing this package registers ``model_type="cpmbee"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM`` and ``AutoTokenizer``.
"""

from .._registry import register_model
from .configuration_cpmbee import CpmBeeConfig
from .generation_cpmbee import (
    VISCPM_CHAT_BEAM_SETTINGS,
    CpmBeeBeamSearchOutput,
    CpmBeeTokenMaskLogitsProcessor,
    cpmbee_beam_search,
)
from .modeling_cpmbee import CpmBeeCache, CpmBeeForCausalLM, CpmBeeModel, CpmBeePreTrainedModel
from .tokenization_cpmbee import CpmBeeTokenizer

register_model(
    "cpmbee",
    CpmBeeConfig,
    models={"AutoModel": CpmBeeModel, "AutoModelForCausalLM": CpmBeeForCausalLM},
    tokenizer_class=CpmBeeTokenizer,
)

__all__ = [
    "VISCPM_CHAT_BEAM_SETTINGS",
    "CpmBeeBeamSearchOutput",
    "CpmBeeTokenMaskLogitsProcessor",
    "CpmBeeCache",
    "CpmBeeConfig",
    "CpmBeeForCausalLM",
    "CpmBeeModel",
    "CpmBeePreTrainedModel",
    "CpmBeeTokenizer",
    "cpmbee_beam_search",
]
