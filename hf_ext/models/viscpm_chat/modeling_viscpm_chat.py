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
    """VisCPM-Chat with a language-modelling head (see [`MuffinForConditionalGeneration`])."""

    config: VisCPMChatConfig
    config_class = VisCPMChatConfig


__all__ = ["VisCPMChatForConditionalGeneration", "VisCPMChatModel", "VisCPMChatPreTrainedModel"]
