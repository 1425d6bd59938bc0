"""Opt-in integrity check of saved weights: a sha256 manifest written at save, verified at load.

safetensors detects a damaged *header* (hf_ext turns that into :class:`~hf_ext.utils.integrity.CorruptCheckpointError`),
but bytes changed inside the tensor data load silently. So every ``save_pretrained`` of a registered hf_ext model
(and every checkpoint and final save of an hf_ext trainer, whatever the model) writes :data:`MANIFEST_NAME` next to
the weights: the sha256 and size of each ``*.safetensors`` file. :func:`verify_weights` (or
``from_pretrained(..., verify_weights=True)`` on hf_ext model classes, or ``HF_EXT_VERIFY_WEIGHTS=1``) checks them:

* a local folder: against its manifest (a folder without one cannot be verified: error);
* a Hub repository: each weight file stored with LFS against the sha256 the Hub recorded at upload (independent of
  the manifest), and a weight file stored without LFS against the repository's manifest.

See ``docs/hub.md`` for exactly what is and is not detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .io import atomic_write

__all__ = [
    "MANIFEST_NAME",
    "CorruptCheckpointError",
    "WeightsIntegrityError",
    "sha256_file",
    "verify_weights",
    "write_weights_manifest",
]

logger = logging.get_logger(__name__)

MANIFEST_NAME = "weights_manifest.json"
_FORMAT = "hf_ext.weights_manifest/1"


class CorruptCheckpointError(OSError):
    """A weight file exists but cannot be read (truncated, corrupted, or not a safetensors file)."""


class WeightsIntegrityError(CorruptCheckpointError):
    """A weight file does not match its recorded sha256 / size, is missing, or cannot be verified."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(".safetensors"))


def write_weights_manifest(folder: str | os.PathLike, files: Iterable[str] | None = None) -> Path | None:
    """Write :data:`MANIFEST_NAME` in ``folder``: sha256 and size of each weight file (default: every
    ``*.safetensors`` file at its top level). Written atomically; returns its path, or ``None`` when there are no
    weight files."""
    folder = Path(folder)
    names = sorted(files) if files is not None else _weight_files(folder)
    if not names:
        return None
    entries = {name: {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size} for name in names}
    path = folder / MANIFEST_NAME
    with atomic_write(path, "w") as f:
        json.dump({"format": _FORMAT, "algorithm": "sha256", "files": entries}, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def _read_manifest(path: Path, where: str) -> dict[str, dict[str, Any]]:
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("unsupported manifest")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsIntegrityError(f"{where}: {MANIFEST_NAME} cannot be read ({e}); save the model again.") from e
    return files


def _check(path: Path, name: str, expected_sha: str, expected_size: int | None, where: str, fix: str) -> None:
    if not path.is_file():
        raise WeightsIntegrityError(f"{where}: {name} is listed with sha256 {expected_sha} but is missing. {fix}")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise WeightsIntegrityError(
            f"{where}: {name} has {size} bytes, expected {expected_size} (truncated or replaced). {fix}"
        )
    actual = sha256_file(path)
    if actual != expected_sha:
        raise WeightsIntegrityError(
            f"{where}: {name} has sha256 {actual}, expected {expected_sha}: the file is corrupted or was modified "
            f"after it was saved. {fix}"
        )


def _verify_local(folder: Path) -> dict[str, str]:
    where = str(folder)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise WeightsIntegrityError(
            f"{where} has no {MANIFEST_NAME}, so its weights cannot be verified. hf_ext writes one at "
            "`save_pretrained` of its models and at every trainer save; to trust this folder as it is now, call "
            "`hf_ext.utils.integrity.write_weights_manifest(folder)`."
        )
    entries = _read_manifest(manifest_path, where)
    fix = "Save the model again (or restore the file from a good copy)."
    unlisted = [n for n in _weight_files(folder) if n not in entries]
    if unlisted:
        raise WeightsIntegrityError(f"{where}: weight file(s) {unlisted} are not in {MANIFEST_NAME}. {fix}")
    for name, entry in entries.items():
        _check(folder / name, name, entry["sha256"], entry.get("size"), where, fix)
    return {name: entry["sha256"] for name, entry in entries.items()}


def _verify_hub(
    repo_id: str, revision: str | None, token: str | bool | None, cache_dir: str | os.PathLike | None
) -> dict[str, str]:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=token)
    where = f"{repo_id}@{revision or 'main'}"
    names = sorted(f for f in api.list_repo_files(repo_id, revision=revision) if f.endswith(".safetensors"))
    if not names:
        raise WeightsIntegrityError(f"{where} has no *.safetensors file to verify.")
    infos = {info.path: info for info in api.get_paths_info(repo_id, names, revision=revision)}
    manifest = None
    digests = {}
    fix = f"Download it again: `from_pretrained({repo_id!r}, force_download=True)`."
    for name in names:
        local = Path(hf_hub_download(repo_id, name, revision=revision, token=token, cache_dir=cache_dir))
        lfs = getattr(infos.get(name), "lfs", None)
        if lfs is not None:
            _check(local, name, lfs.sha256, lfs.size, where, fix)
            digests[name] = lfs.sha256
            continue
        if manifest is None:  # a weight file stored without LFS: fall back to the repository's manifest
            try:
                manifest_file = hf_hub_download(repo_id, MANIFEST_NAME, revision=revision, token=token)
            except Exception as e:
                raise WeightsIntegrityError(
                    f"{where}: {name} is not stored with LFS (no Hub sha256) and the repository has no "
                    f"{MANIFEST_NAME} ({type(e).__name__}); it cannot be verified."
                ) from e
            manifest = _read_manifest(Path(manifest_file), where)
        if name not in manifest:
            raise WeightsIntegrityError(f"{where}: {name} is neither an LFS file nor listed in {MANIFEST_NAME}.")
        _check(local, name, manifest[name]["sha256"], manifest[name].get("size"), where, fix)
        digests[name] = manifest[name]["sha256"]
    return digests


def verify_weights(
    pretrained_model_name_or_path: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    subfolder: str = "",
) -> dict[str, str]:
    """Check the weight files of a local folder or a Hub repository; return ``{file: sha256}`` or raise
    :class:`WeightsIntegrityError` naming the file, the expected and actual digests and what to do.

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): a local folder or a Hub repository id.
        revision (`str`, *optional*): Hub branch, tag or commit.
        token (`str` or `bool`, *optional*): Hub token.
        cache_dir (`str`, *optional*): the Hub cache to download into / read from.
        subfolder (`str`, *optional*, defaults to `""`): a subfolder of a local folder (Hub: not supported).
    """
    path = Path(pretrained_model_name_or_path) / subfolder
    if path.is_dir():
        return _verify_local(path)
    if subfolder:
        raise ValueError("verify_weights: `subfolder` is only supported for local folders.")
    return _verify_hub(str(pretrained_model_name_or_path), revision, token, cache_dir)


def verification_requested(kwargs: dict[str, Any]) -> bool:
    """Pop ``verify_weights`` from ``from_pretrained`` kwargs; default: the ``HF_EXT_VERIFY_WEIGHTS`` variable."""
    value = kwargs.pop("verify_weights", None)
    if value is None:
        value = os.environ.get("HF_EXT_VERIFY_WEIGHTS", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
