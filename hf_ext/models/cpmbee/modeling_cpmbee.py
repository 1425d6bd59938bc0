"""PyTorch CPM-Bee (OpenBMB), re-implemented from the conventions of the original ``CPMBeeTorch`` and checked
against its outputs (``tests/fixtures/cpmbee``).

How CPM-Bee differs from a LLaMA-style decoder:

* the embedding is ``E[id] / sqrt(d)`` followed by a rotary transform of the *whole embedding* at angle
  ``16 * sub * theta_j`` (the sub-id tells apart out-of-vocabulary pieces sharing a base id); attention has no RoPE;
* every linear layer divides by ``sqrt(d_in)``; RMS norms have no bias; residuals are ``(h + f(h)) / 1.05``;
  the feed-forward layer is gated GELU;
* one relative position bias, shared by all layers, indexed by T5-style position buckets inside a segment and by
  segment-pair buckets (tree relation of the two segments) across segments;
* context tokens attend bidirectionally to all context tokens; answer tokens (context 0) see the context and the
  earlier answer tokens;
* logits are ``(h / sqrt(d)) E^T`` plus one column per entry of a per-batch extension table ``(id, sub)``:
  ``h . embedding(id, sub)``.

transformers' ``CpmAnt`` shares the parameter names and layer shapes but not the scalings, buckets or extension table,
so none of its modules fit exactly; only its attribute names are kept (so CPM-Bee keys load with a ``cpmbee.``
prefix).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_cpmbee import CpmBeeConfig

logger = logging.get_logger(__name__)

__all__ = [
    "CpmBeeCache",
    "CpmBeeForCausalLM",
    "CpmBeeModel",
    "CpmBeePreTrainedModel",
    "cpmbee_lm_loss",
    "cpmbee_position_bucket",
]

# per-token state the cache keeps next to the keys/values
_STATE_KEYS = ("positions", "segments", "sample_ids", "span", "valid")


def cpmbee_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of `relative_position = key_pos - query_pos` (T5-style, bidirectional; computed in float32 as CPM-Bee)."""
    half = num_buckets // 2
    exact = half // 2
    buckets = (relative_position > 0).to(torch.int32) * half
    distance = relative_position.abs()
    large = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).to(torch.int32)
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(distance < exact, distance.to(torch.int32), large)


