"""One place where hf_ext model classes are registered with the transformers Auto classes."""

from __future__ import annotations

from typing import Any

import transformers

_REGISTERED: dict[str, dict[str, Any]] = {}


def register_model(
    model_type: str,
    config_class: type,
    models: dict[str, type] | None = None,
    processor_class: type | None = None,
    image_processor_class: type | None = None,
    tokenizer_class: type | None = None,
) -> None:
    """Register ``config_class`` under ``model_type`` and each model class with the named Auto class.

    Args:
        model_type (`str`): the config's ``model_type`` (equal to the model folder's name).
        config_class (`type`): the ``PreTrainedConfig`` subclass.
        models (`dict[str, type]`, *optional*): Auto class name -> model class, e.g.
            ``{"AutoModel": MuffinModel, "AutoModelForImageTextToText": MuffinForConditionalGeneration}``.
        processor_class, image_processor_class, tokenizer_class (`type`, *optional*): registered with
            ``AutoProcessor``, ``AutoImageProcessor`` and ``AutoTokenizer``.

    Registration is idempotent: importing a module twice (e.g. via remote code) does not fail.

    It also makes ``save_pretrained`` / ``push_to_hub`` of the model, processor and image processor classes ship
    their code and an ``auto_map`` (see :mod:`hf_ext.hub.remote_code`), so checkpoints load with
    ``trust_remote_code=True`` where hf_ext is not installed, and makes ``from_pretrained`` load only safetensors
    unless the caller opts in with ``use_safetensors=False`` (see :mod:`hf_ext.hub.safe_loading`).
    """
    from ..hub.remote_code import enable_remote_code_export
    from ..hub.safe_loading import enable_clear_config_errors, enable_safe_loading

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
    for cls in [*(models or {}).values(), processor_class, image_processor_class]:
        if cls is not None:
            enable_remote_code_export(cls, model_type)
    for cls in (models or {}).values():
        enable_safe_loading(cls)
    enable_clear_config_errors()
    _REGISTERED[model_type] = {
        "config": config_class,
        "models": dict(models or {}),
        "processor": processor_class,
        "image_processor": image_processor_class,
        "tokenizer": tokenizer_class,
    }


def registered_models() -> dict[str, dict[str, Any]]:
    """Return what hf_ext registered: ``{model_type: {"config": ..., "models": {...}, ...}}``."""
    return dict(_REGISTERED)
