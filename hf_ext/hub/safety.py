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
"""

from __future__ import annotations

import functools
import os

__all__ = ["CorruptCheckpointError", "enable_safe_loading"]


class CorruptCheckpointError(OSError):
    """A weight file exists but cannot be read (truncated, corrupted, or not a safetensors file)."""


def enable_safe_loading(cls: type) -> None:
    """Wrap ``cls.from_pretrained`` as described in the module docstring. Idempotent."""
    current = cls.from_pretrained
    if getattr(current, "_hf_ext_safe", False):
        return
    func = current.__func__

    @functools.wraps(func)
    def from_pretrained(klass, pretrained_model_name_or_path, *args, **kwargs):
        from .integrity import verification_requested, verify_weights

        if verification_requested(kwargs):
            verify_weights(
                pretrained_model_name_or_path,
                revision=kwargs.get("revision"),
                token=kwargs.get("token"),
                cache_dir=kwargs.get("cache_dir"),
                subfolder=kwargs.get("subfolder", ""),
            )
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
        from .integrity import write_weights_manifest

        result = save(self, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            write_weights_manifest(save_directory)
        return result

    cls.save_pretrained = save_pretrained
