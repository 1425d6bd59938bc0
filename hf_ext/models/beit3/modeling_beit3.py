"""PyTorch BEiT-3: a multiway Transformer ("Image as a Foreign Language", Wang et al. 2022).

A native re-implementation of torchscale's ``BEiT3`` (``multiway=True``, ``subln=True``) for transformers. Every
Linear and LayerNorm exists twice per layer: a *vision expert* for the image part of the sequence (CLS + patches)
and a *language expert* for the text part (text tokens, or the learned query tokens Muffin routes through BEiT-3).
Self-attention is shared and bidirectional over the whole sequence.

Layout differences to torchscale (the converters in ``hf_ext.models.muffin`` map the names):

* torchscale keeps a ``MultiwayNetwork`` per Linear (``q_proj.A`` / ``q_proj.B``); here each layer holds two whole
  experts, ``vision_expert`` and ``language_expert``, each a set of plain ``nn.Linear`` / ``nn.LayerNorm`` modules.
  The arithmetic is identical, it is cheaper (one split per layer instead of one per Linear), and PEFT can target
  experts by name (``target_modules=["language_expert.q_proj", "language_expert.v_proj"]``).
* Positions: two tables, each segment's positions start at ``config.position_offset`` (2, Fairseq convention), so
  the first language/query token always gets row 2 of the language table, as in torchscale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from .configuration_beit3 import Beit3Config

logger = logging.get_logger(__name__)


@dataclass
class Beit3ModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`Beit3Model`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Hidden states after the final (multiway) LayerNorm; the vision part comes first.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The first token's final state: CLS when an image is given, else the first text token.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and every layer's output (before the final LayerNorm), when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities per layer, when `output_attentions=True`.
        split_position (`int`):
            Number of vision tokens (CLS + patches) at the start of the sequence; the language part starts here.
    """

    split_position: int | None = None


class Beit3Embeddings(nn.Module):
    """Patch + CLS embedding for images, word embedding for text, and one position table per modality."""

    def __init__(self, config: Beit3Config):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Used only for masked image modelling (`bool_masked_pos`); Muffin/VisCPM checkpoints drop it.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # no padding_idx, as torchscale's TextEmbedding: padded positions are zeroed by the attention mask instead
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.vision_position_embeddings = nn.Embedding(
            config.num_patches + 1 + config.position_offset, config.hidden_size
        )
        self.text_position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def embed_image(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        expected = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[-2:] != (expected, expected):
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, {expected}, {expected}) for this "
                f"BEiT-3 (image_size={expected}), got {tuple(pixel_values.shape)}. Resize the images with the "
                "model's image processor, or interpolate the position table to a new resolution."
            )
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            w = bool_masked_pos.unsqueeze(-1).type_as(x)
            x = x * (1 - w) + self.mask_token.expand_as(x) * w
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        positions = torch.arange(x.shape[1], device=x.device) + self.config.position_offset
        return x + self.vision_position_embeddings(positions)

    def embed_language(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        if length + self.config.position_offset > self.config.max_position_embeddings:
            raise ValueError(
                f"The language segment has {length} tokens but BEiT-3's language position table holds "
                f"{self.config.max_position_embeddings - self.config.position_offset}; shorten the text or raise "
                "max_position_embeddings."
            )
        positions = torch.arange(length, device=inputs_embeds.device) + self.config.position_offset
        return inputs_embeds + self.text_position_embeddings(positions).to(inputs_embeds.dtype)


class Beit3Expert(nn.Module):
    """One modality's copy of every Linear / LayerNorm of a layer (torchscale's ``A`` or ``B`` branch)."""

    def __init__(self, config: Beit3Config):
        super().__init__()
        d, f, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.inner_attn_ln = nn.LayerNorm(d, eps=eps) if config.sub_layernorm else nn.Identity()
        self.out_proj = nn.Linear(d, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, f)
        self.ffn_layernorm = nn.LayerNorm(f, eps=eps) if config.sub_layernorm else nn.Identity()
        self.fc2 = nn.Linear(f, d)
        self.act = ACT2FN[config.hidden_act]

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.final_layer_norm(x))
        h = self.act(h.float()).type_as(h)  # torchscale computes the activation in fp32
        return self.fc2(self.ffn_layernorm(h))


