"""Prompt bookkeeping shared by hf_ext's diffusion pipelines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["negative_prompt_list"]


def negative_prompt_list(negative_prompt: str | Mapping | Sequence[Any] | None, batch_size: int) -> list[Any]:
    """One negative prompt per prompt: `""` for each when `negative_prompt` is `None`, a single string (or CPM-Bee
    dict) repeated `batch_size` times, or a list of exactly `batch_size` entries (as `StableDiffusionPipeline` does).

    Raises:
        ValueError: when a list has another length than `batch_size`.
    """
    if negative_prompt is None:
        return [""] * batch_size
    if isinstance(negative_prompt, (str, Mapping)):
        return [negative_prompt] * batch_size
    if len(negative_prompt) != batch_size:
        raise ValueError(
            f"`negative_prompt` has {len(negative_prompt)} entries but there are {batch_size} prompts: give one "
            "negative prompt per prompt, or a single string."
        )
    return list(negative_prompt)
