"""What the GPT-2 text VAEs (DELLA and TRACE) share: one implementation each.

* **ELBO bookkeeping**: Gaussian densities (:func:`gaussian_log_prob`, :func:`gaussian_kl`), the reconstruction NLL
  (:func:`sequence_nll`, :func:`token_nll`), the KL fields of a forward output (:func:`latent_kl_terms`) and the KL
  term of the loss with free bits (:func:`kl_loss_with_free_bits`). DELLA's latents (one per layer) are present in
  every row; TRACE's (one per segment) are not, which the optional ``valid`` mask of each function accounts for.
* **input checks** (:func:`check_text_inputs`) and the default prompt of ``generate`` (:func:`bos_prompt`);
* **the GPT-2 backbone**: embedding and decoder pass (:class:`GPT2LatentDecoderMixin`), and a model initialised from
  a GPT-2 checkpoint (:func:`load_gpt2_backbone`).

Model code: this module imports only torch, transformers and the standard library, so it ships (flat) as Hub remote
code next to ``modeling_della.py`` / ``modeling_trace.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import GPT2LMHeadModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

# the helper functions; `GPT2LatentDecoderMixin` is a base of the model classes, not a top-level export of hf_ext
__all__ = [
    "bos_prompt",
    "check_text_inputs",
    "gaussian_kl",
    "gaussian_log_prob",
    "kl_loss_with_free_bits",
    "latent_kl_terms",
    "load_gpt2_backbone",
    "sequence_nll",
    "token_nll",
]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------- Gaussian densities


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def gaussian_kl(
    q_mean: torch.Tensor, q_logvar: torch.Tensor, p_mean: torch.Tensor, p_logvar: torch.Tensor
) -> torch.Tensor:
    """KL(N(q_mean, exp(q_logvar)) || N(p_mean, exp(p_logvar))) summed over the last dimension."""
    return 0.5 * (
        p_logvar - q_logvar + (torch.exp(q_logvar) + (q_mean - p_mean).pow(2)) * torch.exp(-p_logvar) - 1.0
    ).sum(-1)


# ----------------------------------------------------------------------------------------------- ELBO bookkeeping


def sequence_nll(logits: torch.Tensor, shift_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL of ``logits[:, t]`` against the already shifted ``shift_labels[:, t]``, and the number of
    scored tokens (``-100`` is ignored)."""
    nll = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    return nll.sum(1), (shift_labels != -100).sum(1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed next-token NLL and number of target tokens (labels == -100 are ignored)."""
    return sequence_nll(logits[:, :-1], labels[:, 1:])


def latent_kl_terms(latent_output: Any, kl_reduction: str, valid: torch.Tensor | None = None) -> dict[str, Any]:
    """The KL fields of a text VAE's output from its posterior latents.

    Args:
        latent_output: latents and the Gaussian parameters of prior and posterior (``latents``, ``prior_mean``,
            ``prior_logvar``, ``posterior_mean``, ``posterior_logvar``), each ``(batch, groups, latent_size)``.
        kl_reduction (`str`): ``"sum"`` (the ELBO) or ``"mean"`` over the latent groups of a row.
        valid (`torch.Tensor` of shape `(batch, groups)`, *optional*): which groups a row has (TRACE's segments);
            the others count for nothing, and ``"mean"`` averages over the groups a row has. `None`: all of them.

    Returns:
        `dict`: ``kl_per_group`` `(batch, groups)`, ``kl`` `(batch,)`, ``log_prior`` and ``log_posterior``
        `(batch,)` (summed over the groups).
    """
    lo = latent_output
    per_group = gaussian_kl(lo.posterior_mean, lo.posterior_logvar, lo.prior_mean, lo.prior_logvar)
    log_prior = gaussian_log_prob(lo.latents, lo.prior_mean, lo.prior_logvar)
    log_posterior = gaussian_log_prob(lo.latents, lo.posterior_mean, lo.posterior_logvar)
    if valid is None:
        kl = per_group.sum(1) if kl_reduction == "sum" else per_group.mean(1)
    else:
        keep = valid.to(per_group.dtype)
        per_group, log_prior, log_posterior = per_group * keep, log_prior * keep, log_posterior * keep
        kl = per_group.sum(1)
        if kl_reduction != "sum":
            kl = kl / keep.sum(1).clamp(min=1)
    return {"kl_per_group": per_group, "kl": kl, "log_prior": log_prior.sum(1), "log_posterior": log_posterior.sum(1)}


def kl_loss_with_free_bits(
    kl_per_group: torch.Tensor,
    reduction: str,
    free_bits: float,
    free_bits_reduction: str = "batch",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-mean KL for the loss, with free bits lambda.

    ``free_bits_reduction="batch"``: per group ``max(lambda, mean_batch KL_g)``, then summed or averaged over groups.
    ``"sample"`` (the official DELLA ``--kl_threshold``): ``max(lambda, KL_g)`` for every row and group, reduced over
    groups, then averaged over the batch.

    With ``valid`` (`(batch, groups)`, TRACE's segments; ``kl_per_group`` already 0 where not valid), only ``"batch"``
    applies: each group's batch mean is taken over the rows that have it, groups no row has count for nothing, and
    without free bits the loss is the batch mean of the per-row KL (:func:`latent_kl_terms`' ``kl``).
    """
    if valid is not None:
        if free_bits_reduction != "batch":
            raise ValueError(
                f"Masked latent groups support free_bits_reduction='batch' only, got {free_bits_reduction!r}."
            )
        keep = valid.to(kl_per_group.dtype)
        if free_bits <= 0:
            kl = kl_per_group.sum(1)
            return (kl if reduction == "sum" else kl / keep.sum(1).clamp(min=1)).mean()
        present = keep.sum(0)
        per_group = (kl_per_group.sum(0) / present.clamp(min=1)).clamp(min=free_bits) * (present > 0)
        return per_group.sum() if reduction == "sum" else per_group.sum() / (present > 0).sum()
    if free_bits_reduction == "sample":
        per_row = kl_per_group.clamp(min=free_bits) if free_bits > 0 else kl_per_group
        per_row = per_row.sum(1) if reduction == "sum" else per_row.mean(1)
        return per_row.mean()
    per_group = kl_per_group.mean(0)
    if free_bits > 0:
        per_group = per_group.clamp(min=free_bits)
    return per_group.sum() if reduction == "sum" else per_group.mean()


# --------------------------------------------------------------------------------------------------- input checks


def check_text_inputs(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, what: str) -> None:
    """Raise a `ValueError` naming ``what`` unless ``input_ids`` is a ``(batch, seq >= 1)`` tensor whose rows each have
    at least one attended token (the posterior encodes text; an empty row has nothing to encode)."""
    if input_ids is None:
        raise ValueError(f"{what} needs `input_ids` (the text to encode).")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` must have shape (batch, seq) with seq >= 1, got {tuple(input_ids.shape)}.")
    if attention_mask is not None:
        empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"{what}: rows {empty} of `attention_mask` are all zeros (empty text); remove empty texts before "
                "encoding them."
            )


def bos_prompt(model: nn.Module, batch_size: int) -> torch.LongTensor:
    """A ``(batch_size, 1)`` prompt of the BOS token (generation config first, then model config), to generate from
    scratch; raises when neither sets one."""
    bos = model.generation_config.bos_token_id
    if bos is None:
        bos = model.config.bos_token_id
    if bos is None:
        raise ValueError("Pass `input_ids` (a prompt), or set `bos_token_id` to generate from scratch.")
    return torch.full((batch_size, 1), bos, device=model.device)


# ------------------------------------------------------------------------------------------------ GPT-2 backbone


def load_gpt2_backbone(cls: type, config_class: type, path: str, init_lm_head: bool = True, **config_kwargs):
    """Build ``cls`` (a text VAE with ``transformer`` and ``lm_head``) with the backbone of a GPT-2 checkpoint.

    The GPT-2 config, updated with ``config_kwargs``, becomes a ``config_class``; ``wte``, ``wpe``, the blocks and
    ``ln_f`` load into ``model.transformer`` (a weight with no place there raises). With an untied head
    (``tie_word_embeddings=False``) and ``init_lm_head``, GPT-2's output embedding is copied into it.

    Returns:
        `tuple`: the model and the names of its backbone parameters the checkpoint did not set (the latent modules).
    """
    backbone = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32)
    cfg_dict = backbone.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        cfg_dict.pop(key, None)
    cfg_dict.update(config_kwargs)
    model = cls(config_class(**cfg_dict))
    missing, unexpected = model.transformer.load_state_dict(backbone.transformer.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"GPT-2 checkpoint {path!r} has weights {cls.__name__} cannot place: {unexpected[:5]} ...")
    if not model.config.tie_word_embeddings and init_lm_head:
        model.lm_head.weight.data.copy_(backbone.lm_head.weight.data)
    model.tie_weights()
    return model, missing


class GPT2LatentDecoderMixin:
    """The GPT-2 backbone's embedding and decoder pass, for a model with ``wte``, ``wpe``, ``drop``, ``h`` (blocks
    that take a ``latent``) and ``ln_f``; each model decides which latent every block gets."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    def _embed(self, input_ids, inputs_embeds, position_ids, cache):
        """``(inputs_embeds, position_ids, token + position embeddings)``; positions continue after the cache."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
            last = past + inputs_embeds.shape[1] - 1  # known from the shapes (no data-dependent check: exportable)
        elif torch.compiler.is_exporting() or torch.compiler.is_compiling():
            last = None  # given positions: a data-dependent check cannot be traced
        else:
            last = int(position_ids.max())
        if last is not None and last >= self.config.max_position_embeddings:
            raise ValueError(
                f"The sequence is longer than the context: position {last} >= "
                f"n_positions={self.config.max_position_embeddings}. Truncate the text (e.g. the tokenizer's "
                "`max_length`)."
            )
        return inputs_embeds, position_ids, inputs_embeds + self.wpe(position_ids)

    def _decoder_inputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        use_cache: bool | None,
        position_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> tuple[Cache | None, bool, torch.LongTensor, torch.Tensor, Any]:
        """Start of the causal decoder pass: ``(cache, use_cache, position_ids, hidden, causal_mask)``."""
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        inputs_embeds, position_ids, hidden = self._embed(input_ids, inputs_embeds, position_ids, cache)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(inputs_embeds.shape[0], -1)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        return cache, use_cache, position_ids, hidden, causal_mask

    def _decoder_blocks(
        self,
        hidden: torch.Tensor,
        layer_latent: Callable[[int], torch.Tensor | None],
        cache: Cache | None,
        use_cache: bool,
        causal_mask: Any,
        position_ids: torch.LongTensor,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Rest of the causal decoder pass: dropout, every block with the latent ``layer_latent(i)``, ``ln_f``."""
        hidden = self.drop(hidden)
        for i, block in enumerate(self.h):
            hidden = block(
                hidden,
                cache=cache,
                attention_mask=causal_mask,
                latent=layer_latent(i),
                position_ids=position_ids,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden), cache=cache if use_cache else None)
