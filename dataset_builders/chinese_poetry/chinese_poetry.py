"""Builder for the ``chinese-poetry`` corpus (JackeyGao et al., MIT): Tang/Song shi and Song ci as Jiuge samples.

The corpus ships as JSON files, each a list of poems with ``author``, ``paragraphs`` (the body, a list of
punctuated lines), ``title`` (shi) or ``rhythmic`` (the 词牌 of a ci), and sometimes ``id``. Fetch it with
``make poetry-corpus`` (``npm pack chinese-poetry``); the files are under ``dist/quantangshi/`` (``poet.tang.*.json``,
``poet.song.*.json``, traditional characters) and ``dist/songci/`` (``ci.song.*.json``, simplified).

For every poem the builder

1. converts traditional to simplified characters with OpenCC (``t2s``; a no-op on simplified text);
2. checks that the body is made of Chinese characters and line punctuation only and splits it into lines;
3. classifies its form: a ci's form is its 词牌 (the part of ``rhythmic`` before ``·``, the rest becoming the
   title); a shi of 4 or 8 lines of 5 or 7 characters is a 五言/七言 绝句/律诗.

Malformed poems (missing or mistyped fields, empty bodies, ``□`` for lost characters, notes, stray symbols,
unclosed lines) go through :class:`~dataset_builders._common.BadRowReport`: ``on_bad_row="raise"`` stops at the
first one, ``"skip"`` skips and reports them all. Poems that are well formed but of no Jiuge form (古体诗 of other
lengths, ``失调名`` ci) are never an error: they are collected in a second report, logged, and left out unless
``keep_unclassified=True`` (then ``form`` is ``""``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets

from dataset_builders._common import BadRowReport, OnBadRow, prepare_builder, raise_if_empty, resolve_data_files
from hf_ext.utils.poetry_forms import PUNCTUATION, classify_shi, is_hanzi, split_lines

logger = datasets.logging.get_logger(__name__)

__all__ = ["ChinesePoetryConfig", "ChinesePoetry", "load_chinese_poetry", "parse_poem", "UNKNOWN_TUNE"]

#: The corpus's placeholder for a ci whose tune name was lost.
UNKNOWN_TUNE = "失调名"

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "author": datasets.Value("string"),
        "title": datasets.Value("string"),
        "form": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "body": datasets.Value("string"),
        "line_lengths": datasets.List(datasets.Value("int32")),
    }
)


class _Malformed(Exception):
    pass


class _Unclassified(Exception):
    pass


def _converter(convert_to_simplified: bool):
    if not convert_to_simplified:
        return lambda s: s
    from opencc import OpenCC

    return OpenCC("t2s").convert


def parse_poem(record: Any, convert=lambda s: s, keep_unclassified: bool = False) -> dict[str, Any]:
    """Turn one corpus record into an example (without ``id``/``source``).

    Raises ``_Malformed`` or ``_Unclassified`` (private) with the reason; the builder turns them into reports.
    """
    if not isinstance(record, dict):
        raise _Malformed(f"a poem must be a JSON object, got {type(record).__name__}")
    paragraphs = record.get("paragraphs")
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        raise _Malformed("'paragraphs' must be a list of strings")
    for key in ("author", "title", "rhythmic"):
        if key in record and not isinstance(record[key], str):
            raise _Malformed(f"{key!r} must be a string, got {type(record[key]).__name__}")
    body = convert("".join("".join(paragraphs).split()))
    if not body:
        raise _Malformed("the body ('paragraphs') is empty")
    if "□" in body:
        raise _Malformed("the body contains '□' (a lost character)")
    stray = sorted({c for c in body if not is_hanzi(c) and c not in PUNCTUATION})
    if stray:
        raise _Malformed(
            f"the body contains characters that are neither Chinese nor line punctuation: {''.join(stray)!r}"
        )
    try:
        lines = split_lines(body)
    except ValueError as e:
        raise _Malformed(str(e)) from e
    lengths = [len(chars) for chars, _ in lines]
    example = {"author": convert(record.get("author", "")), "body": body, "line_lengths": lengths}

    if "rhythmic" in record:
        rhythmic = convert(record["rhythmic"].strip())
        if not rhythmic:
            raise _Malformed("'rhythmic' (the 词牌) is empty")
        tune, _, subtitle = rhythmic.replace("・", "·").partition("·")
        title = convert(record.get("title", "")) or subtitle
        example.update(title=title.strip(), kind="ci", form=tune.strip())
        if example["form"] == UNKNOWN_TUNE:
            if not keep_unclassified:
                raise _Unclassified(f"ci whose tune name was lost ({UNKNOWN_TUNE})")
            example.update(form="", kind="")
        return example

    if "title" not in record:
        raise _Malformed("a shi needs a 'title' (a ci needs 'rhythmic')")
    example["title"] = convert(record["title"]).strip()
    form = classify_shi(body)
    if form is None:
        if not keep_unclassified:
            raise _Unclassified(f"{len(lines)} lines of {sorted(set(lengths))} characters match no regulated form")
        example.update(form="", kind="")
    else:
        example.update(form=form.name, kind=form.kind)
    return example


@dataclass
class ChinesePoetryConfig(datasets.BuilderConfig):
    """Options of :class:`ChinesePoetry`.

    Args:
        convert_to_simplified (`bool`, *optional*, defaults to `True`): OpenCC ``t2s`` on body, title, author, 词牌.
        keep_unclassified (`bool`, *optional*, defaults to `False`): keep well-formed poems of no Jiuge form, with
            ``form=""`` (they are reported either way).
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` or ``"skip"`` for malformed poems.
    """

    convert_to_simplified: bool = True
    keep_unclassified: bool = False
    on_bad_row: OnBadRow = "raise"

    def __post_init__(self):
        super().__post_init__()
        if self.on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {self.on_bad_row!r}.")


class ChinesePoetry(datasets.GeneratorBasedBuilder):
    """The ``chinese-poetry`` corpus as one ``train`` split of classified, simplified poems.

    After ``download_and_prepare()``, ``self.malformed`` and ``self.unclassified`` hold the two reports.
    """

    BUILDER_CONFIG_CLASS = ChinesePoetryConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.malformed = BadRowReport(self.config.on_bad_row)
        self.unclassified = BadRowReport("skip")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Tang/Song shi and Song ci from chinese-poetry, classified into Jiuge forms.",
            features=FEATURES,
            homepage="https://github.com/chinese-poetry/chinese-poetry",
            license="MIT",
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_files:
            raise ValueError(
                "ChinesePoetry needs data_files: the corpus JSON files (e.g. 'data/chinese-poetry/dist/songci/"
                "ci.song.*.json'); fetch them with `make poetry-corpus`."
            )
        files = dl_manager.download(self.config.data_files)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"files": list(split_files)})
            for split, split_files in files.items()
        ]

    def _generate_examples(self, files: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
        from datasets.builder import Key

        convert = _converter(self.config.convert_to_simplified)
        for file_idx, path in enumerate(files):
            name = os.path.basename(path)
            try:
                with open(path, encoding="utf-8") as f:
                    records = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: cannot be read as a chinese-poetry JSON file ({e}).") from e
            if not isinstance(records, list):
                raise ValueError(f"{path}: expected a JSON list of poems, got {type(records).__name__}.")
            for row, record in enumerate(records):
                idx = record.get("id", f"{name}#{row}") if isinstance(record, dict) else f"{name}#{row}"
                try:
                    example = parse_poem(record, convert, self.config.keep_unclassified)
                except _Malformed as e:
                    self.malformed.bad(path, row, idx, str(e))
                    continue
                except _Unclassified as e:
                    self.unclassified.bad(path, row, idx, str(e))
                    continue
                yield Key(file_idx, row), {"id": str(idx), "source": f"{name}#{row}", **example}
        self.malformed.log("chinese_poetry (malformed)")
        if self.unclassified.rows:
            logger.warning(
                "chinese_poetry: %d well-formed poem(s) of no Jiuge form left out (see the unclassified report).",
                len(self.unclassified),
            )


def load_chinese_poetry(
    data_files: str | list[str] | dict[str, Any],
    on_bad_row: OnBadRow = "raise",
    convert_to_simplified: bool = True,
    keep_unclassified: bool = False,
    return_report: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """Load corpus files as a `datasets.Dataset` (or a `DatasetDict` when ``data_files`` is a dict of splits).

    Args:
        data_files (`str`, `list[str]` or `dict`): JSON files or glob patterns (``dist/songci/ci.song.*.json``).
        on_bad_row (`str`, *optional*, defaults to `"raise"`): what to do with malformed poems (see module doc).
        convert_to_simplified (`bool`, *optional*, defaults to `True`): traditional -> simplified with OpenCC.
        keep_unclassified (`bool`, *optional*, defaults to `False`): keep poems of no Jiuge form with ``form=""``.
        return_report (`bool`, *optional*, defaults to `False`): also return ``{"malformed": BadRowReport,
            "unclassified": BadRowReport}``.
        cache_dir (`str`, *optional*): where datasets writes its Arrow cache; a fresh temporary directory by
            default, so that every call parses the files and fills the reports.

    Example:

    ```python
    >>> ds, report = load_chinese_poetry("data/chinese-poetry/dist/songci/ci.song.0.json", on_bad_row="skip",
    ...                                  return_report=True)
    >>> print(report["malformed"].summary())
    ```
    """
    import tempfile

    what = "chinese-poetry JSON files (fetch the corpus with `make poetry-corpus`)"
    if isinstance(data_files, dict):
        data_files = {split: resolve_data_files(files, what, (".json",)) for split, files in data_files.items()}
    else:
        data_files = resolve_data_files(data_files, what, (".json",))
    with tempfile.TemporaryDirectory(prefix="chinese_poetry_") as tmp:
        builder = ChinesePoetry(
            cache_dir=str(cache_dir) if cache_dir is not None else tmp,
            data_files=data_files,
            convert_to_simplified=convert_to_simplified,
            keep_unclassified=keep_unclassified,
            on_bad_row=on_bad_row,
        )
        prepare_builder(builder)  # surfaces our errors (they name the file and row), not datasets' wrapper
        files = data_files if isinstance(data_files, list) else [f for fs in data_files.values() for f in fs]
        raise_if_empty(builder, "chinese_poetry", files, [builder.malformed, builder.unclassified])
        splits = builder.as_dataset(in_memory=True)
    dataset = splits["train"] if set(splits) == {"train"} else splits
    summary = builder.malformed.summary()
    for ds in splits.values():
        ds.info.description = (ds.info.description or "") + f"\nmalformed: {summary}"
    if return_report:
        return dataset, {"malformed": builder.malformed, "unclassified": builder.unclassified}
    return dataset
