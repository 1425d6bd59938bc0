"""TRACE: segment-wise recurrent latent variables in a Transformer VAE (Hu et al., Findings of EMNLP 2022).

**Reconstructed from the abstract** (the method section and equations could not be read; no official code exists).
See [`TraceConfig`] for the generative model, the residual posterior with its KL lower bound, and the idempotent
parallelisation; each choice is a config field.

The backbone blocks and the latent fusion operator (low-rank tensor product into the values) are DELLA's, imported
relatively from ``..della`` (same authors, same family); the ELBO bookkeeping, input checks and the GPT-2 embedding
and decoder pass are the text-VAE helpers both models share (``..text_vae_utils``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..della.modeling_della import DellaAttention, DellaBlock, DellaLatentOutput, DellaPreTrainedModel, TextVAEOutput
from ..text_vae_utils import (
    GPT2LatentDecoderMixin,
    bos_prompt,
    check_text_inputs,
    kl_loss_with_free_bits,
    latent_kl_terms,
    load_gpt2_backbone,
    sequence_nll,
    token_nll,
)
from .configuration_trace import TraceConfig

logger = logging.get_logger(__name__)


class TracePreTrainedModel(DellaPreTrainedModel):
    config: TraceConfig
    config_class = TraceConfig
    _no_split_modules = ["DellaBlock"]
    # hidden states and attentions of the decoder pass (the posterior's encoder pass is not recorded)
    _can_record_outputs = {
        "hidden_states": DellaBlock,
        "attentions": OutputRecorder(DellaAttention, index=1),
    }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, TraceLatentModule):
            init.zeros_(module.prior_logvar)
            if self.config.transition == "free":
                # start at an idempotent matrix (a random rank-p/2 orthogonal projection): parallel == sequential
                init.copy_(module.transition_weight, module.initial_projection())
            else:
                init.normal_(module.transition_u, mean=0.0, std=self.config.latent_size**-0.5)
                init.copy_(module.transition_v, module.transition_u.detach().clone())


class TraceLatentModule(nn.Module):
    """The recurrent prior, the residual posterior and the transition W of TRACE (see [`TraceConfig`])."""

    def __init__(self, config: TraceConfig):
        super().__init__()
        p, d = config.latent_size, config.hidden_size
        self.config = config
        self.posterior_mean = nn.Linear(d, p)
        self.posterior_logvar = nn.Linear(d, p)
        # no learned affine: the fixed gain is what makes the KL lower bound hold
        self.posterior_norm = nn.LayerNorm(p, eps=1e-6, elementwise_affine=False)
        self.prior_logvar = nn.Parameter(torch.empty(p))
        if config.transition == "free":
            self.transition_weight = nn.Parameter(torch.empty(p, p))
        else:
            r = config.effective_transition_rank
            self.transition_u = nn.Parameter(torch.empty(p, r))
            self.transition_v = nn.Parameter(torch.empty(p, r))

    def initial_projection(self) -> torch.Tensor:
        """A random rank-r orthogonal projection ``Q Q^T`` (idempotent), in the dtype of the transition weight.

        The QR factorisation runs in float32 (CPU kernels exist for no half type) and is cast back.
        """
        p, r = self.config.latent_size, self.config.effective_transition_rank
        device = self.transition_weight.device
        q, _ = torch.linalg.qr(torch.randn(p, r, dtype=torch.float32, device=device))
        return (q @ q.T).to(self.transition_weight.dtype)

    def transition(self) -> torch.Tensor:
        """The matrix W of ``z_k = W z_{k-1} + e_k``."""
        if self.config.transition == "free":
            return self.transition_weight
        u, v = self.transition_u, self.transition_v
        if u.dtype in (torch.float16, torch.bfloat16):
            # the solve has no half-precision kernels: compute it in float32
            return (u.float() @ torch.linalg.solve(v.float().T @ u.float(), v.float().T)).to(u.dtype)
        return u @ torch.linalg.solve(v.T @ u, v.T)

    def idempotence_gap(self) -> torch.Tensor:
        """``||W^2 - W||_F^2`` (0 for an idempotent W)."""
        w = self.transition()
        return (w @ w - w).pow(2).sum()


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: TraceConfig) -> torch.Tensor:
    """Segment index of every token, ``(batch, seq)``; -1 on padding.

    A separator token belongs to the segment it closes; fixed segments count real (non-pad) tokens.
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if config.segmentation == "separator":
        is_sep = torch.isin(input_ids, torch.tensor(config.separator_token_ids, device=input_ids.device)) & mask
        closed_before = torch.cumsum(is_sep.long(), dim=1) - is_sep.long()
        seg = closed_before
    else:
        seg = (torch.cumsum(mask.long(), dim=1) - 1) // config.segment_length
    return torch.where(mask, seg, torch.full_like(seg, -1))


