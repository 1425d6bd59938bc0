"""hf_ext: THUNLP/OpenBMB research systems as first-class Hugging Face citizens.

Importing ``hf_ext`` registers every hf_ext model with the transformers Auto classes (``AutoConfig``,
``AutoModel*``, ``AutoProcessor``, ...), so checkpoints load with ``from_pretrained`` and no
``trust_remote_code``. Trainers and pipelines are imported lazily on first attribute access, so
``import hf_ext`` stays cheap (it does not import trl or diffusers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import models  # noqa: F401  (registers the Auto classes)
from .trainers import elv as _elv  # noqa: F401  (registers ELV's predictor, model type `elv_predictor`)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY_ATTRS: dict[str, str] = {
    "DenseDPOConfig": "hf_ext.trainers.dense_dpo",
    "DenseDPOTrainer": "hf_ext.trainers.dense_dpo",
    "TextVAEConfig": "hf_ext.trainers.text_vae",
    "TextVAETrainer": "hf_ext.trainers.text_vae",
    "CAREConfig": "hf_ext.trainers.care",
    "CARETrainer": "hf_ext.trainers.care",
    "ELVConfig": "hf_ext.trainers.elv",
    "ELVModel": "hf_ext.trainers.elv",
    "ELVTrainer": "hf_ext.trainers.elv",
    "VisCPMPaintPipeline": "hf_ext.pipelines.viscpm_paint",
    "IAPStableDiffusionPipeline": "hf_ext.pipelines.iap",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRS))


if TYPE_CHECKING:  # pragma: no cover
    from .pipelines.iap import IAPStableDiffusionPipeline  # noqa: F401
    from .pipelines.viscpm_paint import VisCPMPaintPipeline  # noqa: F401
    from .trainers.care import CAREConfig, CARETrainer  # noqa: F401
    from .trainers.dense_dpo import DenseDPOConfig, DenseDPOTrainer  # noqa: F401
    from .trainers.elv import ELVConfig, ELVModel, ELVTrainer  # noqa: F401
    from .trainers.text_vae import TextVAEConfig, TextVAETrainer  # noqa: F401

__all__ = ["__version__", *_LAZY_ATTRS]
