"""TRACE: segment-wise recurrent latent variables in a Transformer VAE (reconstructed from the abstract)."""

from .._registry import register_model
from .configuration_trace import TraceConfig
from .modeling_trace import TraceForCausalLM, TraceModel, TracePreTrainedModel

register_model("trace", TraceConfig, models={"AutoModel": TraceModel, "AutoModelForCausalLM": TraceForCausalLM})

__all__ = ["TraceConfig", "TraceModel", "TracePreTrainedModel", "TraceForCausalLM"]
