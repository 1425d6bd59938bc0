"""DELLA: layer-wise latent variable Transformer VAE (Hu et al., NAACL 2022)."""

from .._registry import register_model
from .configuration_della import ORIGINAL_DELLA_FLAGS, DellaConfig
from .modeling_della import (
    DellaForCausalLM,
    DellaForConditionalGeneration,
    DellaLatentOutput,
    DellaModel,
    DellaPreTrainedModel,
    TextVAEOutput,
)

register_model("della", DellaConfig, models={"AutoModel": DellaModel, "AutoModelForCausalLM": DellaForCausalLM})

__all__ = [
    "DellaConfig",
    "ORIGINAL_DELLA_FLAGS",
    "DellaModel",
    "DellaPreTrainedModel",
    "DellaForCausalLM",
    "DellaForConditionalGeneration",
    "DellaLatentOutput",
    "TextVAEOutput",
]
