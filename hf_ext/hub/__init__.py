"""hf_ext on the Hugging Face Hub: what every registered hf_ext model gets, model cards, weight integrity.

The Hub behaviour of hf_ext's models is applied here, in one place, to every model family
:func:`hf_ext.models._registry.register_model` records (:func:`apply_hub_behaviour`):

* ``save_pretrained`` / ``push_to_hub`` of the model, processor and image processor classes ship the model's code and
  an ``auto_map``, so the checkpoint loads with ``trust_remote_code=True`` where hf_ext is not installed
  (:mod:`hf_ext.hub.remote_code`);
* ``from_pretrained`` of the model classes loads only safetensors unless the caller opts in with
  ``use_safetensors=False``, turns broken files into clear errors, and ``save_pretrained`` writes the weights' sha256
  manifest (:mod:`hf_ext.hub.safe_loading`, :mod:`hf_ext.hub.integrity`);
* ``AutoConfig.from_pretrained`` explains a local folder without ``config.json`` or with an unknown ``model_type``.

``import hf_ext`` installs it (:func:`install_hub_behaviour`, right after the models are registered), so it applies to
the families registered then and to every one registered later. The models package knows nothing of this module: the
arrow runs hub -> models only.
"""

from __future__ import annotations

from typing import Any

from .remote_code import enable_remote_code_export
from .safe_loading import enable_clear_config_errors, enable_safe_loading

__all__ = ["apply_hub_behaviour", "install_hub_behaviour"]


def apply_hub_behaviour(model_type: str, entry: dict[str, Any]) -> None:
    """Give one registered model family its Hub behaviour (see the module docstring). Idempotent.

    Args:
        model_type (`str`): the family's ``model_type``.
        entry (`dict`): its record, as returned by :func:`hf_ext.models._registry.registered_models`: the model
            classes (``"models"``: Auto class name -> class, and ``"variants"``), ``"processor"`` and
            ``"image_processor"``.
    """
    model_classes = [*entry["models"].values(), *entry.get("variants", ())]
    for cls in [*model_classes, entry.get("processor"), entry.get("image_processor")]:
        if cls is not None:
            enable_remote_code_export(cls, model_type)
    for cls in model_classes:
        enable_safe_loading(cls)
    enable_clear_config_errors()


def install_hub_behaviour() -> None:
    """Apply :func:`apply_hub_behaviour` to every model family registered so far and to each one registered later.
    Idempotent; called by ``import hf_ext`` once its models are registered."""
    from ..models._registry import add_registration_listener

    add_registration_listener(apply_hub_behaviour)
