"""Tiny, offline BEiT-3 and Muffin models and processors for tests, demos and benchmarks (no Hub access, < 1 s).

One-liner::

    from hf_ext.testing import tiny_muffin
    model, processor = tiny_muffin()                  # random tiny Muffin + matching processor
    model, processor = tiny_muffin(model_type="viscpm_chat")   # the VisCPM-Chat flavour (mlp2 projector)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_ext.models.beit3.configuration_beit3 import Beit3Config
from hf_ext.models.muffin.configuration_muffin import MuffinConfig
from hf_ext.models.muffin.image_processing_muffin import MuffinImageProcessor
from hf_ext.models.muffin.processing_muffin import MUFFIN_IMAGE_TOKENS, MuffinProcessor
from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

__all__ = ["tiny_beit3_config", "tiny_muffin", "tiny_muffin_config", "tiny_muffin_tokenizer"]


def tiny_beit3_config(
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 16,
    max_position_embeddings: int = 40,
    **overrides: Any,
) -> Beit3Config:
    """Config of a tiny random BEiT-3: 4 heads, feed-forward width `2 * hidden_size`, a 64-token text vocabulary.

    Args:
        hidden_size (`int`, *optional*, defaults to 32): width.
        num_hidden_layers (`int`, *optional*, defaults to 2): multiway layers.
        image_size (`int`, *optional*, defaults to 32): image side in pixels.
        patch_size (`int`, *optional*, defaults to 16): patch side; the image gives `(image_size / patch_size) ** 2`
            patch tokens.
        max_position_embeddings (`int`, *optional*, defaults to 40): the text position table.
        **overrides: further [`Beit3Config`] fields (e.g. `initializer_range`).
    """
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        image_size=image_size,
        patch_size=patch_size,
        vocab_size=64,
        max_position_embeddings=max_position_embeddings,
    )
    kwargs.update(overrides)
    return Beit3Config(**kwargs)


def tiny_muffin_tokenizer() -> PreTrainedTokenizerBase:
    """A 300-token byte-level BPE trained in memory, plus `<im_patch>`, `<im_start>`, `<im_end>` and `<pad>`."""
    return tiny_bpe_tokenizer(additional_special_tokens=MUFFIN_IMAGE_TOKENS)


def tiny_muffin_config(
    tokenizer: PreTrainedTokenizerBase | None = None,
    num_query: int = 4,
    image_size: int = 32,
    patch_size: int = 16,
    hidden_size: int = 32,
    num_layers: int = 2,
    projector_type: str = "linear",
    text_model_type: str = "llama",
    config_class: type[MuffinConfig] = MuffinConfig,
    vision_max_position_embeddings: int | None = None,
    **overrides: Any,
) -> MuffinConfig:
    """Config of a tiny Muffin: BEiT-3 and LLM with `hidden_size` 32, 2 layers, 4 heads, `num_query` queries.

    Token ids (`image_token_id`, ...) and `vocab_size` are read from `tokenizer` (default: [`tiny_muffin_tokenizer`]).
    The vision side is [`tiny_beit3_config`] with `patch_size` and `vision_max_position_embeddings` (BEiT-3's text
    position table, default `max(16, num_query + 4)`). Other keyword arguments override [`MuffinConfig`] fields.
    """
    tok = tokenizer if tokenizer is not None else tiny_muffin_tokenizer()
    vocab = tok.get_vocab()
    vision = tiny_beit3_config(
        hidden_size,
        num_layers,
        image_size,
        patch_size,
        vision_max_position_embeddings if vision_max_position_embeddings is not None else max(16, num_query + 4),
    )
    text = dict(
        model_type=text_model_type,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    kwargs = dict(
        vision_config=vision,
        text_config=text,
        num_query=num_query,
        projector_type=projector_type,
        image_token_id=vocab["<im_patch>"],
        image_start_token_id=vocab["<im_start>"],
        image_end_token_id=vocab["<im_end>"],
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    kwargs.update(overrides)
    return config_class(**kwargs)


def tiny_muffin(
    model_type: str = "muffin",
    seed: int = 0,
    chat_template: str | dict[str, str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **config_kwargs: Any,
) -> tuple[PreTrainedModel, MuffinProcessor]:
    """Return `(model, processor)`: a random tiny `MuffinForConditionalGeneration` (or VisCPM-Chat with
    `model_type="viscpm_chat"`) in eval mode, fp32, and a matching `MuffinProcessor` (32 px images, 4 queries).

    `chat_template` is passed to the processor (e.g. `"muffin_v0"` for TRL prompt-completion training); by default
    the processor has all built-in templates with the original formats as the default. `tokenizer` (default
    [`tiny_muffin_tokenizer`]) must have Muffin's image tokens; the vocabulary size is read from it. Other keyword
    arguments go to [`tiny_muffin_config`]."""
    tok = tokenizer if tokenizer is not None else tiny_muffin_tokenizer()
    if model_type == "muffin":
        from hf_ext.models.muffin.modeling_muffin import MuffinForConditionalGeneration as model_class

        config = tiny_muffin_config(tok, **config_kwargs)
    elif model_type == "viscpm_chat":
        from hf_ext.models.viscpm_chat import VisCPMChatConfig
        from hf_ext.models.viscpm_chat import VisCPMChatForConditionalGeneration as model_class

        config_kwargs.setdefault("projector_type", "mlp2")
        config = tiny_muffin_config(tok, config_class=VisCPMChatConfig, **config_kwargs)
    else:
        raise ValueError(f"model_type must be 'muffin' or 'viscpm_chat', got {model_type!r}.")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    size = config.vision_config.image_size
    processor = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": size, "width": size}),
        tokenizer=tok,
        num_query=config.num_query,
        chat_template=chat_template,
    )
    return model, processor
