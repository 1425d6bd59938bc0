"""VisCPM-Chat (model type ``viscpm_chat``): Muffin's BEiT-3 bridge on a multilingual LLM, trained by MPM.

Tiny offline model: ``hf_ext.models.muffin.tiny_muffin(model_type="viscpm_chat")``.
"""

from .. import cpmbee as _cpmbee  # noqa: F401  (registers cpmbee: the released VisCPM-Chat's LLM)
from .. import muffin as _muffin  # noqa: F401  (registers beit3 and muffin first)
from .._registry import register_model
from ..muffin.image_processing_muffin import MuffinImageProcessor
from ..muffin.processing_muffin import MuffinProcessor
from .configuration_viscpm_chat import VisCPMChatConfig
from .modeling_viscpm_chat import VisCPMChatForConditionalGeneration, VisCPMChatModel, VisCPMChatPreTrainedModel
from .modeling_viscpm_chat_bee import (
    VisCPMChatBeeForConditionalGeneration,
    build_viscpm_chat_prompt,
    viscpm_chat_image_bound,
)
from .mpm_stages import prepare_mpm_stage

register_model(
    "viscpm_chat",
    VisCPMChatConfig,
    models={
        "AutoModel": VisCPMChatModel,
        "AutoModelForImageTextToText": VisCPMChatForConditionalGeneration,
    },
    processor_class=MuffinProcessor,
    image_processor_class=MuffinImageProcessor,
    variant_classes=[VisCPMChatBeeForConditionalGeneration],  # what the class above builds for a CPM-Bee LLM
)

__all__ = [
    "VisCPMChatBeeForConditionalGeneration",
    "VisCPMChatConfig",
    "VisCPMChatForConditionalGeneration",
    "VisCPMChatModel",
    "VisCPMChatPreTrainedModel",
    "build_viscpm_chat_prompt",
    "prepare_mpm_stage",
    "viscpm_chat_image_bound",
]
