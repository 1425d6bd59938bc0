"""VisCPM-Chat configuration: the Muffin bridge with VisCPM-Chat's defaults (Hu et al. 2023, MPM, arXiv:2308.12038)."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..beit3.configuration_beit3 import Beit3Config
from ..muffin.configuration_muffin import MuffinConfig


class VisCPMChatConfig(MuffinConfig):
    r"""
    Configuration of [`VisCPMChatForConditionalGeneration`]. Same architecture as [`MuffinConfig`] (BEiT-3 Large
    bridge, 64 learned queries routed through the language experts) with VisCPM-Chat's choices: 224 px images and a
    two-layer MLP projector (`Linear(1024, 4096) -> GELU -> Linear(4096, 4096)`).

    The original LLM, CPM-Bee 10B, is not part of transformers; the MPM recipe only needs *a multilingual LLM* as the
    pivot, so `text_config` accepts any causal LM transformers has. The default is a Qwen2 config (Chinese-English
    vocabulary, hidden size 4096 like CPM-Bee 10B). Special-token ids must be set from your tokenizer (see
    [`~hf_ext.models.muffin.add_muffin_image_tokens`]).

    Args: see [`MuffinConfig`]; the defaults that differ are `projector_type="mlp2"` and the text config.
    """

    model_type = "viscpm_chat"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=Beit3Config),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: Literal["linear", "mlp2"] = "mlp2"
    image_token_id: int = 151646
    image_start_token_id: int | None = 151647
    image_end_token_id: int | None = 151648


__all__ = ["VisCPMChatConfig"]
