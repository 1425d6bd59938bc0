"""Stable Diffusion with an IAP-trained Chinese text encoder whose width needs a projection.

When the Chinese encoder's hidden size equals the UNet's ``cross_attention_dim`` the IAP result *is* a plain
``StableDiffusionPipeline`` (text_encoder = e.g. ``BertModel``, tokenizer = its tokenizer; the Taiyi precedent).
Otherwise :class:`IAPStableDiffusionPipeline` adds one component, ``text_projection`` (:class:`IAPTextProjection`),
and otherwise behaves exactly like ``StableDiffusionPipeline`` (same ``__call__``, schedulers, callbacks, LoRA on the
UNet, ...).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .._hub import HubSnapshotMixin
from .._prompts import negative_prompt_list
from .modeling_iap_projection import IAPTextProjection

__all__ = ["IAPStableDiffusionPipeline", "build_iap_pipeline", "encode_text_like_sd", "tokenize_like_sd"]


def tokenize_like_sd(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    """Tokenize as `StableDiffusionPipeline.encode_prompt` does: pad to `model_max_length`, truncate."""
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def encode_text_like_sd(
    text_encoder: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    text_projection: IAPTextProjection | None = None,
) -> torch.Tensor:
    """Text states as Stable Diffusion computes them: `text_encoder(ids)[0]` (the mask only when
    `text_encoder.config.use_attention_mask` is true, as in diffusers), then the optional projection.

    Training (``examples/iap/train_iap.py``) and inference both use this function, so they cannot drift apart.
    """
    use_mask = getattr(text_encoder.config, "use_attention_mask", False) and attention_mask is not None
    hidden = text_encoder(input_ids, attention_mask=attention_mask if use_mask else None)[0]
    if text_projection is not None:
        hidden = text_projection(hidden.to(text_projection.dtype))
    return hidden


def build_iap_pipeline(
    vae: AutoencoderKL,
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unet: UNet2DConditionModel,
    scheduler: KarrasDiffusionSchedulers,
    text_projection: IAPTextProjection | None = None,
) -> StableDiffusionPipeline:
    """The IAP inference artefact: a plain ``StableDiffusionPipeline`` (no safety checker) when ``text_projection``
    is ``None`` (the encoder width already matches), else an :class:`IAPStableDiffusionPipeline`."""
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if text_projection is None:
        return StableDiffusionPipeline(**components)
    return IAPStableDiffusionPipeline(text_projection=text_projection, **components)


class IAPStableDiffusionPipeline(HubSnapshotMixin, StableDiffusionPipeline):
    r"""
    `StableDiffusionPipeline` whose (Chinese) text encoder states pass through `text_projection` before the UNet.

    Args:
        vae ([`AutoencoderKL`]), unet ([`UNet2DConditionModel`]), scheduler ([`SchedulerMixin`]):
            Stable Diffusion's frozen components.
        text_encoder ([`~transformers.PreTrainedModel`]):
            The IAP-trained Chinese encoder (any model whose first output is the token states, e.g. `BertModel`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer; prompts are padded to `model_max_length` as in Stable Diffusion.
        text_projection ([`IAPTextProjection`], *optional*):
            Maps the encoder width to `unet.config.cross_attention_dim`; `None` when they already match.
        safety_checker, feature_extractor, image_encoder (*optional*):
            As in `StableDiffusionPipeline` (default `None`).
        requires_safety_checker (`bool`, *optional*, defaults to `False`):
            As in `StableDiffusionPipeline`.

    Load a saved pipeline with `IAPStableDiffusionPipeline.from_pretrained(path)`.
    """

    model_cpu_offload_seq = "text_encoder->text_projection->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder", "text_projection"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        text_projection: IAPTextProjection | None = None,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = False,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        width = text_projection.config.out_features if text_projection is not None else None
        if unet is not None and width is not None and width != unet.config.cross_attention_dim:
            raise ValueError(
                f"`text_projection` outputs {width} features but the UNet's `cross_attention_dim` is "
                f"{unet.config.cross_attention_dim}."
            )
        self.register_modules(text_projection=text_projection)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.encode_prompt
    # (differs: text states pass through `text_projection`; no CLIP-only `clip_skip`, text-encoder LoRA or textual inversion)
    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""
        Encode prompts into projected text states (`StableDiffusionPipeline.encode_prompt`'s contract).

        `prompt_embeds` / `negative_prompt_embeds` are *projected* states (width `cross_attention_dim`). `clip_skip`
        and `lora_scale` (text-encoder LoRA) are CLIP-specific and not supported.
        """
        if clip_skip is not None:
            raise ValueError("`clip_skip` only applies to CLIP text encoders; leave it unset with an IAP encoder.")
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        if prompt_embeds is None:
            prompt_embeds = self._encode([prompt] if isinstance(prompt, str) else list(prompt), device)
        prompt_embeds = prompt_embeds.to(dtype=self.unet.dtype, device=device)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = self._encode(negative_prompt_list(negative_prompt, batch_size), device)

        bs_embed, seq_len, _ = prompt_embeds.shape
        prompt_embeds = prompt_embeds.repeat(1, num_images_per_prompt, 1).view(
            bs_embed * num_images_per_prompt, seq_len, -1
        )
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=self.unet.dtype, device=device)
            seq_len = negative_prompt_embeds.shape[1]
            negative_prompt_embeds = negative_prompt_embeds.repeat(1, num_images_per_prompt, 1).view(
                batch_size * num_images_per_prompt, seq_len, -1
            )
        return prompt_embeds, negative_prompt_embeds

    def _encode(self, texts: list[str], device) -> torch.Tensor:
        inputs = tokenize_like_sd(self.tokenizer, texts)
        return encode_text_like_sd(
            self.text_encoder,
            inputs["input_ids"].to(device),
            inputs["attention_mask"].to(device),
            getattr(self, "text_projection", None),
        )
