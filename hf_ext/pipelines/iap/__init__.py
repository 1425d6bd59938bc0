"""IAP (images as pivots): cross-lingual alignment of a Chinese text encoder to Stable Diffusion's frozen UNet.

Reconstructed from the abstract of arXiv 2305.11540: see :mod:`hf_ext.pipelines.iap.loss` and ``docs/diffusion.md``.
"""

from .attention_processor import (
    CaptureAttnProcessor,
    CapturedAttention,
    CrossAttentionCapture,
    select_cross_attention_layers,
)
from .loss import (
    IAPLossConfig,
    IAPLossOutput,
    attentive_feature_distance,
    iap_alignment_distance,
    iap_alignment_loss,
    sample_timesteps,
)
from .modeling_iap_projection import IAPTextProjection
from .pipeline_iap import IAPStableDiffusionPipeline, build_iap_pipeline, encode_text_like_sd, tokenize_like_sd

__all__ = [
    "CaptureAttnProcessor",
    "CapturedAttention",
    "CrossAttentionCapture",
    "IAPLossConfig",
    "IAPLossOutput",
    "IAPStableDiffusionPipeline",
    "IAPTextProjection",
    "attentive_feature_distance",
    "build_iap_pipeline",
    "encode_text_like_sd",
    "iap_alignment_distance",
    "iap_alignment_loss",
    "sample_timesteps",
    "select_cross_attention_layers",
    "tokenize_like_sd",
]
