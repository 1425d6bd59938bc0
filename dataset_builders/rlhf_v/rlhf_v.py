"""RLHF-V (``openbmb/RLHF-V-Dataset``) as TRL's conversational vision preference format.

Input: local parquet files in the exact schema of the Hub dataset (``ds_name``, ``image`` ``{bytes, path}``, ``text``
= JSON string with ``question``/``chosen``/``rejected``, ``origin_dataset``, ``origin_split`` = JSON string, ``idx``,
``image_path``). Output rows::

    {"prompt": [{"role": "user", "content": question}],
     "chosen": [{"role": "assistant", "content": chosen}],
     "rejected": [{"role": "assistant", "content": rejected}],
     "images": [PIL.Image], "idx": int, "origin_dataset": str}

TRL inserts the image placeholder before the first user turn (``prepare_multimodal_messages``), so the rows work with
any processor. The dataset is CC BY-NC 4.0 (research use only).

With ``with_segments=True`` the rows also carry ``chosen_segments`` / ``rejected_segments``: the corrected character
spans ``[[start, end], ...]`` (end exclusive) of the chosen / rejected text, read from the same keys of the ``text``
JSON (``None`` where a row's JSON has none: ``DenseDPOTrainer`` then uses the token diff for that pair). The Hub
dataset carries no spans; rows made by :func:`benchmarks.hallucination.grounded.rlhf_v_row` do.

:func:`write_rlhf_v_parquet` is the one writer of files in this schema (fixtures, the hallucination study).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from hf_ext.utils.citations import CITATIONS
from hf_ext.utils.spans import validate_spans

from .._common import BadRowReport, LocalParquetBuilder, LocalParquetConfig, OnBadRow, check_image, load_local_parquet

__all__ = [
    "RLHFV",
    "RLHFVConfig",
    "load_rlhf_v",
    "REQUIRED_COLUMNS",
    "SEGMENT_COLUMNS",
    "rlhf_v_features",
    "write_rlhf_v_parquet",
]

REQUIRED_COLUMNS = ("ds_name", "image", "text", "origin_dataset", "origin_split", "idx", "image_path")
SEGMENT_COLUMNS = ("chosen_segments", "rejected_segments")
_MESSAGE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


def convert_row(record: dict[str, Any], with_segments: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """One RLHF-V row (``text``: question/chosen/rejected JSON) → ``(example, None)``, or ``(None, reason)``.

    With ``with_segments`` the example also has ``chosen_segments`` / ``rejected_segments`` from the ``text`` JSON
    (``None`` when absent); spans that are not ``[start, end]`` pairs with ``0 <= start < end <= len(text)`` make the
    row bad.
    """
    try:
        text = json.loads(record["text"])
    except (TypeError, json.JSONDecodeError) as e:
        return None, f"`text` is not valid JSON ({e})"
    if not isinstance(text, dict):
        return None, "`text` JSON is not an object with question/chosen/rejected"
    missing = [k for k in ("question", "chosen", "rejected") if k not in text]
    if missing:
        return None, f"`text` JSON lacks key(s) {missing}"
    question, chosen, rejected = text["question"], text["chosen"], text["rejected"]
    for name, value in (("question", question), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) or not value.strip():
            return None, f"empty or non-string `{name}`"
    if chosen.strip() == rejected.strip():
        return None, "chosen is identical to rejected (no preference signal)"
    image, reason = check_image(record.get("image"))
    if reason is not None:
        return None, reason
    segments = {}
    if with_segments:
        for side, completion in (("chosen", chosen), ("rejected", rejected)):
            spans = segments[f"{side}_segments"] = text.get(f"{side}_segments")
            try:
                validate_spans(spans, len(completion), f"`{side}_segments`")
            except (TypeError, ValueError) as e:
                return None, (
                    f"`{side}_segments` must be a list of [start, end] character spans with 0 <= start < end <= "
                    f"{len(completion)} (the length of `{side}`), got {spans!r}: {e}"
                )
    example = {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "images": [image],
        "idx": record["idx"],
        "origin_dataset": record.get("origin_dataset"),
        **segments,
    }
    return example, None


@dataclass
class RLHFVConfig(LocalParquetConfig):
    """RLHF-V builder config: ``parquet_files``, ``on_bad_row`` (see :class:`LocalParquetConfig`) and
    ``with_segments`` (add the ``chosen_segments`` / ``rejected_segments`` columns from the ``text`` JSON)."""

    with_segments: bool = False


class RLHFV(LocalParquetBuilder):
    """``openbmb/RLHF-V-Dataset`` parquet files → TRL conversational vision preference rows (one ``train`` split)."""

    BUILDER_CONFIG_CLASS = RLHFVConfig
    HUB_ID = "openbmb/RLHF-V-Dataset"
    DISPLAY_NAME = "RLHF-V"
    REQUIRED_COLUMNS = REQUIRED_COLUMNS

    def _info(self) -> datasets.DatasetInfo:
        features = datasets.Features(
            {
                "prompt": _MESSAGE,
                "chosen": _MESSAGE,
                "rejected": _MESSAGE,
                "images": datasets.Sequence(datasets.Image()),
                "idx": datasets.Value("int64"),
                "origin_dataset": datasets.Value("string"),
            }
        )
        if self.config.with_segments:
            for key in SEGMENT_COLUMNS:
                features[key] = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
        return datasets.DatasetInfo(
            description="RLHF-V segment-level correction preference data in TRL's vision preference format.",
            features=features,
            homepage="https://huggingface.co/datasets/openbmb/RLHF-V-Dataset",
            license="cc-by-nc-4.0",
            citation=CITATIONS["rlhf_v"].bibtex,
        )

    def _convert_row(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        return convert_row(record, with_segments=self.config.with_segments)


def load_rlhf_v(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    on_bad_row: OnBadRow = "raise",
    cache_dir: str | os.PathLike | None = None,
    return_report: bool = False,
    *,
    with_segments: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, BadRowReport]:
    """Load local RLHF-V parquet files as a ``datasets.Dataset`` in TRL's conversational vision preference format.

    Args:
        data_files (`str` or `list[str]`): parquet file(s) in the ``openbmb/RLHF-V-Dataset`` schema.
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` stops at the first bad row (invalid JSON,
            missing keys, empty answers, an image that does not decode, chosen identical to rejected) with an error
            naming the file, row, ``idx`` and reason; ``"skip"`` skips bad rows and reports how many and which
            (logged, in ``dataset.info.description`` and, with ``return_report=True``, returned).
        cache_dir (`str`, *optional*): where the Arrow cache is built. Defaults to a fresh temporary directory so the
            files are always re-read (and bad rows always reported).
        return_report (`bool`, *optional*, defaults to `False`): also return the
            :class:`~dataset_builders._common.BadRowReport`.
        with_segments (`bool`, *optional*, defaults to `False`): also return ``chosen_segments`` /
            ``rejected_segments`` columns (lists of ``[start, end]`` character spans, ``None`` where a row's ``text``
            JSON has none; invalid spans make the row bad) for ``DenseDPOTrainer``'s explicit segments.
    """
    # `with_segments` only when set: the default keeps the config id (the cache folder) of plain RLHF-V loads
    extra = {"with_segments": True} if with_segments else {}
    return load_local_parquet(RLHFV, data_files, on_bad_row, cache_dir, return_report, tmp_prefix="rlhf_v_", **extra)


def rlhf_v_features() -> datasets.Features:
    """The ``datasets.Features`` of ``openbmb/RLHF-V-Dataset`` (from its dataset card), in column order."""
    return datasets.Features(
        {
            "ds_name": datasets.Value("string"),
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "origin_dataset": datasets.Value("string"),
            "origin_split": datasets.Value("string"),
            "idx": datasets.Value("int64"),
            "image_path": datasets.Value("string"),
        }
    )


def _image_cell(image: Any, path: str, n: int) -> dict[str, Any]:
    if isinstance(image, dict) and "bytes" in image:
        return {"bytes": image["bytes"], "path": image.get("path", path)}
    if hasattr(image, "save"):  # a PIL image: stored as PNG bytes, as the Hub dataset stores its images
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": path}
    raise TypeError(
        f"write_rlhf_v_parquet: row {n}: `image` must be a PIL image or {{'bytes', 'path'}}, got {type(image)}."
    )


def write_rlhf_v_parquet(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows in the schema of the Hub's ``openbmb/RLHF-V-Dataset`` as one parquet file, atomically.

    Args:
        rows (`Iterable[dict]`): each with the columns of [`REQUIRED_COLUMNS`]. ``image`` may be a PIL image (stored
            as PNG) or ``{"bytes", "path"}``; ``text`` and ``origin_split`` may be dicts (JSON-encoded here) or JSON
            strings. ``text`` holds ``question``, ``chosen`` and ``rejected`` (and may hold ``chosen_segments`` /
            ``rejected_segments``, read back with ``load_rlhf_v(..., with_segments=True)``); its content is written
            as given (``load_rlhf_v`` validates rows when it reads them).
        path (`str` or `os.PathLike`): the parquet file to write (parent folders are created).

    Returns:
        `Path`: ``path``.
    """
    from hf_ext.utils.io import atomic_write

    table: dict[str, list] = {k: [] for k in REQUIRED_COLUMNS}
    for n, row in enumerate(rows):
        missing = [k for k in REQUIRED_COLUMNS if k not in row]
        if missing:
            raise ValueError(
                f"write_rlhf_v_parquet: row {n} lacks column(s) {missing}; the schema is {REQUIRED_COLUMNS}."
            )
        text = row["text"]
        meta = row["origin_split"]
        table["ds_name"].append(row["ds_name"])
        table["image"].append(_image_cell(row["image"], row["image_path"], n))
        table["text"].append(text if isinstance(text, str) else json.dumps(text))
        table["origin_dataset"].append(row["origin_dataset"])
        table["origin_split"].append(meta if isinstance(meta, str) else json.dumps(meta))
        table["idx"].append(int(row["idx"]))
        table["image_path"].append(row["image_path"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(table, features=rlhf_v_features())
    with atomic_write(path, "wb") as f:
        ds.to_parquet(f)
    return path
