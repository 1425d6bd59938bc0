"""Offline testing support: tiny random models, tokenizers and pipelines, and a local Hub server.

Everything here builds in memory or writes to a local folder; nothing downloads. Users import these for their own
offline tests of code built on hf_ext::

    from hf_ext.testing import LocalHub, tiny_muffin

    model, processor = tiny_muffin()

One naming scheme:

* ``tiny_<thing>(...)`` returns a tiny object in memory: a config (``tiny_<model>_config``), a tokenizer
  (``tiny_<kind>_tokenizer``), a model or a pipeline. Random weights are drawn after ``torch.manual_seed(seed)``;
  models are in eval mode, as ``from_pretrained`` returns them (``tiny_elv_model``: an ``ELVModel`` for its trainer).
  A language model's factory takes its tokenizer and returns the model sized to it (``tiny_gpt2(tokenizer)``); a
  vision-language model or a text encoder comes with the processor / tokenizer built for it, as a pair
  (``model, processor = tiny_muffin()``; ``text_encoder, tokenizer = tiny_clip_text_encoder()``).
* ``save_tiny_<thing>(path, ...)`` saves what ``tiny_<thing>(...)`` builds to a folder and returns its path.
* ``UPPER_CASE`` names are the small corpora and templates the factories use.

Submodules are imported on first use, so ``import hf_ext.testing`` does not import diffusers or trl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule of hf_ext.testing that defines it
_LAZY_ATTRS: dict[str, str] = {
    # tokenizers and corpora
    "DEFAULT_CORPUS": "tokenizers",
    "tiny_bpe_tokenizer": "tokenizers",
    "gpt2_tokenizer": "tokenizers",
    # text models
    "POEMS": "text_models",
    "tiny_gpt2": "text_models",
    "tiny_llama_config": "text_models",
    "tiny_jiuge": "text_models",
    "tiny_jiuge_tokenizer": "text_models",
    "tiny_text_vae": "text_models",
    "tiny_text_vae_config": "text_models",
    "tiny_elv_model": "elv",
    # vision-language models
    "tiny_beit3_config": "muffin",
    "tiny_muffin": "muffin",
    "tiny_muffin_config": "muffin",
    "tiny_muffin_tokenizer": "muffin",
    "TINY_CHAT_TEMPLATE": "llava",
    "tiny_llava": "llava",
    # diffusion
    "MULTILINGUAL_CORPUS": "diffusion",
    "tiny_unet": "diffusion",
    "tiny_vae": "diffusion",
    "tiny_scheduler": "diffusion",
    "tiny_llm_text_encoder": "diffusion",
    "tiny_clip_tokenizer": "diffusion",
    "tiny_clip_text_encoder": "diffusion",
    "tiny_viscpm_paint_pipeline": "diffusion",
    "tiny_stable_diffusion_pipeline": "diffusion",
    "ZH_CHARS": "iap",
    "tiny_chinese_tokenizer": "iap",
    "tiny_chinese_text_encoder": "iap",
    "tiny_iap_components": "iap",
    "tiny_iap_pipeline": "iap",
    # checkpoint folders
    "save_tiny_gpt2": "checkpoints",
    "save_tiny_muffin": "checkpoints",
    "save_tiny_jiuge": "checkpoints",
    "save_tiny_text_vae": "checkpoints",
    "save_tiny_viscpm_paint_pipeline": "checkpoints",
    "save_tiny_iap_pipeline": "checkpoints",
    # the Hub
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
    from .checkpoints import (  # noqa: F401
        save_tiny_gpt2,
        save_tiny_iap_pipeline,
        save_tiny_jiuge,
        save_tiny_muffin,
        save_tiny_text_vae,
        save_tiny_viscpm_paint_pipeline,
    )
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
    from .llava import TINY_CHAT_TEMPLATE, tiny_llava  # noqa: F401
    from .local_hub import LocalHub  # noqa: F401
    from .muffin import tiny_beit3_config, tiny_muffin, tiny_muffin_config, tiny_muffin_tokenizer  # noqa: F401
    from .text_models import (  # noqa: F401
        POEMS,
        tiny_gpt2,
        tiny_jiuge,
        tiny_jiuge_tokenizer,
        tiny_llama_config,
        tiny_text_vae,
        tiny_text_vae_config,
    )
    from .tokenizers import DEFAULT_CORPUS, gpt2_tokenizer, tiny_bpe_tokenizer  # noqa: F401

__all__ = sorted(_LAZY_ATTRS)
