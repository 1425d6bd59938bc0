"""PyTorch VisCPM-Chat: Muffin's architecture with VisCPM-Chat's configuration (mlp2 projector, 224 px).

Depends on the sibling folders ``..muffin`` and ``..beit3`` through relative imports.
"""

from ..muffin.modeling_muffin import MuffinForConditionalGeneration, MuffinModel, MuffinPreTrainedModel
from .configuration_viscpm_chat import VisCPMChatConfig


class VisCPMChatPreTrainedModel(MuffinPreTrainedModel):
    config: VisCPMChatConfig
    config_class = VisCPMChatConfig


class VisCPMChatModel(MuffinModel):
    """VisCPM-Chat without the LM head (see [`MuffinModel`])."""

    config: VisCPMChatConfig
    config_class = VisCPMChatConfig


class VisCPMChatForConditionalGeneration(MuffinForConditionalGeneration):
    """VisCPM-Chat with a language-modelling head (see [`MuffinForConditionalGeneration`]).

    With a CPM-Bee `text_config` (the released VisCPM-Chat), constructing this class (directly, via `from_pretrained`
    or `AutoModelForImageTextToText`) returns a [`VisCPMChatBeeForConditionalGeneration`]: CPM-Bee's structured
    prompt, image injection and logits.
    """

    config: VisCPMChatConfig
    config_class = VisCPMChatConfig

    def __new__(cls, config=None, *args, **kwargs):
        if cls is VisCPMChatForConditionalGeneration and _is_cpmbee(config):
            from .modeling_viscpm_chat_bee import VisCPMChatBeeForConditionalGeneration

            return VisCPMChatBeeForConditionalGeneration(config, *args, **kwargs)
        return super().__new__(cls)


def _is_cpmbee(config) -> bool:
    text = getattr(config, "text_config", None)
    return getattr(text, "model_type", None) == "cpmbee"


__all__ = ["VisCPMChatForConditionalGeneration", "VisCPMChatModel", "VisCPMChatPreTrainedModel"]
