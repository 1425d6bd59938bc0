"""On-disk state of an annotation queue: crash-safe journals, claims for several annotators, RLHF-V parquet export.

Layout (``state_dir``, by default ``<out>.annotations/`` next to the output parquet)::

    queue.json                  the items (image files, in order) and their stable ``idx``; new images are appended
    answers.jsonl               the model's answer per item, generated once and shared by every annotator
    journal/<annotator>.jsonl   one JSON line per finished item (corrected / marked correct / skipped)
    claims/<item>.<annotator>   who is working on which item right now
    .lock                       ``fcntl`` lock serialising claims and writes between processes

Every finished item is appended to the annotator's journal with one ``write`` and ``fsync`` *before* the next item is
handed out, and the RLHF-V parquet (``out``) is then rewritten atomically from all journals, so a crash, a killed
server or a closed tab loses at most the item being edited, and never leaves a half-written file. A journal whose
last line was cut by a crash is read up to that line (with a warning). Claims keep several annotators (browser
sessions or separate ``hf-ext annotate`` processes on a shared disk) off each other's items; with ``overlap > 1``
each item is given to that many different annotators, which is what :meth:`AnnotationStore.agreement` compares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..utils.spans import validate_spans

logger = logging.get_logger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "AnnotationStore", "agreement_statistics"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
STATUSES = ("corrected", "correct", "skipped")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_annotator(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"Invalid annotator name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or "
            "digit (it names the annotator's journal file)."
        )
    return name


def _item_key(item: str) -> str:
    """A file-name-safe key for an item (its relative image path)."""
    return hashlib.sha1(item.encode()).hexdigest()[:16]


def _append_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single ``write`` and ``fsync`` (a crash leaves at most a cut last line)."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a cut last line (a crash during the append) is ignored with a warning, a bad
    line elsewhere raises a ``ValueError`` naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines):  # no newline after it: the append was cut
                logger.warning("%s: ignoring the cut last line %d (written during a crash).", path, n)
                continue
            raise ValueError(f"{path}: line {n} is not valid JSON ({e}); fix or remove that line.") from e
    return records


class AnnotationStore:
    """The shared state of one annotation queue (see the module docstring for the layout).

    Args:
        images (`str` or `os.PathLike`): folder of images (searched recursively for
            ``.png/.jpg/.jpeg/.webp/.bmp/.gif``); it must contain at least one.
        out (`str` or `os.PathLike`): the RLHF-V parquet rewritten after every correction.
        state_dir (`str`, *optional*): where journals and claims live. Defaults to ``<out>.annotations``.
        overlap (`int`, *optional*, defaults to `1`): how many different annotators get each item (> 1 to measure
            agreement).
        claim_timeout (`float`, *optional*, defaults to `3600`): seconds after which another annotator may take an
            item claimed by someone who went away (the claimant always gets their own claim back).
        export_policy (`str`, *optional*, defaults to `"first"`): rows of ``out`` for an item corrected by several
            annotators: ``"first"`` (the earliest correction) or ``"all"`` (one row per annotator).
    """

    def __init__(
        self,
        images: str | os.PathLike,
        out: str | os.PathLike,
        state_dir: str | os.PathLike | None = None,
        overlap: int = 1,
        claim_timeout: float = 3600.0,
        export_policy: str = "first",
    ):
        self.images_dir = Path(images)
        self.out = Path(out)
        if self.out.suffix != ".parquet":
            raise ValueError(f"--out must be a .parquet file, got {str(out)!r}.")
        if not self.images_dir.is_dir():
            raise ValueError(f"--images {str(images)!r} is not a folder of images.")
        if not isinstance(overlap, int) or overlap < 1:
            raise ValueError(f"overlap must be an integer >= 1, got {overlap!r}.")
        if export_policy not in ("first", "all"):
            raise ValueError(f"export_policy must be 'first' or 'all', got {export_policy!r}.")
        self.overlap, self.claim_timeout, self.export_policy = overlap, claim_timeout, export_policy
        self.state_dir = (
            Path(state_dir) if state_dir is not None else self.out.with_name(self.out.name + ".annotations")
        )
        for sub in ("journal", "claims"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        with self._locked():
            self.items = self._sync_queue()
        if not self.items:
            raise ValueError(f"--images {str(images)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)}).")

    # ------------------------------------------------------------------ locking and queue

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.state_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _sync_queue(self) -> list[str]:
        """Read ``queue.json`` and append images that appeared since (stable ``idx`` per image)."""
        from ..utils.io import atomic_write

        path = self.state_dir / "queue.json"
        items = json.loads(path.read_text())["items"] if path.exists() else []
        found = sorted(
            p.relative_to(self.images_dir).as_posix()
            for p in self.images_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        known = set(items)
        new = [p for p in found if p not in known]
        if new or not path.exists():
            items = items + new
            with atomic_write(path, "w") as f:
                json.dump({"images": str(self.images_dir.resolve()), "items": items}, f, indent=1)
        return items

    def image_path(self, item: str) -> Path:
        return self.images_dir / item

    def idx(self, item: str) -> int:
        return self.items.index(item)

    # ------------------------------------------------------------------ journals and answers

    def journal_path(self, annotator: str) -> Path:
        return self.state_dir / "journal" / f"{_check_annotator(annotator)}.jsonl"

    def records(self, annotator: str | None = None) -> list[dict]:
        """Finished items, from one annotator's journal or all (in file order)."""
        paths = [self.journal_path(annotator)] if annotator else sorted((self.state_dir / "journal").glob("*.jsonl"))
        return [r for p in paths for r in _read_jsonl(p)]

    def cached_answer(self, item: str) -> str | None:
        """The model answer generated earlier for ``item`` (by any annotator), if any."""
        answers = {r["item"]: r["answer"] for r in _read_jsonl(self.state_dir / "answers.jsonl")}
        return answers.get(item)

    def save_answer(self, item: str, answer: str, model: str | None = None) -> str:
        """Remember the generated answer of ``item``; if another annotator saved one first, return theirs."""
        with self._locked():
            existing = self.cached_answer(item)
            if existing is not None:
                return existing
            _append_line(self.state_dir / "answers.jsonl", {"item": item, "answer": answer, "model": model})
        return answer

    # ------------------------------------------------------------------ claims

    def _claims(self) -> dict[str, dict[str, float]]:
        """``{item_key: {annotator: claim_time}}``."""
        claims: dict[str, dict[str, float]] = {}
        for path in (self.state_dir / "claims").iterdir():
            key, _, annotator = path.name.partition(".")
            if not annotator:
                continue
            try:
                claims.setdefault(key, {})[annotator] = path.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                continue
        return claims

    def _claim_path(self, item: str, annotator: str) -> Path:
        return self.state_dir / "claims" / f"{_item_key(item)}.{annotator}"

    def next_item(self, annotator: str) -> str | None:
        """Claim and return the next item for ``annotator``: the item they hold a claim on (resume after a crash or a
        closed tab), else the first item they have not finished that fewer than ``overlap`` other annotators have
        finished or hold. ``None`` when the queue has nothing left for them."""
        _check_annotator(annotator)
        with self._locked():
            self.items = self._sync_queue()
            done: dict[str, set[str]] = {}
            for record in self.records():
                done.setdefault(record["item"], set()).add(record["annotator"])
            claims = self._claims()
            now = time.time()
            for item in self.items:
                if annotator in claims.get(_item_key(item), {}) and annotator not in done.get(item, set()):
                    return item
            for item in self.items:
                finished = done.get(item, set())
                if annotator in finished:
                    continue
                holders = {
                    a for a, t in claims.get(_item_key(item), {}).items() if now - t < self.claim_timeout
                } - finished
                if len(finished) + len(holders - {annotator}) >= self.overlap:
                    continue
                self._claim_path(item, annotator).touch()
                return item
        return None

    def release(self, item: str, annotator: str) -> None:
        """Give ``item`` back to the queue without finishing it."""
        with contextlib.suppress(FileNotFoundError):
            self._claim_path(item, _check_annotator(annotator)).unlink()

    # ------------------------------------------------------------------ finishing items

    def submit(
        self,
        annotator: str,
        item: str,
        status: str,
        question: str,
        answer: str,
        chosen: str | None = None,
        chosen_segments: list[list[int]] | None = None,
        rejected_segments: list[list[int]] | None = None,
        model: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict:
        """Finish ``item``: append it to the annotator's journal (fsync'd), release the claim, rewrite ``out``.

        ``status`` is ``"corrected"`` (``chosen`` and both span lists required; a preference pair), ``"correct"``
        (the answer needs no correction: recorded, but RLHF-V pairs only come from corrected answers) or
        ``"skipped"`` (the annotator passes; the item stays open for others). Submitting an item twice is a no-op
        that returns the first record, so a double click never duplicates a row.
        """
        _check_annotator(annotator)
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}.")
        if item not in self.items:
            raise ValueError(f"{item!r} is not in the queue of {self.images_dir}.")
        if status == "corrected":
            if not chosen or not chosen.strip():
                raise ValueError("The corrected answer is empty.")
            if chosen.strip() == answer.strip():
                raise ValueError("The corrected answer is identical to the model's answer: mark it correct instead.")
            for side, spans, text in (
                ("chosen", chosen_segments, chosen),
                ("rejected", rejected_segments, answer),
            ):
                problem = (
                    f"{side}_segments must be [start, end] spans with 0 <= start < end <= {len(text)}, got {spans!r}"
                )
                if spans is None:
                    raise ValueError(f"{problem} ([] when nothing changed on that side).")
                try:
                    validate_spans(spans, len(text), f"{side}_segments")
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{problem}: {e}") from e
        record = {
            "item": item,
            "idx": self.idx(item),
            "annotator": annotator,
            "status": status,
            "question": question,
            "answer": answer,
            "chosen": chosen if status == "corrected" else None,
            "chosen_segments": chosen_segments if status == "corrected" else None,
            "rejected_segments": rejected_segments if status == "corrected" else None,
            "model": model,
            "time": time.time(),
            **(extra or {}),
        }
        with self._locked():
            for previous in self.records(annotator):
                if previous["item"] == item:
                    self.release(item, annotator)
                    return previous
            _append_line(self.journal_path(annotator), record)
            self.release(item, annotator)
            if status == "corrected":
                self.export(self.out)
        return record

    # ------------------------------------------------------------------ export and statistics

    def pairs(self, policy: str | None = None) -> list[dict]:
        """The corrected records that become preference pairs (``policy``: ``"first"`` per item or ``"all"``)."""
        policy = policy or self.export_policy
        corrected = sorted(
            (r for r in self.records() if r["status"] == "corrected"), key=lambda r: (r["idx"], r["time"])
        )
        if policy == "all":
            return corrected
        if policy != "first":
            raise ValueError(f"policy must be 'first' or 'all', got {policy!r}.")
        seen, out = set(), []
        for record in corrected:
            if record["item"] not in seen:
                seen.add(record["item"])
                out.append(record)
        return out

    def export(self, path: str | os.PathLike | None = None, policy: str | None = None) -> Path:
        """Write the corrected pairs as RLHF-V parquet (atomically), readable by
        ``dataset_builders.rlhf_v.load_rlhf_v(path, with_segments=True)``; returns the path."""
        from dataset_builders.rlhf_v import write_rlhf_v_parquet

        path = Path(path) if path is not None else self.out
        rows = []
        for record in self.pairs(policy):
            text = {
                "question": record["question"],
                "chosen": record["chosen"],
                "rejected": record["answer"],
                "chosen_segments": record["chosen_segments"],
                "rejected_segments": record["rejected_segments"],
            }
            meta = {"annotator": record["annotator"], "model": record.get("model"), "time": record["time"]}
            meta["type"] = "segment_correction"
            image = self.image_path(record["item"])
            if not image.is_file():
                raise ValueError(f"{image}: the image of idx={record['idx']} is gone; restore it to export.")
            rows.append(
                {
                    "ds_name": "hf_ext_annotate",
                    "image": {"bytes": image.read_bytes(), "path": record["item"]},
                    "text": json.dumps(text, ensure_ascii=False),
                    "origin_dataset": self.images_dir.name,
                    "origin_split": json.dumps(meta),
                    "idx": record["idx"],
                    "image_path": record["item"],
                }
            )
        # the builder's writer (the Hub dataset's features) into a temporary file, fsync'd and renamed over `path`
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write_rlhf_v_parquet(rows, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path

    def progress(self, annotator: str | None = None) -> dict[str, int]:
        """Counts: ``total`` items, ``finished`` (by ``overlap`` annotators), ``mine`` (by ``annotator``), ``pairs``."""
        records = self.records()
        per_item: dict[str, set[str]] = {}
        for r in records:
            if r["status"] != "skipped":
                per_item.setdefault(r["item"], set()).add(r["annotator"])
        return {
            "total": len(self.items),
            "finished": sum(len(v) >= self.overlap for v in per_item.values()),
            "mine": sum(annotator in v for v in per_item.values()) if annotator else 0,
            "pairs": len(self.pairs()),
        }

    def agreement(self) -> dict[str, Any]:
        """Agreement between annotators on the items several of them finished: see :func:`agreement_statistics`."""
        return agreement_statistics(self.records())


def _chars(spans: list[list[int]] | None) -> set[int]:
    return {i for s, e in (spans or []) for i in range(s, e)}


def agreement_statistics(records: list[dict]) -> dict[str, Any]:
    """Pairwise agreement of annotators who finished the same item (skips ignored).

    Returns a dict with ``items`` (items with >= 2 annotations), ``pairs`` (annotator pairs compared),
    ``label_agreement`` (share of pairs agreeing on "needs correction" vs "correct"), ``cohen_kappa`` (the same,
    chance-corrected, over all pairs pooled; ``None`` when undefined), ``span_f1`` (mean character-level F1 between
    the two annotators' ``rejected_segments``, over pairs where both corrected the same answer text) and
    ``exact_match`` (share of those pairs with identical corrected answers), and ``per_annotator`` counts.
    """
    by_item: dict[str, dict[str, dict]] = {}
    per_annotator: dict[str, dict[str, int]] = {}
    for r in records:
        counts = per_annotator.setdefault(r["annotator"], {s: 0 for s in STATUSES})
        counts[r["status"]] += 1
        if r["status"] != "skipped":
            by_item.setdefault(r["item"], {})[r["annotator"]] = r
    pairs = agree = 0
    f1s, exact = [], []
    labels_a, labels_b = [], []
    for item_annotations in by_item.values():
        names = sorted(item_annotations)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                a, b = item_annotations[names[i]], item_annotations[names[j]]
                la, lb = a["status"] == "corrected", b["status"] == "corrected"
                pairs += 1
                agree += la == lb
                labels_a.append(la)
                labels_b.append(lb)
                if la and lb and a["answer"] == b["answer"]:
                    ca, cb = _chars(a["rejected_segments"]), _chars(b["rejected_segments"])
                    f1s.append(2 * len(ca & cb) / (len(ca) + len(cb)) if ca or cb else 1.0)
                    exact.append(a["chosen"] == b["chosen"])
    kappa = None
    if pairs:
        p_o = agree / pairs
        pa, pb = sum(labels_a) / pairs, sum(labels_b) / pairs
        p_e = pa * pb + (1 - pa) * (1 - pb)
        kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else None
    return {
        "items": sum(len(v) >= 2 for v in by_item.values()),
        "pairs": pairs,
        "label_agreement": agree / pairs if pairs else None,
        "cohen_kappa": kappa,
        "span_f1": sum(f1s) / len(f1s) if f1s else None,
        "exact_match": sum(exact) / len(exact) if exact else None,
        "per_annotator": per_annotator,
    }
