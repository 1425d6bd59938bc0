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

__all__ = ["RLHFV", "RLHFVConfig", "load_rlhf_v", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("ds_name", "image", "text", "origin_dataset", "origin_split", "idx", "image_path")
_MESSAGE = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]


@dataclass
class RLHFVConfig(datasets.BuilderConfig):
    """Builder config: ``parquet_files`` (local paths) and the bad-row policy ``on_bad_row`` (``"raise"``/``"skip"``)."""

    parquet_files: tuple[str, ...] = ()
    on_bad_row: OnBadRow = "raise"


class RLHFV(datasets.GeneratorBasedBuilder):
    """``openbmb/RLHF-V-Dataset`` parquet files → TRL conversational vision preference rows (one ``train`` split)."""

    BUILDER_CONFIG_CLASS = RLHFVConfig
    BUILDER_CONFIGS = [RLHFVConfig(name="default", version=datasets.Version("1.0.0"))]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = BadRowReport(self.config.on_bad_row)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="RLHF-V segment-level correction preference data in TRL's vision preference format.",
            features=datasets.Features(
                {
                    "prompt": _MESSAGE,
                    "chosen": _MESSAGE,
                    "rejected": _MESSAGE,
                    "images": datasets.Sequence(datasets.Image()),
                    "idx": datasets.Value("int64"),
                    "origin_dataset": datasets.Value("string"),
                }
            ),
            homepage="https://huggingface.co/datasets/openbmb/RLHF-V-Dataset",
            license="cc-by-nc-4.0",
            citation="@inproceedings{yu2024rlhfv, title={RLHF-V}, booktitle={CVPR}, year={2024}, eprint={2312.00849}}",
        )

    def _split_generators(self, dl_manager):
        if not self.config.parquet_files:
            raise ValueError("RLHFV needs `parquet_files`: local parquet files in the openbmb/RLHF-V-Dataset schema.")
        files = [dl_manager.download(str(f)) for f in self.config.parquet_files]
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"files": files})]

    def _generate_examples(self, files: Sequence[str]):
        import pyarrow.parquet as pq

        for path in files:
            parquet = pq.ParquetFile(path)
            missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {missing}; expected the openbmb/RLHF-V-Dataset schema "
                    f"{list(REQUIRED_COLUMNS)}."
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
        self.report.log("RLHF-V")


def convert_row(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One Hub-schema row → ``(example, None)``, or ``(None, reason)`` when the row is bad."""
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
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "images": [{"bytes": image["bytes"], "path": image.get("path")}],
        "idx": record["idx"],
        "origin_dataset": record.get("origin_dataset"),
    }
    return example, None


def load_rlhf_v(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    on_bad_row: OnBadRow = "raise",
    cache_dir: str | os.PathLike | None = None,
    return_report: bool = False,
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
    """
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    files = tuple(str(Path(f).resolve()) for f in data_files)
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"data_files: {f} does not exist (expected local RLHF-V parquet files).")
    builder = RLHFV(
        cache_dir=str(cache_dir) if cache_dir is not None else tempfile.mkdtemp(prefix="rlhf_v_"),
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
