"""Linear map from a Chinese text encoder's width to the UNet's ``cross_attention_dim`` (AltDiffusion-style).

Needed when the trained Chinese encoder's hidden size differs from the UNet's cross-attention width (e.g. a 768-d
Chinese RoBERTa with SD 2.x's 1024). Saved as a diffusers component in ``text_projection/`` and recorded in
``model_index.json`` as ``["hf_ext.pipelines.iap.modeling_iap_projection", "IAPTextProjection"]``: keep this path.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin  # module-level names are what diffusers' loader looks up
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["IAPTextProjection"]


class IAPTextProjection(ModelMixin, ConfigMixin):
    r"""
    `Linear(in_features -> out_features)` applied to every token state (as AltDiffusion's `transformation`).

    Args:
        in_features (`int`):
            Hidden size of the Chinese text encoder.
        out_features (`int`):
            The UNet's `cross_attention_dim`.
        bias (`bool`, *optional*, defaults to `True`):
            Whether the linear layer has a bias.
    """

    @register_to_config
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"`in_features` ({in_features}) and `out_features` ({out_features}) must be positive.")
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[-1] != self.config.in_features:
            raise ValueError(
                f"`hidden_states` has last dimension {hidden_states.shape[-1]} but this projection expects "
                f"{self.config.in_features}."
            )
        return self.linear(hidden_states)
