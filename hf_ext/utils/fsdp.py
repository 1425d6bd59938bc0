"""FSDP2 with TRL's fused LM head on models whose LM head accelerate puts in an FSDP unit of its own.

accelerate 1.15 (`fsdp2_prepare_model`) carves the output embedding into its own FSDP2 unit, grouped with the
final norm it finds among the direct children of `model.<base_model_prefix>`. A vision-language model laid out like
transformers' Llava (Muffin, VisCPM-Chat: `model.model` holds `vision_tower`, `multi_modal_projector`,
`language_model`) has no norm there, so the LM head's unit is never called: TRL 1.16's fused LM head reads
`lm_head.weight`, finds a sharded DTensor and gathers it with `DTensor.full_tensor()`, whose backward keeps each
rank's own slice of its own gradient instead of reducing it across ranks. The LM head then learns from one rank's
share of the batch (measured: its gradient is 80 % off on 2 CPU ranks, every other parameter exact).

[`unshard_lm_head_with_backbone`] fixes this without touching the library code: it unshards the LM head's unit
when the backbone starts its forward, so the fused head reads an ordinary tensor and FSDP2 reduce-scatters its
gradient at the end of the backward like any other unit's. [`FSDP2FusedLMHeadCallback`] applies it once the
`Trainer` has wrapped the model (hf_ext's `DenseDPOTrainer` adds the callback itself; add it to TRL's `SFTTrainer` /
`DPOTrainer` for Muffin and VisCPM-Chat).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["FSDP2FusedLMHeadCallback", "unshard_lm_head_with_backbone"]


def unshard_lm_head_with_backbone(model: torch.nn.Module) -> bool:
    """Make an FSDP2-sharded model's LM head unit unshard when its backbone's forward starts.

    Does nothing (returns `False`) unless the output embedding is an FSDP2 unit of its own (not the root), which is
    the layout accelerate produces; calling it twice registers one hook.

    Args:
        model (`torch.nn.Module`):
            The model after `accelerator.prepare` (FSDP2 applies `fully_shard` in place).

    Returns:
        `bool`: whether the hook was registered.
    """
    from torch.distributed.fsdp import FSDPModule

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, FSDPModule) or head is model or not isinstance(backbone, torch.nn.Module):
        return False
    if getattr(head, "_hf_ext_unshard_hook", None) is not None:
        return False

    def unshard_head(module, args):
        head.unshard()

    head._hf_ext_unshard_hook = backbone.register_forward_pre_hook(unshard_head)
    logger.info(f"FSDP2: {type(head).__name__} unshards with {type(backbone).__name__} (TRL's fused LM head).")
    return True


class FSDP2FusedLMHeadCallback(TrainerCallback):
    """Applies [`unshard_lm_head_with_backbone`] when training starts (after the `Trainer` wrapped the model)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            unshard_lm_head_with_backbone(model)
