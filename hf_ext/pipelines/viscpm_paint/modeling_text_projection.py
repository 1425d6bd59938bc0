"""The bridge between a language model's hidden states and a Stable Diffusion UNet's cross-attention.

VisCPM-Paint's ``CPMBeeTransBlock`` (OpenBMB/VisCPM ``models/stablediffusion.py``) is
``Linear(llm_dim -> cross_attention_dim, bias=False) -> Dropout(p=0) -> LayerNorm(cross_attention_dim, eps=1e-6)``.
:class:`VisCPMPaintTextProjection` is that block as a diffusers ``ModelMixin``/``ConfigMixin``, so it is saved in its
own ``text_projection/`` subfolder (``config.json`` + ``diffusion_pytorch_model.safetensors``) and recorded in
``model_index.json`` as ``["hf_ext.pipelines.viscpm_paint.modeling_text_projection", "VisCPMPaintTextProjection"]``.
Keep this module path stable: diffusers stores it verbatim.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin  # module-level names are what diffusers' loader looks up
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["VisCPMPaintTextProjection"]


class VisCPMPaintTextProjection(ModelMixin, ConfigMixin):
    r"""
    Projects text-encoder hidden states to the UNet's cross-attention width (``Linear`` without bias, then
    ``LayerNorm``), as VisCPM-Paint's ``CPMBeeTransBlock``.

    Args:
        in_features (`int`):
            Hidden size of the text encoder (4096 for CPM-Bee 10B).
        out_features (`int`):
            The UNet's `cross_attention_dim` (1024 for Stable Diffusion 2.1).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the output LayerNorm (VisCPM uses 1e-6).
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout between the linear layer and the LayerNorm (VisCPM uses 0).
    """

    @register_to_config
    def __init__(self, in_features: int, out_features: int, layer_norm_eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(
                f"`in_features` ({in_features}) and `out_features` ({out_features}) must be positive: set them to "
                "the text encoder's hidden size and the UNet's `cross_attention_dim`."
            )
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.proj_dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_features, eps=layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map `[batch, seq_len, in_features]` to `[batch, seq_len, out_features]`."""
        if hidden_states.shape[-1] != self.config.in_features:
            raise ValueError(
                f"`hidden_states` has last dimension {hidden_states.shape[-1]} but this projection expects "
                f"{self.config.in_features} (the text encoder's hidden size it was built for)."
            )
        return self.layer_norm(self.proj_dropout(self.linear(hidden_states)))
