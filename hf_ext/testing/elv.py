"""Tiny, offline ELV models for tests, demos and benchmarks (no Hub access, builds in well under a second).

One-liner::

    from hf_ext.testing import tiny_elv_model
    model = tiny_elv_model()                                   # random tiny T5 generator + BERT predictor, 2 labels
    model = tiny_elv_model(["A", "B", "C"], tok, num_explanations=5, max_seq_length=48)   # your tokenizer, 3 labels
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from hf_ext.models.elv_predictor.configuration_elv_predictor import ELVPredictorConfig
from hf_ext.models.elv_predictor.modeling_elv_predictor import ELVPredictorModel
from hf_ext.testing.tokenizers import tiny_bpe_tokenizer
from hf_ext.trainers.elv import ELVModel, ELVModelConfig


def tiny_elv_model(
    label_names: Sequence[str] = ("negative", "positive"),
    tokenizer: PreTrainedTokenizerBase | None = None,
    predictor_tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    num_explanations: int = 3,
    hidden_size: int = 16,
    num_layers: int = 1,
    num_heads: int = 2,
    max_position_embeddings: int = 128,
    pooling: str = "cls",
    generator_dropout_rate: float = 0.1,
    bag_of_embeddings_retriever: bool = False,
    word_embeddings: torch.Tensor | None = None,
    seed: int = 0,
    **config_kwargs: Any,
) -> ELVModel:
    """A random tiny [`ELVModel`]: a T5 generator and a BERT [`ELVPredictorModel`], built from configs, in fp32.

    Both parts have `hidden_size` width, `num_layers` layers, `num_heads` heads and feed-forward width
    `2 * hidden_size`. Weights are drawn after `torch.manual_seed(seed)`, in the order generator, predictor, retriever,
    so the same arguments always give the same model.

    Args:
        label_names (`Sequence[str]`, *optional*, defaults to `("negative", "positive")`): class names; the predictor
            gets `len(label_names)` labels.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): generator tokenizer; sets the generator's `vocab_size` and
            pad / eos ids (`decoder_start_token_id` = pad id, as in T5). Default: [`~testing_utils.tiny_bpe_tokenizer`].
        predictor_tokenizer (`PreTrainedTokenizerBase`, *optional*): predictor (and retriever) tokenizer; sets their
            `vocab_size` and pad id. Default: a deep copy of `tokenizer`.
        num_explanations (`int`, *optional*, defaults to 3): K, explanations retrieved per input.
        hidden_size, num_layers, num_heads (`int`, *optional*, default to 16, 1, 2): size of both parts.
        max_position_embeddings (`int`, *optional*, defaults to 128): the BERT predictor's position table.
        pooling (`str`, *optional*, defaults to `"cls"`): predictor pooling (`"cls"`, `"mean"`, `"entity_markers"`).
        generator_dropout_rate (`float`, *optional*, defaults to 0.1): T5 dropout (T5's own default); BERT keeps its
            default 0.1.
        bag_of_embeddings_retriever (`bool`, *optional*, defaults to `False`): give the model a frozen retriever with
            no layers and zeroed position / token-type embeddings (a bag of word embeddings, like Sentence-BERT's mean
            pooling). Without it `ELVModel` uses a frozen copy of the predictor's initial encoder.
        word_embeddings (`torch.Tensor`, *optional*): `(vocab_size, hidden_size)` vectors copied into the predictor's
            (and the bag-of-embeddings retriever's) word embeddings, e.g. precomputed unsupervised word vectors.
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the weights are drawn.
        **config_kwargs: further [`ELVModelConfig`] fields (`max_seq_length`, `max_target_length`, ...).
    """
    # Model classes imported here so that importing `hf_ext.trainers.elv` does not load T5 / BERT modelling code.
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    gen_tok = tokenizer if tokenizer is not None else tiny_bpe_tokenizer()
    enc_tok = predictor_tokenizer if predictor_tokenizer is not None else copy.deepcopy(gen_tok)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}.")
    config = ELVModelConfig(label_names=list(label_names), num_explanations=num_explanations, **config_kwargs)

    torch.manual_seed(seed)
    generator = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(gen_tok),
            d_model=hidden_size,
            d_kv=hidden_size // num_heads,
            d_ff=2 * hidden_size,
            num_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            dropout_rate=generator_dropout_rate,
            pad_token_id=gen_tok.pad_token_id,
            eos_token_id=gen_tok.eos_token_id,
            decoder_start_token_id=gen_tok.pad_token_id,
        )
    )
    encoder = BertConfig(
        vocab_size=len(enc_tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=enc_tok.pad_token_id,
    )
    predictor = ELVPredictorModel(ELVPredictorConfig(encoder=encoder, num_labels=config.num_labels, pooling=pooling))
    retriever = None
    if bag_of_embeddings_retriever:
        retriever = BertModel(BertConfig(**{**encoder.to_dict(), "num_hidden_layers": 0}))
    with torch.no_grad():
        if retriever is not None:
            retriever.embeddings.position_embeddings.weight.zero_()
            retriever.embeddings.token_type_embeddings.weight.zero_()
        if word_embeddings is not None:
            predictor.encoder.embeddings.word_embeddings.weight.copy_(word_embeddings)
            if retriever is not None:
                retriever.embeddings.word_embeddings.weight.copy_(word_embeddings)
    return ELVModel(
        generator,
        gen_tok,
        predictor,
        enc_tok,
        config,
        retriever=retriever,
        retriever_tokenizer=enc_tok if retriever is not None else None,
    )


__all__ = ["tiny_elv_model"]