class CpmBeeCache(DynamicCache):
    """A [`DynamicCache`] that also carries, per cached token, its position, segment, sample and span ids and whether
    it is a real token (not padding), plus each row's segment-relation table: a cached step only needs the new
    tokens' ids, positions and segments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state: dict[str, torch.Tensor] = {}
        self.segment_rel: torch.Tensor | None = None
        self.num_segments: torch.Tensor | None = None

    def append_state(self, **tensors: torch.Tensor) -> None:
        for key in _STATE_KEYS:
            value = tensors[key]
            self.state[key] = value if key not in self.state else torch.cat([self.state[key], value], dim=1)

    def _apply_rows(self, fn) -> None:
        self.state = {k: fn(v) for k, v in self.state.items()}
        if self.segment_rel is not None:
            self.segment_rel = fn(self.segment_rel)
            self.num_segments = fn(self.num_segments)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._apply_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._apply_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._apply_rows(lambda t: t[indices])


class CpmBeeLinear(nn.Module):
    """`x W^T / sqrt(in_features)` without bias (CPM-Bee's `Linear`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) / math.sqrt(self.in_features)


class CpmBeeRMSNorm(nn.Module):
    """RMS norm without bias: `x * w / sqrt(mean(x^2) + eps)` (statistics in float32)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        variance = x.float().pow(2).mean(dim=-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(dtype) * self.weight


class CpmBeeEmbeddingExt(nn.Embedding):
    """Token embedding `E[id] / sqrt(d)` rotated by the sub-id, and the output projection with extension columns.

    An [`nn.Embedding`] (one `weight` of shape `(vocab_size, hidden_size)`, what transformers and PEFT look for in
    `get_input_embeddings`) whose lookup adds CPM-Bee's scaling and sub-id rotation.
    """

    def __init__(self, config: CpmBeeConfig):
        super().__init__(config.vocab_size, config.hidden_size)
        self.dim = config.hidden_size
        self.distance_scale = config.rotary_distance_scale

    def rotary(self, x: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.dim, 2, device=x.device, dtype=torch.float32) / self.dim))
        freqs = (sub.to(torch.float32) * self.distance_scale)[..., None] * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        x1, x2 = x[..., : self.dim // 2], x[..., self.dim // 2 :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x * emb.cos().to(x.dtype) + rotated * emb.sin().to(x.dtype)).to(x.dtype)

    def forward(self, ids: torch.Tensor, sub: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of `ids` rotated by their sub-ids `sub` (defaults to zeros: no rotation)."""
        embeddings = F.embedding(ids, self.weight) / math.sqrt(self.dim)
        return embeddings if sub is None else self.rotary(embeddings, sub)

    def projection(
        self, hidden: torch.Tensor, ext_table_ids: torch.Tensor | None, ext_table_sub: torch.Tensor | None
    ) -> torch.Tensor:
        logits = F.linear(hidden / math.sqrt(self.dim), self.weight)
        if ext_table_ids is not None and ext_table_ids.numel() > 0:
            ext = self.forward(ext_table_ids, ext_table_sub)
            logits = torch.cat([logits, F.linear(hidden, ext)], dim=-1)
        return logits


class CpmBeeSegmentPositionEmbedding(nn.Module):
    """The relative position bias shared by all layers: `[num_buckets + num_segment_buckets, heads]`."""

    def __init__(self, config: CpmBeeConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_buckets = config.position_bias_num_buckets
        self.num_segment_buckets = config.position_bias_num_segment_buckets
        self.max_distance = config.position_bias_max_distance
        self.relative_attention_bias = nn.Parameter(
            torch.empty(self.num_buckets + self.num_segment_buckets, self.num_heads)
        )

    def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor, segment_bucket: torch.Tensor) -> torch.Tensor:
        """`[batch, heads, q, k]` bias; `segment_bucket` 0 means "same segment": use the position bucket."""
        rel = key_pos[:, None, :] - query_pos[:, :, None]
        position = cpmbee_position_bucket(rel, self.num_buckets, self.max_distance)
        rows = torch.where(segment_bucket == 0, position, self.num_buckets + segment_bucket - 1).long()
        return F.embedding(rows, self.relative_attention_bias).permute(0, 3, 1, 2)


class CpmBeeAttention(nn.Module):
    def __init__(self, config: CpmBeeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.dim_head = config.dim_head
        inner = self.num_heads * self.dim_head
        self.project_q = CpmBeeLinear(config.hidden_size, inner)
        self.project_k = CpmBeeLinear(config.hidden_size, inner)
        self.project_v = CpmBeeLinear(config.hidden_size, inner)
        self.attention_out = CpmBeeLinear(inner, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout_p) if config.dropout_p else None

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        position_bias: torch.Tensor,
        cache: CpmBeeCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, _ = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.dim_head).transpose(1, 2)

        query, key, value = heads(self.project_q(hidden)), heads(self.project_k(hidden)), heads(self.project_v(hidden))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        score = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.dim_head) + position_bias
        score = score.masked_fill(~mask[:, None], torch.finfo(score.dtype).min)
        probs = torch.softmax(score, dim=-1).masked_fill(~mask[:, None], 0.0)
        if self.dropout is not None:
            probs = self.dropout(probs)
        out = torch.matmul(probs, value).transpose(1, 2).reshape(batch, length, -1)
        return self.attention_out(out), probs


