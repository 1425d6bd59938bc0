"""Offline testing support: tiny random models, tokenizers and pipelines, and a local Hub server.

Everything here builds in memory or writes to a local folder; nothing downloads. One naming scheme: ``tiny_<thing>()``
returns a tiny object (model, tokenizer, config, pipeline), ``save_tiny_<thing>(path)`` writes a tiny checkpoint
folder and returns its path. Users import these for their own offline tests of code built on hf_ext::

    from hf_ext.testing import LocalHub, tiny_muffin

    model, processor = tiny_muffin()

Submodules are imported on first use, so ``import hf_ext.testing`` does not import diffusers or trl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule of hf_ext.testing that defines it
_LAZY_ATTRS: dict[str, str] = {
    "tiny_bpe_tokenizer": "tokenizers",
    "gpt2_tokenizer": "tokenizers",
    "DEFAULT_CORPUS": "tokenizers",
    "MULTILINGUAL_CORPUS": "diffusion",
    "ZH_CHARS": "iap",
    "tiny_muffin": "muffin",
    "tiny_muffin_config": "muffin",
    "tiny_muffin_tokenizer": "muffin",
    "tiny_elv_model": "elv",
    "tiny_chinese_tokenizer": "iap",
    "tiny_chinese_text_encoder": "iap",
    "tiny_iap_components": "iap",
    "tiny_iap_pipeline": "iap",
    "tiny_unet": "diffusion",
    "tiny_vae": "diffusion",
    "tiny_scheduler": "diffusion",
    "tiny_llm_text_encoder": "diffusion",
    "tiny_clip_tokenizer": "diffusion",
    "tiny_clip_text_encoder": "diffusion",
    "tiny_viscpm_paint_pipeline": "diffusion",
    "tiny_stable_diffusion_pipeline": "diffusion",
    "save_tiny_vlm": "checkpoints",
    "save_tiny_jiuge": "checkpoints",
    "save_tiny_text_vae": "checkpoints",
    "save_tiny_paint": "checkpoints",
    "LocalHub": "local_hub",
}


def __getattr__(name: str) -> Any:
    submodule = _LAZY_ATTRS.get(name)
    if submodule is None:
        raise AttributeError(f"module 'hf_ext.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRS))


if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import save_tiny_jiuge, save_tiny_paint, save_tiny_text_vae, save_tiny_vlm  # noqa: F401
    from .diffusion import (  # noqa: F401
        MULTILINGUAL_CORPUS,
        tiny_clip_text_encoder,
        tiny_clip_tokenizer,
        tiny_llm_text_encoder,
        tiny_scheduler,
        tiny_stable_diffusion_pipeline,
        tiny_unet,
        tiny_vae,
        tiny_viscpm_paint_pipeline,
    )
    from .elv import tiny_elv_model  # noqa: F401
    from .iap import (  # noqa: F401
        ZH_CHARS,
        tiny_chinese_text_encoder,
        tiny_chinese_tokenizer,
        tiny_iap_components,
        tiny_iap_pipeline,
    )
    from .local_hub import LocalHub  # noqa: F401
    from .muffin import tiny_muffin, tiny_muffin_config, tiny_muffin_tokenizer  # noqa: F401
    from .tokenizers import DEFAULT_CORPUS, gpt2_tokenizer, tiny_bpe_tokenizer  # noqa: F401

__all__ = sorted(_LAZY_ATTRS)
