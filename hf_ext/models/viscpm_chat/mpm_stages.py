"""MPM training recipe helpers (VisCPM, "Large Multilingual Models Pivot Zero-Shot Multimodal Learning across
Languages", Hu et al. 2023): which parameters train in each stage.

* Stage 1, multimodal pre-training on English image-text pairs: the multilingual LLM is frozen; BEiT-3, the queries
  and the projector train.
* Stage 2, instruction tuning (English + a little translated target-language data): all parameters train.

Paper vs code: the official fine-tuning code keeps BEiT-3's patch embedding frozen in every stage, and Muffin's
DeepSpeed pre-training also stops the vision experts (only the language experts, which carry the queries, move).
Both are available as flags; the defaults follow the paper's description (all visual modules train).
"""

from __future__ import annotations

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


def prepare_mpm_stage(
    model: nn.Module,
    stage: int,
    freeze_patch_embed: bool = False,
    freeze_vision_experts: bool = False,
) -> dict[str, int]:
    """Set `requires_grad` for MPM stage 1 or 2 on a Muffin / VisCPM-Chat model (or its `MuffinModel`).

    Args:
        model (`nn.Module`): a `MuffinForConditionalGeneration`, `VisCPMChatForConditionalGeneration` or their backbone.
        stage (`int`): 1 (LLM and LM head frozen) or 2 (everything trains).
        freeze_patch_embed (`bool`, *optional*, defaults to `False`): keep BEiT-3's patch embedding, CLS token and
            vision position table frozen (official VisCPM fine-tuning code).
        freeze_vision_experts (`bool`, *optional*, defaults to `False`): keep BEiT-3's vision experts and final
            vision LayerNorm frozen (Muffin's DeepSpeed pre-training).

    Returns:
        `dict[str, int]`: number of trainable and frozen parameters.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (pre-training) or 2 (instruction tuning), got {stage!r}.")
    backbone = getattr(model, "model", model)
    for attr in ("vision_tower", "query", "multi_modal_projector", "language_model"):
        if not hasattr(backbone, attr):
            raise ValueError(
                f"prepare_mpm_stage expects a Muffin/VisCPM-Chat model; {type(model).__name__} has no {attr!r}."
            )
    for p in model.parameters():
        p.requires_grad_(stage == 2)
    if stage == 1:
        for module in (backbone.vision_tower, backbone.multi_modal_projector):
            for p in module.parameters():
                p.requires_grad_(True)
        backbone.query.requires_grad_(True)
    tower = backbone.vision_tower
    if freeze_patch_embed:
        emb = tower.embeddings
        for p in (*emb.patch_embed.parameters(), emb.cls_token, emb.vision_position_embeddings.weight):
            p.requires_grad_(False)
    if freeze_vision_experts:
        for layer in tower.layers:
            for p in layer.vision_expert.parameters():
                p.requires_grad_(False)
        for p in tower.vision_layer_norm.parameters():
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    logger.info("MPM stage %d: %d trainable / %d frozen parameters", stage, trainable, frozen)
    return {"trainable": trainable, "frozen": frozen}


__all__ = ["prepare_mpm_stage"]
