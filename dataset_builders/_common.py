"""Shared machinery for hf_ext's dataset builders: bad-row policy and reporting, local parquet conversion.

Every builder takes ``on_bad_row="raise" | "skip"``. With ``"raise"`` the first bad row raises a
:class:`BadRowError` that names the file, the row number, the row's ``idx`` and the reason. With ``"skip"``
bad rows are skipped, never silently: they are collected in a :class:`BadRowReport`, logged as a warning
(how many and which) and attached to the returned dataset's ``info.description`` as well as returned by the
loader functions that accept ``return_report=True``.

Builders that convert local parquet files in a Hub dataset's schema row by row (RLHF-V, UniMM-Chat) subclass
:class:`LocalParquetBuilder` and load through :func:`load_local_parquet`; every builder runs ``download_and_prepare``
through :func:`prepare_builder`, which surfaces the builder's own errors instead of ``datasets``' wrapper.

Shared guarantees (see :func:`resolve_data_files`, :func:`source_signature`, :func:`temporary_cache_dir`):
``data_files`` may name files, directories or glob patterns; an Arrow cache in a ``cache_dir`` is keyed by every
source file's path, size and modification time, so an edited file is always re-read; without ``cache_dir`` the cache
lives in a temporary directory removed when the interpreter exits; a file that cannot be read is an error naming it;
and a load that yields no rows is an error that keeps the bad-row report.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import datasets.exceptions

logger = logging.getLogger(__name__)

__all__ = [
    "BadRow",
    "BadRowError",
    "BadRowReport",
    "LocalParquetBuilder",
    "LocalParquetConfig",
    "OnBadRow",
    "check_image",
    "load_local_parquet",
    "prepare_builder",
    "check_idx",
    "raise_if_empty",
    "resolve_data_files",
    "source_signature",
    "temporary_cache_dir",
]

OnBadRow = Literal["raise", "skip"]


class BadRowError(ValueError):
    """A row of an input file cannot be converted. The message names file, row, ``idx`` and the reason."""

    def __init__(self, source: str, row: int, idx: Any, reason: str):
        self.source, self.row, self.idx, self.reason = source, row, idx, reason
        super().__init__(
            f"{source}: row {row} (idx={idx!r}) is invalid: {reason}. "
            "Fix or remove the row, or pass on_bad_row='skip' to skip bad rows (they are reported)."
        )


@dataclass
class BadRow:
    source: str
    row: int
    idx: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: row {self.row} (idx={self.idx!r}): {self.reason}"


@dataclass
class BadRowReport:
    """Collects the rows a builder skipped (``on_bad_row="skip"``) or raises on the first (``"raise"``)."""

    on_bad_row: OnBadRow = "raise"
    rows: list[BadRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {self.on_bad_row!r}.")

    def bad(self, source: str, row: int, idx: Any, reason: str) -> None:
        """Record a bad row: raise under ``"raise"``, remember it under ``"skip"``."""
        if self.on_bad_row == "raise":
            raise BadRowError(source, row, idx, reason)
        self.rows.append(BadRow(str(source), row, idx, reason))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def idxs(self) -> list[Any]:
        return [r.idx for r in self.rows]

    def summary(self, max_rows: int = 20) -> str:
        if not self.rows:
            return "no bad rows"
        lines = [f"skipped {len(self.rows)} bad row(s):"]
        lines += [f"  - {r}" for r in self.rows[:max_rows]]
        if len(self.rows) > max_rows:
            lines.append(f"  ... and {len(self.rows) - max_rows} more")
        return "\n".join(lines)

    def log(self, name: str) -> None:
        if self.rows:
            logger.warning("%s: %s", name, self.summary())


def check_image(image: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Check a Hub ``Image`` cell (``{"bytes": ..., "path": ...}``): ``(image, None)`` if its bytes decode with PIL,
    else ``(None, reason)``. The returned image keeps only ``bytes`` and ``path`` (the ``datasets.Image`` storage)."""
    if not isinstance(image, dict) or not image.get("bytes"):
        return None, "`image` has no bytes"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(image["bytes"])) as img:
            img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        return None, f"`image` does not decode ({type(e).__name__}: {e})"
    return {"bytes": image["bytes"], "path": image.get("path")}, None


def check_idx(idx: Any) -> str | None:
    """``None`` if a row's ``idx`` is an integer, else the reason the row is bad (``idx`` is null or not an integer)."""
    if idx is None:
        return "`idx` is null (expected an integer)"
    if isinstance(idx, bool) or not isinstance(idx, int):
        return f"`idx` must be an integer, got {type(idx).__name__} {idx!r}"
    return None


