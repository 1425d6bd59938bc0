"""Text-to-image evaluation helpers that run offline with models the caller passes in.

* :func:`clip_score`: torchmetrics' CLIP score (``100 * max(mean cos(image, text), 0)``) with *any* CLIP-like model
  and processor (OpenAI CLIP, Chinese-CLIP, AltCLIP, a tiny random one in tests). Under transformers 5,
  ``get_image_features``/``get_text_features`` return a ``BaseModelOutputWithPooling`` instead of a tensor, which
  torchmetrics 1.9 cannot use; :class:`CLIPFeatureAdapter` returns the projected ``pooler_output`` tensor instead.
* :func:`frechet_distance`: FID through ``torchmetrics.image.fid.FrechetInceptionDistance`` with a feature extractor
  module you pass in (no Inception download). :class:`CLIPImageFeatureExtractor` turns a CLIP vision tower into one
  ("FID_CLIP"); with the standard Inception features use ``feature=2048`` in torchmetrics directly (needs
  ``torch-fidelity`` and a weight download).

The IAP alignment distance (English vs. Chinese conditioning of a frozen UNet) is a diffusion-side measurement; it
lives with its loss as :func:`hf_ext.pipelines.iap.iap_alignment_distance` (metrics import no pipelines).

FID depends on the feature extractor, the image count, resizing and the sampler: compare numbers only when all of these
match.

The file is also an ``evaluate`` module: ``evaluate.load("path/to/hf_ext/metrics/image_eval.py")`` gives
:class:`ImageEval`, computing the CLIP score of ``predictions`` (images) against ``references`` (prompts), with the
model and processor passed to ``compute(..., model=..., processor=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "CLIPFeatureAdapter",
    "CLIPImageFeatureExtractor",
    "ImageEval",
    "clip_score",
    "frechet_distance",
    "to_uint8_tensors",
]


def _features(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ValueError(
            f"The CLIP model returned {type(output).__name__} without a `pooler_output`; pass a model whose "
            "`get_image_features`/`get_text_features` return the projected embeddings."
        )
    return pooled


class CLIPFeatureAdapter(nn.Module):
    """Wraps a CLIP-like model so `get_image_features`/`get_text_features` return tensors (transformers 5 fix)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs))


def to_uint8_tensors(images) -> list[torch.Tensor]:
    """PIL images, `[N, H, W, 3]` numpy arrays in [0, 1] (diffusers' `"np"` output), or `[N, 3, H, W]` tensors in
    [0, 1] (`"pt"` output) -> a list of `[3, H, W]` uint8 tensors."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"`images` as a numpy array must be `[N, H, W, 3]`, got shape {images.shape}.")
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` as a tensor must be `[N, 3, H, W]`, got shape {tuple(images.shape)}.")
        if images.dtype == torch.uint8:
            return list(images)
        if images.min() < 0 or images.max() > 1:
            raise ValueError("Float `images` must lie in [0, 1] (diffusers' `output_type='pt'`/`'np'` range).")
        return list((images * 255).round().to(torch.uint8))
    out = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"`images[{i}]` is a {type(image).__name__}; expected a PIL image.")
        out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous())
    return out


@torch.no_grad()
def clip_score(images, texts: str | Sequence[str], model: nn.Module, processor) -> float:
    r"""
    CLIP score of images against their prompts, through `torchmetrics.functional.multimodal.clip_score`.

    Args:
        images (PIL images, `np.ndarray` or `torch.Tensor`):
            Generated images (see [`to_uint8_tensors`] for the accepted forms).
        texts (`str` or `list[str]`):
            One prompt per image.
        model (`nn.Module`):
            A CLIP-like model with `get_image_features`/`get_text_features` (`CLIPModel`, `ChineseCLIPModel`, ...).
        processor:
            Its processor (`CLIPProcessor`, `ChineseCLIPProcessor`, ...).

    Returns:
        `float`: `max(100 * mean_i cos(E_image_i, E_text_i), 0)`.
    """
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score

    tensors = to_uint8_tensors(images)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) != len(tensors):
        raise ValueError(f"Got {len(tensors)} images but {len(texts)} texts: give one prompt per image.")
    adapter = CLIPFeatureAdapter(model).eval()
    return float(tm_clip_score(tensors, texts, model_name_or_path=lambda: (adapter, processor)))


class CLIPImageFeatureExtractor(nn.Module):
    """FID feature extractor from a CLIP-like vision model you already have (no download).

    Takes `[N, 3, H, W]` float images in [0, 1] (what torchmetrics' FID passes with `normalize=True`), runs the
    processor's resizing/normalisation and returns the projected image embeddings.
    """

    def __init__(self, model: nn.Module, processor):
        super().__init__()
        self.adapter = CLIPFeatureAdapter(model).eval()
        self.processor = processor
        self.num_features = int(
            getattr(model.config, "projection_dim", None) or getattr(model.config, "hidden_size", None) or 0
        )
        if self.num_features <= 0:
            raise ValueError("Could not read the embedding width (`projection_dim`) from the model config.")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        uint8 = [(image.clamp(0, 1) * 255).round().to(torch.uint8).cpu() for image in images]
        pixel_values = self.processor(images=uint8, return_tensors="pt")["pixel_values"]
        device = next(self.adapter.parameters()).device
        return self.adapter.get_image_features(pixel_values.to(device))


@torch.no_grad()
def frechet_distance(real_images, fake_images, feature_extractor: nn.Module, batch_size: int = 32) -> float:
    r"""
    Fréchet distance between the feature distributions of real and generated images (FID with your extractor).

    Args:
        real_images, fake_images:
            Images in any form accepted by [`to_uint8_tensors`]; all of one size within each set.
        feature_extractor (`nn.Module`):
            Maps `[N, 3, H, W]` float images in [0, 1] to `[N, D]` features, e.g. [`CLIPImageFeatureExtractor`]. Set
            a `num_features` attribute to spare torchmetrics a dummy forward pass on a 299x299 image.
        batch_size (`int`, *optional*, defaults to 32):
            Images per feature-extractor call.

    Returns:
        `float`: `||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})` (torchmetrics' implementation).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = torch.stack(to_uint8_tensors(real_images)).float() / 255
    fake = torch.stack(to_uint8_tensors(fake_images)).float() / 255
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least two real and two generated images (a covariance per set).")
    metric = FrechetInceptionDistance(feature=feature_extractor, normalize=True)
    for start in range(0, len(real), batch_size):
        metric.update(real[start : start + batch_size], real=True)
    for start in range(0, len(fake), batch_size):
        metric.update(fake[start : start + batch_size], real=False)
    return float(metric.compute())


class ImageEval(evaluate.Metric):
    """``evaluate`` wrapper: CLIP score of generated images (`predictions`) against their prompts (`references`).

    ``compute(predictions=images, references=prompts, model=clip_model, processor=clip_processor)`` returns
    ``{"clip_score": float}`` (see :func:`clip_score`; works with Chinese CLIP).
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="CLIP score (100 * max(mean cos(image, text), 0)) with a user-supplied CLIP-like model.",
            citation="Hessel et al., CLIPScore: A Reference-free Evaluation Metric for Image Captioning, EMNLP 2021.",
            inputs_description="predictions: PIL images; references: prompts; model, processor: a CLIP model + processor.",
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, model=None, processor=None):
        if model is None or processor is None:
            raise ValueError("Pass `model=` and `processor=` (a CLIP-like model and its processor) to `compute`.")
        return {"clip_score": clip_score(list(predictions), list(references), model, processor)}
