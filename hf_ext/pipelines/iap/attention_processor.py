"""Attention processors that record what a UNet's cross-attention layers (``attn2``) compute.

IAP ("images as pivots", arXiv 2305.11540) compares, layer by layer, the output of Stable Diffusion's frozen
cross-attention for the same noisy image latents when the keys/values come from English (CLIP) text states and when
they come from a Chinese encoder's states. A cross-attention output has the *query's* shape
``[batch, height*width, channels]`` whatever the text length, so the two languages (different tokenizers, different
lengths) can be compared element-wise: the image is the pivot.

:class:`CrossAttentionCapture` swaps a :class:`CaptureAttnProcessor` into the selected ``attn2`` layers for the
duration of a ``with`` block and restores the original processors afterwards. Each capture processor delegates to the
layer's original processor (so SDPA, xformers or any custom processor keeps working) and stores the layer's input
hidden states (the image-side queries) and its output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

__all__ = ["CaptureAttnProcessor", "CapturedAttention", "CrossAttentionCapture", "select_cross_attention_layers"]


def select_cross_attention_layers(unet: nn.Module, layers: str | Sequence[str] = "all") -> dict[str, Attention]:
    """The UNet's cross-attention modules selected by `layers`, keyed by module name.

    Args:
        unet (`nn.Module`):
            A diffusers UNet (or any module holding diffusers `Attention` modules).
        layers (`str` or `list[str]`, *optional*, defaults to `"all"`):
            `"all"` for every cross-attention layer, or module-name prefixes such as `"mid_block"`,
            `"down_blocks.1"` or `"up_blocks.0.attentions.1"` (names as in `unet.named_modules()`).

    Raises:
        ValueError: when the UNet has no cross-attention layer, or a prefix matches none.
    """
    cross = {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and getattr(module, "is_cross_attention", False)
    }
    if not cross:
        raise ValueError("The UNet has no cross-attention layer (`Attention` with `is_cross_attention=True`).")
    if layers == "all":
        return cross
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    selected: dict[str, Attention] = {}
    for prefix in layers:
        matches = {n: m for n, m in cross.items() if n == prefix or n.startswith(prefix.rstrip(".") + ".")}
        if not matches:
            raise ValueError(
                f"`layers` entry {prefix!r} matches no cross-attention layer. Available layers: {sorted(cross)}."
            )
        selected.update(matches)
    return dict(sorted(selected.items(), key=lambda item: list(cross).index(item[0])))


@dataclass
class CapturedAttention:
    """What one cross-attention call saw and produced."""

    hidden_states: torch.Tensor
    """The layer's input (normalised image features: the queries' source), `[batch, tokens, channels]`."""
    output: torch.Tensor
    """The layer's output, same shape as `hidden_states`."""


class CaptureAttnProcessor:
    """Delegates to `base_processor` and records inputs/outputs in `store[name]` while `store` is not `None`."""

    def __init__(self, base_processor, name: str, store: dict[str, CapturedAttention]):
        self.base_processor = base_processor
        self.name = name
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        output = self.base_processor(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        self.store[self.name] = CapturedAttention(hidden_states=hidden_states, output=output)
        return output


class CrossAttentionCapture:
    """Context manager recording the selected cross-attention layers of a UNet.

    Example:

    ```py
    >>> with CrossAttentionCapture(unet, layers="all") as capture:
    ...     unet(latents, t, encoder_hidden_states=text_states)
    >>> outputs = {name: rec.output for name, rec in capture.records.items()}
    ```

    `records` is refilled by every forward pass inside the block (call `clear()` between passes to be safe).
    :meth:`recompute` runs a captured layer again on its captured queries with other text states.
    """

    def __init__(self, unet: nn.Module, layers: str | Sequence[str] = "all"):
        self.unet = unet
        self.layers = select_cross_attention_layers(unet, layers)
        self.records: dict[str, CapturedAttention] = {}
        self._originals: dict[str, object] = {}

    def __enter__(self) -> CrossAttentionCapture:
        for name, module in self.layers.items():
            self._originals[name] = module.processor
            module.set_processor(CaptureAttnProcessor(module.processor, name, self.records))
        return self

    def __exit__(self, *exc) -> None:
        for name, module in self.layers.items():
            module.set_processor(self._originals[name])
        self._originals.clear()

    def clear(self) -> None:
        self.records.clear()

    def recompute(
        self,
        name: str,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run layer `name` (its original processor) on the captured queries with `encoder_hidden_states`.

        `encoder_attention_mask` is a `[batch, seq_len]` 0/1 mask, converted to the additive bias the UNet uses.
        """
        module = self.layers[name]
        if hidden_states is None:
            hidden_states = self.records[name].hidden_states
        bias = None
        if encoder_attention_mask is not None:
            # the same conversion as UNet2DConditionModel.forward
            bias = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            bias = bias.unsqueeze(1)
        processor = self._originals.get(name, module.processor)
        return processor(module, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=bias)