def resolve_data_files(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    what: str,
    suffixes: Sequence[str] = (),
) -> list[str]:
    """Expand ``data_files`` into a list of absolute file paths.

    Each entry is a file, a directory (its files ending in one of ``suffixes``, sorted, not recursive) or a glob
    pattern (``*``, ``?``, ``[``; ``**`` is recursive). An entry that matches nothing raises a ``ValueError`` naming it
    and ``what`` (e.g. ``"RLHF-V parquet files"``).
    """
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    if not data_files:
        raise ValueError(f"data_files is empty; pass {what} (files, directories or glob patterns).")
    files: list[str] = []
    for entry in data_files:
        entry = os.path.expanduser(os.fspath(entry))
        if os.path.isfile(entry):
            files.append(str(Path(entry).resolve()))
        elif os.path.isdir(entry):
            found = sorted(
                str(p.resolve())
                for p in Path(entry).iterdir()
                if p.is_file() and not p.name.startswith(".") and (not suffixes or p.name.lower().endswith(suffixes))
            )
            if not found:
                raise ValueError(f"data_files: directory {entry} has no {' / '.join(suffixes) or ''} files ({what}).")
            files += found
        elif any(ch in entry for ch in "*?["):
            found = sorted(str(Path(p).resolve()) for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"data_files: the pattern {entry!r} matches no file ({what}).")
            files += found
        else:
            raise ValueError(f"data_files: {entry} does not exist (expected {what}: files, directories or globs).")
    return list(dict.fromkeys(files))


def source_signature(files: Sequence[str | os.PathLike]) -> str:
    """A digest of every file's resolved path, size and modification time (ns): part of a builder's config, so the
    Arrow cache of a ``cache_dir`` is rebuilt whenever a source file changes and is never served stale."""
    entries = []
    for f in files:
        st = os.stat(f)
        entries.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


_TEMPORARY_DIRS: list[tuple[int, str]] = []


def _remove_temporary_dirs() -> None:
    for pid, path in _TEMPORARY_DIRS:
        if pid == os.getpid():  # never from a forked child
            shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_temporary_dirs)


def temporary_cache_dir(prefix: str) -> str:
    """A fresh temporary directory for an Arrow cache; removed when the interpreter exits (the returned dataset is
    memory-mapped from it until then). Pass ``cache_dir`` to a loader to keep the cache instead."""
    path = tempfile.mkdtemp(prefix=prefix)
    _TEMPORARY_DIRS.append((os.getpid(), path))
    return path


def raise_if_empty(builder: datasets.DatasetBuilder, what: str, files: Sequence[str], reports: Sequence[BadRowReport]):
    """After ``download_and_prepare``: a ``ValueError`` when a split has no rows, naming the files and keeping the
    bad-row report(s), instead of ``datasets``' ``Instruction "train" corresponds to no data!``."""
    splits = builder.info.splits or {}
    empty = [name for name, split in splits.items() if not split.num_examples]
    if not splits or empty:
        skipped = "\n".join(r.summary() for r in reports if len(r))
        names = ", ".join(map(str, files[:5])) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise ValueError(
            f"{what}: no rows loaded{f' into split(s) {empty}' if empty else ''} from {names}"
            + (f"; every row was bad and skipped:\n{skipped}" if skipped else " (the file(s) hold no rows).")
        )


def prepare_builder(builder: datasets.DatasetBuilder) -> None:
    """``builder.download_and_prepare()``, re-raising the builder's own ``ValueError`` (a :class:`BadRowError` or a
    bad file, each naming file and row) instead of ``datasets``' generic ``DatasetGenerationError`` wrapper."""
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise


@dataclass
class LocalParquetConfig(datasets.BuilderConfig):
    """Config of a :class:`LocalParquetBuilder`: ``parquet_files`` (local paths) and ``on_bad_row`` (raise/skip)."""

    parquet_files: tuple[str, ...] = ()
    on_bad_row: OnBadRow = "raise"
    source_signature: str = ""  # path/size/mtime digest of the files (see `source_signature`): keys the cache


