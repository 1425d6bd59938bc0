"""Dense (token-weighted) DPO of RLHF-V as a subclass of TRL's `DPOTrainer`."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object, is_peft_model
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import logging
from trl import DPOTrainer
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference
from trl.trainer.utils import global_then_local_main_first, use_adapter

from ...hub.cards import HfExtModelCardMixin
from ...utils.citations import CITATIONS
from ...utils.copying import clone_model
from ...utils.fsdp import FSDP2FusedLMHeadCallback
from ..chat_template_utils import (
    apply_training_chat_template,
    check_prompt_completion_split,
    resolve_training_chat_template,
)
from . import ref_logps_cache
from ._compat import check_trl_compat
from .collators import DENSE_COLUMNS, DataCollatorForDensePreference, DataCollatorForDenseVisionPreference
from .dense_dpo_config import DenseDPOConfig
from .sharding import is_sharded_module, num_padding_batches, reference_hash
from .weights import dense_sequence_scores, dense_token_coefficients, segment_token_mask

check_trl_compat()

logger = logging.get_logger(__name__)

__all__ = ["DenseDPOTrainer"]


class _LogProbScaler:
    """Forward hook: multiplies `outputs.log_probs` of a fused-LM-head call by the dense coefficients `c_t`.

    TRL sums `log_probs` per row to score a sequence; scaling them by the coefficients of
    [`~hf_ext.trainers.dense_dpo.weights.dense_token_coefficients`] turns that sum into the dense-DPO score. WPO
    (`use_weighting`) reads `log_probs - log_sum_sq_probs` to weight each pair by its (unweighted) probability; the
    hook shifts `log_sum_sq_probs` by the same amount as `log_probs`, so WPO's weight stays that of the plain per-token
    log-probs. The hook is inert unless the trainer sets `coefficients` around its own loss computation, so
    generation, evaluation forwards without `fused_lm_head` and other users of the model are untouched. It is a plain
    object (not a bound method) so that `copy.deepcopy(model)` does not try to copy the trainer.
    """

    def __init__(self):
        self.coefficients: torch.Tensor | None = None  # (2B, L - 1), aligned with `log_probs[:, -(L - 1):]`
        self.captured: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs, output):
        if self.coefficients is None or not kwargs.get("fused_lm_head", False):
            return None
        log_probs = output.log_probs
        seq_len = self.coefficients.size(1)
        real = log_probs[:, -seq_len:]
        scaled = real * self.coefficients.to(log_probs.device, log_probs.dtype)
        if getattr(output, "log_sum_sq_probs", None) is not None:
            shift = (scaled - real).detach()
            lss = output.log_sum_sq_probs
            output.log_sum_sq_probs = torch.cat([lss[:, :-seq_len], lss[:, -seq_len:] + shift], dim=1)
        if log_probs.size(1) != seq_len:  # prompt-learning PEFT prepends virtual tokens
            scaled = torch.cat([log_probs[:, :-seq_len], scaled], dim=1)
        output.log_probs = scaled
        self.captured.append(scaled[:, -seq_len:])
        return output


class DenseDPOTrainer(HfExtModelCardMixin, DPOTrainer):
    """
    Dense DPO (DDPO) from [RLHF-V: Towards Trustworthy MLLMs via Behavior Alignment from Fine-grained Correctional
    Human Feedback](https://huggingface.co/papers/2312.00849) on top of TRL's [`~trl.DPOTrainer`].

    Each completion token gets a weight: `args.dense_gamma` on the tokens of corrected segments, 1 elsewhere. The
    segments come from `chosen_segments` / `rejected_segments` columns (character spans `[[start, end], ...]` of the
    completion text) or, when a row has none, from the official RLHF-V token diff of the whole rejected vs chosen
    sequences, prompt and image tokens included, first token dropped, exactly as the released training code (see
    [`~hf_ext.trainers.dense_dpo.sequence_corrected_masks`]). A sequence is scored by `Σ_t w_t·log p_t`
    (`dense_normalize=False`, official code) or `Σ_t w_t·log p_t / Σ_t w_t` (`dense_normalize=True`, paper Eq. 5), for
    the policy and the reference alike (see [`~DenseDPOTrainer.dense_coefficients`], the one place γ is applied);
    WPO (`use_weighting`) and LD-DPO (`ld_alpha`) combine with it. Everything else (loss types, β, PEFT, metrics,
    `accelerate launch`) is TRL's. The caller's `args` are never modified.

    Text-only models take a tokenizer as `processing_class`; vision-language models take a processor and a dataset
    with an `images` (or `image`) column. With `args.precompute_ref_log_probs=True` the reference log-probs are
    computed once per token (text **and** vision data), cached in `args.ref_logps_cache_dir`, and the reference model
    is freed; γ and the segments can then change without recomputing them.

    Example:

    ```python
    >>> from hf_ext import DenseDPOConfig, DenseDPOTrainer
    >>> trainer = DenseDPOTrainer(
    ...     model=model,  # any causal LM or VLM TRL supports
    ...     args=DenseDPOConfig("out", dense_gamma=1.1, beta=0.1),
    ...     train_dataset=dataset,  # prompt / chosen / rejected (+ images) (+ chosen_segments / rejected_segments)
    ...     processing_class=processor,
    ... )
    >>> trainer.train()
    ```

    Args are those of [`~trl.DPOTrainer`]; `args` must be a [`DenseDPOConfig`]. A custom `data_collator` must be a
    [`DataCollatorForDensePreference`] or [`DataCollatorForDenseVisionPreference`] (subclass).
    """

    _tag_names = ["trl", "dpo", "dense-dpo", "rlhf-v", "hf_ext"]
    _hf_ext_card_family = "rlhf_v"  # model card from model_cards/rlhf_v.md (HfExtModelCardMixin)
    _name = "Dense DPO"
    _paper = {
        "title": CITATIONS["rlhf_v"].title,
        "id": CITATIONS["rlhf_v"].arxiv,
        "citation": CITATIONS["rlhf_v"].bibtex,
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: DenseDPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else (model.config._name_or_path or "model")
            args = DenseDPOConfig(f"{model_name.split('/')[-1]}-DenseDPO")
        elif not isinstance(args, DenseDPOConfig):
            raise TypeError(
                f"`args` must be a DenseDPOConfig, got {type(args).__name__}. Build it with "
                "`DenseDPOConfig(**your_dpo_config.to_dict())` or pass the dense options directly."
            )
        if data_collator is not None and not isinstance(
            data_collator, (DataCollatorForDensePreference, DataCollatorForDenseVisionPreference)
        ):
            raise TypeError(
                "`data_collator` must be a DataCollatorForDensePreference or DataCollatorForDenseVisionPreference "
                f"(they add the corrected-token flags), got {type(data_collator).__name__}. Omit it to use the default."
            )
        if data_collator is not None:
            for field_name, arg_name in (
                ("min_match", "dense_min_match"),
                ("weight_insertions", "dense_weight_insertions"),
            ):
                if getattr(data_collator, field_name) != getattr(args, arg_name):
                    raise ValueError(
                        f"`data_collator.{field_name}={getattr(data_collator, field_name)!r}` differs from "
                        f"`args.{arg_name}={getattr(args, arg_name)!r}`. The token diff is configured by the "
                        f"DenseDPOConfig: set `{arg_name}` there (or leave the collator to the trainer)."
                    )
        # The caller's config is never modified: the trainer works on its own copy.
        args = copy.deepcopy(args)

        # Reference log-probs: TRL's own precompute stores per-sequence sums (so γ/segments could not change) and
        # refuses vision data. Keep TRL's path off during its __init__ and precompute per token afterwards.
        self._dense_precompute = bool(args.precompute_ref_log_probs)
        # Without a user-given reference, the reference only lives until the cache is written (TRL loads one from the
        # model's path, or we copy an in-memory model since it has no path to load from).
        free_ref_model = ref_model is None
        if self._dense_precompute:
            args.precompute_ref_log_probs = False
            if ref_model is None and peft_config is None and not isinstance(model, str) and not is_peft_model(model):
                # not copy.deepcopy: a copy of a model TRL patched in this process would run the original's weights
                ref_model = clone_model(model)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self.args.precompute_ref_log_probs = self._dense_precompute
        if self._is_vision_dataset:
            # TRL renders vision rows in its collator (text rows were rendered by `_prepare_dataset`).
            self.train_dataset = self._with_training_chat_template(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._with_training_chat_template(v, k) for k, v in self.eval_dataset.items()}
            else:
                self.eval_dataset = self._with_training_chat_template(self.eval_dataset, "eval")
        # LD-DPO's tail factor is folded into the dense coefficients (one scoring rule for policy, live and
        # precomputed reference), so TRL's own `ld_alpha` reduction is switched off: TRL just sums.
        self._dense_ld_alpha = self.ld_alpha
        self.ld_alpha = None

        # Data collator: swap TRL's default for its dense subclass (same settings, diff options from `args`).
        diff_kwargs = {"min_match": args.dense_min_match, "weight_insertions": args.dense_weight_insertions}
        collator = self.data_collator
        if type(collator) is DataCollatorForVisionPreference:
            self.data_collator = DataCollatorForDenseVisionPreference(
                processor=collator.processor,
                max_length=collator.max_length,
                pad_to_multiple_of=collator.pad_to_multiple_of,
                **diff_kwargs,
            )
        elif type(collator) is DataCollatorForPreference:
            self.data_collator = DataCollatorForDensePreference(
                pad_token_id=collator.pad_token_id,
                max_length=collator.max_length,
                truncation_mode=collator.truncation_mode,
                pad_to_multiple_of=collator.pad_to_multiple_of,
                **diff_kwargs,
            )

        if self.is_fsdp_enabled:  # TRL's fused LM head under FSDP2: see `hf_ext.utils.fsdp`
            self.add_callback(FSDP2FusedLMHeadCallback())

        # Hooks that rescale the per-token log-probs of the policy and of the live reference.
        self._dense_scaler = _LogProbScaler()
        self.model.register_forward_hook(self._dense_scaler, with_kwargs=True)
        if self.ref_model is not None:
            self.accelerator.unwrap_model(self.ref_model).register_forward_hook(self._dense_scaler, with_kwargs=True)

        if self._dense_precompute:
            self.precompute_ref_logps = True  # `_compute_loss` reads `ref_chosen_logps` / `ref_rejected_logps`
            self._dense_ref_hash = reference_hash(self.ref_model or self.model)
            self.train_dataset = self._precompute_ref_token_logps(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._precompute_ref_token_logps(v, k) for k, v in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._precompute_ref_token_logps(self.eval_dataset, "eval")
            if free_ref_model:
                # Drop every handle on the temporary reference, the accelerator's list of prepared models included,
                # so that its weights are really freed (otherwise a precomputed run keeps the reference's memory).
                ref = self.ref_model
                self.ref_model = None
                self.accelerator._models = [m for m in self.accelerator._models if m is not ref]
                del ref

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *DENSE_COLUMNS]))

    def _with_training_chat_template(self, dataset, dataset_name: str, processing_class=None, args=None):
        """Set the training chat template on the rows (`chat_template_kwargs`) and check TRL's prompt split."""
        if dataset is None or isinstance(dataset, str):
            return dataset
        processing_class = processing_class if processing_class is not None else self.processing_class
        args = args if args is not None else self.args  # `_prepare_dataset` runs before `Trainer.__init__` sets it
        first = next(iter(dataset))
        if "prompt_ids" in first or not is_conversational(first):  # already tokenized, or no template involved
            return dataset
        template = resolve_training_chat_template(processing_class, args.chat_template)
        if template is not None and args.chat_template is None:
            logger.info_once(
                f"Rendering the conversations with the processor's training chat template {template!r} "
                "(`training_chat_template`); set `chat_template` in the DenseDPOConfig to choose another one."
            )
        with global_then_local_main_first():  # as TRL's own dataset preparation: one process writes the map cache
            dataset = apply_training_chat_template(dataset, template, dataset_name)
        check_prompt_completion_split(dataset, processing_class, dataset_name)
        return dataset

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = self._with_training_chat_template(dataset, dataset_name, processing_class, args)
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        first = next(iter(dataset))
        if "chosen_segments" not in first and "rejected_segments" not in first:
            return dataset
        map_kwargs = {"with_indices": True, "fn_kwargs": {"processing_class": processing_class}}
        if isinstance(dataset, Dataset):
            map_kwargs["desc"] = f"Mapping segments to tokens in {dataset_name} dataset"
        return dataset.map(_text_segment_masks, **map_kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # `DPOTrainer.evaluate(eval_dataset=...)` calls this for datasets passed late; route it to the per-token cache.
        return self._precompute_ref_token_logps(dataset, name)

    def _ref_cache_path(self, dataset: Dataset, name: str):
        tokenizer = self._tokenizer
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
        key_fields = {
            "reference": self._dense_ref_hash,
            "dataset": ref_logps_cache.content_hash(dataset, exclude=DENSE_COLUMNS),
            "rows": len(dataset),
            "max_length": self.args.max_length,
            "truncation_mode": self.args.truncation_mode,
            "tokenizer": [type(tokenizer).__name__, vocab, tokenizer.chat_template, str(tokenizer.eos_token)],
            "processor": type(self.processing_class).__name__,
            # image resizing / normalisation change the pixels, hence the reference log-probs
            "image_processor": getattr(getattr(self.processing_class, "image_processor", None), "to_dict", dict)(),
        }
        return ref_logps_cache.cache_path(self.args.ref_logps_cache_dir, name, key_fields)

    def _precompute_ref_token_logps(self, dataset: Dataset, name: str) -> Dataset:
        """Per-token reference log-probs of every completion token, cached (see `ref_logps_cache`)."""
        if isinstance(dataset, IterableDataset):
            # TRL's wording first (callers match on it), then why and what to do.
            raise ValueError(
                f"`precompute_ref_log_probs=True` is not supported with IterableDataset (the {name} dataset): the "
                "per-token reference log-probs are cached by row, which needs a map-style `datasets.Dataset`. "
                "Materialise it (e.g. `Dataset.from_generator`) or set `precompute_ref_log_probs=False`."
            )
        for key in ("ref_chosen_token_logps", "ref_rejected_token_logps"):
            if key in dataset.column_names:
                dataset = dataset.remove_columns(key)
        path = self._ref_cache_path(dataset, name)
        exists = [path.exists()]
        broadcast_object_list(exists, from_process=0)  # every rank takes rank 0's decision
        if exists[0]:
            logger.info(f"Reusing reference log-probs for the {name} dataset from {path}.")
        else:
            self._write_ref_cache(dataset, name, path)
        self.accelerator.wait_for_everyone()
        columns = ref_logps_cache.load_ref_cache(path, len(dataset), name)
        for key, column in columns.items():
            dataset = dataset.add_column(key, column)
        return dataset

    @torch.no_grad()
    def _write_ref_cache(self, dataset: Dataset, name: str, path: os.PathLike) -> None:
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(range(rank, len(dataset), world))  # each process scores its own rows
        loader = DataLoader(
            torch.utils.data.Subset(dataset, indices),
            batch_size=batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
        )
        rows: list[tuple[int, list[float], list[float]]] = []
        position = 0
        for batch in tqdm(
            loader,
            desc=f"Computing reference log probs for {name} dataset",
            disable=not self.accelerator.is_local_main_process or bool(os.environ.get("TQDM_DISABLE", "")),
        ):
            per_token, scored = self._reference_per_token_logps(batch)
            n = per_token.size(0) // 2
            for i in range(n):
                chosen = per_token[i][scored[i]].float().cpu().tolist()
                rejected = per_token[n + i][scored[n + i]].float().cpu().tolist()
                rows.append((indices[position], chosen, rejected))
                position += 1
        if is_sharded_module(self.ref_model):  # a sharded forward is a collective: join the busiest rank's count
            padding = self.data_collator([dataset[0]])
            for _ in range(num_padding_batches(len(dataset), rank, world, batch_size)):
                self._reference_per_token_logps(padding)
        rows = gather_object(rows) if world > 1 else rows
        if self.accelerator.is_main_process:
            rows = [(chosen, rejected) for _, chosen, rejected in sorted(rows, key=lambda r: r[0])]
            ref_logps_cache.save_ref_cache(path, rows, name)

    def _reference_per_token_logps(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted reference log-probs `(2B, L - 1)` and the mask of scored positions, for one collated batch."""
        batch = self._prepare_inputs({k: v for k, v in batch.items() if k != "corrected_mask"})
        batch.pop("ref_token_logps", None)
        completion_mask = batch.pop("completion_mask")
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        model = self.ref_model if self.ref_model is not None else self.model
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            outputs = model(**batch, labels=labels, use_cache=False, fused_lm_head=True)
        scored = completion_mask[:, 1:].bool()
        return outputs.log_probs[:, -scored.size(1) :], scored

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self._is_vision_dataset and eval_dataset is not None and not isinstance(eval_dataset, str):
            # Text datasets get the training chat template in `_prepare_dataset`; vision rows are rendered by the
            # collator.
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: self._with_training_chat_template(v, k) for k, v in eval_dataset.items()}
            else:
                eval_dataset = self._with_training_chat_template(eval_dataset, metric_key_prefix)
        # TRL precomputes reference log-probs for late text datasets only; do it for vision datasets too.
        if self._dense_precompute and self._is_vision_dataset and eval_dataset is not None:
            if not isinstance(eval_dataset, str):
                if self.ref_model is None and not is_peft_model(self.model) and self.state.global_step > 0:
                    raise ValueError(
                        "Cannot compute reference log-probs for a dataset passed to `evaluate()` after training: the "
                        "reference model was freed after precomputation. Pass it as `eval_dataset` at initialization, "
                        "pass an explicit `ref_model`, or set `precompute_ref_log_probs=False`."
                    )
                if isinstance(eval_dataset, dict):
                    eval_dataset = {k: self._precompute_ref_token_logps(v, k) for k, v in eval_dataset.items()}
                else:
                    eval_dataset = self._precompute_ref_token_logps(eval_dataset, metric_key_prefix)
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    # ------------------------------------------------------------------ loss
    def dense_coefficients(self, corrected: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """Coefficients `c_t` (`(2B, L - 1)`, float64) of the per-token log-probs of a batch, from `self.args` alone.

        `corrected` and `completion_mask` are the collator's `(2B, L)` tensors; a sequence's score is
        `Σ_t c_t · log p_t` (see [`~hf_ext.trainers.dense_dpo.weights.dense_token_coefficients`]).
        """
        return dense_token_coefficients(
            corrected[:, 1:],
            completion_mask[:, 1:],
            gamma=self.args.dense_gamma,
            normalize=self.args.dense_normalize,
            ld_alpha=self._dense_ld_alpha,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if "corrected_mask" not in inputs:
            raise ValueError(
                "The batch has no `corrected_mask`: DenseDPOTrainer needs a DataCollatorForDensePreference or "
                "DataCollatorForDenseVisionPreference batch."
            )
        corrected = inputs.pop("corrected_mask")
        ref_token_logps = inputs.pop("ref_token_logps", None)
        completion = inputs["completion_mask"]
        coefficients = self.dense_coefficients(corrected, completion).to(completion.device)

        if self.precompute_ref_logps:
            if ref_token_logps is None:
                raise ValueError(
                    "`precompute_ref_log_probs=True` but the batch has no reference log-probs; the dataset lost its "
                    "`ref_chosen_token_logps` / `ref_rejected_token_logps` columns."
                )
            ref_logps = dense_sequence_scores(ref_token_logps[:, 1:], coefficients)
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref_logps.chunk(2, dim=0)

        self._dense_scaler.coefficients = coefficients
        self._dense_scaler.captured = []
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs)
            policy_scores = self._dense_scaler.captured[0].sum(dim=1)  # first fused call = policy forward
        finally:
            self._dense_scaler.coefficients = None
            self._dense_scaler.captured = []
        loss, outputs = result if return_outputs else (result, None)

        if self.args.sft_weight > 0:
            # Official `SFT_weight`: minus the mean of the chosen policy score, weighted like the DPO term.
            chosen_scores = policy_scores.chunk(2, dim=0)[0]
            sft_loss = -chosen_scores.mean()
            loss = loss + self.args.sft_weight * sft_loss
            self._metrics[mode]["dense/sft_loss"].append(self.accelerator.gather(sft_loss.detach()).mean().item())

        scored = completion[:, 1:].bool()
        n_corrected = (corrected[:, 1:] & scored).sum()
        n_scored = scored.sum()
        n_corrected = self.accelerator.gather_for_metrics(n_corrected).sum().item()
        n_scored = self.accelerator.gather_for_metrics(n_scored).sum().item()
        self._metrics[mode]["dense/weighted_token_fraction"].append(n_corrected / n_scored if n_scored else 0.0)
        return (loss, outputs) if return_outputs else loss


def _text_segment_masks(example: dict[str, Any], index: int, processing_class) -> dict[str, Any]:
    """Map `chosen_segments` / `rejected_segments` (character spans) of a tokenized text row to token flags."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    chosen_spans, rejected_spans = example.get("chosen_segments"), example.get("rejected_segments")
    if chosen_spans is None and rejected_spans is None:
        return {"chosen_segment_mask": None, "rejected_segment_mask": None}
    where = f"row {index}" + (f" (idx={example['idx']!r})" if "idx" in example else "")
    out = {}
    for side, spans in (("chosen", chosen_spans), ("rejected", rejected_spans)):
        ids = example[f"{side}_ids"]
        if spans is None:
            out[f"{side}_segment_mask"] = [0] * len(ids)
            continue
        if is_conversational(example):
            messages = example[side]
            if len(messages) != 1 or not isinstance(messages[0]["content"], str):
                raise ValueError(f"{where}: segments need a {side} completion of one assistant message with text.")
            content = messages[0]["content"]
            rendered = processing_class.apply_chat_template(
                example["prompt"] + messages, tokenize=False, **(example.get("chat_template_kwargs") or {})
            )
            shift = rendered.rfind(content)
            enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        else:
            content = example[side]
            if tokenizer.eos_token and content.endswith(tokenizer.eos_token):  # TRL appended it
                content = content[: -len(tokenizer.eos_token)]
            rendered = example["prompt"] + example[side]
            shift = len(example["prompt"])
            enc = tokenizer(rendered, return_offsets_mapping=True)
        if shift < 0 or enc["input_ids"][-len(ids) :] != ids:
            raise ValueError(
                f"{where}: cannot align the {side} text with its tokens (the tokenizer's re-encoding differs from "
                "TRL's). Drop the `*_segments` columns to use the token diff."
            )
        offsets = enc["offset_mapping"][-len(ids) :]
        mask = segment_token_mask(offsets, spans, len(content), shift, f"{where}, {side}_segments")
        out[f"{side}_segment_mask"] = [int(m) for m in mask]
    return out
