"""Safe loading for hf_ext models: safetensors only unless the user opts in, clear errors on broken files.

Every registered hf_ext model class gets a ``from_pretrained`` that

* defaults to ``use_safetensors=True``: a checkpoint that only has pickle weights (``pytorch_model.bin``) is
  refused with an error that says how to opt in (``use_safetensors=False``; transformers then reads it with
  ``torch.load(weights_only=True)``);
* turns safetensors' terse header errors on a corrupted or truncated file into an error that names the
  checkpoint and how to recover;
* takes ``verify_weights=True`` (or ``HF_EXT_VERIFY_WEIGHTS=1``): the weight files are checked against their
  sha256 first (see :mod:`hf_ext.hub.integrity`);

and a ``save_pretrained`` that also writes the weights' sha256 manifest (``weights_manifest.json``).

:func:`enable_clear_config_errors` (applied with the rest by :func:`hf_ext.hub.apply_hub_behaviour`) makes ``AutoConfig.from_pretrained``
(which every ``AutoModel*.from_pretrained`` calls) check a *local* folder first: no ``config.json`` is an error that
says so (instead of "Should have a `model_type` key"), and a ``model_type`` nobody registered, in a config that ships
remote code, is an error naming the registered types (with the closest match) instead of the interactive
"Do you wish to run the custom code?" prompt; ``trust_remote_code=True`` still runs the shipped code.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from pathlib import Path
from typing import Any

from ..utils.integrity import CorruptCheckpointError

__all__ = [
    "CheckpointConfigError",
    "CorruptCheckpointError",
    "check_local_config",
    "enable_clear_config_errors",
    "enable_safe_loading",
]


class CheckpointConfigError(OSError, ValueError):
    """A local checkpoint folder's ``config.json`` is missing, unreadable or names an unknown ``model_type``.

    Both an ``OSError`` and a ``ValueError``: the types transformers raises (and catches) for these cases."""


def check_local_config(
    pretrained_model_name_or_path: Any, subfolder: str = "", trust_remote_code: bool | None = None
) -> None:
    """For a local folder: raise a clear error when ``config.json`` is missing or unreadable, has no ``model_type``,
    or names a ``model_type`` that is not registered while it ships remote code and ``trust_remote_code`` is unset.
    Hub ids and other inputs pass through unchecked."""
    try:
        folder = Path(pretrained_model_name_or_path) / (subfolder or "")
    except TypeError:
        return
    if not folder.is_dir():
        return
    config_file = folder / "config.json"
    has_weights = any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir())
    if not config_file.is_file() and not has_weights:
        return
    if not config_file.is_file():  # a model folder (a processor-only folder has no config.json)
        raise CheckpointConfigError(
            f"{folder} has no config.json, so it is not a complete transformers checkpoint folder (a save that did not "
            "finish, or the wrong folder). Save the model again with `save_pretrained`, or point at the folder that "
            "holds config.json."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointConfigError(f"{config_file} cannot be read as JSON ({e}); save the model again.") from e
    if not isinstance(config, dict):
        raise CheckpointConfigError(f"{config_file} must hold a JSON object, got {type(config).__name__}.")
    model_type = config.get("model_type")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type is None or (model_type in CONFIG_MAPPING) or trust_remote_code is not None:
        return
    if "auto_map" not in config:
        return  # transformers' own error ("does not recognize this architecture") is clear
    known = sorted(CONFIG_MAPPING.keys())
    close = difflib.get_close_matches(str(model_type), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    from hf_ext.models._registry import registered_models

    raise CheckpointConfigError(
        f"{config_file}: model_type {model_type!r} is registered neither by transformers nor by hf_ext (hf_ext "
        f"registers {sorted(registered_models())}).{hint} Fix `model_type`, update hf_ext if the checkpoint is newer, "
        "or pass `trust_remote_code=True` to run the code shipped in the folder."
    )


def enable_clear_config_errors() -> None:
    """Wrap ``transformers.AutoConfig.from_pretrained`` with :func:`check_local_config`. Idempotent."""
    from transformers import AutoConfig

    current = AutoConfig.from_pretrained
    if getattr(current, "_hf_ext_checked", False):
        return
    func = current.__func__

    @functools.wraps(func)
    def from_pretrained(klass, pretrained_model_name_or_path, *args, **kwargs):
        check_local_config(pretrained_model_name_or_path, kwargs.get("subfolder", ""), kwargs.get("trust_remote_code"))
        return func(klass, pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained._hf_ext_checked = True
    AutoConfig.from_pretrained = classmethod(from_pretrained)


def enable_safe_loading(cls: type) -> None:
    """Wrap ``cls.from_pretrained`` as described in the module docstring. Idempotent."""
    current = cls.from_pretrained
    if getattr(current, "_hf_ext_safe", False):
        return
    func = current.__func__

    @functools.wraps(func)
    def from_pretrained(klass, pretrained_model_name_or_path, *args, **kwargs):
        from ..utils.integrity import verification_requested, verify_weights

        if verification_requested(kwargs):
            verify_weights(
                pretrained_model_name_or_path,
                revision=kwargs.get("revision"),
                token=kwargs.get("token"),
                cache_dir=kwargs.get("cache_dir"),
                subfolder=kwargs.get("subfolder", ""),
            )
        if kwargs.get("config") is None:
            check_local_config(pretrained_model_name_or_path, kwargs.get("subfolder", ""), True)
        opted_out = kwargs.get("use_safetensors") is False
        kwargs.setdefault("use_safetensors", True)
        try:
            return func(klass, pretrained_model_name_or_path, *args, **kwargs)
        except OSError as e:
            if not opted_out and "safetensors" in str(e) and "no file named" in str(e).lower():
                raise OSError(
                    f"{pretrained_model_name_or_path} has no safetensors weights. hf_ext loads only safetensors by "
                    "default because pickle files can execute code. If you trust this checkpoint, pass "
                    "`use_safetensors=False` (weights are then read with torch.load(weights_only=True)), or convert "
                    f"it once with `save_pretrained`. Original error: {e}"
                ) from e
            raise
        except Exception as e:
            if type(e).__name__ == "SafetensorError":
                raise CorruptCheckpointError(
                    f"The weights of {pretrained_model_name_or_path} are corrupted or truncated ({e}). If it was "
                    "downloaded, retry with `force_download=True`; if it is a local folder, save it again."
                ) from e
            raise

    from_pretrained._hf_ext_safe = True
    cls.from_pretrained = classmethod(from_pretrained)

    save = cls.save_pretrained

    @functools.wraps(save)
    def save_pretrained(self, save_directory, *args, **kwargs):
        from ..utils.integrity import write_weights_manifest

        result = save(self, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            write_weights_manifest(save_directory)
        return result

    cls.save_pretrained = save_pretrained
