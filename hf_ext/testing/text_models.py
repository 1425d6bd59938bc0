"""Tiny, offline text models for tests, demos and benchmarks: GPT-2, Jiuge, DELLA / TRACE (no Hub access, < 1 s).

Each factory takes the tokenizer the model is sized to (its vocabulary size and special-token ids are read from it;
default: a tiny tokenizer trained in memory) and returns the model in eval mode, fp32, with weights drawn after
``torch.manual_seed(seed)``::

    from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2

    tokenizer = tiny_bpe_tokenizer()
    policy, reference = tiny_gpt2(tokenizer), tiny_gpt2(tokenizer, seed=1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

if TYPE_CHECKING:
    from hf_ext.models.jiuge import JiugeTokenizer

__all__ = [
    "POEMS",
    "tiny_gpt2",
    "tiny_jiuge",
    "tiny_jiuge_tokenizer",
    "tiny_llama_config",
    "tiny_text_vae",
    "tiny_text_vae_config",
]

POEMS = [
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回。",
]


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0, **config_kwargs: Any
) -> GPT2LMHeadModel:
    """A random tiny `GPT2LMHeadModel` (width 32, 2 layers, 2 heads, 128 positions) sized to `tokenizer`.

    Args:
        tokenizer (`PreTrainedTokenizerBase`, *optional*): sets `vocab_size` (`len(tokenizer)`), the pad id and the
            BOS / EOS ids (both its EOS, as in GPT-2). Default: [`tiny_bpe_tokenizer`].
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the weights are drawn.
        **config_kwargs: further [`GPT2Config`] fields (e.g. `n_layer`, `resid_pdrop`).
    """
    tok = tokenizer if tokenizer is not None else tiny_bpe_tokenizer()
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    kwargs.update(config_kwargs)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kwargs)).eval()


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 32,
    max_position_embeddings: int = 128,
    **overrides: Any,
) -> LlamaConfig:
    """Config of a tiny Llama sized to `tokenizer`: 2 layers, 2 heads (2 key-value heads), feed-forward width
    `2 * hidden_size`; `vocab_size` and the pad / EOS / BOS ids are read from `tokenizer`. `overrides` are further
    [`LlamaConfig`] fields."""
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_jiuge_tokenizer(corpus: Iterable[str] | None = None) -> JiugeTokenizer:
    """A character-level [`JiugeTokenizer`] over `corpus` (default: four classical poems and a few titles / forms)."""
    from hf_ext.models.jiuge import JiugeTokenizer

    return JiugeTokenizer.from_corpus(
        list(corpus) if corpus is not None else [*POEMS, "登鹳雀楼 春晓 静夜思 五言七绝句律诗对联"]
    )


def tiny_jiuge(tokenizer: JiugeTokenizer | None = None, seed: int = 0, **config_kwargs: Any) -> PreTrainedModel:
    """A random tiny [`JiugeForCausalLM`] (GPT-2 with width 32, 2 layers, 2 heads, 128 positions).

    Args:
        tokenizer (`JiugeTokenizer`, *optional*): the vocabulary and special tokens
            ([`JiugeConfig.from_tokenizer`]). Default: [`tiny_jiuge_tokenizer`].
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the weights are drawn.
        **config_kwargs: further [`JiugeConfig`] fields (e.g. `n_positions`).
    """
    from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM

    tok = tokenizer if tokenizer is not None else tiny_jiuge_tokenizer()
    kwargs: dict[str, Any] = dict(n_embd=32, n_layer=2, n_head=2, n_positions=128)
    kwargs.update(config_kwargs)
    torch.manual_seed(seed)
    return JiugeForCausalLM(JiugeConfig.from_tokenizer(tok, **kwargs)).eval()


def tiny_text_vae(
    model_type: str = "della", tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0
) -> PreTrainedModel:
    """A random tiny [`DellaForCausalLM`] (3 layers) or [`TraceForCausalLM`] (`model_type="trace"`, 2 layers; `" ."`
    separates its segments): width 32, 2 heads, 64 positions, latent size 6.

    The residual latent fusion starts at zero in both models; here its rank weights are set to 1 so that the latent
    visibly changes the text, as a trained model's does.

    Args:
        model_type (`str`, *optional*, defaults to `"della"`): `"della"` or `"trace"`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): sets `vocab_size` and the BOS / EOS (its EOS) and pad ids.
            Default: [`tiny_bpe_tokenizer`].
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the weights are drawn.
    """
    tok = tokenizer if tokenizer is not None else tiny_bpe_tokenizer()
    eos = tok.eos_token_id
    ids = dict(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    if model_type == "trace":
        ids["separator_token_ids"] = [tok.convert_tokens_to_ids("Ġ.")]
    config = tiny_text_vae_config(model_type, **ids)
    if model_type == "della":
        from hf_ext.models.della import DellaForCausalLM as model_class
    else:
        from hf_ext.models.trace import TraceForCausalLM as model_class
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("rank_weight"):
                param.fill_(1.0)
    return model.eval()


def tiny_text_vae_config(model_type: str = "della", **overrides: Any) -> PretrainedConfig:
    """The config of a tiny DELLA ([`DellaConfig`], 3 layers) or TRACE ([`TraceConfig`], 2 layers, at most 8
    segments): width 32, 2 heads, 64 positions, latent size 6, low-rank fusion rank 2; ``overrides`` replace any field
    (e.g. ``vocab_size``, the special-token ids, the dropouts).

    Args:
        model_type (`str`, *optional*, defaults to `"della"`): `"della"` or `"trace"`.
        overrides: config fields to set.
    """
    base: dict[str, Any] = dict(
        n_embd=32,
        n_layer=3 if model_type == "della" else 2,
        n_head=2,
        n_positions=64,
        latent_size=6,
        latent_lmf_rank=2,
    )
    if model_type == "della":
        from hf_ext.models.della import DellaConfig

        return DellaConfig(**{**base, **overrides})
    if model_type == "trace":
        from hf_ext.models.trace import TraceConfig

        return TraceConfig(**{**base, "max_segments": 8, **overrides})
    raise ValueError(f"model_type must be 'della' or 'trace', got {model_type!r}.")