def compute_latent_index(
    input_ids: torch.Tensor | None, config: TraceConfig, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Which segment latent the decoder uses at each position: the segment of the *next* token.

    ``"separator"`` segmentation needs ``input_ids``; ``"fixed"`` segmentation only needs the positions
    (``position_ids``, defaulting to ``0..seq-1`` of ``input_ids``).
    """
    if config.segmentation == "separator":
        if input_ids is None:
            raise ValueError(
                "With segmentation='separator' the segment of each position depends on the tokens: pass `input_ids`, "
                "or `latent_index` together with `inputs_embeds`."
            )
        is_sep = torch.isin(input_ids, torch.tensor(config.separator_token_ids, device=input_ids.device))
        return torch.cumsum(is_sep.long(), dim=1)
    if position_ids is None:
        if input_ids is None:
            raise ValueError("compute_latent_index needs `input_ids` or `position_ids`.")
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (position_ids + 1) // config.segment_length


def trace_token_nll(
    logits: torch.Tensor, labels: torch.Tensor | None, shift_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed next-token NLL and number of targets (``-100`` ignored).

    ``labels`` are shifted by one inside; ``shift_labels`` (already aligned with ``logits``, as sequence-parallel
    trainers pass them) replace ``labels`` entirely and are not shifted.
    """
    if shift_labels is None:
        return token_nll(logits, labels)
    if shift_labels.shape != logits.shape[:2]:
        raise ValueError(
            f"`shift_labels` has shape {tuple(shift_labels.shape)} but the logits cover {tuple(logits.shape[:2])}; "
            "they must be aligned position by position."
        )
    return sequence_nll(logits, shift_labels)


@dataclass
class TraceOutput(TextVAEOutput):
    """TRACE's forward output: exactly [`TextVAEOutput`] (shared with DELLA), whose `latent_output` holds the segment
    latents; the decoder pass's `hidden_states` and `attentions` are [`TextVAEOutput`]'s fields."""


class TraceModel(GPT2LatentDecoderMixin, TracePreTrainedModel):
    """GPT-2 backbone with TRACE's latent module; ``forward`` is the causal decoder pass given segment latents."""

    def __init__(self, config: TraceConfig):
        super().__init__(config)
        d = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_position_embeddings, d)
        self.drop = nn.Dropout(config.embd_pdrop)
        fuse = config.latent_injection == "lmf"
        self.h = nn.ModuleList([DellaBlock(config, layer_idx=i, fuse_latent=fuse) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.latent = TraceLatentModule(config)
        if config.latent_injection == "embedding":
            self.latent_proj = nn.Linear(config.latent_size, d, bias=False)
        self.post_init()

    def segment_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple:
        """Encoder pass and per-segment pooling: ``h`` ``(batch, K, d)``, a validity mask ``(batch, K)``, segment ids."""
        seg = segment_ids(input_ids, attention_mask, self.config)
        num = seg.max(dim=1).values + 1
        too_many = (num > self.config.max_segments).nonzero().flatten().tolist()
        if too_many:
            raise ValueError(
                f"Rows {too_many} have {num[too_many].tolist()} segments, more than max_segments="
                f"{self.config.max_segments}; raise `max_segments` or use longer segments."
            )
        if self.config.posterior_context == "full":
            inputs_embeds, position_ids, hidden = self._embed(input_ids, None, None, None)
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
            )
        else:  # the causal pass of the decoder, without cache and latents
            _, _, position_ids, hidden, mask = self._decoder_inputs(input_ids, attention_mask, None, False, None, None)
        # ln_f inside: O(1) features keep the posterior layer norm far from its epsilon
        hidden = self._decoder_blocks(
            hidden, lambda _: None, None, False, mask, position_ids, is_causal=self.config.posterior_context != "full"
        ).last_hidden_state
        k = int(num.max())
        onehot = nn.functional.one_hot(seg.clamp(min=0), k).to(hidden.dtype) * (seg >= 0).unsqueeze(-1)
        counts = onehot.sum(1)  # (batch, K)
        pooled = torch.einsum("btk,btd->bkd", onehot, hidden) / counts.clamp(min=1).unsqueeze(-1)
        return pooled, counts > 0, seg

    def innovations(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior offsets of each segment from its features: standardised mean offset and log-variance offset."""
        cfg = self.config
        lat = self.latent
        if cfg.residual_posterior:
            delta = cfg.posterior_ln_gain * lat.posterior_norm(lat.posterior_mean(features))
        else:
            delta = lat.posterior_mean(features)
        dlogvar = lat.posterior_logvar(features)
        if cfg.latent_clamp is not None:
            dlogvar = dlogvar.clamp(-cfg.latent_clamp, cfg.latent_clamp)
        return delta, dlogvar

    def latent_chain(
        self,
        features: torch.Tensor | None,
        valid: torch.Tensor | None = None,
        batch_size: int | None = None,
        num_segments: int | None = None,
        mode: str | None = None,
        noise: torch.Tensor | None = None,
        use_mean: bool = False,
        temperature: float = 1.0,
    ) -> DellaLatentOutput:
        """Draw z_1..z_K from the posterior (``features`` given) or the prior.

        ``mode`` (``"parallel"``/``"sequential"``, default ``config.training_mode``) only matters for the posterior.
        ``noise`` fixes the standard-normal draws, shape ``(batch, K, latent_size)``.
        """
        cfg = self.config
        lat = self.latent
        w = lat.transition()
        p_logvar = lat.prior_logvar
        p_std = torch.exp(0.5 * p_logvar)
        if features is None:  # prior: z_k = W z_{k-1} + sigma_p eps
            k = num_segments if num_segments is not None else cfg.max_segments
            eps = noise if noise is not None else torch.randn(batch_size, k, cfg.latent_size, device=w.device)
            z_prev = w.new_zeros(batch_size, cfg.latent_size)
            zs, means = [], []
            for i in range(k):
                mean = z_prev @ w.T
                z = mean if use_mean else mean + temperature * p_std * eps[:, i]
                zs.append(z)
                means.append(mean)
                z_prev = z
            means = torch.stack(means, 1)
            return DellaLatentOutput(
                latents=torch.stack(zs, 1), prior_mean=means, prior_logvar=p_logvar.expand_as(means)
            )
        batch, k, _ = features.shape
        delta, dlogvar = self.innovations(features)
        q_logvar = (p_logvar + dlogvar) if cfg.residual_posterior else dlogvar
        eps = noise if noise is not None else torch.randn_like(delta)
        offset = p_std * delta if cfg.residual_posterior else delta
        sample = 0.0 if use_mean else temperature * torch.exp(0.5 * q_logvar) * eps
        if valid is not None:
            keep = valid.unsqueeze(-1).to(delta.dtype)
            offset, sample = offset * keep, sample * keep
        mode = mode or cfg.training_mode
        if not cfg.residual_posterior:
            z = offset + sample  # the posterior is not recurrent: nothing to unroll
            prev = torch.cat([z.new_zeros(batch, 1, cfg.latent_size), z[:, :-1]], 1)
            prior_mean = prev @ w.T
            q_mean = offset
        elif mode == "parallel":
            e = offset + sample
            # z_k = e_k + W sum_{j<k} e_j, exact iff W^2 = W
            prefix = torch.cumsum(e, dim=1) - e
            z = e + prefix @ w.T
            prev = torch.cat([z.new_zeros(batch, 1, cfg.latent_size), z[:, :-1]], 1)
            prior_mean = prev @ w.T
            q_mean = prior_mean + offset
        else:
            z_prev = delta.new_zeros(batch, cfg.latent_size)
            zs, pms = [], []
            for i in range(k):
                pm = z_prev @ w.T
                z_i = pm + offset[:, i] + (sample[:, i] if not isinstance(sample, float) else 0.0)
                zs.append(z_i)
                pms.append(pm)
                z_prev = z_i
            z, prior_mean = torch.stack(zs, 1), torch.stack(pms, 1)
            q_mean = prior_mean + offset
        return DellaLatentOutput(
            latents=z,
            prior_mean=prior_mean,
            prior_logvar=p_logvar.expand_as(prior_mean),
            posterior_mean=q_mean,
            posterior_logvar=q_logvar,
        )

    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        latent_index: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""Causal decoder pass given segment latents.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): the tokens (or `inputs_embeds`).
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*): 1 for real tokens, 0 for padding.
            latents (`torch.FloatTensor` of shape `(batch, K, latent_size)`, *optional*): segment latents; without
                them the pass is plain GPT-2.
            latent_index (`torch.LongTensor` of shape `(batch, seq)`, *optional*): which latent each position uses;
                computed from `input_ids` (``"separator"`` segmentation) or the positions (``"fixed"``) when omitted.
            cache (`Cache`, *optional*), use_cache (`bool`, *optional*), position_ids (`torch.LongTensor`,
                *optional*), inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, hidden_size)`, *optional*):
                as in GPT-2. `output_hidden_states` / `output_attentions` / `return_dict` are honoured.
        """
        cache, use_cache, position_ids, hidden, causal_mask = self._decoder_inputs(
            input_ids, attention_mask, cache, use_cache, position_ids, inputs_embeds
        )
        token_latent = None
        if latents is not None:
            if latent_index is None:
                latent_index = compute_latent_index(input_ids, self.config, position_ids.expand(hidden.shape[:2]))
            index = latent_index.clamp(max=latents.shape[1] - 1)
            token_latent = torch.gather(latents, 1, index.unsqueeze(-1).expand(-1, -1, latents.shape[-1]))
            if self.config.latent_injection == "embedding":
                hidden = hidden + self.latent_proj(token_latent)
                token_latent = None
        return self._decoder_blocks(
            hidden, lambda _: token_latent, cache, use_cache, causal_mask, position_ids, **kwargs
        )


class TraceForCausalLM(TracePreTrainedModel, GenerationMixin):
    """TRACE with a language-modelling head (reconstructed from the abstract; see [`TraceConfig`]).

    Example:

    ```python
    >>> cfg = TraceConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=2, latent_size=8, separator_token_ids=[5])
    >>> model = TraceForCausalLM(cfg)
    >>> out = model(ids, labels=ids)  # ELBO loss; out.kl_per_group: one KL per segment
    >>> z = model.sample_latents(2)  # a chain of max_segments latents from the recurrent prior
    >>> model.generate(ids[:, :1], latents=z, max_new_tokens=20, do_sample=True)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: TraceConfig):
        super().__init__(config)
        self.transformer = TraceModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.kl_weight = 1.0
        self.post_init()

    def encode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        use_mean: bool = False,
        mode: str | None = None,
    ) -> DellaLatentOutput:
        """Posterior segment latents of a text, shape ``(batch, K, latent_size)`` (K = most segments in the batch)."""
        check_text_inputs(input_ids, attention_mask, "TraceForCausalLM.encode")
        feats, valid, _ = self.transformer.segment_features(input_ids, attention_mask)
        return self.transformer.latent_chain(feats, valid, use_mean=use_mean, mode=mode)

    def sample_latents(
        self, batch_size: int = 1, num_segments: int | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """A chain of latents from the recurrent prior, ``(batch_size, num_segments or max_segments, latent_size)``."""
        return self.transformer.latent_chain(
            None, batch_size=batch_size, num_segments=num_segments, temperature=temperature
        ).latents

    @classmethod
    def from_backbone(cls, path: str, **config_kwargs) -> TraceForCausalLM:
        """Build TRACE with its backbone initialised from a GPT-2 checkpoint (see `DellaForCausalLM.from_backbone`)."""
        return load_gpt2_backbone(cls, TraceConfig, path, **config_kwargs)[0]

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        latents: torch.Tensor | None = None,
        latent_index: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        kl_weight: float | None = None,
        use_mean: bool = False,
        training_mode: str | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> TraceOutput:
        r"""Encode (unless ``latents`` is given), decode, and compute the ELBO loss when ``labels`` are given.

        Args:
            labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): next-token targets, shifted inside
                (``-100`` is ignored).
            shift_labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): targets already aligned with the
                logits (sequence-parallel training); they replace `labels` in the reconstruction term.
            latents (`torch.FloatTensor` of shape `(batch, K, latent_size)`, *optional*): decode with these latents
                instead of encoding the text (then the loss has no KL term).
            inputs_embeds (`torch.FloatTensor`, *optional*): instead of `input_ids`; the posterior needs the tokens,
                so `latents` must be given with it.
            training_mode (`str`, *optional*): overrides ``config.training_mode`` (``"parallel"`` /
                ``"sequential"``) for this call.
            kl_weight (`float`, *optional*), use_mean (`bool`, *optional*, defaults to `False`): the KL weight
                (defaults to ``self.kl_weight``) and whether to use the posterior means instead of samples.

        The loss adds ``idempotent_penalty * ||W^2 - W||_F^2`` for a free transition. `return_dict`,
        `output_hidden_states` and `output_attentions` are honoured (decoder pass).
        """
        latent_out = valid = None
        if latents is None:
            if input_ids is None and inputs_embeds is not None:
                raise ValueError(
                    "TraceForCausalLM.forward with `inputs_embeds` needs `latents`: the posterior segments the text "
                    "by its tokens. Encode first (`model.encode(input_ids)`) or pass `input_ids`."
                )
            check_text_inputs(input_ids, attention_mask, "TraceForCausalLM.forward")
            feats, valid, _ = self.transformer.segment_features(input_ids, attention_mask)
            latent_out = self.transformer.latent_chain(feats, valid, use_mean=use_mean, mode=training_mode)
            latents = latent_out.latents
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            latents=latents,
            latent_index=latent_index,
            cache=cache,
            use_cache=use_cache,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(out.last_hidden_state)
        # every field is set at construction: ModelOutput only tuples fields that were given to __init__
        result = {
            "logits": logits,
            "cache": out.cache,
            "latent_output": latent_out,
            "hidden_states": out.hidden_states,
            "attentions": out.attentions,
        }
        if latent_out is not None:
            result.update(latent_kl_terms(latent_out, self.config.kl_reduction, valid))
        if labels is not None or shift_labels is not None:
            result["rec_loss"], result["num_tokens"] = trace_token_nll(logits, labels, shift_labels)
            loss = result["rec_loss"].mean()
            if latent_out is not None:
                beta = self.kl_weight if kl_weight is None else kl_weight
                # free bits per segment position: batch-mean KL over the rows that have that segment
                kl_term = kl_loss_with_free_bits(
                    result["kl_per_group"], self.config.kl_reduction, self.config.free_bits, valid=valid
                )
                loss = loss + beta * kl_term
                if self.config.transition == "free" and self.config.idempotent_penalty > 0:
                    loss = loss + self.config.idempotent_penalty * self.transformer.latent.idempotence_gap()
            result["loss"] = loss
        return TraceOutput(**result)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, inputs_embeds=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, inputs_embeds=inputs_embeds, **kwargs
        )
        if self.config.segmentation == "separator":
            # the latent of a new position depends on the separators generated so far: compute it on the full
            # sequence (the prompt must be given as tokens for that)
            step = model_inputs.get("input_ids")
            if step is None:
                step = model_inputs["inputs_embeds"]
            index = compute_latent_index(input_ids, self.config)
            model_inputs["latent_index"] = index[:, index.shape[1] - step.shape[1] :]
        # "fixed" segmentation: the forward pass derives the index from the positions, which the cache offsets
        return model_inputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        latents: torch.Tensor | None = None,
        temperature_latent: float = 1.0,
        **kwargs,
    ):
        """`GenerationMixin.generate` with segment latents: given (e.g. from :meth:`encode`, to reconstruct) or drawn
        from the recurrent prior. Each new token uses the latent of the segment it starts or continues."""
        inputs_embeds = kwargs.get("inputs_embeds")
        if input_ids is None and inputs_embeds is None:
            input_ids = bos_prompt(self, 1 if latents is None else latents.shape[0])
        batch_size = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
        if latents is None:
            latents = self.sample_latents(batch_size, temperature=temperature_latent)
        elif latents.shape[0] != batch_size:
            raise ValueError(
                f"`latents` has batch size {latents.shape[0]} but the prompt has {batch_size}; they must match."
            )
        return super().generate(input_ids=input_ids, latents=latents, **kwargs)


__all__ = [
    "TraceOutput",
    "TracePreTrainedModel",
    "TraceModel",
    "TraceForCausalLM",
    "segment_ids",
    "compute_latent_index",
    "trace_token_nll",
]
