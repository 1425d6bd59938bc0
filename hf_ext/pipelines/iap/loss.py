"""The IAP ("images as pivots") cross-lingual alignment loss, reconstructed from the paper's abstract.

IAP (Hu et al., "Efficient Cross-Lingual Transfer for Chinese Stable Diffusion with Images as Pivots",
arXiv 2305.11540) trains only a Chinese text encoder so that Stable Diffusion's *frozen* cross-attention produces, for
the same noisy image latents, the same "attentive features" with the Chinese caption as with the English one. The
abstract says it minimises "the distance of attentive features produced from cross-attention between images and each
language respectively".

**Reconstructed.** The paper body (exact layers, distance, timestep sampling, extra terms) could not be read, so every
one of those choices is an argument here, and the defaults are *our* choices, not the paper's:

* ``pivot="shared_queries"`` (default): one no-grad UNet pass with the English states records every selected
  ``attn2`` layer's queries and output; each layer is then re-run on *those same* queries with the Chinese states.
  Both languages attend from literally the same image features (the literal reading of "images as pivots"); it costs
  one UNet pass plus one attention call per layer. ``pivot="two_pass"`` runs the UNet once per language instead (later
  layers' queries then differ between the languages; gradients flow through the whole frozen UNet).
* ``layers="all"`` cross-attention layers; ``distance="mse"`` (also ``"l2"``: mean per-position Euclidean distance,
  ``"cosine"``: mean ``1 - cos``); ``layer_reduction="mean"`` over layers (``"sum"`` also available).
* Timesteps: :func:`sample_timesteps` (uniform over ``[min_timestep, max_timestep]``, or stratified).

Gradients reach only the Chinese states (hence the Chinese encoder): the English pass runs under ``torch.no_grad`` and
the UNet's parameters are expected to be frozen (``requires_grad_(False)``); the loss raises if any UNet parameter
would receive a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attention_processor import CrossAttentionCapture

__all__ = [
    "IAPLossConfig",
    "IAPLossOutput",
    "attentive_feature_distance",
    "iap_alignment_distance",
    "iap_alignment_loss",
    "sample_timesteps",
]

Distance = Literal["mse", "l2", "cosine"]


@dataclass
class IAPLossConfig:
    """Knobs of the reconstructed IAP loss (defaults are our choices; see the module docstring).

    Args:
        layers (`str` or `list[str]`, defaults to `"all"`): cross-attention layers compared (`"all"` or name prefixes).
        distance (`str`, defaults to `"mse"`): `"mse"`, `"l2"` or `"cosine"`.
        layer_reduction (`str`, defaults to `"mean"`): how per-layer distances combine (`"mean"` or `"sum"`).
        pivot (`str`, defaults to `"shared_queries"`): `"shared_queries"` or `"two_pass"`.
        timestep_sampling (`str`, defaults to `"uniform"`): `"uniform"` or `"stratified"`.
        min_timestep (`int`, defaults to 0): smallest timestep sampled.
        max_timestep (`int`, *optional*): largest timestep sampled (defaults to `num_train_timesteps - 1`).
        use_encoder_attention_mask (`bool`, defaults to `False`): mask Chinese padding in cross-attention. Stable
            Diffusion pipelines pass no text mask at inference, so training without one matches inference.
        lambda_denoise (`float`, defaults to 0.0): weight of an extra noise-prediction MSE through the frozen UNet
            with the Chinese states (not part of the abstract's description).
        uncond_dropout (`float`, defaults to 0.1): probability to replace a caption pair by `("", "")`, so the encoder
            also learns the empty prompt used for classifier-free guidance.
    """

    layers: str | list[str] = "all"
    distance: Distance = "mse"
    layer_reduction: Literal["mean", "sum"] = "mean"
    pivot: Literal["shared_queries", "two_pass"] = "shared_queries"
    timestep_sampling: Literal["uniform", "stratified"] = "uniform"
    min_timestep: int = 0
    max_timestep: int | None = None
    use_encoder_attention_mask: bool = False
    lambda_denoise: float = 0.0
    uncond_dropout: float = 0.1

    def __post_init__(self):
        if self.distance not in ("mse", "l2", "cosine"):
            raise ValueError(f"`distance` must be 'mse', 'l2' or 'cosine', got {self.distance!r}.")
        if self.layer_reduction not in ("mean", "sum"):
            raise ValueError(f"`layer_reduction` must be 'mean' or 'sum', got {self.layer_reduction!r}.")
        if self.pivot not in ("shared_queries", "two_pass"):
            raise ValueError(f"`pivot` must be 'shared_queries' or 'two_pass', got {self.pivot!r}.")
        if self.timestep_sampling not in ("uniform", "stratified"):
            raise ValueError(f"`timestep_sampling` must be 'uniform' or 'stratified', got {self.timestep_sampling!r}.")
        if not 0.0 <= self.uncond_dropout < 1.0:
            raise ValueError(f"`uncond_dropout` must be in [0, 1), got {self.uncond_dropout}.")
        if self.lambda_denoise < 0:
            raise ValueError(f"`lambda_denoise` must be >= 0, got {self.lambda_denoise}.")


@dataclass
class IAPLossOutput:
    """Result of :func:`iap_alignment_loss`."""

    loss: torch.Tensor
    """Scalar alignment loss (layers combined by `layer_reduction`)."""
    per_layer: dict[str, torch.Tensor]
    """Distance of each compared layer (scalars, same graph as `loss`)."""
    zh_model_pred: torch.Tensor | None = None
    """The UNet's prediction with the Chinese states (`pivot="two_pass"` only; reuse it for a denoising term)."""


def attentive_feature_distance(
    english: torch.Tensor, chinese: torch.Tensor, distance: Distance = "mse"
) -> torch.Tensor:
    """Distance between two `[batch, tokens, channels]` attention outputs, averaged over batch and tokens.

    `"mse"`: mean squared difference over all elements; `"l2"`: mean over (batch, token) of the Euclidean norm of
    the channel difference; `"cosine"`: mean of `1 - cos` over (batch, token).
    """
    if english.shape != chinese.shape:
        raise ValueError(
            f"Attention outputs differ in shape: English {tuple(english.shape)} vs Chinese {tuple(chinese.shape)}; "
            "both must come from the same layer and the same latents."
        )
    english = english.float()
    chinese = chinese.float()
    if distance == "mse":
        return F.mse_loss(chinese, english)
    if distance == "l2":
        return (chinese - english).norm(dim=-1).mean()
    if distance == "cosine":
        return (1 - F.cosine_similarity(chinese, english, dim=-1)).mean()
    raise ValueError(f"`distance` must be 'mse', 'l2' or 'cosine', got {distance!r}.")


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int = 1000,
    strategy: Literal["uniform", "stratified"] = "uniform",
    min_timestep: int = 0,
    max_timestep: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training timesteps for the IAP loss (our choice; the paper's scheme is unknown).

    `"uniform"`: i.i.d. uniform integers in `[min_timestep, max_timestep]`. `"stratified"`: the range is cut into
    `batch_size` equal bins and one timestep is drawn per bin (same marginal, lower variance per batch).
    """
    max_timestep = num_train_timesteps - 1 if max_timestep is None else max_timestep
    if not 0 <= min_timestep <= max_timestep < num_train_timesteps:
        raise ValueError(
            f"Need 0 <= min_timestep ({min_timestep}) <= max_timestep ({max_timestep}) < num_train_timesteps "
            f"({num_train_timesteps})."
        )
    span = max_timestep - min_timestep + 1
    if strategy == "uniform":
        t = torch.randint(min_timestep, max_timestep + 1, (batch_size,), generator=generator)
    elif strategy == "stratified":
        u = torch.rand(batch_size, generator=generator)
        edges = torch.arange(batch_size, dtype=torch.float64) / batch_size
        t = min_timestep + ((edges + u.double() / batch_size) * span).floor().long().clamp(max=span - 1)
        t = t[torch.randperm(batch_size, generator=generator)]
    else:
        raise ValueError(f"`strategy` must be 'uniform' or 'stratified', got {strategy!r}.")
    return t.to(device) if device is not None else t


def iap_alignment_loss(
    unet: nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    en_hidden_states: torch.Tensor,
    zh_hidden_states: torch.Tensor,
    zh_attention_mask: torch.Tensor | None = None,
    en_attention_mask: torch.Tensor | None = None,
    layers: str | Sequence[str] = "all",
    distance: Distance = "mse",
    layer_reduction: Literal["mean", "sum"] = "mean",
    pivot: Literal["shared_queries", "two_pass"] = "shared_queries",
) -> IAPLossOutput:
    r"""
    Images-as-pivots alignment loss between English and Chinese conditioning of a frozen UNet (reconstructed; see the
    module docstring for which parts are our choices).

    Args:
        unet (`UNet2DConditionModel`):
            The frozen Stable Diffusion UNet (`requires_grad_(False)`).
        noisy_latents (`torch.Tensor`):
            `z_t`: noised VAE latents of the pivot images, `[batch, 4, h, w]`.
        timesteps (`torch.Tensor`):
            `[batch]` timesteps of `noisy_latents`.
        en_hidden_states (`torch.Tensor`):
            English text states from SD's frozen text encoder, `[batch, L_en, cross_attention_dim]` (no gradient is
            taken through them).
        zh_hidden_states (`torch.Tensor`):
            Chinese text states (after any projection), `[batch, L_zh, cross_attention_dim]`; the gradient flows here.
        zh_attention_mask (`torch.Tensor`, *optional*):
            `[batch, L_zh]` 0/1 mask of the Chinese states, used by cross-attention when given.
        en_attention_mask (`torch.Tensor`, *optional*):
            `[batch, L_en]` mask of the English states (SD uses none).
        layers (`str` or `list[str]`, *optional*, defaults to `"all"`):
            Cross-attention layers compared (see [`select_cross_attention_layers`]).
        distance (`str`, *optional*, defaults to `"mse"`):
            `"mse"`, `"l2"` or `"cosine"` (see [`attentive_feature_distance`]).
        layer_reduction (`str`, *optional*, defaults to `"mean"`):
            Combine per-layer distances by `"mean"` or `"sum"`.
        pivot (`str`, *optional*, defaults to `"shared_queries"`):
            `"shared_queries"` re-runs each layer on the English pass's queries; `"two_pass"` runs the UNet per language.

    Returns:
        [`IAPLossOutput`]
    """
    if layer_reduction not in ("mean", "sum"):
        raise ValueError(f"`layer_reduction` must be 'mean' or 'sum', got {layer_reduction!r}.")
    if pivot not in ("shared_queries", "two_pass"):
        raise ValueError(f"`pivot` must be 'shared_queries' or 'two_pass', got {pivot!r}.")
    batch = noisy_latents.shape[0]
    for name, states in (("en_hidden_states", en_hidden_states), ("zh_hidden_states", zh_hidden_states)):
        if states.ndim != 3 or states.shape[0] != batch:
            raise ValueError(
                f"`{name}` must be `[batch={batch}, seq_len, dim]` to match `noisy_latents`, got {tuple(states.shape)}."
            )
    cross_dim = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if cross_dim is not None and zh_hidden_states.shape[-1] != cross_dim:
        raise ValueError(
            f"`zh_hidden_states` has width {zh_hidden_states.shape[-1]} but the UNet's cross_attention_dim is "
            f"{cross_dim}: project the Chinese encoder's states first (e.g. with `IAPTextProjection`)."
        )
    if torch.is_grad_enabled() and any(p.requires_grad for p in unet.parameters()):
        raise ValueError(
            "The UNet has trainable parameters; IAP keeps Stable Diffusion frozen. Call `unet.requires_grad_(False)`."
        )

    zh_model_pred = None
    with CrossAttentionCapture(unet, layers) as capture:
        with torch.no_grad():
            unet(
                noisy_latents,
                timesteps,
                encoder_hidden_states=en_hidden_states,
                encoder_attention_mask=en_attention_mask,
                return_dict=False,
            )
        english = {name: record.output.detach() for name, record in capture.records.items()}
        if pivot == "shared_queries":
            chinese = {
                name: capture.recompute(name, zh_hidden_states, encoder_attention_mask=zh_attention_mask)
                for name in english
            }
        else:
            capture.clear()
            zh_model_pred = unet(
                noisy_latents,
                timesteps,
                encoder_hidden_states=zh_hidden_states,
                encoder_attention_mask=zh_attention_mask,
                return_dict=False,
            )[0]
            chinese = {name: record.output for name, record in capture.records.items()}

    per_layer = {name: attentive_feature_distance(english[name], chinese[name], distance) for name in english}
    stacked = torch.stack(list(per_layer.values()))
    loss = stacked.mean() if layer_reduction == "mean" else stacked.sum()
    return IAPLossOutput(loss=loss, per_layer=per_layer, zh_model_pred=zh_model_pred)


@torch.no_grad()
def iap_alignment_distance(
    unet: nn.Module,
    scheduler,
    latents: torch.Tensor,
    en_hidden_states: torch.Tensor,
    zh_hidden_states: torch.Tensor,
    timesteps: Sequence[int] = (100, 300, 500, 700, 900),
    generator: torch.Generator | None = None,
    **loss_kwargs,
) -> dict:
    r"""
    IAP alignment distance of a Chinese encoder on held-out (image latents, English states, Chinese states) triples:
    a validation measurement for IAP training.

    Noise is drawn once (from `generator`) and added at each of `timesteps` with `scheduler.add_noise`; the distance
    is [`iap_alignment_loss`] without gradient (same `layers`/`distance`/`pivot` options through `loss_kwargs`).

    Args:
        unet (`UNet2DConditionModel`): the frozen Stable Diffusion UNet.
        scheduler: a diffusers scheduler with `add_noise` (the UNet's training scheduler).
        latents (`torch.Tensor`): clean VAE latents of the held-out images, `[batch, 4, h, w]`.
        en_hidden_states, zh_hidden_states (`torch.Tensor`): see [`iap_alignment_loss`].
        timesteps (`list[int]`, *optional*, defaults to `(100, 300, 500, 700, 900)`): the fixed timesteps.
        generator (`torch.Generator`, *optional*): generator of the noise.

    Returns:
        `dict`: `{"mean": float, "per_timestep": {t: float}, "per_layer": {name: float}}` (per-layer values averaged
        over timesteps).
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    per_timestep: dict[int, float] = {}
    per_layer: dict[str, float] = {}
    for t in timesteps:
        t_batch = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t_batch)
        out = iap_alignment_loss(unet, noisy, t_batch, en_hidden_states, zh_hidden_states, **loss_kwargs)
        per_timestep[int(t)] = float(out.loss)
        for name, value in out.per_layer.items():
            per_layer[name] = per_layer.get(name, 0.0) + float(value) / len(timesteps)
    mean = sum(per_timestep.values()) / len(per_timestep)
    return {"mean": mean, "per_timestep": per_timestep, "per_layer": per_layer}
