"""Tiny offline components for IAP tests and demos (no download).

One call builds a pipeline::

    from hf_ext.testing.iap import tiny_iap_pipeline

    pipe = tiny_iap_pipeline(zh_hidden_size=12)  # IAPStableDiffusionPipeline (12 -> 8 projection)
    pipe = tiny_iap_pipeline(zh_hidden_size=8)   # plain StableDiffusionPipeline with a Chinese BERT encoder
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from transformers import BertConfig, BertModel, BertTokenizer

from hf_ext.pipelines.iap.modeling_iap_projection import IAPTextProjection
from hf_ext.pipelines.iap.pipeline_iap import build_iap_pipeline
from hf_ext.testing.diffusion import tiny_clip_text_encoder, tiny_scheduler, tiny_unet, tiny_vae

__all__ = [
    "ZH_CHARS",
    "tiny_chinese_text_encoder",
    "tiny_chinese_tokenizer",
    "tiny_iap_components",
    "tiny_iap_pipeline",
]

ZH_CHARS = "一只两个的猫狗红蓝绿色帽子戴着在上坐跑公园桌画松鼠吃汉堡大小白黑天空海山树花鸟人车房"


def tiny_chinese_tokenizer(model_max_length: int = 16) -> BertTokenizer:
    """A character-level `BertTokenizer` over a few dozen common Chinese characters, built in memory."""
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ZH_CHARS])}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def tiny_chinese_text_encoder(hidden_size: int = 8, seed: int = 0) -> tuple[BertModel, BertTokenizer]:
    """A 2-layer `BertModel` (dropout 0, as a frozen-at-inference encoder should be) and its tokenizer."""
    tokenizer = tiny_chinese_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config).eval(), tokenizer


def tiny_iap_components(
    cross_attention_dim: int = 8, zh_hidden_size: int = 8, sample_size: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Frozen tiny SD parts plus a Chinese encoder: a dict with `unet`, `vae`, `scheduler`, `en_text_encoder`,
    `en_tokenizer`, `zh_text_encoder`, `zh_tokenizer` and `text_projection` (`None` when the widths match)."""
    en_text_encoder, en_tokenizer = tiny_clip_text_encoder(cross_attention_dim, seed=seed)
    zh_text_encoder, zh_tokenizer = tiny_chinese_text_encoder(zh_hidden_size, seed=seed + 1)
    projection = None
    if zh_hidden_size != cross_attention_dim:
        torch.manual_seed(seed)
        projection = IAPTextProjection(zh_hidden_size, cross_attention_dim).eval()
    return {
        "unet": tiny_unet(cross_attention_dim, sample_size, seed),
        "vae": tiny_vae(seed),
        "scheduler": tiny_scheduler(),
        "en_text_encoder": en_text_encoder,
        "en_tokenizer": en_tokenizer,
        "zh_text_encoder": zh_text_encoder,
        "zh_tokenizer": zh_tokenizer,
        "text_projection": projection,
    }


def tiny_iap_pipeline(
    cross_attention_dim: int = 8, zh_hidden_size: int = 12, seed: int = 0
) -> StableDiffusionPipeline:
    """A Chinese tiny SD pipeline: `IAPStableDiffusionPipeline` (a `StableDiffusionPipeline` subclass) when the widths
    differ, else `StableDiffusionPipeline`."""
    parts = tiny_iap_components(cross_attention_dim, zh_hidden_size, seed=seed)
    pipe = build_iap_pipeline(
        parts["vae"],
        parts["zh_text_encoder"],
        parts["zh_tokenizer"],
        parts["unet"],
        parts["scheduler"],
        parts["text_projection"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
