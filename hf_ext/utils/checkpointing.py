"""Crash-safe checkpoints and pickle-free pushes for every hf_ext trainer (one mixin, shared by all of them).

:class:`SafeCheckpointMixin` goes before the ``transformers.Trainer`` (or TRL) base class and changes four things:

* **atomic checkpoints**: ``checkpoint-N`` is written under ``.tmp-checkpoint-N/checkpoint-N`` and renamed into place
  once complete (model, optimizer, scheduler, RNG state, ``trainer_state.json``), so a process killed during a
  checkpoint write (``kill -9``, OOM, pre-emption) never leaves a partial ``checkpoint-N``; a stale
  ``.tmp-checkpoint-N`` is removed by the next save of step N and ignored by resume;
* **resume skips incomplete checkpoints**: ``train(resume_from_checkpoint=True)`` picks the newest ``checkpoint-N``
  that has its ``trainer_state.json`` (folders written by other tools or older versions may lack it) and logs the
  ones it skipped; an explicit incomplete folder is a ``ValueError`` naming the missing file;
* **no pickles**: the training arguments are saved as ``training_args.json`` (``training_args.bin``, a pickle, is
  removed), and ``push_to_hub`` never uploads pickles (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``) or
  checkpoint folders at any depth (``checkpoint-*``, ``.tmp-checkpoint-*``), whatever else a reused ``output_dir``
  holds;
* **weights manifest**: every save writes ``weights_manifest.json`` (sha256 of each ``*.safetensors``) for
  :func:`hf_ext.utils.integrity.verify_weights`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .io import atomic_write

__all__ = [
    "PUSH_IGNORE_PATTERNS",
    "TRAINING_ARGS_JSON",
    "SafeCheckpointMixin",
    "latest_complete_checkpoint",
    "sanitize_local_paths",
]

logger = logging.get_logger(__name__)

TRAINING_ARGS_JSON = "training_args.json"
_TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".tmp-"
PUSH_IGNORE_PATTERNS = [
    "_*",
    "checkpoint-*",
    "*/checkpoint-*",
    ".tmp-*",
    "*/.tmp-*",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
]


def latest_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that has its ``trainer_state.json``; incomplete ones are logged."""
    if not os.path.isdir(folder):
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, path in found:
        if (path / _TRAINER_STATE).is_file():
            return str(path)
        logger.warning(f"Skipping incomplete checkpoint {path} (no {_TRAINER_STATE}); delete it when convenient.")
    return None


def sanitize_local_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every absolute or ``~`` local path replaced by ``"<local path>"`` (for cards and pushes)."""

    def clean(value: Any) -> Any:
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
            return "<local path>"
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {k: clean(v) for k, v in config.items()}


class _PickleFreeApi:
    """Wraps an ``HfApi`` so ``upload_folder`` also ignores :data:`PUSH_IGNORE_PATTERNS`."""

    def __init__(self, api: Any):
        self._api = api

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def upload_folder(self, *args: Any, ignore_patterns: Any = None, **kwargs: Any) -> Any:
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        return self._api.upload_folder(*args, ignore_patterns=[*ignore, *PUSH_IGNORE_PATTERNS], **kwargs)


@contextlib.contextmanager
def _pickle_free_uploads() -> Iterator[None]:
    import transformers.trainer as trainer_module

    original = trainer_module.hf_api
    trainer_module.hf_api = lambda: _PickleFreeApi(original())
    try:
        yield
    finally:
        trainer_module.hf_api = original


class SafeCheckpointMixin:
    """Atomic checkpoints, resume that skips incomplete ones, pickle-free saves and pushes (see the module doc).

    Put it before the ``Trainer`` base: ``class MyTrainer(SafeCheckpointMixin, Trainer)``. hf_ext's trainers get it
    through :class:`hf_ext.hub.cards.HfExtModelCardMixin`.
    """

    _hf_ext_staging: str | None = None
    _hf_ext_deferred_push: bool = False

    # ------------------------------------------------------------------ checkpoints
    def _get_output_dir(self, trial):
        if self._hf_ext_staging is not None:
            return self._hf_ext_staging
        return super()._get_output_dir(trial=trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial=trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # the leftover of a run killed while writing this step
        self.accelerator.wait_for_everyone()
        self._hf_ext_staging, self._hf_ext_deferred_push = staging, False
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._hf_ext_staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part
        final = os.path.join(run_dir, name)
        if self.args.should_save:
            written = os.path.join(staging, name)
            if os.path.isdir(final):  # saving the same step again
                shutil.rmtree(final)
            os.replace(written, final)
            _fsync_dir(run_dir)
            shutil.rmtree(staging, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging):
                self.state.best_model_checkpoint = final
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
        if self._hf_ext_deferred_push:
            self._hf_ext_deferred_push = False
            self._push_from_checkpoint(final)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._hf_ext_staging is not None:  # push the folder once it has its final name
            self._hf_ext_deferred_push = True
            return
        # Settle output_dir *before* the upload is scheduled: transformers uploads it in the background
        # (run_as_future), and a file replaced or deleted while the job reads the folder makes that commit fail
        # silently. The training_args.bin transformers copies in is never uploaded (PUSH_IGNORE_PATTERNS) and is
        # removed by the next save of output_dir.
        self._replace_pickled_args(self.args.output_dir)
        with _pickle_free_uploads():
            super()._push_from_checkpoint(checkpoint_folder)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            found = latest_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} has no complete checkpoint-N folder "
                    f"(one with {_TRAINER_STATE}); pass resume_from_checkpoint=None to start from scratch."
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)) and os.path.isdir(resume_from_checkpoint):
            if not os.path.isfile(os.path.join(resume_from_checkpoint, _TRAINER_STATE)):
                raise ValueError(
                    f"{resume_from_checkpoint} is an incomplete checkpoint (no {_TRAINER_STATE}: its write was "
                    "interrupted); resume from an earlier one or with resume_from_checkpoint=True."
                )
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ saves and pushes
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self._replace_pickled_args(output_dir)
        if not self.args.should_save:
            # transformers calls `_save` on every process; only the saving one owns the folder (another may be
            # renaming it from its staging name at this very moment)
            return
        from .integrity import write_weights_manifest

        write_weights_manifest(output_dir)

    def _replace_pickled_args(self, output_dir: str) -> None:
        """Write the training arguments as JSON (local paths masked) and remove ``training_args.bin``."""
        if not self.args.should_save or not os.path.isdir(output_dir):
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, "training_args.bin"))
        with atomic_write(os.path.join(output_dir, TRAINING_ARGS_JSON), "w") as f:
            json.dump(sanitize_local_paths(self.args.to_dict()), f, indent=2, sort_keys=True, default=str)
            f.write("\n")

    def push_to_hub(self, *args: Any, **kwargs: Any):
        # transformers saves the model over output_dir *before* waiting for a checkpoint push still uploading that
        # folder in the background, so the in-flight upload can read half-replaced files and its commit is lost
        # silently; wait for it first.
        self._finish_current_push()
        with _pickle_free_uploads():
            return super().push_to_hub(*args, **kwargs)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
