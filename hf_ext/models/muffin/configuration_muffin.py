"""Muffin configuration: BEiT-3 bridge + learned queries + projector + any causal LM (Yu et al. 2023)."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from ..beit3.configuration_beit3 import Beit3Config

logger = logging.get_logger(__name__)

# Vicuna-13B as in the released `Yirany/Muffin-13B` (`vocab_size` includes [PAD], <im_patch>, <im_start>, <im_end>).
_MUFFIN_13B_TEXT = {
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "vocab_size": 32004,
}


class MuffinConfig(PreTrainedConfig):
    r"""
    Configuration of [`MuffinForConditionalGeneration`] ("Reformulating Vision-Language Foundation Models and
    Datasets Towards Universal Multimodal Assistants", Yu et al. 2023, arXiv:2310.00653): `num_query` learned query
    tokens travel through BEiT-3 next to the image patches (patches through the vision experts, queries through the
    language experts); their outputs are projected to the LLM width and replace the `<im_patch>` placeholders.

    Defaults reproduce the released Muffin-13B: BEiT-3 Large (the checkpoint uses 672 px; 224 is the default here
    because it is what BEiT-3 was pre-trained at), 64 queries, one linear projector, Vicuna-13B.

    Args:
        vision_config (`Beit3Config` or `dict`, *optional*):
            The BEiT-3 bridge. Defaults to BEiT-3 Large at 224 px.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Any causal LM config transformers knows (`model_type` picks the class); defaults to a Llama with
            Vicuna-13B's sizes and a 32004-token vocabulary.
        num_query (`int`, *optional*, defaults to 64):
            Number of learned query tokens, i.e. visual tokens per image seen by the LLM.
        projector_type (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (Muffin: one Linear) or `"mlp2"` (VisCPM-Chat: Linear -> activation -> Linear).
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the `"mlp2"` projector.
        projector_hidden_size (`int`, *optional*):
            Width of the first `"mlp2"` Linear; defaults to the LLM's hidden size (VisCPM-Chat: 1024 -> 4096 -> 4096).
        image_token_id (`int`, *optional*, defaults to 32001):
            Id of `<im_patch>`, the placeholder replaced by query features (repeated `num_query` times per image).
        image_start_token_id (`int`, *optional*, defaults to 32002):
            Id of `<im_start>` (kept as an ordinary token, as in the original checkpoints); `None` for a layout
            without start/end markers (VisCPM-Chat).
        image_end_token_id (`int`, *optional*, defaults to 32003):
            Id of `<im_end>`.
        query_init (`str`, *optional*, defaults to `"bos_eos"`):
            `"bos_eos"` (official code: truncated normal, then query 0 := BEiT-3 `<s>` embedding, last query := `</s>`
            embedding, see [`MuffinModel.init_query_from_beit3`]) or `"normal"` (truncated normal only).
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Tie the LM head to the LLM's input embedding.

    Example:

    ```python
    >>> from hf_ext.models.muffin import MuffinConfig, MuffinForConditionalGeneration
    >>> from hf_ext.testing import tiny_muffin_config

    >>> config = tiny_muffin_config()  # hidden 32, 2 layers, 32 px images, 4 queries
    >>> model = MuffinForConditionalGeneration(config)
    ```
    """

    model_type = "muffin"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=Beit3Config),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=_MUFFIN_13B_TEXT),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query: int = 64
    projector_type: Literal["linear", "mlp2"] = "linear"
    projector_hidden_act: str = "gelu"
    projector_hidden_size: int | None = None
    image_token_id: int = 32001
    image_start_token_id: int | None = 32002
    image_end_token_id: int | None = 32003
    query_init: Literal["bos_eos", "normal"] = "bos_eos"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # as Llava: an LLM saved with tied embeddings (e.g. small Qwen2) keeps them tied inside Muffin
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.projector_type not in ("linear", "mlp2"):
            raise ValueError(f"projector_type must be 'linear' or 'mlp2', got {self.projector_type!r}.")
        if self.query_init not in ("bos_eos", "normal"):
            raise ValueError(f"query_init must be 'bos_eos' or 'normal', got {self.query_init!r}.")
        if self.query_init == "bos_eos" and self.num_query <= 2:
            raise ValueError(
                f"num_query must be > 2 with query_init='bos_eos' (the first and last queries copy BEiT-3's <s> and "
                f"</s> embeddings), got {self.num_query}. Use more queries or query_init='normal'."
            )
        if self.num_query < 1:
            raise ValueError(f"num_query must be >= 1, got {self.num_query}.")

    @property
    def image_seq_length(self) -> int:
        """Visual tokens per image in the LLM sequence (the number of queries)."""
        return self.num_query


__all__ = ["MuffinConfig"]
