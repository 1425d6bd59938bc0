"""One place where hf_ext model classes are registered with the transformers Auto classes.

The registry records what each model family registers and tells the listeners added with
:func:`add_registration_listener` about it (every family registered so far, then each new one). It knows nothing of
the Hub: :mod:`hf_ext.hub` adds the listener that gives every registered class its Hub behaviour (remote-code export,
safetensors-only loading), so the arrow runs one way, hub -> models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import transformers

_REGISTERED: dict[str, dict[str, Any]] = {}
_LISTENERS: list[Callable[[str, dict[str, Any]], None]] = []


def register_model(
    model_type: str,
    config_class: type,
    models: dict[str, type] | None = None,
    processor_class: type | None = None,
    image_processor_class: type | None = None,
    tokenizer_class: type | None = None,
    variant_classes: list[type] | None = None,
) -> None:
    """Register ``config_class`` under ``model_type`` and each model class with the named Auto class.

    Args:
        model_type (`str`): the config's ``model_type`` (equal to the model folder's name).
        config_class (`type`): the ``PreTrainedConfig`` subclass.
        models (`dict[str, type]`, *optional*): Auto class name -> model class, e.g.
            ``{"AutoModel": MuffinModel, "AutoModelForImageTextToText": MuffinForConditionalGeneration}``.
        processor_class, image_processor_class, tokenizer_class (`type`, *optional*): registered with
            ``AutoProcessor``, ``AutoImageProcessor`` and ``AutoTokenizer``.
        variant_classes (`list[type]`, *optional*): model classes of this ``model_type`` that no Auto class maps to
            because a registered class returns them for some configs (``VisCPMChatForConditionalGeneration`` builds a
            ``VisCPMChatBeeForConditionalGeneration`` for a CPM-Bee ``text_config``). They are recorded so that they
            get the same treatment as the registered models (e.g. the Hub behaviour, see :mod:`hf_ext.hub`).

    Registration is idempotent: importing a module twice (e.g. via remote code) does not fail. The listeners added
    with :func:`add_registration_listener` are called with ``(model_type, entry)`` once the family is registered.
    """
    if getattr(config_class, "model_type", None) != model_type:
        raise ValueError(
            f"{config_class.__name__}.model_type is {getattr(config_class, 'model_type', None)!r}, "
            f"but it is being registered as {model_type!r}; they must be equal."
        )
    transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
    for auto_name, model_class in (models or {}).items():
        auto_cls = getattr(transformers, auto_name, None)
        if auto_cls is None:
            raise ValueError(f"transformers has no Auto class named {auto_name!r} (registering {model_type!r}).")
        auto_cls.register(config_class, model_class, exist_ok=True)
    if processor_class is not None:
        transformers.AutoProcessor.register(config_class, processor_class, exist_ok=True)
    if image_processor_class is not None:
        transformers.AutoImageProcessor.register(
            config_class, slow_image_processor_class=image_processor_class, exist_ok=True
        )
    if tokenizer_class is not None:
        transformers.AutoTokenizer.register(config_class, fast_tokenizer_class=tokenizer_class, exist_ok=True)
    entry = {
        "config": config_class,
        "models": dict(models or {}),
        "variants": list(variant_classes or []),
        "processor": processor_class,
        "image_processor": image_processor_class,
        "tokenizer": tokenizer_class,
    }
    _REGISTERED[model_type] = entry
    for listener in list(_LISTENERS):
        listener(model_type, entry)


def registered_models() -> dict[str, dict[str, Any]]:
    """Return what hf_ext registered: ``{model_type: {"config": ..., "models": {...}, "variants": [...], ...}}``."""
    return dict(_REGISTERED)


def add_registration_listener(listener: Callable[[str, dict[str, Any]], None]) -> None:
    """Call ``listener(model_type, entry)`` (``entry`` as in :func:`registered_models`) for every model family
    registered so far and for each one registered later. Adding the same listener twice adds it once.

    Args:
        listener (`Callable[[str, dict], None]`): called once per :func:`register_model` call; it should be
            idempotent, since a family can be registered again (e.g. when its module is imported twice).
    """
    if listener in _LISTENERS:
        return
    _LISTENERS.append(listener)
    for model_type, entry in list(_REGISTERED.items()):
        listener(model_type, entry)
