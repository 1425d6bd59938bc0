"""CARE's attention regulariser: the ``"care"`` attention function, its fused softmax/entropy autograd and the
per-forward collector (Li et al., EMNLP 2022). The training side is :mod:`.care_config` and :mod:`.care_trainer`.

Paper: *Evade the Trap of Mediocrity: Promoting Diversity and Novelty in Text Generation via Concentrating Attention*,
Wenhao Li, Xiaoyuan Yi, Jinyi Hu, Maosong Sun, Xing Xie (arXiv:2211.07164). The paper adds to the maximum-likelihood
loss a regulariser that sharpens the attention distributions, "transparent to model structures".

> [!WARNING]
> **Reconstructed from the abstract.** Neither the paper's method section nor official code could be read (the
> official repository holds only a README). The loss implemented here is
>
>     L = L_MLE + λ · mean_{selected layers, heads, valid query rows} H(a_row)
>
> with ``H`` the Shannon entropy (``penalty="entropy"``) or the Rényi entropy of order α
> (``penalty="renyi"``, ``H_α(p) = log(Σ_j p_j^α) / (1 - α)``). Which attention modules, layers and heads are
> regularised, λ, a warm-up of λ, an optional target entropy (hinge) and a per-row normalisation by ``log(#keys)``
> are all configurable because the paper's exact choices are unknown.

How it works:

* :func:`care_attention_forward` is registered as the attention implementation ``"care"`` in transformers'
  ``AttentionInterface`` (and ``sdpa_mask`` as its mask builder in ``AttentionMaskInterface``), so it works for every
  model that dispatches through ``ALL_ATTENTION_FUNCTIONS`` (GPT-2, Llama, T5, BART, ...).
* Without a collector (inference, ``generate``, evaluation) it **is** SDPA: it calls transformers'
  ``sdpa_attention_forward`` with the same arguments, so outputs are bit-identical to ``attn_implementation="sdpa"``.
* With a :class:`CARECollector` passed in the forward call (``model(**batch, care_collector=collector)``;
  transformers threads ``**kwargs`` down to the attention function), a selected attention module computes its
  probabilities once (eager-style), uses them for the output *and* adds the penalty of its rows to the collector.
  There is no second forward pass and no ``output_attentions``.
* The collector is a per-forward object, not a global and not module state: concurrent forwards (threads, several
  models, gradient accumulation) never share penalty buffers. After :meth:`CARECollector.finalize` it is closed and
  ignores what later attention calls report, so the recomputation done by (non-reentrant) gradient checkpointing
  does not count twice. (Reentrant checkpointing runs the forward without autograd, so no penalty gradient could
  flow through it; use ``gradient_checkpointing_kwargs={"use_reentrant": False}``.)
"""

from __future__ import annotations

import math
import re
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "ATTENTION_TYPES",
    "CARE_ATTENTION",
    "COLLECTOR_KWARG",
    "PENALTIES",
    "AttentionSite",
    "CARECollector",
    "CAREPenaltyOutput",
    "CARERegularizer",
    "care_attention_forward",
    "enable_care_attention",
    "softmax_with_entropy",
]

CARE_ATTENTION = "care"
"""Name under which the CARE attention function is registered in ``AttentionInterface``."""

COLLECTOR_KWARG = "care_collector"
"""Forward keyword argument that carries the :class:`CARECollector` down to the attention function."""

PENALTIES = ("entropy", "renyi")
ATTENTION_TYPES = ("self", "encoder", "cross")

# Substrings of module names that mark cross-attention in transformers models (GPT-2 `crossattention`, BART/Whisper
# `encoder_attn`, T5 `EncDecAttention`, Mllama & co. `cross_attn`).
_CROSS_ATTENTION_MARKERS = ("crossattention", "encoder_attn", "encdecattention", "cross_attn")


