"""Configuration of ELV's explanation-augmented predictor.

Imports only transformers and the standard library, so the folder can ship as remote code.
"""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["ELVPredictorConfig"]


class ELVPredictorConfig(PreTrainedConfig):
    r"""
    Configuration of [`ELVPredictorModel`], ELV's explanation-augmented prediction module p(y | x, E)
    (Zhou, Hu et al., NeurIPS 2020, arXiv:2011.05268).

    The predictor reads the input paired with each of K explanations (``[CLS] x [SEP] e_k [SEP]`` for a BERT
    tokenizer), pools one vector per pair, aggregates the K vectors and classifies.

    Args:
        encoder (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of the encoder (any model ``AutoModel`` can build from a config: BERT, RoBERTa, ...).
            Defaults to a BERT-base configuration, as in the official code (``bert-base-cased``).
        pooling (`str`, *optional*, defaults to `"cls"`):
            How one (input, explanation) pair becomes a vector: ``"cls"`` (first token, used by the official code for
            aspect sentiment), ``"mean"`` (masked mean of the last hidden states) or ``"entity_markers"``
            (concatenation of the hidden states at the first subject and object marker tokens, used by the official
            code for relation extraction; needs `subj_token_id` and `obj_token_id`).
        aggregation (`str`, *optional*, defaults to `"mean"`):
            How the K pair vectors are combined: ``"mean"`` averages the vectors before the classifier (official
            code); ``"mean_logits"`` classifies each pair and averages the logits.
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the linear classifier.
        subj_token_id (`int`, *optional*):
            Token id of the subject (or aspect) start marker, needed by ``pooling="entity_markers"``.
        obj_token_id (`int`, *optional*):
            Token id of the object start marker, needed by ``pooling="entity_markers"``.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from hf_ext.trainers.elv import ELVPredictorConfig, ELVPredictorModel

    >>> config = ELVPredictorConfig(encoder=BertConfig(num_hidden_layers=2), num_labels=3)
    >>> model = ELVPredictorModel(config)
    ```
    """

    model_type = "elv_predictor"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    pooling: Literal["cls", "mean", "entity_markers"] = "cls"
    aggregation: Literal["mean", "mean_logits"] = "mean"
    classifier_dropout: float = 0.1
    subj_token_id: int | None = None
    obj_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.pooling not in ("cls", "mean", "entity_markers"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'entity_markers', got {self.pooling!r}.")
        if self.aggregation not in ("mean", "mean_logits"):
            raise ValueError(f"aggregation must be 'mean' or 'mean_logits', got {self.aggregation!r}.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}.")

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The encoder's config: it holds the vocabulary (what `resize_token_embeddings` updates)."""
        return self.encoder
