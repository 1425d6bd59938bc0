"""Readers and ``datasets`` builders for ELV's public tasks, from local files.

* SemEval-2010 Task 8 (relation extraction, 19 labels): the official ``TRAIN_FILE.TXT`` / ``TEST_FILE_FULL.TXT``
  format (``<id>\\t"sentence with <e1>..</e1> and <e2>..</e2>"``, then the relation, ``Comment:`` lines, a blank
  line) or the JSON lists of the official ELV code (``sent`` with ``SUBJ-*``/``OBJ-*`` placeholders, ``rel``,
  optional ``exp``).
* SemEval-2014 Task 4 (aspect sentiment, Laptop / Restaurant): the official XML (``<sentence><text>`` +
  ``<aspectTerm term polarity from to>``), the widely used 3-line ``$T$`` format (sentence with ``$T$``, aspect,
  polarity -1/0/1), or the JSON lists of the official ELV code (``term``, ``sent`` with ``$T$``, ``label``, optional
  ``exp``).

Every reader yields rows of the ELV format (see :data:`ELV_FEATURE_NAMES`); bad rows go through
:class:`dataset_builders._common.BadRowReport` (``on_bad_row="raise"`` or ``"skip"``, never silent).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from .._common import BadRowReport, OnBadRow, prepare_builder, raise_if_empty, resolve_data_files

__all__ = [
    "ABSA_LABELS",
    "ELV_FEATURE_NAMES",
    "SEMEVAL2010_LABELS",
    "SemEval2010Task8",
    "SemEval2014Absa",
    "elv_features",
    "load_semeval2010_task8",
    "load_semeval2014_absa",
    "read_absa_3line",
    "read_elv_json",
    "read_semeval2010_task8",
    "read_semeval2014_xml",
]

logger = logging.getLogger(__name__)

_RELATIONS = (
    "Cause-Effect",
    "Component-Whole",
    "Content-Container",
    "Entity-Destination",
    "Entity-Origin",
    "Instrument-Agency",
    "Member-Collection",
    "Message-Topic",
    "Product-Producer",
)
#: SemEval-2010 Task 8 labels: ``Other`` (id 0, excluded from the official F1) then each relation in both directions.
SEMEVAL2010_LABELS: tuple[str, ...] = ("Other",) + tuple(f"{r}({d})" for r in _RELATIONS for d in ("e1,e2", "e2,e1"))
#: Aspect sentiment labels, ordered so that ids match the official ELV code (0 neutral, 1 positive, 2 = -1 negative).
ABSA_LABELS: tuple[str, ...] = ("neutral", "positive", "negative")
_ABSA_NUMERIC = {0: "neutral", 1: "positive", -1: "negative"}

#: Columns of the ELV format. ``label`` is -1 for unlabelled rows; spans are character offsets, -1 when absent.
ELV_FEATURE_NAMES = ("idx", "text", "label", "explanation", "subj_start", "subj_end", "obj_start", "obj_end", "aspect")


def elv_features(label_names: Sequence[str]) -> datasets.Features:
    """The ``datasets.Features`` of the ELV format for the given class names."""
    span = datasets.Value("int32")
    return datasets.Features(
        {
            "idx": datasets.Value("string"),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(label_names)),
            "explanation": datasets.Value("string"),
            "subj_start": span,
            "subj_end": span,
            "obj_start": span,
            "obj_end": span,
            "aspect": datasets.Value("string"),
        }
    )


def _row(idx: str, text: str, label: int, explanation: str | None = None, **extra: Any) -> dict[str, Any]:
    row = {
        "idx": idx,
        "text": text,
        "label": label,
        "explanation": explanation,
        "subj_start": -1,
        "subj_end": -1,
        "obj_start": -1,
        "obj_end": -1,
        "aspect": None,
    }
    row.update(extra)
    return row


def _clean_explanation(value: Any, source: str, row: int, idx: Any, report: BadRowReport) -> str | None | bool:
    """None when absent; the stripped string; False (after reporting) when invalid."""
    if value is None:
        return None
    if not isinstance(value, str):
        report.bad(source, row, idx, f"`exp` must be a string, got {type(value).__name__}")
        return False
    return value.strip() or None


# ----------------------------------------------------------------------------------------------------------------
# SemEval-2010 Task 8
# ----------------------------------------------------------------------------------------------------------------
_SENT_LINE = re.compile(r'^\s*(\d+)\s*\t\s*"(.*)"\s*$')
_TAG = re.compile(r"</?e[12]>")


def _strip_entity_tags(tagged: str) -> tuple[str, dict[str, int]] | str:
    """Remove ``<e1>..</e1>``/``<e2>..</e2>``; return the plain text and the spans, or an error message."""
    counts = {t: tagged.count(t) for t in ("<e1>", "</e1>", "<e2>", "</e2>")}
    if any(c != 1 for c in counts.values()):
        return f"each of <e1>, </e1>, <e2>, </e2> must occur exactly once, found {counts}"
    text, spans, pos = [], {}, 0
    for match in _TAG.finditer(tagged):
        text.append(tagged[pos : match.start()])
        spans[match.group(0)] = sum(len(t) for t in text)
        pos = match.end()
    text.append(tagged[pos:])
    plain = "".join(text)
    s0, s1, o0, o1 = spans["<e1>"], spans["</e1>"], spans["<e2>"], spans["</e2>"]
    if not (s0 < s1 and o0 < o1):
        return "an entity is empty or its closing tag comes before the opening tag"
    if s0 < o1 and o0 < s1:
        return "the two entities overlap"
    return plain, {"subj_start": s0, "subj_end": s1, "obj_start": o0, "obj_end": o1}


def read_semeval2010_task8(path: str | os.PathLike, report: BadRowReport) -> Iterator[dict[str, Any]]:
    """Rows of the official SemEval-2010 Task 8 text format.

    A labelled block is ``<id>\\t"<tagged sentence>"``, the relation line, optional ``Comment:`` lines and a blank
    line. A file of sentence lines only (``TEST_FILE.TXT``) gives unlabelled rows (``label = -1``). ``subj`` = e1 and
    ``obj`` = e2; the direction is part of the label.
    """
    source = str(path)
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.rstrip("\n").rstrip("\r") for line in f]
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        lineno = i + 1
        match = _SENT_LINE.match(lines[i])
        if match is None:
            report.bad(source, lineno, None, f'expected `<id>\\t"<sentence>"`, got {lines[i][:80]!r}')
            i += 1
            while i < n and lines[i].strip() and not _SENT_LINE.match(lines[i]):
                i += 1
            continue
        idx, tagged = match.group(1), match.group(2)
        i += 1
        label_name = None
        if i < n and lines[i].strip() and not _SENT_LINE.match(lines[i]):
            label_name = lines[i].strip()
            i += 1
            while i < n and lines[i].strip().lower().startswith("comment"):
                i += 1
        parsed = _strip_entity_tags(tagged)
        if isinstance(parsed, str):
            report.bad(source, lineno, idx, parsed)
            continue
        text, spans = parsed
        if label_name is None:
            label = -1
        elif label_name in SEMEVAL2010_LABELS:
            label = SEMEVAL2010_LABELS.index(label_name)
        else:
            report.bad(
                source, lineno + 1, idx, f"unknown relation {label_name!r} (expected one of SEMEVAL2010_LABELS)"
            )
            continue
        yield _row(idx, text, label, **spans)


def _placeholder_spans(sent: str) -> dict[str, int] | str:
    """Spans of the ``SUBJ-<type>`` and ``OBJ-<type>`` placeholder tokens of the ELV JSON relation files."""
    spans = {}
    for role, key in (("SUBJ-", "subj"), ("OBJ-", "obj")):
        found = [m for m in re.finditer(r"\S+", sent) if m.group(0).startswith(role)]
        if len(found) != 1:
            return f"expected exactly one {role}* placeholder token in `sent`, found {len(found)}"
        spans[f"{key}_start"], spans[f"{key}_end"] = found[0].start(), found[0].end()
    return spans


# ----------------------------------------------------------------------------------------------------------------
# ELV JSON (both tasks)
# ----------------------------------------------------------------------------------------------------------------
def read_elv_json(path: str | os.PathLike, task: str, report: BadRowReport) -> Iterator[dict[str, Any]]:
    """Rows of the official ELV code's JSON lists.

    ``task="relation"``: items ``{"sent", "rel", "exp"?, "pat"?}``; the entities are the ``SUBJ-*``/``OBJ-*``
    placeholder tokens of ``sent``. A missing ``rel`` gives an unlabelled row.
    ``task="aspect"``: items ``{"term", "sent" (with $T$), "label" (1/0/-1)?, "exp"?}``; ``$T$`` is replaced by the term.
    """
    if task not in ("relation", "aspect"):
        raise ValueError(f"task must be 'relation' or 'aspect', got {task!r}.")
    source = str(path)
    with open(path, encoding="utf-8") as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e}); expected a JSON list of objects.") from e
    if not isinstance(items, list):
        raise ValueError(f"{source}: expected a JSON list of objects, got {type(items).__name__}.")
    for row, item in enumerate(items):
        idx = f"{os.path.basename(source)}:{row}"
        if not isinstance(item, dict):
            report.bad(source, row, idx, f"expected an object, got {type(item).__name__}")
            continue
        sent = item.get("sent")
        if not isinstance(sent, str) or not sent.strip():
            report.bad(source, row, idx, "`sent` is missing or empty")
            continue
        expl = _clean_explanation(item.get("exp"), source, row, idx, report)
        if expl is False:
            continue
        if task == "relation":
            spans = _placeholder_spans(sent)
            if isinstance(spans, str):
                report.bad(source, row, idx, spans)
                continue
            rel = item.get("rel")
            if rel is None:
                label = -1
            elif rel in SEMEVAL2010_LABELS:
                label = SEMEVAL2010_LABELS.index(rel)
            else:
                report.bad(source, row, idx, f"unknown relation {rel!r} (expected one of SEMEVAL2010_LABELS)")
                continue
            yield _row(idx, sent, label, expl, **spans)
        else:
            term = item.get("term")
            if not isinstance(term, str) or not term.strip():
                report.bad(source, row, idx, "`term` is missing or empty")
                continue
            if sent.count("$T$") != 1:
                report.bad(
                    source,
                    row,
                    idx,
                    f"`sent` must contain the placeholder $T$ exactly once, found {sent.count('$T$')}",
                )
                continue
            raw = item.get("label")
            if raw is None:
                label = -1
            elif raw in _ABSA_NUMERIC and not isinstance(raw, bool):
                label = ABSA_LABELS.index(_ABSA_NUMERIC[raw])
            else:
                report.bad(source, row, idx, f"`label` must be 1, 0 or -1, got {raw!r}")
                continue
            text = sent.replace("$T$", term.strip())
            yield _row(idx, text, label, expl, aspect=term.strip())


# ----------------------------------------------------------------------------------------------------------------
# SemEval-2014 Task 4
# ----------------------------------------------------------------------------------------------------------------
def read_semeval2014_xml(path: str | os.PathLike, report: BadRowReport) -> Iterator[dict[str, Any]]:
    """One row per ``<aspectTerm>`` of the official SemEval-2014 Task 4 XML (``polarity`` must be one of
    :data:`ABSA_LABELS`; ``conflict`` terms are bad rows). Sentences without aspect terms have nothing to classify
    and yield no row (their number is logged)."""
    source = str(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{source}: not valid XML ({e}).") from e
    empty = 0
    for row, sentence in enumerate(root.iter("sentence")):
        sid = sentence.get("id", str(row))
        text_node = sentence.find("text")
        if text_node is None or not (text_node.text or "").strip():
            report.bad(source, row, sid, "<sentence> has no <text>")
            continue
        text = text_node.text
        terms = sentence.findall("./aspectTerms/aspectTerm")
        if not terms:
            empty += 1
        for j, term in enumerate(terms):
            idx = f"{sid}:{j}"
            name, polarity = term.get("term"), term.get("polarity")
            if not name:
                report.bad(source, row, idx, "<aspectTerm> has no `term`")
                continue
            if polarity not in ABSA_LABELS:
                report.bad(source, row, idx, f"polarity {polarity!r} is not one of {ABSA_LABELS}")
                continue
            try:
                start, end = int(term.get("from")), int(term.get("to"))
            except (TypeError, ValueError):
                report.bad(
                    source, row, idx, f"`from`/`to` must be integers, got {term.get('from')!r}/{term.get('to')!r}"
                )
                continue
            if text[start:end] != name:
                report.bad(source, row, idx, f"text[{start}:{end}] = {text[start:end]!r} does not match term {name!r}")
                continue
            yield _row(idx, text, ABSA_LABELS.index(polarity), aspect=name)
    if empty:
        logger.info("%s: %d sentence(s) without aspect terms (nothing to classify).", source, empty)


def read_absa_3line(path: str | os.PathLike, report: BadRowReport) -> Iterator[dict[str, Any]]:
    """The 3-line aspect format: sentence with ``$T$``, the aspect term, the polarity (-1/0/1); repeated."""
    source = str(path)
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if len(lines) % 3:
        raise ValueError(
            f"{source}: {len(lines)} non-empty lines is not a multiple of 3 (sentence, aspect, polarity)."
        )
    for k in range(0, len(lines), 3):
        sent, term, pol = lines[k : k + 3]
        idx = str(k // 3)
        if sent.count("$T$") != 1:
            report.bad(source, k + 1, idx, f"the sentence must contain $T$ exactly once, found {sent.count('$T$')}")
            continue
        try:
            label = ABSA_LABELS.index(_ABSA_NUMERIC[int(pol)])
        except (ValueError, KeyError):
            report.bad(source, k + 3, idx, f"polarity must be -1, 0 or 1, got {pol!r}")
            continue
        yield _row(idx, sent.replace("$T$", term), label, aspect=term)


# ----------------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ELVTaskConfig(datasets.BuilderConfig):
    """Builder config of the ELV task builders.

    Args:
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` or ``"skip"`` (skipped rows are reported).
        file_format (`str`, *optional*): force a reader (``"semeval"``, ``"json"``, ``"xml"``, ``"3line"``); by default
            it follows the file extension.
    """

    on_bad_row: OnBadRow = "raise"
    file_format: str | None = None


class _ELVTaskBuilder(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = ELVTaskConfig
    LABELS: tuple[str, ...] = ()
    SUFFIXES: tuple[str, ...] = ()  # files taken from a directory given as data_files
    TASK = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = BadRowReport(self.config.on_bad_row)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.__doc__, features=elv_features(self.LABELS))

    def _split_generators(self, dl_manager):
        if not self.config.data_files:
            raise ValueError(f"{type(self).__name__} needs data_files, e.g. {{'train': 'path/to/file'}}.")
        splits = []
        for split, files in self.config.data_files.items():
            paths = dl_manager.download_and_extract(files)
            paths = [paths] if isinstance(paths, str) else list(paths)
            splits.append(datasets.SplitGenerator(name=split, gen_kwargs={"paths": paths}))
        return splits

    def _reader(self, path: str) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _generate_examples(self, paths: Sequence[str]):
        key = 0
        for path in paths:
            if not os.path.isfile(path):
                raise ValueError(f"data file {path!r} does not exist.")
            for row in self._reader(path):
                yield key, row
                key += 1
        self.report.log(type(self).__name__)


class SemEval2010Task8(_ELVTaskBuilder):
    """SemEval-2010 Task 8 relation extraction (19 labels) in the ELV format, from local files."""

    LABELS = SEMEVAL2010_LABELS
    SUFFIXES = (".txt", ".json")

    def _reader(self, path: str) -> Iterator[dict[str, Any]]:
        fmt = self.config.file_format or ("json" if path.lower().endswith(".json") else "semeval")
        if fmt == "json":
            return read_elv_json(path, "relation", self.report)
        if fmt == "semeval":
            return read_semeval2010_task8(path, self.report)
        raise ValueError(f"file_format must be 'semeval' or 'json' for SemEval-2010 Task 8, got {fmt!r}.")


class SemEval2014Absa(_ELVTaskBuilder):
    """SemEval-2014 Task 4 aspect-term sentiment (Laptop / Restaurant; 3 labels) in the ELV format, from local files."""

    LABELS = ABSA_LABELS
    SUFFIXES = (".xml", ".json", ".raw", ".txt")

    def _reader(self, path: str) -> Iterator[dict[str, Any]]:
        lower = path.lower()
        fmt = self.config.file_format or (
            "xml" if lower.endswith(".xml") else "json" if lower.endswith(".json") else "3line"
        )
        if fmt == "xml":
            return read_semeval2014_xml(path, self.report)
        if fmt == "json":
            return read_elv_json(path, "aspect", self.report)
        if fmt == "3line":
            return read_absa_3line(path, self.report)
        raise ValueError(f"file_format must be 'xml', 'json' or '3line' for SemEval-2014, got {fmt!r}.")


def _load(
    builder_cls: type[_ELVTaskBuilder],
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    on_bad_row: OnBadRow,
    return_report: bool,
    file_format: str | None,
    cache_dir: str | None,
):
    if isinstance(data_files, str | os.PathLike):
        data_files = {"train": [str(data_files)]}
    elif not isinstance(data_files, Mapping):
        data_files = {"train": [str(p) for p in data_files]}
    data_files = {
        k: [str(v)] if isinstance(v, str | os.PathLike) else [str(p) for p in v] for k, v in data_files.items()
    }
    data_files = {
        split: resolve_data_files(files, f"{builder_cls.__name__} data_files[{split!r}]", builder_cls.SUFFIXES)
        for split, files in data_files.items()
    }
    BadRowReport(on_bad_row)  # validates the value early
    # A fresh cache by default, so that the bad-row report always reflects this call's files.
    with tempfile.TemporaryDirectory(prefix="elv_builder_") as tmp:
        builder = builder_cls(
            cache_dir=cache_dir or tmp, data_files=data_files, on_bad_row=on_bad_row, file_format=file_format
        )
        prepare_builder(builder)  # surfaces our errors (they name file, row and reason), not datasets' wrapper
        raise_if_empty(builder, builder_cls.__name__, [f for fs in data_files.values() for f in fs], [builder.report])
        ds = builder.as_dataset(in_memory=cache_dir is None)
    report = builder.report
    for split in ds.values():
        split.info.description = f"{builder_cls.__doc__}\nBad rows: {report.summary()}"
    return (ds, report) if return_report else ds


def load_semeval2010_task8(
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    on_bad_row: OnBadRow = "raise",
    return_report: bool = False,
    file_format: str | None = None,
    cache_dir: str | None = None,
):
    """Load SemEval-2010 Task 8 from local files as a ``DatasetDict`` in the ELV format.

    Args:
        data_files (`str`, list or `dict[split, path(s)]`): official ``.TXT`` files or the ELV code's ``.json`` lists.
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` or ``"skip"`` (reported, never silent).
        return_report (`bool`, *optional*, defaults to `False`): also return the ``BadRowReport``.
        file_format (`str`, *optional*): ``"semeval"`` or ``"json"``; by default from the extension.
        cache_dir (`str`, *optional*): ``datasets`` cache; by default a temporary one (the result is in memory).
    """
    return _load(SemEval2010Task8, data_files, on_bad_row, return_report, file_format, cache_dir)


def load_semeval2014_absa(
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]],
    on_bad_row: OnBadRow = "raise",
    return_report: bool = False,
    file_format: str | None = None,
    cache_dir: str | None = None,
):
    """Load SemEval-2014 Task 4 aspect sentiment (Laptop / Restaurant) from local files in the ELV format.

    Args:
        data_files (`str`, list or `dict[split, path(s)]`): official ``.xml``, 3-line ``$T$`` files or the ELV code's
            ``.json`` lists.
        on_bad_row (`str`, *optional*, defaults to `"raise"`): ``"raise"`` or ``"skip"`` (reported, never silent).
        return_report (`bool`, *optional*, defaults to `False`): also return the ``BadRowReport``.
        file_format (`str`, *optional*): ``"xml"``, ``"3line"`` or ``"json"``; by default from the extension.
        cache_dir (`str`, *optional*): ``datasets`` cache; by default a temporary one (the result is in memory).
    """
    return _load(SemEval2014Absa, data_files, on_bad_row, return_report, file_format, cache_dir)
