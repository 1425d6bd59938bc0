"""UniMM-Chat (``Yirany/UniMM-Chat``) as TRL's conversational vision language-modelling format.

Input: local parquet files in the exact schema of the Hub dataset (``ds_name``, ``image`` ``{bytes, path}``,
``conversation`` = JSON string of ``[{"from": "human"|"gpt", "value": ...}, ...]``, ``origin_dataset``, ``idx``,
``image_path``). Output rows::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...],
     "images": [PIL.Image], "idx": int, "origin_dataset": str, "ds_name": str, "image_path": str}

The ``<image>`` tag Muffin's data carries in the first human turn is removed from the text: TRL inserts the image block
before the first user turn (``prepare_multimodal_messages``), which is where Muffin puts it. The dataset is
CC BY-NC 4.0 (research use only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import datasets

from hf_ext.utils.citations import CITATIONS

from .._common import BadRowReport, LocalParquetBuilder, LocalParquetConfig, OnBadRow, check_image, load_local_parquet

__all__ = ["UniMMChat", "UniMMChatConfig", "convert_row", "load_unimm_chat", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("ds_name", "image", "conversation", "origin_dataset", "idx", "image_path")
_ROLES = {"human": "user", "gpt": "assistant"}
_MESSAGE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


def convert_row(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One UniMM-Chat row (``conversation``: JSON list of turns) → ``(example, None)``, or ``(None, reason)``."""
    try:
        turns = json.loads(record["conversation"])
    except (TypeError, json.JSONDecodeError) as e:
        return None, f"`conversation` is not valid JSON ({e})"
    if not isinstance(turns, list) or not turns:
        return None, "`conversation` JSON is not a non-empty list of turns"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return None, f"turn {i} is not an object with `from` and `value`"
        role = _ROLES.get(str(turn["from"]).lower())
        if role is None:
            return None, f"turn {i} has unknown speaker {turn['from']!r} (expected 'human' or 'gpt')"
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return None, f"turn {i} is from {turn['from']!r} but turns must alternate human/gpt starting with human"
        value = turn["value"]
        if not isinstance(value, str):
            return None, f"turn {i} has a non-string `value`"
        value = value.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()
        if not value:
            return None, f"turn {i} is empty"
        messages.append({"role": role, "content": value})
    if messages[-1]["role"] != "assistant":
        return None, "the conversation does not end with an assistant (gpt) turn"
    image, reason = check_image(record.get("image"))
    if reason is not None:
        return None, reason
    example = {
        "messages": messages,
        "images": [image],
        "idx": record["idx"],
        "origin_dataset": record.get("origin_dataset"),
        "ds_name": record.get("ds_name"),
        "image_path": record.get("image_path"),
    }
    return example, None


class UniMMChatConfig(LocalParquetConfig):
    """UniMM-Chat builder config: ``parquet_files`` and ``on_bad_row`` (see :class:`LocalParquetConfig`)."""


class UniMMChat(LocalParquetBuilder):
    """``Yirany/UniMM-Chat`` parquet files → TRL conversational rows with images (one ``train`` split)."""

    BUILDER_CONFIG_CLASS = UniMMChatConfig
    HUB_ID = "Yirany/UniMM-Chat"
    DISPLAY_NAME = "UniMM-Chat"
    REQUIRED_COLUMNS = REQUIRED_COLUMNS
    _convert_row = staticmethod(convert_row)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="UniMM-Chat multi-turn visual instructions in TRL's conversational vision format.",
            features=datasets.Features(
                {
                    "messages": _MESSAGE,
                    "images": datasets.Sequence(datasets.Image()),
                    "idx": datasets.Value("int64"),
                    "origin_dataset": datasets.Value("string"),
                    "ds_name": datasets.Value("string"),
                    "image_path": datasets.Value("string"),
                }
            ),
            homepage="https://huggingface.co/datasets/Yirany/UniMM-Chat",
            license="cc-by-nc-4.0",
            citation=CITATIONS["muffin"].bibtex,
        )


def load_unimm_chat(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    on_bad_row: OnBadRow = "raise",
    cache_dir: str | os.PathLike | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, BadRowReport]:
    """Load local UniMM-Chat parquet files as a ``datasets.Dataset`` in TRL's conversational vision format.

    Args:
        data_files (`str` or `list[str]`): parquet file(s) in the ``Yirany/UniMM-Chat`` schema.
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` stops at the first bad row (invalid JSON,
            unknown speaker, turns that do not alternate human/gpt, an empty turn, a conversation that does not end
            with gpt, an image that does not decode) with an error naming the file, row, ``idx`` and reason;
            ``"skip"`` skips bad rows and reports how many and which (logged, in ``dataset.info.description`` and,
            with ``return_report=True``, returned).
        cache_dir (`str`, *optional*): where the Arrow cache is built. Defaults to a fresh temporary directory.
        return_report (`bool`, *optional*, defaults to `False`): also return the
            :class:`~dataset_builders._common.BadRowReport`.
    """
    return load_local_parquet(UniMMChat, data_files, on_bad_row, cache_dir, return_report, tmp_prefix="unimm_chat_")
