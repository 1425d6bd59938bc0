"""ELV's explanation-augmented predictor p(y | x, E) as a transformers ``PreTrainedModel``.

Imports only torch, transformers and relative modules, so the folder can ship as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .configuration_elv import ELVPredictorConfig

__all__ = ["ELVPredictorModel", "ELVPredictorOutput", "ELVPreTrainedModel"]

logger = logging.get_logger(__name__)


@dataclass
class ELVPredictorOutput(ModelOutput):
    """
    Output of [`ELVPredictorModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy of the aggregated prediction.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Class scores after aggregating the K explanations.
        pair_logits (`torch.FloatTensor` of shape `(batch_size, num_explanations, num_labels)`):
            Class scores of each (input, explanation) pair on its own (what the E-step uses).
        pooled (`torch.FloatTensor` of shape `(batch_size, num_explanations, pooled_size)`):
            One vector per (input, explanation) pair.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The encoder's hidden states over the flattened pairs, each `(batch_size * num_explanations, seq_len,
            hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            The encoder's attention weights over the flattened pairs.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pair_logits: torch.FloatTensor | None = None
    pooled: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class ELVPreTrainedModel(PreTrainedModel):
    config: ELVPredictorConfig
    config_class = ELVPredictorConfig
    base_model_prefix = "elv_predictor"
    supports_gradient_checkpointing = True
    _supports_sdpa = True


class ELVPredictorModel(ELVPreTrainedModel):
    r"""
    The explanation-augmented prediction module of ELV ("Towards Interpretable Natural Language Understanding with
    Explanations as Latent Variables", Zhou, Hu et al., NeurIPS 2020).

    `input_ids` has shape `(batch_size, num_explanations, seq_len)`: row ``[b, k]`` is the input ``b`` paired with its
    ``k``-th explanation. Each pair is encoded and pooled on its own (`config.pooling`); the K pairs are then
    aggregated (`config.aggregation`) and classified. `explanation_mask` marks which of the K slots hold a real
    explanation (fewer than K can be available). A 2-D `input_ids` is read as K = 1.

    Example:

    ```python
    >>> import torch
    >>> from transformers import BertConfig
    >>> from hf_ext.trainers.elv import ELVPredictorConfig, ELVPredictorModel

    >>> enc = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    >>> model = ELVPredictorModel(ELVPredictorConfig(encoder=enc, num_labels=3))
    >>> out = model(input_ids=torch.randint(0, 100, (2, 4, 12)), labels=torch.tensor([0, 2]))
    >>> out.logits.shape, out.pair_logits.shape
    (torch.Size([2, 3]), torch.Size([2, 4, 3]))
    ```
    """

    def __init__(self, config: ELVPredictorConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)
        hidden = config.encoder.hidden_size
        pooled_size = 2 * hidden if config.pooling == "entity_markers" else hidden
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(pooled_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, num_labels: int, **config_kwargs) -> ELVPredictorModel:
        """Build a predictor around an existing (e.g. pretrained) encoder; the classifier is freshly initialised.

        Args:
            encoder (`PreTrainedModel`): the encoder, e.g. ``AutoModel.from_pretrained("bert-base-cased")``.
            num_labels (`int`): number of classes.
            config_kwargs: other [`ELVPredictorConfig`] fields (``pooling``, ``aggregation``, ...).
        """
        config = ELVPredictorConfig(encoder=encoder.config, num_labels=num_labels, **config_kwargs)
        model = cls(config)
        model.encoder = encoder
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def _pool(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooling = self.config.pooling
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        subj_id, obj_id = self.config.subj_token_id, self.config.obj_token_id
        if subj_id is None or obj_id is None:
            raise ValueError(
                "pooling='entity_markers' needs config.subj_token_id and config.obj_token_id; add the entity marker "
                "tokens to the tokenizer and set both ids (ELVModel.add_entity_markers does this)."
            )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        parts = []
        for token_id in (subj_id, obj_id):
            is_marker = input_ids == token_id
            found = is_marker.any(1)
            if not bool(found.all()):
                # The official code silently falls back to [CLS] here; we do too, but say so.
                logger.warning_once(
                    "An entity marker was truncated away (or missing) in some inputs; their representation falls back "
                    "to the first token. Increase max_seq_length to avoid this."
                )
            position = torch.where(found, is_marker.int().argmax(1), torch.zeros_like(found, dtype=torch.long))
            parts.append(hidden[rows, position])
        return torch.cat(parts, dim=-1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        explanation_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ELVPredictorOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, num_explanations, seq_len)` or `(batch_size, seq_len)`):
                Token ids of each (input, explanation) pair.
            attention_mask (`torch.Tensor` of the same shape as `input_ids`, *optional*):
                1 for real tokens, 0 for padding.
            token_type_ids (`torch.LongTensor` of the same shape as `input_ids`, *optional*):
                Segment ids, for encoders that use them.
            explanation_mask (`torch.Tensor` of shape `(batch_size, num_explanations)`, *optional*):
                1 where slot k holds an explanation, 0 for empty slots. Defaults to all ones.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Gold labels; -100 is ignored.
            inputs_embeds (`torch.FloatTensor` of shape `(batch_size, num_explanations, seq_len, hidden_size)` or
                `(batch_size, seq_len, hidden_size)`, *optional*): instead of `input_ids` (not with
                ``pooling="entity_markers"``, which finds the markers by token id).
            output_attentions, output_hidden_states (`bool`, *optional*): return the encoder's attentions / hidden
                states over the flattened pairs. `return_dict=False` returns a tuple.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ELVPredictorModel needs exactly one of `input_ids` and `inputs_embeds`.")
        tokens = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(1)
            input_ids = input_ids.unsqueeze(1) if input_ids is not None else None
            inputs_embeds = inputs_embeds.unsqueeze(1) if inputs_embeds is not None else None
            attention_mask = attention_mask.unsqueeze(1) if attention_mask is not None else None
            token_type_ids = token_type_ids.unsqueeze(1) if token_type_ids is not None else None
        if tokens.dim() != 3:
            raise ValueError(
                f"input_ids must have shape (batch_size, num_explanations, seq_len); got {tuple(tokens.shape)}."
            )
        if input_ids is None and self.config.pooling == "entity_markers":
            raise ValueError("pooling='entity_markers' finds the markers by token id: pass `input_ids`.")
        batch_size, num_expl, seq_len = tokens.shape
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
        if explanation_mask is None:
            explanation_mask = torch.ones(batch_size, num_expl, dtype=torch.long, device=tokens.device)
        if explanation_mask.shape != (batch_size, num_expl):
            raise ValueError(
                f"explanation_mask must have shape {(batch_size, num_expl)}, got {tuple(explanation_mask.shape)}."
            )

        flat_ids = input_ids.reshape(-1, seq_len) if input_ids is not None else None
        flat_mask = attention_mask.reshape(-1, seq_len)
        encoder_kwargs = {"attention_mask": flat_mask, "return_dict": True}
        if flat_ids is not None:
            encoder_kwargs["input_ids"] = flat_ids
        else:
            encoder_kwargs["inputs_embeds"] = inputs_embeds.reshape(-1, seq_len, inputs_embeds.shape[-1])
        if token_type_ids is not None:
            encoder_kwargs["token_type_ids"] = token_type_ids.reshape(-1, seq_len)
        if output_attentions is not None:
            encoder_kwargs["output_attentions"] = output_attentions
        if output_hidden_states is not None:
            encoder_kwargs["output_hidden_states"] = output_hidden_states
        encoded = self.encoder(**encoder_kwargs)
        hidden = encoded.last_hidden_state
        pooled = self._pool(hidden, flat_ids, flat_mask).reshape(batch_size, num_expl, -1)
        pair_logits = self.classifier(self.dropout(pooled))

        weights = explanation_mask.to(pooled.dtype)
        denom = weights.sum(1, keepdim=True).clamp_min(1.0)
        if self.config.aggregation == "mean":
            aggregated = (pooled * weights.unsqueeze(-1)).sum(1) / denom
            logits = self.classifier(self.dropout(aggregated))
        else:
            logits = (pair_logits * weights.unsqueeze(-1)).sum(1) / denom

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return ELVPredictorOutput(
            loss=loss,
            logits=logits,
            pair_logits=pair_logits,
            pooled=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