class Beit3Layer(GradientCheckpointingLayer):
    """A multiway encoder layer with pre-LN and Sub-LN; both experts share one attention over the whole sequence."""

    def __init__(self, config: Beit3Config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.vision_expert = Beit3Expert(config)
        self.language_expert = Beit3Expert(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _parts(self, x: torch.Tensor, split: int) -> list[tuple[Beit3Expert, torch.Tensor]]:
        parts = [(self.vision_expert, x[:, :split]), (self.language_expert, x[:, split:])]
        return [(e, p) for e, p in parts if p.shape[1] > 0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        split_position: int = 0,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bsz, length, _ = hidden_states.shape
        parts = self._parts(hidden_states, split_position)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)

        normed = [(e, e.self_attn_layer_norm(p)) for e, p in parts]
        q = heads(torch.cat([e.q_proj(n) for e, n in normed], dim=1))
        k = heads(torch.cat([e.k_proj(n) for e, n in normed], dim=1))
        v = heads(torch.cat([e.v_proj(n) for e, n in normed], dim=1))
        dropout_p = self.config.attention_dropout if self.training else 0.0
        weights = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            attn = torch.matmul(F.dropout(weights, p=dropout_p, training=self.training), v)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p)
        attn = attn.transpose(1, 2).reshape(bsz, length, -1)

        offset, outs = 0, []
        for e, p in parts:
            chunk = attn[:, offset : offset + p.shape[1]]
            outs.append(e.out_proj(e.inner_attn_ln(chunk)))
            offset += p.shape[1]
        hidden_states = hidden_states + self.dropout(torch.cat(outs, dim=1))

        parts = self._parts(hidden_states, split_position)
        ffn = torch.cat([e.feed_forward(p) for e, p in parts], dim=1)
        hidden_states = hidden_states + self.dropout(ffn)
        return hidden_states, weights


class Beit3PreTrainedModel(PreTrainedModel):
    config: Beit3Config
    config_class = Beit3Config  # kept for remote code loaders that read it
    base_model_prefix = "beit3"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Beit3Layer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Beit3Embeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.mask_token, std=std)


class Beit3Model(Beit3PreTrainedModel):
    """
    BEiT-3 encoder. Inputs: an image (`pixel_values`), a text (`input_ids` or language-side `inputs_embeds`), or both
    (image first, then text, as torchscale). The image part goes through the vision experts, the text part through
    the language experts. Muffin passes its learned queries as `inputs_embeds`.
    """

    def __init__(self, config: Beit3Config):
        super().__init__(config)
        self.embeddings = Beit3Embeddings(config)
        self.layers = nn.ModuleList([Beit3Layer(config) for _ in range(config.num_hidden_layers)])
        self.vision_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.language_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | Beit3ModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`, *optional*):
                Images; they go through the vision experts.
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
                Text token ids (BEiT-3 vocabulary); they go through the language experts.
            inputs_embeds (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`, *optional*):
                Language-side embeddings instead of `input_ids` (e.g. Muffin's learned query tokens).
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
                1 for real text tokens, 0 for padding (the image part is never padded).
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                Patches replaced by the mask token (masked image modelling).
        """
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds; pass one of them.")
        if pixel_values is None and input_ids is None and inputs_embeds is None:
            raise ValueError("Beit3Model needs pixel_values, input_ids or inputs_embeds.")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        segments = []
        split = 0
        if pixel_values is not None:
            segments.append(self.embeddings.embed_image(pixel_values, bool_masked_pos))
            split = segments[0].shape[1]
        if input_ids is not None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        if inputs_embeds is not None:
            if segments and inputs_embeds.shape[0] != segments[0].shape[0]:
                if inputs_embeds.shape[0] == 1:
                    inputs_embeds = inputs_embeds.expand(segments[0].shape[0], -1, -1)
                else:
                    raise ValueError(
                        f"pixel_values has batch size {segments[0].shape[0]} but the language part has "
                        f"{inputs_embeds.shape[0]}; they must match (or the language part must have batch size 1)."
                    )
            dtype = segments[0].dtype if segments else inputs_embeds.dtype
            segments.append(self.embeddings.embed_language(inputs_embeds.to(dtype)))
        hidden_states = torch.cat(segments, dim=1)

        mask = None
        if attention_mask is not None:
            if inputs_embeds is None:
                raise ValueError("attention_mask applies to the text part; pass input_ids or inputs_embeds too.")
            keep = attention_mask.to(torch.bool)
            if split:
                keep = torch.cat([keep.new_ones(keep.shape[0], split), keep], dim=1)
            # torchscale zeroes padded positions and masks them as keys
            hidden_states = hidden_states * keep.unsqueeze(-1).to(hidden_states.dtype)
            mask = keep[:, None, None, :]
        hidden_states = self.dropout(hidden_states)

        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, mask, split, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attn += (weights,)

        final = []
        if split:
            final.append(self.vision_layer_norm(hidden_states[:, :split]))
        if hidden_states.shape[1] > split:
            final.append(self.language_layer_norm(hidden_states[:, split:]))
        last_hidden_state = torch.cat(final, dim=1)

        output = Beit3ModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state[:, 0],
            hidden_states=all_hidden,
            attentions=all_attn,
            split_position=split,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["Beit3Model", "Beit3PreTrainedModel", "Beit3ModelOutput"]