class CpmBeeSelfAttentionBlock(nn.Module):
    def __init__(self, config: CpmBeeConfig, layer_idx: int):
        super().__init__()
        self.layernorm_before_attention = CpmBeeRMSNorm(config.hidden_size, config.eps)
        self.self_attention = CpmBeeAttention(config, layer_idx)
        self.dropout = nn.Dropout(config.dropout_p) if config.dropout_p else None
        self.residual_scale = config.residual_scale

    def forward(self, hidden, mask, position_bias, cache=None):
        out, probs = self.self_attention(self.layernorm_before_attention(hidden), mask, position_bias, cache)
        if self.dropout is not None:
            out = self.dropout(out)
        return (hidden + out) / self.residual_scale, probs


class CpmBeeDenseGatedACT(nn.Module):
    def __init__(self, config: CpmBeeConfig):
        super().__init__()
        self.w_0 = CpmBeeLinear(config.hidden_size, config.dim_ff)
        self.w_1 = CpmBeeLinear(config.hidden_size, config.dim_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.w_0(x)) * self.w_1(x)


class CpmBeeFeedForward(nn.Module):
    def __init__(self, config: CpmBeeConfig):
        super().__init__()
        self.w_in = CpmBeeDenseGatedACT(config)
        self.dropout = nn.Dropout(config.dropout_p) if config.dropout_p else None
        self.w_out = CpmBeeLinear(config.dim_ff, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.w_in(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.w_out(x)


class CpmBeeFFNBlock(nn.Module):
    def __init__(self, config: CpmBeeConfig):
        super().__init__()
        self.layernorm_before_ffn = CpmBeeRMSNorm(config.hidden_size, config.eps)
        self.ffn = CpmBeeFeedForward(config)
        self.dropout = nn.Dropout(config.dropout_p) if config.dropout_p else None
        self.residual_scale = config.residual_scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.ffn(self.layernorm_before_ffn(hidden))
        if self.dropout is not None:
            out = self.dropout(out)
        return (hidden + out) / self.residual_scale


class CpmBeeTransformerBlock(GradientCheckpointingLayer):
    def __init__(self, config: CpmBeeConfig, layer_idx: int):
        super().__init__()
        self.self_att = CpmBeeSelfAttentionBlock(config, layer_idx)
        self.ffn = CpmBeeFFNBlock(config)

    def forward(self, hidden, mask, position_bias, cache=None):
        hidden, probs = self.self_att(hidden, mask, position_bias, cache)
        return self.ffn(hidden), probs


class CpmBeeEncoder(nn.Module):
    def __init__(self, config: CpmBeeConfig):
        super().__init__()
        self.layers = nn.ModuleList([CpmBeeTransformerBlock(config, i) for i in range(config.num_hidden_layers)])
        self.output_layernorm = CpmBeeRMSNorm(config.hidden_size, config.eps)


class CpmBeePreTrainedModel(PreTrainedModel):
    config: CpmBeeConfig
    config_class = CpmBeeConfig
    base_model_prefix = "cpmbee"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CpmBeeTransformerBlock"]
    _can_compile_fullgraph = False
    _supports_attention_backend = False

    def resize_token_embeddings(self, *args, **kwargs):
        """Not supported: transformers' resizing builds a plain `nn.Embedding`, which would drop CPM-Bee's embedding
        scaling, sub-id rotation and extension-table projection. Grow `vocab_size` by converting the checkpoint."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot resize its token embeddings: CPM-Bee's embedding (`CpmBeeEmbeddingExt`) "
            "scales, rotates and doubles as the output projection with extension columns; a resized plain "
            "`nn.Embedding` would silently change the model. Build a config with the new `vocab_size` and copy "
            "the weight rows instead."
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (CpmBeeLinear, CpmBeeEmbeddingExt)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, CpmBeeRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, CpmBeeSegmentPositionEmbedding):
            nn.init.normal_(module.relative_attention_bias, mean=0.0, std=std)


def _as_long(x: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long, device=like.device)


def cpmbee_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of CPM-Bee's logits against its *aligned* targets (not shifted; `-100` is ignored)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100)


class CpmBeeModel(CpmBeePreTrainedModel):
    r"""
    The CPM-Bee encoder-style decoder (no LM head). The structured inputs come from [`CpmBeeTokenizer`] (`pack` for
    training/scoring, `prepare_for_generation` for prompts); every structured argument has a plain-LM default, so
    `model(input_ids)` is a causal LM with relative position bias.
    """

    def __init__(self, config: CpmBeeConfig):
        super().__init__(config)
        self.input_embedding = CpmBeeEmbeddingExt(config)
        self.position_bias = CpmBeeSegmentPositionEmbedding(config)
        self.encoder = CpmBeeEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.input_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.input_embedding = value

    def project_to_vocab(
        self,
        hidden: torch.Tensor,
        ext_table_ids: torch.LongTensor | None = None,
        ext_table_sub: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Logits of `hidden`: the (tied) input embedding's projection plus the extension-table columns.

        When an adapter wraps the input embedding (PEFT LoRA on `input_embedding`), the projection uses the wrapped
        base layer: the adapter changes the input side only, as with any tied `lm_head` under PEFT.
        """
        embedding = self.input_embedding
        embedding = getattr(embedding, "base_layer", embedding)
        return embedding.projection(hidden, ext_table_ids, ext_table_sub)

    def lm_logits(
        self,
        hidden: torch.Tensor,
        ext_table_ids: Any = None,
        ext_table_sub: Any = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """The LM head: logits of the last `logits_to_keep` positions of `hidden` (0 = all) over the vocabulary and the
        extension-table columns (:meth:`project_to_vocab`); `ext_table_*` may be tensors or lists of ids."""
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        ext_ids = _as_long(ext_table_ids, hidden) if ext_table_ids is not None else None
        ext_sub = _as_long(ext_table_sub, hidden) if ext_table_sub is not None else None
        return self.project_to_vocab(hidden, ext_ids, ext_sub)

    def embed(
        self,
        input_ids: torch.LongTensor,
        input_id_sub: torch.LongTensor | None = None,
        ext_table_ids: torch.LongTensor | None = None,
        ext_table_sub: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Input embeddings; ids `>= vocab_size` are extension-table columns and embed as their `(id, sub)`."""
        if input_id_sub is None:
            input_id_sub = torch.zeros_like(input_ids)
        vocab = self.config.vocab_size
        # tensor conditions (no `bool(...)`): checked eagerly, traceable by torch.export / torch.compile
        if ext_table_ids is not None and ext_table_ids.numel() > 0:
            if ext_table_sub is None:
                ext_table_sub = torch.zeros_like(ext_table_ids)
            is_ext = input_ids >= vocab
            col = (input_ids - vocab).clamp(min=0)
            torch_compilable_check(
                (col < ext_table_ids.numel()) | ~is_ext,
                lambda: (
                    f"`input_ids` holds ids >= vocab_size ({vocab}) that are not columns of `ext_table_ids` "
                    f"({ext_table_ids.numel()} entries; pass the ext table the ids refer to)."
                ),
            )
            col = col.clamp(max=ext_table_ids.numel() - 1)
            input_id_sub = torch.where(is_ext, ext_table_sub[col], input_id_sub)
            input_ids = torch.where(is_ext, ext_table_ids[col], input_ids)
        else:
            torch_compilable_check(
                input_ids < vocab,
                lambda: (
                    f"`input_ids` holds ids >= vocab_size ({vocab}) that are not columns of `ext_table_ids` "
                    "(pass the ext table the ids refer to)."
                ),
            )
        return self.input_embedding(input_ids, input_id_sub)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_id_sub: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        context: torch.LongTensor | None = None,
        sample_ids: torch.LongTensor | None = None,
        num_segments: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        segment_rel_offset: torch.LongTensor | None = None,
        segment_rel: torch.LongTensor | None = None,
        span: torch.LongTensor | None = None,
        length: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ext_table_ids: torch.LongTensor | None = None,
        ext_table_sub: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: CpmBeeCache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Token ids; ids `>= vocab_size` index the extension table.
            input_id_sub (`torch.LongTensor`, *optional*, defaults to zeros):
                Sub-id of each token (rank of an OOV piece among those sharing its base id).
            position_ids (`torch.LongTensor`, *optional*):
                Positions for the relative position buckets; defaults to `arange` after the cached tokens.
            context (`torch.LongTensor`, *optional*, defaults to zeros):
                1 for context tokens (attend to all context tokens both ways), 0 for answer tokens (see the context
                and earlier answer tokens). All zeros = a causal LM.
            sample_ids (`torch.LongTensor`, *optional*, defaults to zeros):
                0 for the instance, 1, 2, ... for in-context samples packed in the same row.
            num_segments (`torch.LongTensor`, *optional*):
                Number of segments of each token's instance (0 marks padding).
            segment_ids (`torch.LongTensor`, *optional*, defaults to zeros):
                Segment of each token.
            segment_rel_offset (`torch.LongTensor`, *optional*, defaults to zeros):
                Start of each token's instance table inside `segment_rel`.
            segment_rel (`torch.LongTensor` of shape `(batch, rel_len)`, *optional*):
                Concatenated flat `n x n` segment-relation tables of each row.
            span (`torch.LongTensor`, *optional*, defaults to zeros):
                Instance packed in the row (attention never crosses spans).
            length (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Valid length of each right-padded row (the original's `length`).
            attention_mask (`torch.Tensor`, *optional*):
                1 for real tokens; `(batch, seq_len)` or `(batch, past + seq_len)`.
            ext_table_ids, ext_table_sub (`torch.LongTensor` of shape `(ext,)`, *optional*):
                The extension table: logit column `vocab_size + i` is the token `(ext_table_ids[i], ext_table_sub[i])`.
            inputs_embeds (`torch.Tensor`, *optional*):
                Embeddings to use instead of embedding `input_ids` (VisCPM injects image features this way).
            cache ([`CpmBeeCache`], *optional*):
                Cache of earlier tokens; new tokens see every cached real token.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
        batch, seq_len = ref.shape[:2]
        device = ref.device
        if ext_table_ids is not None:
            ext_table_ids = _as_long(ext_table_ids, ref)
            ext_table_sub = (
                _as_long(ext_table_sub, ref) if ext_table_sub is not None else torch.zeros_like(ext_table_ids)
            )
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, input_id_sub, ext_table_ids, ext_table_sub)

        if cache is not None and not isinstance(cache, CpmBeeCache):
            raise TypeError(
                f"CPM-Bee needs a `CpmBeeCache` (it carries positions and segments), got {type(cache).__name__}."
            )
        if use_cache and cache is None:
            cache = CpmBeeCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        has_state = cache is not None and past_len > 0 and bool(cache.state)

        zeros = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        context = zeros if context is None else context.long()
        sample_ids = zeros if sample_ids is None else sample_ids.long()
        segment_ids = zeros if segment_ids is None else segment_ids.long()
        segment_rel_offset = zeros if segment_rel_offset is None else segment_rel_offset.long()
        span = zeros if span is None else span.long()
        if position_ids is None:
            start = (
                cache.state["positions"][:, -1:] + 1
                if has_state
                else torch.zeros(batch, 1, dtype=torch.long, device=device)
            )
            position_ids = start + torch.arange(seq_len, device=device)[None]
        position_ids = position_ids.long()
        if segment_rel is None:
            if has_state and cache.segment_rel is not None:
                segment_rel = cache.segment_rel
            else:
                segment_rel = torch.zeros(batch, 1, dtype=torch.long, device=device)
        segment_rel = segment_rel.long()
        if num_segments is None:
            if has_state and cache.num_segments is not None:
                num_segments_q = cache.num_segments[:, None].expand(batch, seq_len)
            else:
                num_segments_q = torch.ones(batch, seq_len, dtype=torch.long, device=device)
        else:
            num_segments_q = num_segments.long()

        # which new tokens are real
        valid = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        if length is not None:
            valid &= torch.arange(seq_len, device=device)[None] < _as_long(length, ref)[:, None]
        if num_segments is not None:
            valid &= num_segments != 0
        past_valid = None
        if attention_mask is not None:
            if attention_mask.shape[-1] == past_len + seq_len:
                past_valid = attention_mask[:, :past_len].bool()
                valid &= attention_mask[:, past_len:].bool()
            elif attention_mask.shape[-1] == seq_len:
                valid &= attention_mask.bool()
            else:
                raise ValueError(
                    f"`attention_mask` has length {attention_mask.shape[-1]}; expected {seq_len} (new tokens) or "
                    f"{past_len + seq_len} (cached + new)."
                )

        # attention mask and segment buckets among the new tokens
        idx = torch.arange(seq_len, device=device)
        ctx = context.bool()
        same = (sample_ids[:, :, None] == sample_ids[:, None, :]) & (span[:, :, None] == span[:, None, :])
        allowed = ctx[:, None, :] | (~ctx[:, :, None] & (idx[None, None, :] <= idx[None, :, None]))
        allowed &= (sample_ids[:, :, None] == 0) | (sample_ids[:, :, None] == sample_ids[:, None, :])
        allowed &= span[:, :, None] == span[:, None, :]
        allowed &= valid[:, :, None] & valid[:, None, :]
        rel_index = (
            segment_rel_offset[:, :, None]
            + segment_ids[:, :, None] * num_segments_q[:, :, None]
            + segment_ids[:, None, :]
        )
        key_pos = position_ids
        if has_state:
            state = cache.state
            pv = state["valid"] if past_valid is None else state["valid"] & past_valid
            p_same = (sample_ids[:, :, None] == state["sample_ids"][:, None, :]) & (
                span[:, :, None] == state["span"][:, None, :]
            )
            p_allowed = pv[:, None, :] & valid[:, :, None]
            p_allowed &= (sample_ids[:, :, None] == 0) | (sample_ids[:, :, None] == state["sample_ids"][:, None, :])
            p_allowed &= span[:, :, None] == state["span"][:, None, :]
            p_index = (
                segment_rel_offset[:, :, None]
                + segment_ids[:, :, None] * num_segments_q[:, :, None]
                + state["segments"][:, None, :]
            )
            allowed = torch.cat([p_allowed, allowed], dim=-1)
            same = torch.cat([p_same, same], dim=-1)
            rel_index = torch.cat([p_index, rel_index], dim=-1)
            key_pos = torch.cat([state["positions"], position_ids], dim=1)
        rel_index = torch.where(same, rel_index, 0).clamp(max=segment_rel.shape[1] - 1)
        segment_bucket = torch.where(same, torch.gather(segment_rel, 1, rel_index.flatten(1)).view_as(rel_index), 1)
        position_bias = self.position_bias(position_ids, key_pos, segment_bucket)

        if use_cache:
            if not has_state:
                cache.segment_rel = segment_rel
                cache.num_segments = num_segments_q.max(dim=1).values
            cache.append_state(
                positions=position_ids, segments=segment_ids, sample_ids=sample_ids, span=span, valid=valid
            )

        hidden = inputs_embeds
        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        cache = cache if use_cache else None
        for i, layer in enumerate(self.encoder.layers):
            hidden, probs = layer(hidden, allowed, position_bias, cache)
            if output_hidden_states and i < len(self.encoder.layers) - 1:
                all_hidden += (hidden,)
            if output_attentions:
                all_attn += (probs,)
        hidden = self.encoder.output_layernorm(hidden)
        if output_hidden_states:
            all_hidden += (hidden,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=all_hidden,
            attentions=all_attn,
        )


class CpmBeeForCausalLM(CpmBeePreTrainedModel, GenerationMixin):
    r"""
    CPM-Bee with its (tied) output projection: logits over the vocabulary followed by one column per extension-table
    entry. `labels` are CPM-Bee's *aligned* targets (the label at position `i` is the token that follows it, as
    [`CpmBeeTokenizer.pack`] builds them): they are not shifted again.
    """

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: CpmBeeConfig):
        super().__init__(config)
        self.cpmbee = CpmBeeModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.cpmbee.input_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.cpmbee.input_embedding = value

    def get_output_embeddings(self) -> None:
        return None  # the projection is the input embedding itself (plus extension columns)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_id_sub: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        context: torch.LongTensor | None = None,
        sample_ids: torch.LongTensor | None = None,
        num_segments: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        segment_rel_offset: torch.LongTensor | None = None,
        segment_rel: torch.LongTensor | None = None,
        span: torch.LongTensor | None = None,
        length: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ext_table_ids: torch.LongTensor | None = None,
        ext_table_sub: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: CpmBeeCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        Args: see [`CpmBeeModel.forward`], plus

            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Aligned targets (`-100` = ignored); ext-table tokens as `vocab_size + index`. The loss is the mean
                cross-entropy over the labelled positions.
            shift_labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Pre-shifted targets as transformers' causal LMs take them (what sequence parallelism passes). CPM-Bee's
                `labels` are already aligned, so these mean the same thing; they take precedence over `labels`.
            logits_to_keep (`int`, *optional*, defaults to 0):
                Compute logits for the last `logits_to_keep` positions only (0 = all).
        """
        outputs = self.cpmbee(
            input_ids=input_ids,
            input_id_sub=input_id_sub,
            position_ids=position_ids,
            context=context,
            sample_ids=sample_ids,
            num_segments=num_segments,
            segment_ids=segment_ids,
            segment_rel_offset=segment_rel_offset,
            segment_rel=segment_rel,
            span=span,
            length=length,
            attention_mask=attention_mask,
            ext_table_ids=ext_table_ids,
            ext_table_sub=ext_table_sub,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.cpmbee.lm_logits(outputs.last_hidden_state, ext_table_ids, ext_table_sub, logits_to_keep)
        targets = shift_labels if shift_labels is not None else labels
        loss = cpmbee_lm_loss(logits, targets) if targets is not None else None
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: CpmBeeCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> dict[str, Any]:
        """Stock `generate()` support: the first call feeds the whole prompt with its structured arguments; each later
        step feeds the new token at the next position of the last cached token's segment, as an answer token."""
        from .tokenization_cpmbee import CPMBEE_STRUCTURED_INPUTS as structured

        model_inputs: dict[str, Any] = {
            "output_attentions": kwargs.get("output_attentions"),
            "output_hidden_states": kwargs.get("output_hidden_states"),
            "ext_table_ids": kwargs.get("ext_table_ids"),
            "ext_table_sub": kwargs.get("ext_table_sub"),
            "use_cache": kwargs.get("use_cache", True),
            "attention_mask": attention_mask,
            "logits_to_keep": 1,
        }
        if cache is not None and not isinstance(cache, CpmBeeCache):
            if cache.get_seq_length() > 0:
                raise ValueError("CPM-Bee needs a `CpmBeeCache` (it carries positions and segments of cached tokens).")
            cache = None  # generate() made a plain DynamicCache: replace it (the output's cache is used from now on)
        if cache is None or cache.get_seq_length() == 0:
            if cache is None:
                cache = CpmBeeCache(config=self.config)
            model_inputs["cache"] = cache
            for key in structured:
                if kwargs.get(key) is not None:
                    model_inputs[key] = kwargs[key]
            if inputs_embeds is not None:
                model_inputs["inputs_embeds"] = inputs_embeds
            else:
                model_inputs["input_ids"] = input_ids
            return model_inputs
        state = cache.state
        model_inputs["cache"] = cache
        model_inputs["input_ids"] = input_ids[:, -1:]
        model_inputs["position_ids"] = state["positions"][:, -1:] + 1
        model_inputs["segment_ids"] = state["segments"][:, -1:]
        model_inputs["context"] = torch.zeros_like(model_inputs["input_ids"])
        return model_inputs
