"""Muffin (model type ``muffin``): BEiT-3 as the bridge between images and an LLM (Yu et al. 2023).

Tiny offline model for tests/demos: ``model, processor = hf_ext.testing.tiny_muffin()``.
"""

from .. import beit3 as _beit3  # noqa: F401  (registers the BEiT-3 vision config first)
from .._registry import register_model
from .configuration_muffin import MuffinConfig
from .image_processing_muffin import MuffinImageProcessor
from .modeling_muffin import (
    MuffinCausalLMOutputWithPast,
    MuffinForConditionalGeneration,
    MuffinModel,
    MuffinModelOutputWithPast,
    MuffinMultiModalProjector,
    MuffinPreTrainedModel,
)
from .processing_muffin import (
    DEFAULT_SYSTEM_PROMPT,
    MUFFIN_CHAT_TEMPLATE,
    MUFFIN_CHAT_TEMPLATES,
    MuffinProcessor,
    add_muffin_image_tokens,
    extract_muffin_answer,
)

register_model(
    "muffin",
    MuffinConfig,
    models={
        "AutoModel": MuffinModel,
        "AutoModelForImageTextToText": MuffinForConditionalGeneration,
    },
    processor_class=MuffinProcessor,
    image_processor_class=MuffinImageProcessor,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "MUFFIN_CHAT_TEMPLATE",
    "MUFFIN_CHAT_TEMPLATES",
    "MuffinCausalLMOutputWithPast",
    "MuffinConfig",
    "MuffinForConditionalGeneration",
    "MuffinImageProcessor",
    "MuffinModel",
    "MuffinModelOutputWithPast",
    "MuffinMultiModalProjector",
    "MuffinPreTrainedModel",
    "MuffinProcessor",
    "add_muffin_image_tokens",
    "extract_muffin_answer",
]
