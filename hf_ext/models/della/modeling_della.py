"""DELLA: a variational Transformer with layer-wise latent variables (Hu et al., NAACL 2022).

One GPT-2 backbone serves twice: a bidirectional encoder pass (no causal mask, no latents) gives each layer's token
states, which are pooled into x^(l); a chain of per-layer latents z_l ~ q(z_l | z_<l, x^(l)) is drawn bottom-up
(paper Eq. 7-8); a causal decoder pass fuses z_l into layer l's value vectors with a low-rank tensor product
(Eq. 9, Liu et al. 2018 LMF). The prior p(z_l | z_<l) follows the same recurrent state. Every difference from the
official code (``OpenVLG/DELLA``) is a flag of [`DellaConfig`]; [`DellaConfig.from_original_defaults`] sets them all
("official mode", tested against fixtures made by running the original code), and
``convert_della_original_to_hf`` maps the original's checkpoints.

This module imports only torch, transformers, its own folder and the shared ``..text_vae_utils``, so it also works as
Hub remote code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block, eager_attention_forward
from transformers.pytorch_utils import Conv1D
from transformers.utils import ModelOutput, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..text_vae_utils import (
    GPT2LatentDecoderMixin,
    bos_prompt,
    check_text_inputs,
    gaussian_kl,
    gaussian_log_prob,
    kl_loss_with_free_bits,
    latent_kl_terms,
    load_gpt2_backbone,
    sequence_nll,
    token_nll,
)
from .configuration_della import DellaConfig

logger = logging.get_logger(__name__)

# ------------------------------------------------------------------------------------------------- building blocks


class DellaLowRankFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018) of a value vector v and a latent z, DELLA Eq. 9.

    ``form="per_rank"``: ``out = sum_j w_j * (W_v^j [v; 1]) * (W_z^j [z; 1]) + b`` (Liu et al.). The constant 1
    appended to each input keeps the unimodal terms, as in the official code.
    ``form="summed_factors"``: ``out = (sum_j W_v^j [v; 1]) * (sum_j W_z^j [z; 1])``, what the official code computes
    (each factor summed over the rank before the product: rank 1 in effect; no rank weights, no bias).
    ``latent`` broadcasts over positions, shape ``(batch, 1 or seq, p)``.
    """

    def __init__(self, hidden_size: int, latent_size: int, rank: int, form: str = "per_rank"):
        super().__init__()
        self.form = form
        self.value_factor = nn.Parameter(torch.empty(rank, hidden_size + 1, hidden_size))
        self.latent_factor = nn.Parameter(torch.empty(rank, latent_size + 1, hidden_size))
        if form == "per_rank":
            self.rank_weight = nn.Parameter(torch.empty(rank))
            self.bias = nn.Parameter(torch.empty(hidden_size))

    def forward(self, value: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        v = torch.cat([value, value.new_ones(*value.shape[:-1], 1)], dim=-1)
        z = torch.cat([latent, latent.new_ones(*latent.shape[:-1], 1)], dim=-1)
        if self.form == "summed_factors":
            return (v @ self.value_factor.sum(0)) * (z @ self.latent_factor.sum(0))
        fv = torch.einsum("btd,rdh->rbth", v, self.value_factor)
        fz = torch.einsum("btp,rph->rbth", z, self.latent_factor)
        return torch.einsum("r,rbth->bth", self.rank_weight, fv * fz) + self.bias


class DellaPooler(nn.Module):
    """Pools a layer's token states ``(batch, seq, d)`` into one vector per sequence.

    ``"attention"`` is the official ``AverageSelfAttention`` (score = act(h . w), softmax over positions; the official
    ``act`` is ``gelu_new``); the official code pools pad positions too, which ``mask_padding=False`` reproduces.
    """

    def __init__(self, hidden_size: int, mode: str, mask_padding: bool, activation: str = "gelu_new"):
        super().__init__()
        self.mode = mode
        self.mask_padding = mask_padding
        self.act = ACT2FN[activation]
        if mode == "attention":
            self.weight = nn.Parameter(torch.empty(hidden_size))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None or not self.mask_padding:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        mask = mask.bool()
        if self.mode == "attention":
            scores = self.act(hidden @ self.weight).masked_fill(~mask, torch.finfo(hidden.dtype).min)
            return (torch.softmax(scores, dim=-1).unsqueeze(-1) * hidden).sum(1)
        if self.mode == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        if self.mode == "first":
            index = torch.where(mask, positions, hidden.shape[1]).min(1).values
        else:  # last
            index = torch.where(mask, positions, -1).max(1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class DellaAttention(GPT2Attention):
    """GPT-2 self-attention whose value vectors can be fused with a latent (DELLA Eq. 9).

    Q and K are untouched. With a KV cache the values are stored *after* fusion, which is exact because the latent of
    a position never changes once that position is processed.
    """

    def __init__(self, config, layer_idx: int | None = None, fuse_latent: bool = False):
        super().__init__(config, is_cross_attention=False, layer_idx=layer_idx)
        self.value_fusion = getattr(config, "value_fusion", "residual")
        self.lmf = (
            DellaLowRankFusion(
                config.hidden_size,
                config.latent_size,
                config.latent_lmf_rank,
                form=getattr(config, "lmf_form", "per_rank"),
            )
            if fuse_latent
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        if latent is not None and self.lmf is not None:
            fused = self.lmf(value, latent)
            value = value + fused if self.value_fusion == "residual" else fused
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        kwargs.pop("use_cache", None)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attn_dropout.p if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*attn_output.shape[:-2], -1).contiguous()
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


class DellaBlock(GPT2Block):
    """A GPT-2 block (same parameter names, so GPT-2 checkpoints load) whose attention can fuse a latent."""

    def __init__(self, config, layer_idx: int | None = None, fuse_latent: bool = False):
        if config.add_cross_attention:
            raise ValueError("DELLA/TRACE blocks do not support `add_cross_attention=True`; set it to False.")
        super().__init__(config, layer_idx=layer_idx)
        self.attn = DellaAttention(config, layer_idx=layer_idx, fuse_latent=fuse_latent)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(
            self.ln_1(hidden_states), cache=cache, attention_mask=attention_mask, latent=latent, **kwargs
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class DellaLatentLayer(nn.Module):
    """Layer l's latent machinery: pooler, recurrent summary cell (Eq. 7), prior and posterior heads (Eq. 8)."""

    def __init__(self, config: DellaConfig):
        super().__init__()
        p, d = config.latent_size, config.hidden_size
        self.pooler = DellaPooler(d, config.pooling, config.pooling_mask_padding, config.pooler_activation)
        self.state_hh = nn.Linear(p, p)
        self.state_ih = nn.Linear(p, p)
        self.prior = nn.Linear(p + (d if config.conditional else 0), 2 * p)
        self.posterior = nn.Linear(p + d, 2 * p)


# ---------------------------------------------------------------------------------------------------------- outputs


@dataclass
class DellaLatentOutput(ModelOutput):
    """Latents and the Gaussian parameters that produced them, stacked over latent layers / segments.

    Args:
        latents (`torch.FloatTensor` of shape `(batch, num_latents, latent_size)`): the sampled (or mean) latents.
        prior_mean, prior_logvar (`torch.FloatTensor` of shape `(batch, num_latents, latent_size)`):
            parameters of p(z_l | z_<l), evaluated at the drawn lower latents.
        posterior_mean, posterior_logvar (`torch.FloatTensor`, *optional*): parameters of q(z_l | z_<l, x);
            `None` when the latents were drawn from the prior.
        states (`torch.FloatTensor` of shape `(batch, num_latents, latent_size)`, *optional*): the recurrent state
            h_l of each layer (input of its prior and posterior networks).
        prior_mean_raw, prior_logvar_raw, posterior_mean_raw, posterior_logvar_raw (`torch.FloatTensor`, *optional*):
            the networks' outputs before ``latent_clamp`` (the official active-units count reads the unclamped
            posterior means). DELLA only.
    """

    latents: torch.FloatTensor | None = None
    prior_mean: torch.FloatTensor | None = None
    prior_logvar: torch.FloatTensor | None = None
    posterior_mean: torch.FloatTensor | None = None
    posterior_logvar: torch.FloatTensor | None = None
    states: torch.FloatTensor | None = None
    prior_mean_raw: torch.FloatTensor | None = None
    prior_logvar_raw: torch.FloatTensor | None = None
    posterior_mean_raw: torch.FloatTensor | None = None
    posterior_logvar_raw: torch.FloatTensor | None = None


@dataclass
class TextVAEOutput(ModelOutput):
    """Output of a text VAE's forward pass (shared by DELLA and TRACE).

    Args:
        loss (`torch.FloatTensor`, *optional*): ``rec_loss.mean() + kl_weight * KL`` (after free bits), returned when
            `labels` are given and the latents came from the posterior.
        logits (`torch.FloatTensor` of shape `(batch, seq, vocab)`): next-token logits.
        cache (`Cache`, *optional*): the KV cache.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`): the decoder
            pass's embeddings and the output of every block (the last after ``ln_f``), as GPT-2's.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`): the decoder
            pass's attention weights of every layer.
        rec_loss (`torch.FloatTensor` of shape `(batch,)`, *optional*): -log p(x | z), summed over target tokens.
        kl (`torch.FloatTensor` of shape `(batch,)`, *optional*): the KL term per sequence, reduced over latent
            groups as the config says (`kl_reduction`).
        kl_per_group (`torch.FloatTensor` of shape `(batch, num_latents)`, *optional*): KL of each layer / segment.
        log_prior, log_posterior (`torch.FloatTensor` of shape `(batch,)`, *optional*): log p(z) and log q(z | x) of
            the drawn latents, summed over all groups (what importance-weighted PPL needs).
        num_tokens (`torch.LongTensor` of shape `(batch,)`, *optional*): number of target tokens per sequence.
        latent_output ([`DellaLatentOutput`], *optional*): the latents and their Gaussian parameters.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    rec_loss: torch.FloatTensor | None = None
    kl: torch.FloatTensor | None = None
    kl_per_group: torch.FloatTensor | None = None
    log_prior: torch.FloatTensor | None = None
    log_posterior: torch.FloatTensor | None = None
    num_tokens: torch.LongTensor | None = None
    latent_output: DellaLatentOutput | None = None


# ----------------------------------------------------------------------------------------------------------- models


class DellaPreTrainedModel(PreTrainedModel):
    config: DellaConfig
    config_class = DellaConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DellaBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Conv1D):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        if isinstance(module, GPT2Attention):
            init.normal_(module.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        elif isinstance(module, DellaLowRankFusion):
            init.normal_(module.value_factor, mean=0.0, std=std)
            init.normal_(module.latent_factor, mean=0.0, std=std)
            residual = getattr(self.config, "value_fusion", "residual") == "residual"
            if module.form == "summed_factors":  # no rank weights, no bias
                if residual:  # fused term starts at zero: the (pretrained) value path is intact at step 0
                    init.zeros_(module.latent_factor)
            else:
                init.zeros_(module.bias)
                if residual:
                    init.zeros_(module.rank_weight)
                else:
                    init.normal_(module.rank_weight, mean=0.0, std=std)
        elif isinstance(module, DellaPooler) and hasattr(module, "weight"):
            init.normal_(module.weight, mean=0.0, std=std)


class DellaModel(GPT2LatentDecoderMixin, DellaPreTrainedModel):
    """The shared GPT-2 backbone plus DELLA's latent layers; returns hidden states (no LM head).

    ``forward`` runs the *decoder* pass given latents (or a plain GPT-2 pass without them); :meth:`encoder_states`
    runs the bidirectional encoder pass; :meth:`latent_chain` draws the layer-wise latents.
    """

    _can_record_outputs = {
        "hidden_states": DellaBlock,
        "attentions": OutputRecorder(DellaAttention, index=1),
    }

    def __init__(self, config: DellaConfig):
        super().__init__(config)
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        latent_ids = config.latent_layer_ids
        fuse = config.latent_injection == "lmf"
        self.h = nn.ModuleList(
            [DellaBlock(config, layer_idx=i, fuse_latent=fuse and i in latent_ids) for i in range(config.n_layer)]
        )
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        # the official get_prior indexes the latent networks from 0: it then needs networks for every layer (as the
        # original's checkpoints hold), module i belonging to layer i
        self._all_layer_networks = config.generation_prior_networks == "from_first" and latent_ids != list(
            range(len(latent_ids))
        )
        n_networks = config.n_layer if self._all_layer_networks else len(latent_ids)
        self.latent_layers = nn.ModuleList([DellaLatentLayer(config) for _ in range(n_networks)])
        if config.latent_injection == "embedding":
            self.latent_proj = nn.Linear(config.latent_size * len(latent_ids), self.embed_dim, bias=False)
        self.post_init()

    def latent_networks(self, prior_only: bool = False) -> list[tuple[DellaLatentLayer, int]]:
        """``(networks, transformer layer)`` of each latent layer, bottom-up.

        With ``generation_prior_networks="from_first"`` and ``prior_only=True`` (sampling from the prior), the k-th
        latent layer uses the networks of index k and the pooled source of layer k (the official ``get_prior``).
        """
        ids = self.config.latent_layer_ids
        if not self._all_layer_networks:
            return list(zip(self.latent_layers, ids))
        if prior_only:
            return [(self.latent_layers[k], k) for k in range(len(ids))]
        return [(self.latent_layers[i], i) for i in ids]

    def encoder_states(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Bidirectional encoder pass (no causal mask, no latents): the output of every block, ``(batch, seq, d)``."""
        inputs_embeds, position_ids, hidden = self._embed(input_ids, inputs_embeds, None, None)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        hidden = self.drop(hidden)
        states = []
        for block in self.h:
            hidden = block(hidden, attention_mask=mask, position_ids=position_ids, is_causal=False)
            states.append(hidden)
        return states

    def latent_chain(
        self,
        batch_size: int,
        posterior_features: list[torch.Tensor] | None = None,
        condition_features: list[torch.Tensor] | None = None,
        latents: torch.Tensor | None = None,
        use_mean: bool = False,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
    ) -> DellaLatentOutput:
        """Draw z_1..z_L bottom-up (Eq. 7-8), from the posterior if ``posterior_features`` is given, else the prior.

        Args:
            batch_size (`int`): number of sequences.
            posterior_features (`list[torch.Tensor]`, *optional*): pooled encoder state x^(l) per latent layer.
            condition_features (`list[torch.Tensor]`, *optional*): pooled source state c^(l) (conditional variant).
            latents (`torch.Tensor`, *optional*): evaluate the densities at these latents instead of sampling.
            use_mean (`bool`, *optional*, defaults to `False`): take each Gaussian's mean instead of a sample.
            temperature (`float`, *optional*, defaults to 1.0): scales the sampling noise.
            noise (`torch.Tensor` of shape `(batch, num_latent_layers, latent_size)`, *optional*): the standard-normal
                draws of the reparameterisation, ``z_l = mean + temperature * std * noise[:, l]`` (drawn here if
                omitted). Fixes the sample for reproducibility, or to compare with another implementation.
        """
        cfg = self.config
        ref = self.wte.weight
        p = cfg.latent_size
        if cfg.conditional and condition_features is None:
            raise ValueError("This DELLA model is conditional: pass the source (`source_mask`) to draw latents.")
        networks = self.latent_networks(prior_only=posterior_features is None)
        if noise is not None and noise.shape != (batch_size, len(networks), p):
            raise ValueError(
                f"`noise` must have shape (batch, num_latent_layers, latent_size) = ({batch_size}, {len(networks)}, "
                f"{p}), got {tuple(noise.shape)}."
            )
        state = ref.new_zeros(batch_size, p)
        z_prev = ref.new_zeros(batch_size, p)
        keys = ("z", "pm", "plv", "qm", "qlv", "h", "pm_raw", "plv_raw", "qm_raw", "qlv_raw")
        out = {k: [] for k in keys}
        clamp = cfg.latent_clamp

        def clamped(t):
            return t if clamp is None else t.clamp(-clamp, clamp)

        for i, (layer, _) in enumerate(networks):
            state = torch.tanh(layer.state_hh(state) + layer.state_ih(z_prev))
            if i == 0 and cfg.first_layer_prior == "standard" and not cfg.conditional:
                p_raw, plv_raw = ref.new_zeros(batch_size, p), ref.new_zeros(batch_size, p)
            else:
                prior_in = state if not cfg.conditional else torch.cat([state, condition_features[i]], dim=-1)
                p_raw, plv_raw = layer.prior(prior_in).chunk(2, dim=-1)
            p_mean, p_logvar = clamped(p_raw), clamped(plv_raw)
            mean, logvar = p_mean, p_logvar
            if posterior_features is not None:
                q_raw, qlv_raw = layer.posterior(torch.cat([state, posterior_features[i]], dim=-1)).chunk(2, dim=-1)
                mean, logvar = clamped(q_raw), clamped(qlv_raw)
                for k, v in (("qm", mean), ("qlv", logvar), ("qm_raw", q_raw), ("qlv_raw", qlv_raw)):
                    out[k].append(v)
            if latents is not None:
                z = latents[:, i]
            elif use_mean:
                z = mean
            else:
                eps = noise[:, i].to(mean.dtype) if noise is not None else torch.randn_like(mean)
                z = mean + temperature * torch.exp(0.5 * logvar) * eps
            for k, v in (("z", z), ("pm", p_mean), ("plv", p_logvar), ("h", state), ("pm_raw", p_raw)):
                out[k].append(v)
            out["plv_raw"].append(plv_raw)
            z_prev = z
        stacked = {k: torch.stack(v, 1) if v else None for k, v in out.items()}
        return DellaLatentOutput(
            latents=stacked["z"],
            prior_mean=stacked["pm"],
            prior_logvar=stacked["plv"],
            posterior_mean=stacked["qm"],
            posterior_logvar=stacked["qlv"],
            states=stacked["h"],
            prior_mean_raw=stacked["pm_raw"],
            prior_logvar_raw=stacked["plv_raw"],
            posterior_mean_raw=stacked["qm_raw"],
            posterior_logvar_raw=stacked["qlv_raw"],
        )

    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Causal decoder pass. ``latents``: ``(batch, num_latent_layers, latent_size)``; ``None`` runs plain GPT-2.

        Accepts `output_hidden_states`, `output_attentions` and `return_dict` as transformers models do.
        """
        kwargs.pop("output_attentions", None)
        kwargs.pop("output_hidden_states", None)
        cache, use_cache, position_ids, hidden, causal_mask = self._decoder_inputs(
            input_ids, attention_mask, cache, use_cache, position_ids, inputs_embeds
        )
        layer_latent = {}
        if latents is not None:
            ids = self.config.latent_layer_ids
            if latents.dim() != 3 or latents.shape[1:] != (len(ids), self.config.latent_size):
                raise ValueError(
                    f"`latents` must have shape (batch, {len(ids)}, {self.config.latent_size}), got "
                    f"{tuple(latents.shape)}."
                )
            if self.config.latent_injection == "embedding":
                hidden = hidden + self.latent_proj(latents.flatten(1)).unsqueeze(1)
            else:
                layer_latent = {layer: latents[:, j : j + 1] for j, layer in enumerate(ids)}
        return self._decoder_blocks(hidden, layer_latent.get, cache, use_cache, causal_mask, position_ids, **kwargs)


def _right_pad_source(input_ids: torch.Tensor, source_mask: torch.Tensor, pad_id: int):
    """Cut each row's source (``source_mask`` = 1, a prefix) out of ``input_ids``, right-padded to the longest source."""
    lengths = source_mask.sum(-1)
    prefix = torch.arange(source_mask.shape[1], device=input_ids.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(prefix, source_mask.bool()):
        raise ValueError(
            "condition_encoding='separate' reads the source as a prefix of `input_ids`, but `source_mask` is not a "
            "prefix in some rows (left padding?). Right-pad the batch, or pass the source as `condition_ids`."
        )
    width = int(lengths.max())
    positions = torch.arange(width, device=input_ids.device).unsqueeze(0)
    mask = (positions < lengths.unsqueeze(1)).long()
    ids = input_ids[:, :width].masked_fill(mask == 0, pad_id)
    return ids, mask


class DellaForCausalLM(DellaPreTrainedModel, GenerationMixin):
    """DELLA with a language-modelling head: trains on the ELBO, generates from prior or posterior latents.

    Example:

    ```python
    >>> from hf_ext.models.della import DellaConfig, DellaForCausalLM
    >>> model = DellaForCausalLM(DellaConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=2, latent_size=8))
    >>> ids = torch.randint(0, 100, (2, 7))
    >>> out = model(ids, labels=ids)  # out.loss = rec + kl_weight * KL
    >>> z = model.sample_latents(2)  # from the prior
    >>> text = model.generate(ids[:, :1], latents=z, max_new_tokens=5, do_sample=True)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: DellaConfig):
        super().__init__(config)
        self.transformer = DellaModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.bow_weight > 0:
            if config.bow_head == "lm_head":  # official: lm_head(mlp_bow(z of the last latent layer))
                self.bow_head = nn.Linear(config.latent_size, config.n_embd)
            else:
                self.bow_head = nn.Linear(config.latent_size * len(config.latent_layer_ids), config.vocab_size)
        # beta of the KL term; a training callback (hf_ext.trainers.text_vae.CyclicalBetaCallback) updates it
        self.kl_weight = 1.0
        self.post_init()

    # ------------------------------------------------------------------------------------------------ public API

    def encode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        use_mean: bool = False,
        condition_ids: torch.LongTensor | None = None,
        condition_attention_mask: torch.Tensor | None = None,
        latent_noise: torch.Tensor | None = None,
    ) -> DellaLatentOutput:
        """Posterior latents of a text (to reconstruct or interpolate it): ``q(z | x)``, sampled or its mean.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the text (source + target when conditional).
            attention_mask (`torch.Tensor`, *optional*): 1 for real tokens, 0 for padding.
            source_mask (`torch.Tensor`, *optional*): conditional variant only, 1 on source tokens.
            use_mean (`bool`, *optional*, defaults to `False`): return the posterior means instead of samples.
            condition_ids (`torch.LongTensor`, *optional*): conditional variant only, the source as its own
                right-padded tensor (the official layout); overrides ``source_mask``.
            condition_attention_mask (`torch.Tensor`, *optional*): mask of ``condition_ids``.
            latent_noise (`torch.Tensor` of shape `(batch, num_latent_layers, latent_size)`, *optional*): the
                reparameterisation noise (see [`DellaModel.latent_chain`]).
        """
        check_text_inputs(input_ids, attention_mask, "DellaForCausalLM.encode")
        post, cond = self._features(input_ids, attention_mask, source_mask, condition_ids, condition_attention_mask)
        return self.transformer.latent_chain(
            input_ids.shape[0], posterior_features=post, condition_features=cond, use_mean=use_mean, noise=latent_noise
        )

    def sample_latents(
        self,
        batch_size: int = 1,
        source_ids: torch.LongTensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        latent_noise: torch.Tensor | None = None,
        return_latent_output: bool = False,
    ) -> torch.Tensor | DellaLatentOutput:
        """Draw latents from the prior p(z) (or p(z | c) with ``source_ids`` for the conditional variant).

        Args:
            batch_size (`int`, *optional*, defaults to 1): number of draws (unconditional model).
            source_ids (`torch.LongTensor`, *optional*): conditional model only, the right-padded sources.
            source_attention_mask (`torch.Tensor`, *optional*): their mask.
            temperature (`float`, *optional*, defaults to 1.0): scales the sampling noise.
            latent_noise (`torch.Tensor`, *optional*): the reparameterisation noise, `(batch, num_latents, p)`.
            return_latent_output (`bool`, *optional*, defaults to `False`): return the whole [`DellaLatentOutput`]
                (prior parameters and states) instead of the latents.

        Returns:
            `torch.Tensor` of shape `(batch_size, num_latent_layers, latent_size)`, or a [`DellaLatentOutput`].
        """
        cond = None
        if self.config.conditional:
            check_text_inputs(source_ids, source_attention_mask, "sample_latents (conditional DELLA)")
            batch_size = source_ids.shape[0]
            cond = self._condition_features(source_ids, source_attention_mask, prior_only=True)
        elif source_ids is not None:
            raise ValueError("`source_ids` is only used by a conditional DELLA (config.conditional=True).")
        out = self.transformer.latent_chain(
            batch_size, condition_features=cond, temperature=temperature, noise=latent_noise
        )
        return out if return_latent_output else out.latents

    @classmethod
    def from_backbone(cls, path: str, init_lm_head: bool = True, **config_kwargs) -> DellaForCausalLM:
        """Build a DELLA model whose backbone (``wte``, ``wpe``, blocks, ``ln_f``) is a GPT-2 checkpoint.

        Args:
            path (`str`): a local directory or Hub id of a `GPT2LMHeadModel` / `GPT2Model` checkpoint.
            init_lm_head (`bool`, *optional*, defaults to `True`): with an untied head
                (``tie_word_embeddings=False``), copy GPT-2's output embedding into it. The official code leaves it
                randomly initialised; pass `False` to reproduce that.
            config_kwargs: DELLA options (``latent_size=...``) overriding the defaults.
        """
        model, missing = load_gpt2_backbone(cls, DellaConfig, path, init_lm_head, **config_kwargs)
        logger.info("Initialised DELLA from %s; %d new latent parameters tensors.", path, len(missing))
        return model

    # -------------------------------------------------------------------------------------------------- internals

    def _condition_features(self, source_ids, source_attention_mask, prior_only: bool = False) -> list[torch.Tensor]:
        states = self.transformer.encoder_states(source_ids, source_attention_mask)
        networks = self.transformer.latent_networks(prior_only=prior_only)
        return [layer.pooler(states[i], source_attention_mask) for layer, i in networks]

    def _features(
        self,
        input_ids,
        attention_mask,
        source_mask=None,
        condition_ids=None,
        condition_attention_mask=None,
        inputs_embeds=None,
    ):
        states = self.transformer.encoder_states(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        post = [layer.pooler(states[i], attention_mask) for layer, i in self.transformer.latent_networks()]
        cond = None
        if self.config.conditional:
            if condition_ids is not None:
                check_text_inputs(condition_ids, condition_attention_mask, "DELLA's condition (`condition_ids`)")
                return post, self._condition_features(condition_ids, condition_attention_mask)
            if source_mask is None:
                raise ValueError(
                    "A conditional DELLA needs `source_mask` (1 on source tokens) or `condition_ids` (the source as "
                    "its own padded tensor) in forward/encode."
                )
            if input_ids is None:
                raise ValueError("A conditional DELLA given `inputs_embeds` needs `condition_ids` for the source.")
            src_mask = source_mask if attention_mask is None else source_mask * attention_mask
            if (src_mask.sum(-1) == 0).any():
                raise ValueError("`source_mask` marks no source token in some rows; every example needs a source.")
            if self.config.condition_encoding == "separate":
                pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.config.eos_token_id
                if pad is None:
                    raise ValueError("condition_encoding='separate' pads the source: set `config.pad_token_id`.")
                cond = self._condition_features(*_right_pad_source(input_ids, src_mask, pad))
            else:
                # the source is encoded alone: its tokens may not attend to the target
                cond = self._condition_features(input_ids, src_mask)
        return post, cond

    def _bow_loss(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.bow_head == "lm_head":
            logits = self.lm_head(self.bow_head(latents[:, -1]))
        else:
            logits = self.bow_head(latents.flatten(1))
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.config.bow_shift_labels:
            labels = labels[:, 1:]
        target = labels.clamp(min=0)
        nll = -logp.gather(1, target) * (labels != -100)
        return nll.sum(1)

    def _ignore_pad_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        pad = self.config.pad_token_id
        if labels is None or not self.config.ignore_pad_token_in_loss or pad is None:
            return labels
        return labels.masked_fill(labels == pad, -100)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        latents: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        kl_weight: float | None = None,
        use_mean: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        condition_ids: torch.LongTensor | None = None,
        condition_attention_mask: torch.Tensor | None = None,
        latent_noise: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> TextVAEOutput:
        """Encode (unless ``latents`` is given), decode, and compute the ELBO loss when ``labels`` are given.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the text.
            attention_mask (`torch.Tensor`, *optional*): 1 for real tokens.
            labels (`torch.LongTensor`, *optional*): next-token targets, shifted inside the model (`-100` = ignored,
                e.g. padding or source; with ``config.ignore_pad_token_in_loss`` the pad id too).
            latents (`torch.Tensor`, *optional*): decode with these latents; skips the encoder and the KL.
            source_mask (`torch.Tensor`, *optional*): conditional variant, 1 on source tokens.
            kl_weight (`float`, *optional*): beta; defaults to ``self.kl_weight`` (set by the beta callback).
            use_mean (`bool`, *optional*, defaults to `False`): use posterior means instead of samples.
            inputs_embeds (`torch.Tensor` of shape `(batch, seq, n_embd)`, *optional*): instead of ``input_ids``, for
                both the encoder and the decoder pass.
            shift_labels (`torch.LongTensor`, *optional*): labels already aligned with the logits (not shifted
                again), as transformers' loss functions take them; used instead of ``labels``.
            condition_ids, condition_attention_mask (`torch.Tensor`, *optional*): conditional variant, the source as
                its own right-padded tensor (the official layout); overrides ``source_mask``.
            latent_noise (`torch.Tensor` of shape `(batch, num_latent_layers, latent_size)`, *optional*): the
                reparameterisation noise of the posterior sample.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0): compute logits for the last
                ``logits_to_keep`` positions only (0 = all), as GPT-2's; the loss needs all of them.
            kwargs: ``output_hidden_states``, ``output_attentions``, ``return_dict`` and attention kwargs.
        """
        latent_out = None
        if latents is None:
            if inputs_embeds is None:
                check_text_inputs(input_ids, attention_mask, "DellaForCausalLM.forward")
            post, cond = self._features(
                input_ids, attention_mask, source_mask, condition_ids, condition_attention_mask, inputs_embeds
            )
            batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            latent_out = self.transformer.latent_chain(
                batch_size, posterior_features=post, condition_features=cond, use_mean=use_mean, noise=latent_noise
            )
            latents = latent_out.latents
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            latents=latents,
            cache=cache,
            use_cache=use_cache,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        fields = latent_kl_terms(latent_out, self.config.kl_reduction) if latent_out is not None else {}
        loss = None
        if labels is not None or shift_labels is not None:
            if shift_labels is None:
                labels = self._ignore_pad_labels(labels)
                shift_labels = labels[:, 1:]
                shifted_logits = logits[:, :-1]
            else:
                shift_labels = self._ignore_pad_labels(shift_labels)
                labels = nn.functional.pad(shift_labels, (1, 0), value=-100)[:, :-1]
                shifted_logits = logits
            if shifted_logits.shape[1] != shift_labels.shape[1]:
                raise ValueError(
                    "The loss needs the logits of every position: leave `logits_to_keep` at 0 when passing labels."
                )
            fields["rec_loss"], fields["num_tokens"] = sequence_nll(shifted_logits, shift_labels)
            loss = fields["rec_loss"].mean()
            if latent_out is not None:
                beta = self.kl_weight if kl_weight is None else kl_weight
                kl_term = kl_loss_with_free_bits(
                    fields["kl_per_group"],
                    self.config.kl_reduction,
                    self.config.free_bits,
                    self.config.free_bits_reduction,
                )
                loss = loss + beta * kl_term
                if self.config.bow_weight > 0:
                    loss = loss + self.config.bow_weight * self._bow_loss(latents, labels).mean()
        return TextVAEOutput(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            latent_output=latent_out,
            **fields,
        )

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, **kwargs):
        """As `GenerationMixin`'s, with position ids recomputed from the whole attention mask at every step:
        ``cumsum(mask) - 1``, padding at 1 (what GPT-2 did under transformers 4.x and the official DELLA generates
        with), so right-padded prompts (a conditional DELLA's sources) continue at the right positions."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        if attention_mask is not None and attention_mask.dim() == 2 and "position_ids" in model_inputs:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids = position_ids.masked_fill(attention_mask == 0, 1)
            width = model_inputs["position_ids"].shape[-1]
            model_inputs["position_ids"] = position_ids[:, -width:].contiguous()
        return model_inputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        latents: torch.Tensor | None = None,
        temperature_latent: float = 1.0,
        **kwargs,
    ):
        """`GenerationMixin.generate` with latents: given ``latents`` (e.g. from :meth:`encode`) or drawn from the
        prior (for a conditional model, the prior given the prompt = source). Decoding uses the KV cache; beams and
        ``num_return_sequences`` expand the latents like any other model input.
        """
        embeds = kwargs.get("inputs_embeds")
        if input_ids is None and embeds is not None:  # a prompt given as embeddings
            if latents is None:
                if self.config.conditional:
                    raise ValueError("A conditional DELLA draws its latents from the source: pass `latents`.")
                latents = self.sample_latents(embeds.shape[0], temperature=temperature_latent)
            return super().generate(latents=latents, **kwargs)
        if input_ids is None:
            input_ids = bos_prompt(self, 1 if latents is None else latents.shape[0])
        if latents is None:
            if self.config.conditional:
                latents = self.sample_latents(
                    source_ids=input_ids,
                    source_attention_mask=kwargs.get("attention_mask"),
                    temperature=temperature_latent,
                )
            else:
                latents = self.sample_latents(input_ids.shape[0], temperature=temperature_latent)
        elif latents.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`latents` has batch size {latents.shape[0]} but `input_ids` has {input_ids.shape[0]}; they must match."
            )
        return super().generate(input_ids=input_ids, latents=latents, **kwargs)


class DellaForConditionalGeneration(DellaForCausalLM):
    """Conditional DELLA (paper Eq. 11-12) for source -> target tasks on a GPT-2 backbone: inputs are source and target
    concatenated; ``source_mask`` marks the source; labels should be -100 on the source (as the official
    ``WPDataset``). The prior of every layer sees the pooled source c^(l); generation prompts with the source.
    """

    def __init__(self, config: DellaConfig):
        if not config.conditional:
            config.conditional = True
        super().__init__(config)


__all__ = [
    "DellaPreTrainedModel",
    "DellaModel",
    "DellaForCausalLM",
    "DellaForConditionalGeneration",
    "DellaLatentOutput",
    "TextVAEOutput",
    "gaussian_kl",
    "gaussian_log_prob",
    "sequence_nll",
    "token_nll",
]