class LocalParquetBuilder(datasets.GeneratorBasedBuilder):
    """Base for builders that convert local parquet files in a Hub dataset's schema into one ``train`` split.

    A subclass sets :attr:`HUB_ID` and :attr:`DISPLAY_NAME` (used in error messages and logs),
    :attr:`REQUIRED_COLUMNS` (checked in every file's schema, the only columns read), ``BUILDER_CONFIG_CLASS`` (a
    :class:`LocalParquetConfig` subclass; as in ``datasets``' packaged builders, the ``"default"`` config of version
    :attr:`VERSION` is made from the ``load_*`` arguments), ``_info`` and :meth:`_convert_row`. Every record goes
    through ``_convert_row``; bad rows go to ``self.report`` (a :class:`BadRowReport` under the config's
    ``on_bad_row``), named by file name and row number.
    """

    VERSION = datasets.Version("1.0.0")
    DEFAULT_CONFIG_NAME = "default"
    HUB_ID: ClassVar[str]
    DISPLAY_NAME: ClassVar[str]
    REQUIRED_COLUMNS: ClassVar[tuple[str, ...]]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = BadRowReport(self.config.on_bad_row)

    def _convert_row(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """One Hub-schema record → ``(example, None)``, or ``(None, reason)`` when the row is bad."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        if not self.config.parquet_files:
            raise ValueError(
                f"{type(self).__name__} needs `parquet_files`: local parquet files in the {self.HUB_ID} schema."
            )
        files = [dl_manager.download(str(f)) for f in self.config.parquet_files]
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"files": files})]

    def _generate_examples(self, files: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow.parquet as pq

        for path in files:
            try:
                parquet = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError for empty, truncated or foreign files
                raise ValueError(
                    f"{path}: cannot be read as a parquet file ({type(e).__name__}: {e}); is it empty, truncated or "
                    f"another format? Expected the {self.HUB_ID} parquet files."
                ) from e
            missing = [c for c in self.REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {missing}; expected the {self.HUB_ID} schema "
                    f"{list(self.REQUIRED_COLUMNS)}."
                )
            name, row = os.path.basename(path), 0
            for batch in self._batches(parquet, path):
                for record in batch.to_pylist():
                    reason = check_idx(record.get("idx")) if "idx" in self.REQUIRED_COLUMNS else None
                    example, reason = (None, reason) if reason is not None else self._convert_row(record)
                    if reason is not None:
                        self.report.bad(name, row, record.get("idx"), reason)
                    else:
                        yield f"{name}-{row}", example
                    row += 1
        self.report.log(self.DISPLAY_NAME)

    def _batches(self, parquet, path: str):
        batches = parquet.iter_batches(batch_size=64, columns=list(self.REQUIRED_COLUMNS))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # a corrupt data page
                raise ValueError(
                    f"{path}: the parquet data cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                    "truncated."
                ) from e
            yield batch


_REPORT_FILE = "hf_ext_bad_rows.json"


def _keep_report_with_cache(builder: LocalParquetBuilder) -> None:
    """Store the bad-row report next to the Arrow cache when the files were converted, and read it back when the
    cache was reused (nothing was re-read), so a cached load reports the same skipped rows."""
    from hf_ext.utils.io import atomic_write

    path = Path(builder.cache_dir) / _REPORT_FILE
    if builder.report.rows:
        with atomic_write(path, "w") as f:
            json.dump([vars(r) for r in builder.report.rows], f, default=str)
    elif path.is_file():
        builder.report.rows = [BadRow(**r) for r in json.loads(path.read_text())]
        builder.report.log(builder.DISPLAY_NAME)


def load_local_parquet(
    builder_cls: type[LocalParquetBuilder],
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    on_bad_row: OnBadRow,
    cache_dir: str | os.PathLike | None,
    return_report: bool,
    tmp_prefix: str,
    **config_kwargs: Any,
) -> datasets.Dataset | tuple[datasets.Dataset, BadRowReport]:
    """Build the ``train`` split of a :class:`LocalParquetBuilder` from local files (the ``load_*`` functions' body).

    Expands ``data_files`` (files, directories of ``*.parquet``, globs; see :func:`resolve_data_files`), builds in
    ``cache_dir`` (the cache is keyed by the files' :func:`source_signature`, so an edited file is re-read) or in a
    fresh temporary directory (named ``tmp_prefix*``, removed at interpreter exit; the dataset is memory-mapped from
    it), raises a ``ValueError`` naming the files and keeping the bad-row report when no row is left, and appends the
    bad-row summary to ``dataset.info.description`` when rows were skipped. ``config_kwargs`` go to the builder's
    config (fields a subclass of :class:`LocalParquetConfig` adds).
    """
    what = f"local {builder_cls.DISPLAY_NAME} parquet files"
    files = tuple(resolve_data_files(data_files, what, suffixes=(".parquet",)))
    BadRowReport(on_bad_row)  # validates the value early
    tmp = temporary_cache_dir(tmp_prefix) if cache_dir is None else None
    try:
        builder = builder_cls(
            cache_dir=str(cache_dir) if cache_dir is not None else tmp,
            parquet_files=files,
            on_bad_row=on_bad_row,
            source_signature=source_signature(files),
            **config_kwargs,
        )
        prepare_builder(builder)
        _keep_report_with_cache(builder)
        raise_if_empty(builder, builder_cls.DISPLAY_NAME, files, [builder.report])
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset = builder.as_dataset(split="train")
    if len(builder.report):
        dataset.info.description = f"{dataset.info.description}\n{builder.report.summary()}"
    return (dataset, builder.report) if return_report else dataset
