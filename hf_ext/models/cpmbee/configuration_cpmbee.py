"""CPM-Bee configuration (OpenBMB, https://github.com/OpenBMB/CPM-Bee)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["CpmBeeConfig"]

# original config key (``cpm-bee-10b.json``) -> CpmBeeConfig attribute
ORIGINAL_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "dim_model": "hidden_size",
    "dim_ff": "dim_ff",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "dim_head": "dim_head",
    "dropout_p": "dropout_p",
    "position_bias_num_buckets": "position_bias_num_buckets",
    "position_bias_num_segment_buckets": "position_bias_num_segment_buckets",
    "position_bias_max_distance": "position_bias_max_distance",
    "eps": "eps",
}


class CpmBeeConfig(PreTrainedConfig):
    r"""
    Configuration of [`CpmBeeForCausalLM`] / [`CpmBeeModel`]. The defaults are CPM-Bee 10B (`cpm-bee-10b.json`).
    The attribute names follow transformers' [`CpmAntConfig`] (CPM-Bee's predecessor, same layer shapes).

    Args:
        vocab_size (`int`, *optional*, defaults to 86583):
            Vocabulary size (the extension-table columns for out-of-vocabulary pieces come on top).
        hidden_size (`int`, *optional*, defaults to 4096):
            Model width (`dim_model`).
        num_attention_heads (`int`, *optional*, defaults to 32):
            Attention heads.
        dim_head (`int`, *optional*, defaults to 128):
            Width of one head.
        dim_ff (`int`, *optional*, defaults to 10240):
            Width of the gated GELU feed-forward layer.
        num_hidden_layers (`int`, *optional*, defaults to 48):
            Transformer blocks.
        dropout_p (`float`, *optional*, defaults to 0.0):
            Dropout after attention and the feed-forward layer (0 for inference).
        position_bias_num_buckets (`int`, *optional*, defaults to 256):
            T5-style relative position buckets inside a segment.
        position_bias_num_segment_buckets (`int`, *optional*, defaults to 256):
            Segment-relation buckets (must be at least `max_depth**2 + 1`, 65 for depth 8).
        position_bias_max_distance (`int`, *optional*, defaults to 2048):
            Distance at which the logarithmic position buckets saturate.
        eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the RMS norms.
        residual_scale (`float`, *optional*, defaults to 1.05):
            CPM-Bee divides every residual sum by this value (`(h + f(h)) / 1.05`).
        rotary_distance_scale (`float`, *optional*, defaults to 16.0):
            Scale of the rotary transform applied to the embeddings of sub-ids.
        max_depth (`int`, *optional*, defaults to 8):
            Depth cap of the structured-input tree (tokenizer and segment buckets).
        init_std (`float`, *optional*, defaults to 1.0):
            Standard deviation of the weight initialisation (CPM-Bee's layers divide by `sqrt(dim_in)` instead of
            scaling the weights).
        use_cache (`bool`, *optional*, defaults to `True`):
            Return the key/value cache.

    Example:

    ```python
    >>> from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeForCausalLM
    >>> config = CpmBeeConfig(vocab_size=626, hidden_size=64, dim_ff=128, num_hidden_layers=2,
    ...                       num_attention_heads=4, dim_head=16)
    >>> model = CpmBeeForCausalLM(config)
    ```
    """

    model_type = "cpmbee"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 86583
    hidden_size: int = 4096
    num_attention_heads: int = 32
    dim_head: int = 128
    dim_ff: int = 10240
    num_hidden_layers: int = 48
    dropout_p: float = 0.0
    position_bias_num_buckets: int = 256
    position_bias_num_segment_buckets: int = 256
    position_bias_max_distance: int = 2048
    eps: float = 1e-6
    residual_scale: float = 1.05
    rotary_distance_scale: float = 16.0
    max_depth: int = 8
    init_std: float = 1.0
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 6
    eos_token_id: int | None = 7

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.position_bias_num_segment_buckets < self.max_depth**2 + 1:
            raise ValueError(
                f"position_bias_num_segment_buckets={self.position_bias_num_segment_buckets} is too small for "
                f"max_depth={self.max_depth}: it must be at least max_depth**2 + 1 = {self.max_depth**2 + 1}."
            )

    @classmethod
    def from_original_config(cls, original: dict[str, Any], **kwargs) -> CpmBeeConfig:
        """Build the config from an original CPM-Bee config dict (`cpm-bee-10b.json` keys: `dim_model`,
        `num_layers`, ...). Unknown keys other than `half` raise a `ValueError`."""
        values = {}
        for key, value in original.items():
            if key == "half":
                continue
            if key not in ORIGINAL_CONFIG_KEYS:
                raise ValueError(f"Unknown CPM-Bee config key {key!r}; known: {sorted(ORIGINAL_CONFIG_KEYS)}.")
            values[ORIGINAL_CONFIG_KEYS[key]] = value
        values.update(kwargs)
        return cls(**values)
