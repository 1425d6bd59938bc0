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

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import datasets.exceptions

from .._common import BadRowReport, OnBadRow

__all__ = ["UniMMChat", "UniMMChatConfig", "convert_row", "load_unimm_chat", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("ds_name", "image", "conversation", "origin_dataset", "idx", "image_path")
_ROLES = {"human": "user", "gpt": "assistant"}
_MESSAGE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


@dataclass
class UniMMChatConfig(datasets.BuilderConfig):
    """Builder config: ``parquet_files`` (local paths) and the bad-row policy ``on_bad_row`` (``"raise"``/``"skip"``)."""

    parquet_files: tuple[str, ...] = ()
    on_bad_row: OnBadRow = "raise"


class UniMMChat(datasets.GeneratorBasedBuilder):
    """``Yirany/UniMM-Chat`` parquet files → TRL conversational rows with images (one ``train`` split)."""

    BUILDER_CONFIG_CLASS = UniMMChatConfig
    BUILDER_CONFIGS = [UniMMChatConfig(name="default", version=datasets.Version("1.0.0"))]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = BadRowReport(self.config.on_bad_row)

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
            citation="@article{yu2023muffin, title={Reformulating Vision-Language Foundation Models and Datasets "
            "Towards Universal Multimodal Assistants}, eprint={2310.00653}, year={2023}}",
        )

    def _split_generators(self, dl_manager):
        if not self.config.parquet_files:
            raise ValueError("UniMMChat needs `parquet_files`: local parquet files in the Yirany/UniMM-Chat schema.")
        files = [dl_manager.download(str(f)) for f in self.config.parquet_files]
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"files": files})]

    def _generate_examples(self, files: Sequence[str]):
        import pyarrow.parquet as pq

        for path in files:
            parquet = pq.ParquetFile(path)
            missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {missing}; expected the Yirany/UniMM-Chat schema {list(REQUIRED_COLUMNS)}."
                )
            row = 0
            for batch in parquet.iter_batches(batch_size=64, columns=list(REQUIRED_COLUMNS)):
                for record in batch.to_pylist():
                    example, reason = convert_row(record)
                    if reason is not None:
                        self.report.bad(os.path.basename(path), row, record.get("idx"), reason)
                    else:
                        yield f"{os.path.basename(path)}-{row}", example
                    row += 1
        self.report.log("UniMM-Chat")


def convert_row(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One Hub-schema row → ``(example, None)``, or ``(None, reason)`` when the row is bad."""
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
    image = record.get("image")
    if not isinstance(image, dict) or not image.get("bytes"):
        return None, "`image` has no bytes"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(image["bytes"])) as img:
            img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        return None, f"`image` does not decode ({type(e).__name__}: {e})"
    example = {
        "messages": messages,
        "images": [{"bytes": image["bytes"], "path": image.get("path")}],
        "idx": record["idx"],
        "origin_dataset": record.get("origin_dataset"),
        "ds_name": record.get("ds_name"),
        "image_path": record.get("image_path"),
    }
    return example, None


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
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    files = tuple(str(Path(f).resolve()) for f in data_files)
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"data_files: {f} does not exist (expected local UniMM-Chat parquet files).")
    builder = UniMMChat(
        cache_dir=str(cache_dir) if cache_dir is not None else tempfile.mkdtemp(prefix="unimm_chat_"),
        parquet_files=files,
        on_bad_row=on_bad_row,
    )
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as e:
        # `datasets` wraps errors raised while generating; surface ours (bad row, bad schema) unchanged.
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise
    dataset = builder.as_dataset(split="train")
    if len(builder.report):
        dataset.info.description = f"{dataset.info.description}\n{builder.report.summary()}"
    return (dataset, builder.report) if return_report else dataset
