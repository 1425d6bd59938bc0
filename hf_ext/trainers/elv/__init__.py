"""ELV: explanations as latent variables (Zhou, Hu et al., NeurIPS 2020, arXiv:2011.05268).

An explanation generator (any seq2seq LM) and an explanation-augmented predictor (any encoder) trained by variational
EM from a few human explanations, plus explanation-based self-training. See ``docs/elv.md``.
"""

from ...models.elv_predictor import ELVPredictorConfig, ELVPredictorModel, ELVPredictorOutput
from .elv_config import ELVConfig
from .elv_model import ELVModel, ELVModelConfig
from .elv_trainer import ELVTrainer
from .retrieval import (
    ExplanationBank,
    e_step_posterior,
    encode_sentences,
    official_code_e_step_distribution,
    similarity_prior,
)

__all__ = [
    "ELVConfig",
    "ELVModel",
    "ELVModelConfig",
    "ELVPredictorConfig",
    "ELVPredictorModel",
    "ELVPredictorOutput",
    "ELVTrainer",
    "ExplanationBank",
    "e_step_posterior",
    "encode_sentences",
    "official_code_e_step_distribution",
    "similarity_prior",
]
