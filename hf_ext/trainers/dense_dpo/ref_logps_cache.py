"""The per-token reference log-prob cache of [`DenseDPOTrainer`] (`precompute_ref_log_probs=True`).

One safetensors file per dataset split, `<cache_dir>/<split>-<key>.safetensors`, written atomically. It holds, per
side (`chosen`, `rejected`), the concatenated per-token log-probs of every scored completion token (`<side>_values`,
float32) and the row boundaries (`<side>_offsets`, int64, `len(dataset) + 1` entries). The metadata records the
format and a SHA-256 digest of the tensors, checked on every load: a truncated, corrupted or edited file is an error
that names the file to delete, never silently used.

The key hashes what the reference log-probs depend on — the reference weights, the dataset content (segment columns
excluded), the tokenization settings and the image processor — and **not** γ, the normalisation or the segments, so
those can change without a new reference pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ...utils.io import atomic_save_file

logger = logging.get_logger(__name__)

__all__ = ["CACHE_FORMAT", "cache_path", "content_hash", "load_ref_cache", "save_ref_cache", "tensors_digest"]

CACHE_FORMAT = "hf_ext.dense_dpo.ref_logps/2"
_SIDES = ("chosen", "rejected")


def default_cache_dir() -> str:
    """`$HF_HOME/hf_ext/dense_dpo_ref_logps`: not under `output_dir`, which `push_to_hub` uploads."""
    from huggingface_hub.constants import HF_HOME

    return os.path.join(HF_HOME, "hf_ext", "dense_dpo_ref_logps")


def content_hash(dataset, exclude: Sequence[str] = ()) -> str:
    """Hash of a `datasets.Dataset`'s content, without the columns in ``exclude``.

    `dataset._fingerprint` is not usable as a key: TRL's `_prepare_dataset` maps with closures over the whole config,
    so the fingerprint changes with γ (or the output directory) although the tokens do not.
    """
    import pyarrow as pa

    columns = [c for c in dataset.column_names if c not in exclude]
    h = hashlib.sha256(json.dumps(columns).encode())
    for table in dataset.select_columns(columns).with_format("arrow").iter(batch_size=256):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike | None, name: str, key_fields: dict[str, Any]) -> Path:
    """`<cache_dir>/<name>-<key>.safetensors`, the key a hash of ``key_fields`` and the cache format."""
    fields = {"format": CACHE_FORMAT, **key_fields}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{name}-{key}.safetensors"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_ref_cache(path: str | os.PathLike, rows: list[tuple[list[float], list[float]]], name: str) -> None:
    """Write the per-token reference log-probs ``rows`` (``(chosen, rejected)`` lists, in dataset order) to ``path``."""
    tensors = {}
    for side, column in zip(_SIDES, (0, 1)):
        lengths = [len(r[column]) for r in rows]
        tensors[f"{side}_values"] = torch.tensor([v for r in rows for v in r[column]], dtype=torch.float32)
        tensors[f"{side}_offsets"] = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    metadata = {"format": CACHE_FORMAT, "dataset": name, "rows": str(len(rows)), "sha256": tensors_digest(tensors)}
    atomic_save_file(tensors, path, metadata=metadata)
    logger.info(f"Wrote reference log-probs of {len(rows)} {name} rows to {path}.")


def _broken(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: the reference log-prob cache {why}. Delete this file (`rm {path}`) and run again: the reference "
        "log-probs are then recomputed. Nothing else in the cache directory needs to go."
    )


def load_ref_cache(path: str | os.PathLike, n_rows: int, name: str) -> dict[str, list[list[float]]]:
    """Read and verify a cache file; returns ``{"ref_chosen_token_logps": [...], "ref_rejected_token_logps": [...]}``.

    Raises:
        `ValueError`: the file is unreadable or truncated, has another format, fails its digest, or does not have
            ``n_rows`` rows; the message names the file and says to delete it.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:  # SafetensorError, OSError, ...: truncated or not a safetensors file
        raise _broken(path, f"cannot be read, it is truncated or corrupt ({type(err).__name__}: {err})") from err
    if metadata.get("format") != CACHE_FORMAT:
        raise _broken(path, f"has format {metadata.get('format')!r}, expected {CACHE_FORMAT!r}")
    expected_keys = {f"{side}_{kind}" for side in _SIDES for kind in ("values", "offsets")}
    if set(tensors) != expected_keys:
        raise _broken(path, f"holds the tensors {sorted(tensors)}, expected {sorted(expected_keys)}")
    digest = tensors_digest(tensors)
    if metadata.get("sha256") != digest:
        raise _broken(
            path,
            f"fails its integrity check (recorded SHA-256 {metadata.get('sha256')!r}, content {digest!r}): it was "
            "modified after it was written",
        )
    columns = {}
    for side in _SIDES:
        values, offsets = tensors[f"{side}_values"], tensors[f"{side}_offsets"].tolist()
        if len(offsets) != n_rows + 1:
            raise _broken(path, f"holds {len(offsets) - 1} rows but the {name} dataset has {n_rows}")
        columns[f"ref_{side}_token_logps"] = [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    return columns
