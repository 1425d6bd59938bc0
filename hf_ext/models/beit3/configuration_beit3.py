"""BEiT-3 configuration (multiway Transformer of "Image as a Foreign Language", torchscale layout)."""

from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


class Beit3Config(PreTrainedConfig):
    r"""
    Configuration of a [`Beit3Model`]: a multiway Transformer in which every Linear and LayerNorm exists twice, a
    *vision expert* for image patches and a *language expert* for text tokens (or, in Muffin, learned query
    tokens), while self-attention is shared over the whole sequence. Defaults are BEiT-3 Large at 224 px, as used by
    Muffin and VisCPM-Chat (torchscale's `EncoderConfig` with `multiway=True`, `subln=True`, `normalize_output=True`).

    Args:
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the Transformer (`encoder_embed_dim`).
        num_hidden_layers (`int`, *optional*, defaults to 24):
            Number of multiway layers.
        num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads (shared by both experts).
        intermediate_size (`int`, *optional*, defaults to 4096):
            Width of the feed-forward network (`encoder_ffn_embed_dim`).
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation, computed in float32 as torchscale does.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every LayerNorm.
        sub_layernorm (`bool`, *optional*, defaults to `True`):
            Sub-LN (Magneto): an extra LayerNorm before the attention output projection (`inner_attn_ln`) and before
            `fc2` (`ffn_layernorm`). BEiT-3 checkpoints are trained with it.
        image_size (`int`, *optional*, defaults to 224):
            Square input resolution (224 for VisCPM-Chat, 448 for RLHF-V, 672 for the released Muffin-13B).
        patch_size (`int`, *optional*, defaults to 16):
            Patch size of the convolutional patch embedding.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        vocab_size (`int`, *optional*, defaults to 64010):
            Text vocabulary (BEiT-3's XLM-R SentencePiece vocabulary).
        max_position_embeddings (`int`, *optional*, defaults to 1024):
            Rows of the language-side position table (`max_source_positions`), including `position_offset`.
        position_offset (`int`, *optional*, defaults to 2):
            First position id of each modality segment (Fairseq convention kept by torchscale: positions start at 2
            and restart at 2 in the language segment).
        pad_token_id (`int`, *optional*, defaults to 1):
            Padding id of the text vocabulary (XLM-R: `<s>`=0, `<pad>`=1, `</s>`=2).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        hidden_dropout (`float`, *optional*, defaults to 0.0):
            Dropout after attention and feed-forward blocks.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser.

    Example:

    ```python
    >>> from hf_ext.models.beit3 import Beit3Config, Beit3Model

    >>> config = Beit3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    ...                      image_size=32, vocab_size=100, max_position_embeddings=40)
    >>> model = Beit3Model(config)
    ```
    """

    model_type = "beit3"

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    sub_layernorm: bool = True
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vocab_size: int = 64010
    max_position_embeddings: int = 1024
    position_offset: int = 2
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"Beit3Config: hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"Beit3Config: image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})."
            )

    @property
    def num_patches(self) -> int:
        """Number of image patches, without the CLS token."""
        return (self.image_size // self.patch_size) ** 2


__all__ = ["Beit3Config"]
