"""CPM-Bee's tokenizer and structured ("dict") inputs.

CPM-Bee (OpenBMB) reads nested dicts such as ``{"input": "今天天气不错，", "<ans>": ""}``: every key and every string
value is a *segment* (``<s>`` + tokens + ``</s>``), the leaves under the top-level ``<ans>`` key are the answer, and
the model receives, besides the token ids, a sub-id per token, the segment of each token, the tree relation of every
pair of segments and a per-input table of out-of-vocabulary pieces. [`CpmBeeTokenizer`] builds all of that; it is a
re-implementation from the conventions of OpenBMB's ``CPMBeeTokenizer`` / ``convert_data_to_id`` /
``_MixedDatasetBatchPacker`` / ``_process_list`` and is checked against the outputs of the original code
(``tests/fixtures/cpmbee``).

Text tokenization: ``<<`` is a literal ``<``; ``<`` followed by another character opens a special token that ends at
the next ``>``; plain text is split by greedy longest match over the vocabulary (never matching a ``<...>`` entry),
and characters that match nothing join one out-of-vocabulary run. OOV runs and special tokens absent from the
vocabulary (``<ans_1>``, ``<mask_0>``) get temporary ids ``vocab_size + k`` (first appearance first), which
[`CpmBeeTokenizer.convert_data_to_id`] turns into ``(base id, sub)`` pairs: ``<unk>`` for OOV runs, ``<X>`` for
``<X_anything>``; ``sub`` is the rank of first appearance in that group, from 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchEncoding
from transformers.tokenization_python import PreTrainedTokenizer
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The per-token / per-segment tensors the model takes besides `input_ids` (the tokenizer builds them, generation
# carries them into the first step).
CPMBEE_STRUCTURED_INPUTS = (
    "input_id_sub",
    "position_ids",
    "context",
    "sample_ids",
    "num_segments",
    "segment_ids",
    "segment_rel_offset",
    "segment_rel",
    "span",
)

__all__ = ["CpmBeeTokenizer"]

VOCAB_FILES_NAMES = {"vocab_file": "vocab.txt"}


def load_cpmbee_vocab(vocab_file: str | os.PathLike) -> list[str]:
    """The tokens of a CPM-Bee ``vocab.txt`` (one token per line; empty lines are skipped; id = rank)."""
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line[:-1] if line.endswith("\n") else line for line in f]
    return [t for t in tokens if t]


def _fill_answer_placeholders(node: Any, path: list[str], placeholders: list[list[str]]) -> Any:
    """Replace every answer leaf by `<ans_k>` (depth first, k from 1), recording its key path."""
    if isinstance(node, Mapping):
        return {k: _fill_answer_placeholders(v, path + [k], placeholders) for k, v in node.items()}
    placeholders.append(path)
    return f"<ans_{len(placeholders)}>"


class CpmBeeTokenizer(PreTrainedTokenizer):
    r"""
    Construct a CPM-Bee tokenizer (greedy longest match over ``vocab.txt``) that also turns structured dict inputs
    into everything [`CpmBeeForCausalLM`] needs.

    Calling the tokenizer on a `dict` (or a list of dicts) returns the packed model inputs (see
    [`~CpmBeeTokenizer.__call__`]); calling it on strings behaves like any slow tokenizer (OOV runs become
    `<unk>`).

    Args:
        vocab_file (`str`):
            Path to the vocabulary (original CPM-Bee format: one token per line, `</n>` and `</_>` standing for a
            newline and a space).
        bos_token (`str`, *optional*, defaults to `"<s>"`):
            Opens every segment.
        eos_token (`str`, *optional*, defaults to `"</s>"`):
            Closes every context segment; ends an answer.
        pad_token (`str`, *optional*, defaults to `"<pad>"`):
            Padding token (id 0 in the released vocabulary).
        unk_token (`str`, *optional*, defaults to `"<unk>"`):
            Base token of out-of-vocabulary runs.
        mask_token (`str`, *optional*, defaults to `"<mask>"`):
            Mask token.
        line_token (`str`, *optional*, defaults to `"</n>"`):
            Vocabulary entry that stands for `"\n"`.
        space_token (`str`, *optional*, defaults to `"</_>"`):
            Vocabulary entry that stands for `" "`.
        max_depth (`int`, *optional*, defaults to 8):
            Depth cap of the segment-relation buckets (CPM-Bee uses 8; the model needs
            `position_bias_num_segment_buckets >= max_depth**2 + 1`).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        mask_token: str = "<mask>",
        line_token: str = "</n>",
        space_token: str = "</_>",
        max_depth: int = 8,
        padding_side: str = "left",
        **kwargs,
    ):
        tokens = load_cpmbee_vocab(vocab_file)
        encoder: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in encoder:
                raise ValueError(f"{vocab_file}: token {tok!r} appears twice (ids {encoder[tok]} and {i}).")
            encoder[tok] = i
        for name, tok in (("line_token", line_token), ("space_token", space_token)):
            if tok not in encoder:
                raise ValueError(f"{vocab_file} has no {name} {tok!r}; pass the entry that stands for it.")
        encoder["\n"] = encoder.pop(line_token)
        encoder[" "] = encoder.pop(space_token)
        self.encoder = encoder
        self.decoder = {i: t for t, i in encoder.items()}
        self._special_vocab = {t for t in encoder if t.startswith("<") and t.endswith(">")}
        self._max_token_length = max(len(t) for t in encoder)
        self.line_token = line_token
        self.space_token = space_token
        self.max_depth = max_depth
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            unk_token=unk_token,
            mask_token=mask_token,
            line_token=line_token,
            space_token=space_token,
            max_depth=max_depth,
            padding_side=padding_side,
            **kwargs,
        )

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder)

    def _convert_token_to_id(self, token: str) -> int:
        return self.encoder.get(token, self.encoder[self.unk_token])

    def _convert_id_to_token(self, index: int) -> str:
        return self.decoder.get(index, self.unk_token)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        path = os.path.join(save_directory, name) if os.path.isdir(save_directory) else save_directory
        lines = []
        for i in range(self.vocab_size):
            tok = self.decoder[i]
            lines.append(self.line_token if tok == "\n" else self.space_token if tok == " " else tok)
        from ...utils.io import atomic_write

        with atomic_write(path, mode="wb") as f:
            f.write("".join(t + "\n" for t in lines).encode("utf-8"))
        return (path,)

    # ------------------------------------------------------------------ text
    @staticmethod
    def _split_special(text: str) -> list[tuple[str, bool]]:
        """`text` -> `[(piece, is_special)]`: `<<` is a literal `<`, `<x...>` a special token."""
        out: list[tuple[str, bool]] = []
        buf, i = "", 0
        while i < len(text):
            c = text[i]
            if c != "<":
                buf += c
                i += 1
                continue
            if i + 1 >= len(text):
                raise ValueError(
                    f"Unexpected end of text `{text}`: a single `<` ends it (write `<<` for a literal `<`)."
                )
            if text[i + 1] == "<":
                buf += "<"
                i += 2
                continue
            j = i + 2
            while j < len(text) and text[j] != ">":
                if text[j] == "<":
                    raise ValueError(
                        f"Invalid special token at pos {j} of `{text}`: `<` inside `<...>` (write `<<` for a "
                        "literal `<`)."
                    )
                j += 1
            if j >= len(text):
                raise ValueError(f"Unexpected end of text `{text}`: the special token at pos {i} has no `>`.")
            if buf:
                out.append((buf, False))
            buf = ""
            out.append((text[i : j + 1], True))
            i = j + 1
        if buf:
            out.append((buf, False))
        return out

    def tokenize_with_info(self, text: str) -> list[tuple[str, int, bool, bool]]:
        """CPM-Bee tokenization: `[(token, start, is_oov_run, is_special)]`; `start` is the offset in the unescaped
        text (each `<<` counts as one character), as the original reports it."""
        tokens: list[tuple[str, bool, bool]] = []
        for piece, special in self._split_special(text):
            if special:
                tokens.append((piece, False, True))
                continue
            p, unk = 0, ""
            while p < len(piece):
                match = None
                for n in range(min(self._max_token_length, len(piece) - p), 0, -1):
                    cand = piece[p : p + n]
                    if cand in self.encoder and cand not in self._special_vocab:
                        match = cand
                        break
                if match is None:  # characters that match nothing join one out-of-vocabulary run
                    unk += piece[p]
                    p += 1
                    continue
                if unk:
                    tokens.append((unk, True, False))
                    unk = ""
                tokens.append((match, False, False))
                p += len(match)
            if unk:
                tokens.append((unk, True, False))
        start, out = 0, []
        for tok, is_unk, is_special in tokens:
            out.append((tok, start, is_unk, is_special))
            start += len(tok)
        return out

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Tokens of `text` (OOV runs and unknown special tokens are kept as their text)."""
        return [t for t, _, _, _ in self.tokenize_with_info(text)]

    def encode_with_ext_table(
        self, text: str, ext_table: dict[str, int] | None = None
    ) -> tuple[list[int], dict[int, str]]:
        """CPM-Bee's `encode`: ids of `text`, where OOV runs and special tokens absent from the vocabulary get
        temporary ids `vocab_size + k` (first appearance first).

        Args:
            text (`str`): the text.
            ext_table (`dict[str, int]`, *optional*): piece -> temporary id, shared by several calls (all segments
                of one input) and updated in place.

        Returns:
            `tuple[list[int], dict[int, str]]`: the ids and the temporary id -> piece table.
        """
        ext = {} if ext_table is None else ext_table
        ids = []
        for tok, _, is_unk, is_special in self.tokenize_with_info(text):
            if is_unk or (is_special and tok not in self.encoder):
                if tok not in ext:
                    ext[tok] = self.vocab_size + len(ext)
                ids.append(ext[tok])
            else:
                ids.append(self.encoder[tok])
        return ids, {v: k for k, v in ext.items()}

    def decode_with_ext_table(self, ids: Sequence[int], ext_table: Mapping[int, str] | None = None) -> str:
        """Inverse of [`encode_with_ext_table`]: temporary ids map back through `ext_table`; a `<` inside an ordinary
        token is written `<<`; negative ids are skipped."""
        ext_table = ext_table or {}
        out = []
        for i in ids:
            i = int(i)
            if i in ext_table:
                out.append(ext_table[i])
            elif i >= 0:
                if i not in self.decoder:
                    raise ValueError(f"Token id {i} is outside the vocabulary ({self.vocab_size}) and the ext table.")
                w = self.decoder[i]
                out.append(w if w in self._special_vocab else w.replace("<", "<<"))
        return "".join(out)

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if skip_special_tokens:
            token_ids = [i for i in token_ids if i not in self.all_special_ids]
        return self.decode_with_ext_table([i for i in token_ids if i < self.vocab_size])

    # ------------------------------------------------------------------ structured input
    def convert_data_to_id(self, data: Mapping[str, Any], max_depth: int | None = None) -> dict[str, Any]:
        """One structured input -> CPM-Bee's flat arrays (the original `convert_data_to_id`).

        Args:
            data (`Mapping[str, Any]`): nested dict of strings; the leaves under the top-level key `"<ans>"` are
                predicted (context 0, no closing `</s>`).
            max_depth (`int`, *optional*): defaults to the tokenizer's `max_depth`.

        Returns:
            `dict`: `input_ids`, `input_id_subs`, `context`, `segment_ids`, `segment_rel` (flat `n x n`),
            `num_segments`, `ext_table` (temporary id -> piece), `token_id_table` (group -> {temporary id: sub}),
            `image_bound` (always empty here; VisCPM-Chat fills it) and `segments` (per segment: depth, parent,
            predicted, text).
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"CPM-Bee inputs are dicts such as {{'input': ..., '<ans>': ''}}, got {type(data).__name__}."
            )
        max_depth = self.max_depth if max_depth is None else max_depth
        segs: list[dict[str, Any]] = [{"value": "<root>", "depth": 0, "predict": False, "parent": None}]

        def build(node: Any, depth: int, predict: bool, parent: int, path: str) -> None:
            if isinstance(node, Mapping):
                for k, v in node.items():
                    if not isinstance(k, str):
                        raise TypeError(f"Key {k!r} at {path or 'top level'} is not a string.")
                    segs.append({"value": k, "depth": depth, "predict": False, "parent": parent})
                    build(v, depth + 1, predict or (depth == 1 and k == "<ans>"), len(segs) - 1, f"{path}/{k}")
            elif isinstance(node, str):
                segs.append({"value": node, "depth": depth, "predict": predict, "parent": parent})
            else:
                raise TypeError(
                    f"Value at {path} is a {type(node).__name__}; CPM-Bee inputs hold only dicts and strings."
                )

        build(data, 1, False, 0, "")
        n = len(segs)
        ancestors = []
        for s in range(n):
            chain = [s]
            while segs[chain[-1]]["parent"] is not None:
                chain.append(segs[chain[-1]]["parent"])
            ancestors.append(chain)
        rel = [0] * (n * n)
        for q in range(n):
            for k in range(n):
                if q == k:
                    continue
                kset = set(ancestors[k])
                lca = next(a for a in ancestors[q] if a in kset)
                up = min(segs[q]["depth"] - segs[lca]["depth"], max_depth - 1)
                down = min(segs[k]["depth"] - segs[lca]["depth"], max_depth - 1)
                rel[q * n + k] = up * max_depth + down + 1

        ext: dict[str, int] = {}
        groups: dict[str, dict[int, int]] = {}
        ids, subs, context, segment_ids = [], [], [], []
        bos, eos = self.encoder[self.bos_token], self.encoder[self.eos_token]
        for si, seg in enumerate(segs):
            seg_ids, _ = self.encode_with_ext_table(seg["value"], ext)
            rev = {v: k for k, v in ext.items()}
            toks, tsub = [bos], [0]
            for i in seg_ids:
                if i >= self.vocab_size:
                    piece = rev[i]
                    if piece.startswith("<") and piece.endswith(">"):
                        name = "<" + piece[1:-1].split("_", 1)[0] + ">"
                    else:
                        name = self.unk_token
                    if name not in self.encoder:
                        raise ValueError(
                            f"Special token {piece!r} (segment {seg['value']!r}) has no base token {name!r} in the "
                            "vocabulary; write it as text with `<<` or use a token of the vocabulary."
                        )
                    group = groups.setdefault(name, {})
                    if i not in group:
                        group[i] = len(group)
                    toks.append(self.encoder[name])
                    tsub.append(group[i])
                else:
                    toks.append(i)
                    tsub.append(0)
            if not seg["predict"]:
                toks.append(eos)
                tsub.append(0)
            ids += toks
            subs += tsub
            context += [0 if seg["predict"] else 1] * len(toks)
            segment_ids += [si] * len(toks)
        return {
            "input_ids": ids,
            "input_id_subs": subs,
            "context": context,
            "segment_ids": segment_ids,
            "segment_rel": rel,
            "num_segments": n,
            "ext_table": {v: k for k, v in ext.items()},
            "token_id_table": groups,
            "image_bound": [],
            "segments": segs,
        }

    # ------------------------------------------------------------------ packing (training / forward)
    def pack(
        self,
        rows: Sequence[Sequence[Sequence[Mapping[str, Any]]]],
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        """Pack structured inputs into right-padded rows, as CPM-Bee's training batch packer.

        Args:
            rows (`Sequence`): one entry per batch row; a row is a list of *spans* (instances packed into the same
                row, separated by `span` ids that attention never crosses); a span is a list of dicts: the instance
                followed by its in-context samples (sample ids 1, 2, ..., all context; the instance sees them, they
                see only themselves).
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` or `None` (lists).

        Returns:
            [`BatchEncoding`]: `input_ids`, `input_id_sub`, `length`, `attention_mask`, `context`, `sample_ids`,
            `num_segments`, `segment_ids`, `segment_rel_offset`, `segment_rel`, `span`, `position_ids`,
            `ext_table_ids`, `ext_table_sub` (distinct `(id, sub > 0)` pairs over the batch; `(0, 1)` when none)
            and `labels` (next token at answer positions, ext tokens as `vocab_size + index`, `-100` elsewhere).
        """
        packed = []
        for r, row in enumerate(rows):
            cols = {
                k: []
                for k in (
                    "input_ids",
                    "input_id_sub",
                    "context",
                    "sample_ids",
                    "num_segments",
                    "segment_ids",
                    "segment_rel_offset",
                    "span",
                )
            }
            rel: list[int] = []
            for span_idx, span in enumerate(row):
                if not span:
                    raise ValueError(f"Row {r}, span {span_idx} is empty.")
                for sample_idx, data in enumerate(span):
                    conv = self.convert_data_to_id(data)
                    length = len(conv["input_ids"])
                    cols["input_ids"] += conv["input_ids"]
                    cols["input_id_sub"] += conv["input_id_subs"]
                    cols["context"] += conv["context"] if sample_idx == 0 else [1] * length
                    cols["sample_ids"] += [sample_idx] * length
                    cols["num_segments"] += [conv["num_segments"]] * length
                    cols["segment_ids"] += conv["segment_ids"]
                    cols["segment_rel_offset"] += [len(rel)] * length
                    cols["span"] += [span_idx] * length
                    rel += conv["segment_rel"]
            cols["segment_rel"] = rel
            packed.append(cols)
        max_len = max(len(c["input_ids"]) for c in packed)
        max_rel = max(len(c["segment_rel"]) for c in packed)
        pairs: list[tuple[int, int]] = []
        for c in packed:
            for idx, sub in zip(c["input_ids"], c["input_id_sub"]):
                if sub > 0 and (idx, sub) not in pairs:
                    pairs.append((idx, sub))
        labels = []
        for c in packed:
            length = len(c["input_ids"])
            row = [-100] * max_len
            for j in range(length):
                idx, sub = c["input_ids"][j], c["input_id_sub"][j]
                t = self.vocab_size + pairs.index((idx, sub)) if sub > 0 else idx
                if j > 1 and c["context"][j - 1] == 0:
                    row[j - 1] = t if idx != self.bos_token_id else self.eos_token_id
            if c["context"][length - 1] == 0:
                row[length - 1] = self.eos_token_id
            labels.append(row)
        if not pairs:
            pairs = [(0, 1)]
        out: dict[str, Any] = {}
        for k in packed[0]:
            width = max_rel if k == "segment_rel" else max_len
            out[k] = [c[k] + [0] * (width - len(c[k])) for c in packed]
        out["length"] = [len(c["input_ids"]) for c in packed]
        out["attention_mask"] = [[1] * n + [0] * (max_len - n) for n in out["length"]]
        out["position_ids"] = [list(range(max_len)) for _ in packed]
        out["ext_table_ids"] = [p[0] for p in pairs]
        out["ext_table_sub"] = [p[1] for p in pairs]
        out["labels"] = labels
        return BatchEncoding(out, tensor_type=return_tensors)

    # ------------------------------------------------------------------ generation inputs
    def prepare_for_generation(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        return_tensors: str | None = "pt",
        add_answer_bos: bool = False,
    ) -> tuple[BatchEncoding, list[dict[str, Any]]]:
        """Prompt inputs for generation (the original `_process_list`), left-padded.

        Every answer leaf becomes `<ans_1>`, `<ans_2>`, ... (depth first), the answer tokens themselves are dropped,
        positions are `arange`, and the ext table holds the `(id, sub > 0)` pairs of the batch (possibly empty).

        With `add_answer_bos=True` each prompt ends with the `<s>` that opens its first answer leaf (an answer token:
        context 0, position 0, the leaf's segment), so stock `model.generate(**inputs)` continues that leaf (one
        leaf only: use [`~hf_ext.models.cpmbee.cpmbee_beam_search`] for several leaves and CPM-Bee's own decoding).

        Returns:
            `tuple`: a [`BatchEncoding`] (`input_ids`, `input_id_sub`, `position_ids`, `context`, `sample_ids`,
            `num_segments`, `segment_ids`, `segment_rel_offset`, `segment_rel`, `span`, `attention_mask`,
            `ext_table_ids`, `ext_table_sub`) and per input a dict with `data` (the input with placeholders),
            `predict_segments` (`[(segment, answer number)]`), `answer_placeholders` (key path of each answer leaf
            under `<ans>`) and `rev_ext_table` (logit column -> text).
        """
        batch = [data] if isinstance(data, Mapping) else list(data)
        if not batch:
            raise ValueError("`data` is empty.")
        rows, infos = [], []
        pair_col: dict[tuple[int, int], int] = {}
        ext_ids: list[int] = []
        ext_subs: list[int] = []
        for b, item in enumerate(batch):
            if not isinstance(item, Mapping) or "<ans>" not in item:
                raise ValueError(f"Input {b} needs a top-level '<ans>' key (the answer to generate): {item!r}")
            placeholders: list[list[str]] = []
            filled = dict(item)
            filled["<ans>"] = _fill_answer_placeholders(item["<ans>"], [], placeholders)
            conv = self.convert_data_to_id(filled)
            segs = conv["segments"]
            predict_segments = []
            for si, seg in enumerate(segs):
                if seg["predict"]:
                    predict_segments.append((si, int(seg["value"][len("<ans_") : -1])))
            keep = [j for j, c in enumerate(conv["context"]) if c == 1]
            rev: dict[int, str] = {}
            for name, mp in conv["token_id_table"].items():
                if name == "<ans>":
                    continue
                base = self.encoder[name]
                for fake_id, sub in mp.items():
                    if sub > 0:
                        if (base, sub) not in pair_col:
                            pair_col[(base, sub)] = self.vocab_size + len(ext_ids)
                            ext_ids.append(base)
                            ext_subs.append(sub)
                        rev[pair_col[(base, sub)]] = conv["ext_table"][fake_id]
                    else:
                        rev[base] = conv["ext_table"][fake_id]
            row = {
                "input_ids": [conv["input_ids"][j] for j in keep],
                "input_id_sub": [conv["input_id_subs"][j] for j in keep],
                "segment_ids": [conv["segment_ids"][j] for j in keep],
                "position_ids": list(range(len(keep))),
                "context": [1] * len(keep),
                "num_segments": conv["num_segments"],
                "segment_rel": conv["segment_rel"],
            }
            if add_answer_bos:
                row["input_ids"].append(self.bos_token_id)
                row["input_id_sub"].append(0)
                row["segment_ids"].append(predict_segments[0][0])
                row["position_ids"].append(0)
                row["context"].append(0)
            rows.append(row)
            infos.append(
                {
                    "data": filled,
                    "original": item,
                    "predict_segments": predict_segments,
                    "answer_placeholders": placeholders,
                    "rev_ext_table": rev,
                    "segments": segs,
                    "kept_segment_ids": [conv["segment_ids"][j] for j in keep],
                }
            )
        max_len = max(len(r["input_ids"]) for r in rows)
        max_rel = max(len(r["segment_rel"]) for r in rows)
        out: dict[str, list] = {k: [] for k in ("input_ids", *CPMBEE_STRUCTURED_INPUTS, "attention_mask")}
        for r in rows:
            n, pad = len(r["input_ids"]), max_len - len(r["input_ids"])
            out["input_ids"].append([self.pad_token_id] * pad + r["input_ids"])
            out["input_id_sub"].append([0] * pad + r["input_id_sub"])
            out["position_ids"].append([0] * pad + r["position_ids"])
            out["context"].append([0] * pad + r["context"])
            out["sample_ids"].append([0] * max_len)
            out["num_segments"].append([0] * pad + [r["num_segments"]] * n)
            out["segment_ids"].append([0] * pad + r["segment_ids"])
            out["segment_rel_offset"].append([0] * max_len)
            out["segment_rel"].append(r["segment_rel"] + [0] * (max_rel - len(r["segment_rel"])))
            out["span"].append([0] * max_len)
            out["attention_mask"].append([0] * pad + [1] * n)
        out["ext_table_ids"] = ext_ids
        out["ext_table_sub"] = ext_subs
        return BatchEncoding(out, tensor_type=return_tensors), infos

    def decode_answers(
        self, results: Sequence[Sequence[tuple[int, int]]], infos: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Fill the `<ans>` leaves of each input with the generated text.

        Args:
            results (`Sequence`): per input, the generated `(logit column, answer number)` pairs (a trailing `</s>`
                per leaf may be included; it is dropped).
            infos (`Sequence`): the second output of [`prepare_for_generation`].

        Returns:
            `list[dict]`: the inputs with their answers (leaves never reached are `None`).
        """
        outputs = []
        for result, info in zip(results, infos):
            per_leaf: dict[int, list[int]] = {}
            for word, ans in result:
                per_leaf.setdefault(int(ans), []).append(int(word))
            texts = {}
            for ans, words in per_leaf.items():
                if words and words[-1] == self.eos_token_id:
                    words = words[:-1]
                texts[ans] = self.decode_with_ext_table(words, info["rev_ext_table"])
            data = dict(info["original"])
            if not info["answer_placeholders"] or info["answer_placeholders"] == [[]]:
                data["<ans>"] = texts.get(1)
            else:
                import copy

                answer = copy.deepcopy(data["<ans>"])
                for k, path in enumerate(info["answer_placeholders"], start=1):
                    node = answer
                    for key in path[:-1]:
                        node = node[key]
                    node[path[-1]] = texts.get(k)
                data["<ans>"] = answer
            outputs.append(data)
        return outputs

    def __call__(self, text=None, *args, **kwargs):
        """Structured inputs (a dict or a list of dicts) are packed with [`pack`] (one instance per row); anything
        else goes to the standard tokenizer call."""
        if isinstance(text, Mapping) or (
            isinstance(text, (list, tuple)) and text and all(isinstance(t, Mapping) for t in text)
        ):
            batch = [text] if isinstance(text, Mapping) else list(text)
            return self.pack([[[d]] for d in batch], return_tensors=kwargs.get("return_tensors", "pt"))
        return super().__call__(text, *args, **kwargs)

    def as_tensors(self, encoding: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """`encoding` with every list turned into a long tensor."""
        return {k: torch.as_tensor(v, dtype=torch.long) for k, v in encoding.items()}
