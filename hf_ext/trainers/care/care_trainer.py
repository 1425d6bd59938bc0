"""``CARETrainer``: a [`~transformers.Trainer`] that adds CARE's attention-concentration penalty to the LM loss."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel, Trainer
from transformers.utils import logging

from ...hub.cards import HfExtModelCardMixin
from .care_attention import COLLECTOR_KWARG, CAREPenaltyOutput, enable_care_attention
from .care_config import CAREConfig

logger = logging.get_logger(__name__)

__all__ = ["CARETrainer"]


class CARETrainer(HfExtModelCardMixin, Trainer):
    """[`~transformers.Trainer`] for language models with the CARE attention-concentration regulariser.

    Adds ``care_coef · penalty`` (see [`CAREConfig`]) to the model's loss on every training step. The penalty is
    computed inside the model's attention (implementation ``"care"``), from the same probabilities the forward uses;
    evaluation and generation run plain SDPA, so ``eval_loss`` is the unregularised language-modelling loss.

    Paper: *Evade the Trap of Mediocrity: Promoting Diversity and Novelty in Text Generation via Concentrating
    Attention* (Li et al., EMNLP 2022, arXiv:2211.07164). The loss is reconstructed from the abstract.

    Args:
        model (`PreTrainedModel` or `str`):
            A causal or sequence-to-sequence LM whose attention goes through transformers' `AttentionInterface`, or a
            model id/path (loaded with `AutoModelForCausalLM`, or `AutoModelForSeq2SeqLM` for encoder-decoders).
        args ([`CAREConfig`], *optional*):
            Training arguments and regulariser settings. Defaults to `CAREConfig("<model name>-CARE")`.
        **kwargs:
            Everything else [`~transformers.Trainer`] accepts (`train_dataset`, `data_collator`, `processing_class`,
            ...). Batches must contain `labels` (or the model must otherwise return a loss).

    Example:

    ```python
    >>> from transformers import DataCollatorForLanguageModeling
    >>> from hf_ext import CAREConfig, CARETrainer

    >>> args = CAREConfig("gpt2-care", care_coef=0.1, care_penalty="renyi", care_alpha=2.0, max_steps=100)
    >>> trainer = CARETrainer(model, args, train_dataset=dataset,
    ...                       data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    >>> trainer.train()  # logs loss, care/penalty, care/attention_entropy, care/coef
    ```
    """

    _hf_ext_card_family = "care"  # model card from model_cards/care.md (HfExtModelCardMixin)

    _tag_names = ["hf_ext", "care"]

    def __init__(self, model: PreTrainedModel | str, args: CAREConfig | None = None, **kwargs):
        if isinstance(model, str):
            config = AutoConfig.from_pretrained(model)
            auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
            model = auto.from_pretrained(model)
        if args is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
            args = CAREConfig(f"{name.split('/')[-1]}-CARE")
        elif not isinstance(args, CAREConfig):
            raise ValueError(
                f"`args` must be a CAREConfig (got {type(args).__name__}); build one with "
                "CAREConfig(output_dir, care_coef=..., **training_arguments)."
            )
        enable_care_attention(model)
        super().__init__(model=model, args=args, **kwargs)
        self.regularizer = args.to_regularizer()
        self._metrics: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list)}
        self._checked_selection = False
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def care_coef(self) -> float:
        """λ at the current optimizer step (after the linear warm-up)."""
        warmup = self.args.care_warmup_steps
        if warmup <= 0:
            return self.args.care_coef
        return self.args.care_coef * min(1.0, self.state.global_step / warmup)

    def _check_selection(self, result: CAREPenaltyOutput) -> None:
        if self._checked_selection:
            return
        if result.num_rows == 0:
            seen = result.seen_layers or "none: the model's attention does not go through AttentionInterface"
            raise ValueError(
                "CARE selected no attention rows: care_layers="
                f"{self.args.care_layers}, care_heads={self.args.care_heads}, care_attention_types="
                f"{self.args.care_attention_types}, care_target_modules={self.args.care_target_modules!r} matched "
                f"nothing. Attention layers seen per type: {seen}."
            )
        self._checked_selection = True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The model's loss plus ``λ · penalty`` in training; the model's loss alone in evaluation."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        attention_mask = inputs.get("attention_mask")
        collector = self.regularizer.new_collector(
            self.accelerator.unwrap_model(model),
            attention_mask=attention_mask if isinstance(attention_mask, torch.Tensor) else None,
            decoder_attention_mask=inputs.get("decoder_attention_mask"),
            labels=inputs.get("labels"),
        )
        loss, outputs = super().compute_loss(
            model, {**inputs, COLLECTOR_KWARG: collector}, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        result = collector.finalize()
        self._check_selection(result)

        coef = self.care_coef()
        penalty = result.penalty.to(loss.device)
        # If the model loss is already normalised over the whole accumulated batch, the Trainer will not divide it
        # by the accumulation steps; do it for the (per-micro-batch mean) penalty so λ means the same either way.
        if self.loss_is_scaled_for_ga is not None:
            scaled = self.loss_is_scaled_for_ga
        else:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if scaled else 1
        loss = loss + coef * penalty / steps

        metrics = self._metrics["train"]
        gathered = self.accelerator.gather_for_metrics(
            torch.stack([penalty.detach(), result.attention_entropy.to(loss.device)])[None]
        )
        gathered = gathered.reshape(-1, 2).float().mean(0)
        metrics["care/penalty"].append(gathered[0].item())
        metrics["care/attention_entropy"].append(gathered[1].item())
        metrics["care/coef"].append(coef)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the averaged CARE metrics since the last log to the training logs."""
        if not any(key.startswith("eval_") for key in logs):
            metrics = self._metrics["train"]
            logs = {**logs, **{key: sum(values) / len(values) for key, values in metrics.items() if values}}
            metrics.clear()
        super().log(logs, start_time)