@dataclass(frozen=True)
class AttentionSite:
    """Where an attention module sits in the model.

    Args:
        name (`str`): qualified module name (``model.named_modules()``).
        kind (`str`): ``"self"`` (decoder or decoder-only self-attention), ``"encoder"`` (encoder self-attention) or
            ``"cross"`` (decoder attention over encoder states).
        layer (`int`, *optional*): the module's ``layer_idx`` or, failing that, the first integer in its name.
    """

    name: str
    kind: str
    layer: int | None


def _classify(name: str, module: nn.Module) -> AttentionSite:
    lowered = name.lower()
    if any(marker in lowered for marker in _CROSS_ATTENTION_MARKERS):
        kind = "cross"
    elif lowered.startswith("encoder.") or ".encoder." in lowered:
        kind = "encoder"
    else:
        kind = "self"
    layer = getattr(module, "layer_idx", None)
    if not isinstance(layer, int):
        match = re.search(r"\.(\d+)(\.|$)", name)
        layer = int(match.group(1)) if match else None
    return AttentionSite(name=name, kind=kind, layer=layer)


@dataclass
class CAREPenaltyOutput:
    """What a :class:`CARECollector` gathered during one forward pass.

    Args:
        penalty (`torch.Tensor`): scalar, the mean penalty over the selected (module, head, valid query row) triples;
            differentiable. Zero (without graph) when nothing was selected.
        attention_entropy (`torch.Tensor`): scalar, detached mean Shannon entropy (nats) of the same rows.
        num_rows (`int`): number of (module, head, query row) triples averaged.
        sites (`list[AttentionSite]`): the attention modules that contributed, in call order.
        seen_layers (`dict[str, list[int]]`): per kind, the layer indices of every attention module that was called
            (selected or not); used to explain a selection that matched nothing.
    """

    penalty: torch.Tensor
    attention_entropy: torch.Tensor
    num_rows: int
    sites: list[AttentionSite] = field(default_factory=list)
    seen_layers: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class CARERegularizer:
    """The attention-concentration penalty of CARE (reconstructed; see the module docstring).

    Args:
        penalty (`str`, *optional*, defaults to `"entropy"`): ``"entropy"`` (Shannon) or ``"renyi"`` (Rényi-α).
        alpha (`float`, *optional*, defaults to `2.0`): order of the Rényi entropy; ``alpha == 1`` is Shannon.
        layers (`list[int]`, *optional*): layer indices to regularise (``layer_idx`` of the attention module, counted
            separately in the encoder and the decoder); all layers when `None`.
        heads (`list[int]`, *optional*): head indices to regularise; all heads when `None`.
        attention_types (`list[str]`, *optional*, defaults to `("self", "encoder", "cross")`): which attention
            modules: decoder/decoder-only ``"self"``-attention, ``"encoder"`` self-attention, ``"cross"``-attention.
        target_modules (`str`, *optional*): a regular expression; when set, only attention modules whose qualified
            name matches it (``re.search``) are regularised, in addition to the filters above.
        target_entropy (`float`, *optional*): when set, each row contributes ``max(H - target_entropy, 0)``: rows
            already sharper than the target are left alone.
        normalize (`bool`, *optional*, defaults to `False`): divide each row's entropy by ``log(#attendable keys)``
            so that early causal positions (few keys) and late ones weigh alike; rows with one key contribute 0.
    """

    penalty: Literal["entropy", "renyi"] = "entropy"
    alpha: float = 2.0
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    attention_types: Sequence[str] = ATTENTION_TYPES
    target_modules: str | None = None
    target_entropy: float | None = None
    normalize: bool = False

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {PENALTIES}, got {self.penalty!r}.")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"`alpha` must be a finite number > 0 (the Rényi order), got {self.alpha!r}.")
        for arg in ("layers", "heads"):
            values = getattr(self, arg)
            if values is None:
                continue
            if isinstance(values, int) or not all(isinstance(v, int) and v >= 0 for v in values) or not values:
                raise ValueError(
                    f"`{arg}` must be a non-empty list of non-negative integers (or None for all), got {values!r}."
                )
            setattr(self, arg, tuple(sorted(set(values))))
        if isinstance(self.attention_types, str):
            self.attention_types = (self.attention_types,)
        bad = [t for t in self.attention_types if t not in ATTENTION_TYPES]
        if bad or not self.attention_types:
            raise ValueError(f"`attention_types` must be a non-empty subset of {ATTENTION_TYPES}, got {bad or '[]'}.")
        self.attention_types = tuple(self.attention_types)
        if self.target_modules is not None:
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ValueError(f"`target_modules` is not a valid regular expression: {e}") from e
        if self.target_entropy is not None and self.target_entropy < 0:
            raise ValueError(f"`target_entropy` is an entropy in nats and must be >= 0, got {self.target_entropy}.")
        # module -> AttentionSite | None, per model; weak so that models can be garbage-collected
        self._sites: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def is_shannon(self) -> bool:
        return self.penalty == "entropy" or self.alpha == 1

    def site_table(self, model: nn.Module) -> dict[nn.Module, AttentionSite]:
        """``{module: AttentionSite}`` for every submodule of ``model`` (cached per model)."""
        table = self._sites.get(model)
        if table is None:
            # the root is left out: a table value holding its own weak key would keep the model alive forever
            table = {module: _classify(name, module) for name, module in model.named_modules() if name}
            self._sites[model] = table
        return table

    def selects(self, site: AttentionSite) -> bool:
        """Whether the attention module at ``site`` is regularised."""
        if site.kind not in self.attention_types:
            return False
        if self.layers is not None and site.layer not in self.layers:
            return False
        return self.target_modules is None or re.search(self.target_modules, site.name) is not None

    def new_collector(
        self,
        model: nn.Module,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CARECollector:
        """A collector for one forward pass of ``model`` (pass it as ``model(..., care_collector=collector)``).

        The optional masks mark which query rows count (padding rows are excluded): ``attention_mask`` is the
        encoder's (seq2seq) or the model's (decoder-only) 2D padding mask; for the decoder of a seq2seq model,
        ``decoder_attention_mask`` or, failing that, ``labels != -100``. Without them, a self-attention row counts
        when it may attend to its own position and any other row when it may attend to at least one key.
        """
        is_seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        if is_seq2seq:
            encoder_mask = attention_mask
            decoder_mask = decoder_attention_mask
            if decoder_mask is None and labels is not None:
                decoder_mask = labels != -100
        else:
            encoder_mask, decoder_mask = None, attention_mask
        return CARECollector(self, self.site_table(model), encoder_mask, decoder_mask)

    def row_penalty(self, entropy: torch.Tensor, num_keys: torch.Tensor | None) -> torch.Tensor:
        """Per-row penalty ``(batch, heads, q_len)`` from the raw row entropies (Shannon or Rényi-α, in nats).

        Applies ``normalize`` (``num_keys``: attendable keys per row, broadcastable) and ``target_entropy``.
        """
        h = entropy
        if self.normalize and num_keys is not None:
            log_n = torch.log(num_keys.to(h.dtype))
            h = torch.where(log_n > 0, h / log_n.clamp_min(1e-12), torch.zeros_like(h))
        if self.target_entropy is not None:
            h = torch.relu(h - self.target_entropy)
        return h


class _SoftmaxWithEntropy(torch.autograd.Function):
    """``probs = softmax(scores)`` and the entropy of each row, with one fused backward.

    Shannon (``alpha is None``): ``H = -Σ p log p`` and ``∂H/∂s_j = -p_j (log p_j + H)``, which is the softmax
    backward applied to ``-log p``; so the whole backward is one softmax backward of ``g_p - g_H · log p``.
    Rényi-α: ``H = log(Σ p^α) / (1 - α)`` and ``∂H/∂s_j = α / (1 - α) · (p_j^α / Σ p^α - p_j)``.
    Masked scores must be large negative *finite* values (the attention function uses ``_MASK_VALUE``): their
    probability is exactly 0 and ``g_H · log p`` stays finite. Writing the backward by hand avoids the half-dozen
    full-size temporaries that autograd over ``log_softmax``/``exp``/``mul``/``sum`` would create.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, alpha: float | None):
        # two passes over `scores` are cheaper than exp(logp): exp of the ~-1e30 masked entries is slow on CPU
        logp = torch.log_softmax(scores, dim=-1)
        probs = torch.softmax(scores, dim=-1)
        ctx.alpha = alpha
        if alpha is None:
            entropy = -torch.linalg.vecdot(probs, logp)
            ctx.save_for_backward(probs, logp)
        else:
            power_sum = probs.pow(alpha).sum(-1)
            entropy = torch.log(power_sum) / (1.0 - alpha)
            ctx.save_for_backward(probs, power_sum)
        return probs, entropy

    @staticmethod
    def backward(ctx, grad_probs: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        probs, saved = ctx.saved_tensors
        alpha = ctx.alpha
        if grad_probs is None:
            grad_probs = torch.zeros_like(probs)
        else:
            # matmul's backward may hand over a strided layout; the elementwise kernels below are much faster on
            # contiguous memory
            grad_probs = grad_probs.contiguous()
        if grad_entropy is None:
            return _softmax_backward(grad_probs, probs), None
        g = grad_entropy.unsqueeze(-1)
        if alpha is None:
            return _softmax_backward(torch.addcmul(grad_probs, saved, g, value=-1.0), probs), None
        escort = probs.pow(alpha) / saved.unsqueeze(-1)
        grad = _softmax_backward(grad_probs, probs) + (g * (alpha / (1.0 - alpha))) * (escort - probs)
        return grad, None


def _softmax_backward(grad_output: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    # the kernel autograd itself uses for softmax; equal to probs * (grad - Σ probs * grad)
    return torch.ops.aten._softmax_backward_data(grad_output, probs, -1, probs.dtype)


# Masked attention scores: probability exactly 0 after the softmax, yet finite and far from overflow when multiplied
# by a gradient (finfo.min would overflow to -inf and turn 0 * inf into NaN in the entropy's backward).
_MASK_VALUE = -1e30


def softmax_with_entropy(scores: torch.Tensor, alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim of ``scores`` and each row's Shannon (``alpha=None``) or Rényi-α entropy.

    Returns ``(probs, entropy)`` with ``entropy.shape == scores.shape[:-1]``; differentiable in ``scores``.
    """
    return _SoftmaxWithEntropy.apply(scores, alpha)


class CARECollector:
    """Per-forward accumulator of the CARE penalty (see :meth:`CARERegularizer.new_collector`).

    Passing the collector through the forward's ``**kwargs`` (rather than storing it on the modules or in a global)
    keeps concurrent forwards independent and leaves every call without a collector, such as ``generate``, on the
    plain SDPA path.
    """

    def __init__(
        self,
        regularizer: CARERegularizer,
        sites: dict[nn.Module, AttentionSite],
        encoder_query_mask: torch.Tensor | None = None,
        decoder_query_mask: torch.Tensor | None = None,
    ):
        self.regularizer = regularizer
        self._sites = sites
        self._query_masks = {"encoder": encoder_query_mask, "self": decoder_query_mask, "cross": decoder_query_mask}
        self._penalty_sum: torch.Tensor | None = None
        self._entropy_sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._contributors: list[AttentionSite] = []
        self._seen: dict[str, set[int]] = defaultdict(set)
        self.closed = False

    def select(self, module: nn.Module) -> AttentionSite | None:
        """The site of ``module`` if it is to be regularised in this forward, else `None`.

        A closed collector still selects the same modules (the recomputation of gradient checkpointing must follow the
        same path as the original forward), but :meth:`add` then ignores what they report.
        """
        site = self._sites.get(module)
        if site is None:
            return None
        if site.layer is not None:
            self._seen[site.kind].add(site.layer)
        return site if self.regularizer.selects(site) else None

    def query_mask(self, kind: str, batch: int, q_len: int) -> torch.Tensor | None:
        mask = self._query_masks.get(kind)
        if mask is None or mask.dim() != 2 or tuple(mask.shape) != (batch, q_len):
            return None
        return mask.bool()

    def add(
        self,
        site: AttentionSite,
        probs: torch.Tensor,
        entropy: torch.Tensor,
        valid_rows: torch.Tensor,
        num_keys: torch.Tensor | None,
    ) -> None:
        """Add the rows of one attention call.

        ``probs`` ``(batch, heads, q, k)``; ``entropy`` ``(batch, heads, q)``, the raw row entropy of the regulariser's
        kind; ``valid_rows`` ``(batch, q)``; ``num_keys`` attendable keys per row, broadcastable to ``entropy``.
        """
        reg = self.regularizer
        if reg.heads is not None:
            num_heads = probs.shape[1]
            if reg.heads[-1] >= num_heads:
                raise ValueError(
                    f"`heads`={list(reg.heads)} but attention module `{site.name}` has {num_heads} heads "
                    f"(valid indices 0..{num_heads - 1})."
                )
            index = torch.tensor(reg.heads, device=probs.device)
            entropy = entropy.index_select(1, index)
        weights = valid_rows[:, None, :].to(entropy.dtype)
        rows = reg.row_penalty(entropy, num_keys)
        penalty_sum = (rows * weights).sum()
        with torch.no_grad():
            if reg.is_shannon:
                shannon = entropy
            else:
                shannon = torch.special.entr(probs).sum(-1)
                if reg.heads is not None:
                    shannon = shannon.index_select(1, index)
            entropy_sum = (shannon * weights).sum()
        count = weights.sum() * entropy.shape[1]
        if self.closed:
            # computed anyway: checkpoint recomputation must save the same tensors as the original forward
            return
        if self._penalty_sum is None:
            self._penalty_sum, self._entropy_sum, self._count = penalty_sum, entropy_sum, count
        else:
            self._penalty_sum = self._penalty_sum + penalty_sum
            self._entropy_sum = self._entropy_sum + entropy_sum
            self._count = self._count + count
        self._contributors.append(site)

    def finalize(self) -> CAREPenaltyOutput:
        """Close the collector and return the averaged penalty; what later attention calls report is ignored."""
        self.closed = True
        seen = {kind: sorted(layers) for kind, layers in self._seen.items()}
        if self._penalty_sum is None:
            zero = torch.zeros(())
            return CAREPenaltyOutput(zero, zero, 0, [], seen)
        count = self._count.clamp_min(1)
        return CAREPenaltyOutput(
            penalty=self._penalty_sum / count,
            attention_entropy=(self._entropy_sum / count).detach(),
            num_rows=int(self._count.item()),
            sites=list(self._contributors),
            seen_layers=seen,
        )


def care_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function registered as ``"care"``: SDPA, plus the CARE penalty when a collector asks for it.

    Same signature and return value as transformers' ``sdpa_attention_forward`` (query/key/value
    ``(batch, heads, seq, head_dim)``, output ``(batch, q_len, heads, head_dim)``, no attention weights). The
    collector arrives as ``kwargs["care_collector"]``; when it is absent or does not select ``module``, the call is
    forwarded unchanged to ``sdpa_attention_forward``. Otherwise the probabilities are computed once, eager-style (in
    float32 for the softmax), used for the output and handed to the collector.
    """
    collector: CARECollector | None = kwargs.pop(COLLECTOR_KWARG, None)
    site = collector.select(module) if collector is not None else None
    if site is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_bias=position_bias,
            **kwargs,
        )

    n_rep = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    batch, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5

    # scale the (smaller) query rather than the scores: one (q_len x kv_len) temporary less; softmax in float32
    scores = torch.matmul(query * scaling if scaling != 1.0 else query, key.transpose(-1, -2)).float()
    if position_bias is not None:
        scores = scores + position_bias

    # `allowed`: boolean (..., q_len, kv_len) of attendable keys, following SDPA's conventions: a boolean mask is
    # True where attention is allowed, a float mask is additive, and no mask means `is_causal` (top-left aligned).
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            allowed = attention_mask
            scores.masked_fill_(~allowed, _MASK_VALUE)  # in place: `scores` is not saved for backward
        else:
            allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
            # clamp: finfo.min or -inf in a float mask would overflow in the entropy's backward
            scores = (scores + attention_mask).clamp_min(_MASK_VALUE)
    else:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if causal and q_len > 1:
            allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).tril()
            scores.masked_fill_(~allowed, _MASK_VALUE)
        else:
            allowed = None

    reg = collector.regularizer
    probs, entropy = softmax_with_entropy(scores, None if reg.is_shannon else float(reg.alpha))
    attn = nn.functional.dropout(probs.to(value.dtype), p=dropout, training=module.training)
    attn_output = torch.matmul(attn, value).transpose(1, 2).contiguous()

    # Which query rows count, and how many keys each may see (for `normalize`).
    if allowed is None:
        valid = torch.ones(batch, q_len, dtype=torch.bool, device=scores.device)
        num_keys = torch.full((batch, 1, q_len), kv_len, device=scores.device)
    else:
        allowed4 = allowed.reshape((1,) * (4 - allowed.dim()) + tuple(allowed.shape))[:, :1]  # (b|1, 1, q, k)
        allowed4 = allowed4.expand(batch, 1, q_len, kv_len)
        num_keys = allowed4.sum(-1)  # (batch, 1, q)
        valid = num_keys[:, 0] > 0
        if site.kind != "cross" and q_len == kv_len:
            valid = valid & allowed4[:, 0].diagonal(dim1=-2, dim2=-1)
    query_mask = collector.query_mask(site.kind, batch, q_len)
    if query_mask is not None:
        valid = valid & query_mask.to(valid.device)
    collector.add(site, probs, entropy, valid, num_keys)
    return attn_output, None


def _register() -> None:
    AttentionInterface.register(CARE_ATTENTION, care_attention_forward)
    # The mask builder decides the mask format the attention function receives: SDPA's (boolean or None).
    AttentionMaskInterface.register(CARE_ATTENTION, sdpa_mask)


_register()


def enable_care_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` to the ``"care"`` attention implementation (in place) and return it.

    Without a collector the implementation is SDPA, so inference and ``generate`` are unchanged for a model that used
    SDPA. A model that used eager attention switches to SDPA numerics (equal up to float rounding). The setting is not
    saved with the config (transformers does not serialise ``_attn_implementation``).
    """
    # PEFT wrappers forward `set_attn_implementation` and `config` to the base model
    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise ValueError(
            f"`model` must be a transformers `PreTrainedModel` (got {type(model).__name__}); CARE plugs into "
            "transformers' attention interface."
        )
    current = model.config._attn_implementation
    if current == CARE_ATTENTION:
        return model
    if current not in (None, "sdpa"):
        logger.warning(
            f"The model used attn_implementation={current!r}; CARE replaces it with 'care' (SDPA when not "
            "regularising)."
        )
    model.set_attn_implementation(CARE_ATTENTION)
    if model.config._attn_implementation != CARE_ATTENTION:
        raise ValueError(
            f"{type(model).__name__} could not switch to attn_implementation='care': it does not dispatch its "
            "attention through transformers' AttentionInterface, so CARE cannot regularise it."
        )
    return model
