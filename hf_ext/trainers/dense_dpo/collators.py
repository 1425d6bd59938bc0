"""Data collators that add dense-DPO token weights (and precomputed reference log-probs) to TRL's batches."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference

from .weights import segment_token_mask, sequence_corrected_masks

__all__ = ["DataCollatorForDensePreference", "DataCollatorForDenseVisionPreference", "DENSE_COLUMNS"]

# Dataset columns the dense collators read (kept by `DenseDPOTrainer._set_signature_columns_if_needed`).
DENSE_COLUMNS = (
    "chosen_segments",
    "rejected_segments",
    "chosen_segment_mask",
    "rejected_segment_mask",
    "ref_chosen_token_logps",
    "ref_rejected_token_logps",
    "idx",
)


def _row_name(example: dict[str, Any], i: int) -> str:
    return f"example idx={example['idx']!r}" if "idx" in example else f"batch example {i}"


def _add_dense_fields(
    output: dict[str, Any],
    examples: list[dict[str, Any]],
    segment_masks: list[tuple[list | None, list | None]],
    min_match: int,
    weight_insertions: bool,
) -> dict[str, Any]:
    """Add `corrected_mask` and, when the examples carry them, `ref_token_logps` to a TRL batch.

    The batch rows are `[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`. The new tensors have the shape of
    `input_ids`; the value at position t belongs to token t (whose log-prob TRL stores at `log_probs[:, t - 1]`).
    Without explicit segment masks a pair's corrected tokens come from the official RLHF-V diff of its two whole
    sequences (the attended tokens of each row: prompt, image tokens and completion, without padding), see
    [`~hf_ext.trainers.dense_dpo.weights.sequence_corrected_masks`]. Only completion tokens are flagged. No weight is
    applied here: γ and the normalisation are applied by the trainer, from its `args`.
    """
    input_ids = output["input_ids"]
    attended = output["attention_mask"].bool()
    completion = output["completion_mask"].bool()
    # The first position has no log-prob (nothing predicts it), so it is never scored.
    scored = completion.clone()
    scored[:, 0] = False
    n = len(examples)
    corrected = torch.zeros(input_ids.shape, dtype=torch.bool)
    has_ref = "ref_chosen_token_logps" in examples[0] and examples[0]["ref_chosen_token_logps"] is not None
    ref = torch.zeros(input_ids.shape, dtype=torch.float32) if has_ref else None
    for i, example in enumerate(examples):
        chosen_mask, rejected_mask = segment_masks[i]
        if chosen_mask is None and rejected_mask is None:
            chosen_pos = attended[i].nonzero().squeeze(1)
            rejected_pos = attended[n + i].nonzero().squeeze(1)
            rejected_flags, chosen_flags = sequence_corrected_masks(
                input_ids[n + i, rejected_pos].tolist(),
                input_ids[i, chosen_pos].tolist(),
                min_match,
                weight_insertions,
            )
            # entry j of the flags belongs to token pos[j + 1]
            chosen_pos, rejected_pos = chosen_pos[1:], rejected_pos[1:]
        else:
            chosen_pos = completion[i].nonzero().squeeze(1)
            rejected_pos = completion[n + i].nonzero().squeeze(1)
            chosen_flags = _fit_mask(chosen_mask, len(chosen_pos), "chosen", _row_name(example, i))
            rejected_flags = _fit_mask(rejected_mask, len(rejected_pos), "rejected", _row_name(example, i))
        for row, pos, flags in ((i, chosen_pos, chosen_flags), (n + i, rejected_pos, rejected_flags)):
            corrected[row, pos] = torch.tensor(flags, dtype=torch.bool)
        if has_ref:
            for row, key in ((i, "ref_chosen_token_logps"), (n + i, "ref_rejected_token_logps")):
                pos = scored[row].nonzero().squeeze(1)
                values = example[key]
                if values is None or len(values) != len(pos):
                    raise ValueError(
                        f"{_row_name(example, i)}: the precomputed reference log-probs ({key}) cover "
                        f"{None if values is None else len(values)} tokens but the batch scores {len(pos)}; the "
                        "cache was computed with other tokenization settings (max_length, tokenizer, chat template). "
                        "Delete the reference cache (`ref_logps_cache_dir`) or drop the `ref_*_token_logps` columns."
                    )
                ref[row, pos] = torch.tensor(values, dtype=torch.float32)
    output["corrected_mask"] = corrected & completion
    if has_ref:
        output["ref_token_logps"] = ref
    return output


def _fit_mask(mask: list | None, n_tokens: int, side: str, where: str) -> list[bool]:
    if mask is None:  # segments given for the other side only: nothing corrected on this one
        return [False] * n_tokens
    if len(mask) < n_tokens:
        raise ValueError(
            f"{where}: the {side} segment mask covers {len(mask)} tokens but the {side} completion has {n_tokens}. "
            "The segment masks must be computed with the trainer's tokenizer (let DenseDPOTrainer compute them from "
            f"`{side}_segments`)."
        )
    return [bool(m) for m in mask[:n_tokens]]  # the completion may have been truncated to `max_length`


def _pop_dense(example: dict[str, Any]) -> dict[str, Any]:
    return {key: example.pop(key) for key in DENSE_COLUMNS if key in example}


@dataclass
class DataCollatorForDensePreference(DataCollatorForPreference):
    """[`~trl.trainer.dpo_trainer.DataCollatorForPreference`] plus dense-DPO fields.

    Besides TRL's `input_ids`, `attention_mask` and `completion_mask`, the batch gets:

    - `corrected_mask` (`bool`, shape of `input_ids`): the corrected completion tokens;
    - `ref_token_logps` (`float32`), when the examples carry precomputed per-token reference log-probs
      (`ref_chosen_token_logps` / `ref_rejected_token_logps`).

    Corrected tokens come from `chosen_segment_mask` / `rejected_segment_mask` (one flag per completion token, computed
    by the trainer from character spans) when present, otherwise from the official RLHF-V token diff of the two whole
    sequences (prompt + completion, first token dropped). The collator carries no γ: [`DenseDPOTrainer`] turns the
    flags into weights from its `args` (`dense_gamma`, `dense_normalize`). `min_match` / `weight_insertions` are set by
    the trainer from `args.dense_min_match` / `args.dense_weight_insertions`.

    Example:
    ```python
    >>> collator = DataCollatorForDensePreference(pad_token_id=0)
    >>> batch = collator([{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5, 8, 6, 7, 9], "rejected_ids": [3, 4, 5, 6, 7, 9]}])
    >>> batch["corrected_mask"].int()  # pure insertion (token 8): not corrected (official rule)
    tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    ```
    """

    min_match: int = 3
    weight_insertions: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extras = [_pop_dense(dict(example)) for example in examples]
        output = super().torch_call(examples)
        masks = [(e.get("chosen_segment_mask"), e.get("rejected_segment_mask")) for e in extras]
        return _add_dense_fields(output, extras, masks, self.min_match, self.weight_insertions)


def _message_text(messages: list[dict[str, Any]], where: str) -> str:
    if len(messages) != 1:
        raise ValueError(f"{where}: segments need a completion made of exactly one assistant message.")
    content = messages[0]["content"]
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content if block.get("type") == "text")


@dataclass
class DataCollatorForDenseVisionPreference(DataCollatorForVisionPreference):
    """[`~trl.trainer.dpo_trainer.DataCollatorForVisionPreference`] plus the dense-DPO fields of
    [`DataCollatorForDensePreference`].

    Works with any processor (the completions are tokenized by the processor's tokenizer, the images by its image
    processor). Explicit `chosen_segments` / `rejected_segments` (character spans of the completion text) are mapped to
    tokens through the tokenizer's offsets, which needs a fast tokenizer. The token diff runs over the attended tokens
    of each row: the prompt with its expanded image placeholder tokens, then the completion, as in the official code.
    """

    min_match: int = 3
    weight_insertions: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extras = [_pop_dense(example) for example in examples]
        span_masks = [self._span_masks(example, extra, i) for i, (example, extra) in enumerate(zip(examples, extras))]
        output = super().torch_call(examples)
        n = len(examples)
        completion = output["completion_mask"].bool()
        masks = []
        for i, (mask_ids, extra) in enumerate(zip(span_masks, extras)):
            if mask_ids is None:
                masks.append((None, None))
                continue
            (chosen_mask, chosen_ids), (rejected_mask, rejected_ids) = mask_ids
            for row, ids, side in ((i, chosen_ids, "chosen"), (n + i, rejected_ids, "rejected")):
                batch_ids = output["input_ids"][row, completion[row]].tolist()
                if ids[: len(batch_ids)] != batch_ids:
                    raise ValueError(
                        f"{_row_name(extra, i)}: the tokenizer's encoding of the {side} completion differs from the "
                        "processor's, so character segments cannot be mapped to tokens. Use the token diff (drop the "
                        "`*_segments` columns) or a processor whose text path is its tokenizer."
                    )
            masks.append((chosen_mask, rejected_mask))
        return _add_dense_fields(output, extras, masks, self.min_match, self.weight_insertions)

    def _span_masks(self, example: dict[str, Any], extra: dict[str, Any], i: int):
        chosen_spans, rejected_spans = extra.get("chosen_segments"), extra.get("rejected_segments")
        if chosen_spans is None and rejected_spans is None:
            return None
        where = _row_name(extra, i)
        if is_conversational(example):
            images = example.get("images") or ([example["image"]] if example.get("image") is not None else [])
            prepared = {
                "prompt": prepare_multimodal_messages(copy.deepcopy(example["prompt"]), images=[None] * len(images)),
                "chosen": prepare_multimodal_messages(copy.deepcopy(example["chosen"])),
                "rejected": prepare_multimodal_messages(copy.deepcopy(example["rejected"])),
            }
            if example.get("chat_template_kwargs"):  # rendered as TRL renders the row
                prepared["chat_template_kwargs"] = example["chat_template_kwargs"]
            rendered = apply_chat_template(prepared, self.processor)
            texts = {side: (rendered[side], _message_text(example[side], where)) for side in ("chosen", "rejected")}
        else:
            texts = {side: (example[side], example[side]) for side in ("chosen", "rejected")}
        tokenizer = self.processor.tokenizer
        result = []
        for side, spans in (("chosen", chosen_spans), ("rejected", rejected_spans)):
            rendered_text, content = texts[side]
            enc = tokenizer(rendered_text, add_special_tokens=False, return_offsets_mapping=True)
            if spans is None:
                result.append((None, enc["input_ids"]))
                continue
            shift = rendered_text.rfind(content)
            if shift < 0:
                raise ValueError(f"{where}: cannot locate the {side} text in its chat-template rendering.")
            mask = segment_token_mask(enc["offset_mapping"], spans, len(content), shift, f"{where}, {side}_segments")
            result.append((mask, enc["input_ids"]))
        return result
