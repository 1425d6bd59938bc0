"""Training text VAEs (DELLA, TRACE) with transformers' `Trainer`: cyclical beta, free bits, ELBO logging.

* :func:`cyclical_beta` and :class:`CyclicalBetaCallback`: the cyclical KL-weight schedule (Fu et al., 2019) used by
  DELLA's ``train.py``: in each cycle beta stays at ``beta_min`` for ``ratio_zero`` of the cycle, rises linearly to
  ``beta_max`` over ``ratio_increase``, then stays at ``beta_max``. The callback works with a plain ``Trainer``: it
  sets ``model.kl_weight``, which the models' loss reads.
* :func:`della_original_beta_schedule` and :class:`DellaOriginalBetaCallback`: the official DELLA rule.
* :class:`DataCollatorForTextVAE`: pads token lists, masks padding (and an optional source prefix) out of the labels.
* :class:`TextVAETrainer`: a ``Trainer`` that installs the callback chosen by its [`TextVAEConfig`]
  (:mod:`.text_vae_config`) and logs ``rec_loss``, ``kl``, ``beta`` and ``elbo``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from ...hub.cards import HfExtModelCardMixin
from .text_vae_config import TextVAEConfig

logger = logging.get_logger(__name__)

__all__ = [
    "cyclical_beta",
    "della_original_beta_schedule",
    "CyclicalBetaCallback",
    "DellaOriginalBetaCallback",
    "DataCollatorForTextVAE",
    "TextVAETrainer",
]


def cyclical_beta(
    step: int,
    cycle_steps: int,
    beta_min: float = 1e-5,
    beta_max: float = 1.0,
    ratio_zero: float = 0.5,
    ratio_increase: float = 0.25,
) -> float:
    """KL weight at ``step`` of a cyclical schedule with period ``cycle_steps``.

    The default ratios are DELLA's ("first half 1e-5, next quarter linear, last quarter 1").

    Args:
        step (`int`): the optimisation step (0-based).
        cycle_steps (`int`): steps per cycle (>= 1).
        beta_min, beta_max (`float`): the low and high KL weights.
        ratio_zero (`float`, *optional*, defaults to 0.5): share of the cycle at ``beta_min``.
        ratio_increase (`float`, *optional*, defaults to 0.25): share of the cycle of linear increase.
    """
    if cycle_steps < 1:
        raise ValueError(f"`cycle_steps` must be >= 1, got {cycle_steps}.")
    if ratio_zero < 0 or ratio_increase < 0 or ratio_zero + ratio_increase > 1:
        raise ValueError(
            f"`ratio_zero` ({ratio_zero}) and `ratio_increase` ({ratio_increase}) must be >= 0 and sum to <= 1."
        )
    t = (step % cycle_steps) / cycle_steps
    if t < ratio_zero:
        return beta_min
    if ratio_increase > 0 and t < ratio_zero + ratio_increase:
        return beta_min + (beta_max - beta_min) * (t - ratio_zero) / ratio_increase
    return beta_max


def _della_original_next_beta(
    beta: float, epoch: int, cycle_epochs: int, steps_per_epoch: int, beta_min: float, beta_max: float
) -> float:
    half = cycle_epochs // 2
    if epoch % cycle_epochs < half:
        return beta_min
    return min(beta_max, beta + (beta_max - beta_min) / (half * steps_per_epoch / 2))


def della_original_beta_schedule(
    gradient_accumulation_steps: int,
    batches_per_epoch: int,
    epochs: int,
    cycle_epochs: int = 2,
    beta_min: float = 1e-5,
    beta_max: float = 1.0,
) -> list[float]:
    """The KL weight of every micro-batch under the official DELLA ``train.py --cycle_annealing`` rule.

    beta starts at ``beta_min``; after every optimizer step of epoch ``e`` it becomes ``beta_min`` if
    ``e % cycle_epochs < cycle_epochs // 2``, else ``min(beta_max, beta + (beta_max - beta_min) / ((cycle_epochs // 2)
    * steps_per_epoch / 2))``. A micro-batch uses beta as it stands, so the first step of an epoch carries the
    previous epoch's last value (beta = 1 opens each new cycle's first step). Cycles are counted in epochs (the
    original's ``--cycle_iters``, 2 by default).

    Args:
        gradient_accumulation_steps (`int`): micro-batches per optimizer step.
        batches_per_epoch (`int`): micro-batches per epoch (``steps_per_epoch = batches_per_epoch // ga``).
        epochs (`int`): number of epochs.
        cycle_epochs (`int`, *optional*, defaults to 2): epochs per cycle (``--cycle_iters``).
        beta_min, beta_max (`float`, *optional*, default to 1e-5 and 1.0).
    """
    if gradient_accumulation_steps < 1 or batches_per_epoch < gradient_accumulation_steps or cycle_epochs < 2:
        raise ValueError(
            "Need gradient_accumulation_steps >= 1, batches_per_epoch >= gradient_accumulation_steps and "
            f"cycle_epochs >= 2; got {gradient_accumulation_steps}, {batches_per_epoch}, {cycle_epochs}."
        )
    steps_per_epoch = batches_per_epoch // gradient_accumulation_steps
    beta, out = beta_min, []
    for epoch in range(epochs):
        for i in range(batches_per_epoch):
            out.append(beta)
            if (i + 1) % gradient_accumulation_steps == 0:
                beta = _della_original_next_beta(beta, epoch, cycle_epochs, steps_per_epoch, beta_min, beta_max)
    return out


class DellaOriginalBetaCallback(TrainerCallback):
    """The official DELLA cyclical beta (see :func:`della_original_beta_schedule`) for a `Trainer`.

    beta is set on ``model.kl_weight`` before each optimizer step and updated after it from the epoch of that step,
    so each epoch's first step carries the previous value, as in the original. Cycles are counted in epochs.

    Args:
        cycle_epochs (`int`, *optional*, defaults to 2): epochs per cycle (the original's ``--cycle_iters``).
        beta_min, beta_max (`float`, *optional*, default to 1e-5 and 1.0).
        steps_per_epoch (`int`, *optional*): optimizer steps per epoch; default: from the trainer at train begin.
    """

    def __init__(
        self,
        cycle_epochs: int = 2,
        beta_min: float = 1e-5,
        beta_max: float = 1.0,
        steps_per_epoch: int | None = None,
    ):
        if cycle_epochs < 2:
            raise ValueError(f"`cycle_epochs` must be >= 2 (half the cycle at beta_min), got {cycle_epochs}.")
        self.cycle_epochs = cycle_epochs
        self.beta_min, self.beta_max = beta_min, beta_max
        self.steps_per_epoch = steps_per_epoch
        self.beta = beta_min

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self.steps_per_epoch is None:
            if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
                self.steps_per_epoch = max(1, len(train_dataloader) // args.gradient_accumulation_steps)
            elif state.num_train_epochs:
                self.steps_per_epoch = max(1, state.max_steps // math.ceil(state.num_train_epochs))
            else:
                raise ValueError("DellaOriginalBetaCallback needs `steps_per_epoch` (no sized train dataloader).")
        self.beta = self.beta_min

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        target = getattr(model, "module", model)
        if target is not None:
            target.kl_weight = self.beta

    def on_step_end(self, args, state, control, **kwargs):
        epoch = (state.global_step - 1) // self.steps_per_epoch  # epoch of the step just taken
        self.beta = _della_original_next_beta(
            self.beta, epoch, self.cycle_epochs, self.steps_per_epoch, self.beta_min, self.beta_max
        )


class CyclicalBetaCallback(TrainerCallback):
    """Sets ``model.kl_weight`` before every step from :func:`cyclical_beta` (or a constant when ``cycle_steps`` is 0).

    Args:
        cycle_steps (`int`, *optional*): steps per cycle; default: ``max_steps // num_cycles`` at train begin.
        num_cycles (`int`, *optional*, defaults to 4): cycles over training when ``cycle_steps`` is not given.
        beta_min, beta_max, ratio_zero, ratio_increase: see :func:`cyclical_beta`.
    """

    def __init__(
        self,
        cycle_steps: int | None = None,
        num_cycles: int = 4,
        beta_min: float = 1e-5,
        beta_max: float = 1.0,
        ratio_zero: float = 0.5,
        ratio_increase: float = 0.25,
    ):
        self.cycle_steps = cycle_steps
        self.num_cycles = num_cycles
        self.kwargs = dict(beta_min=beta_min, beta_max=beta_max, ratio_zero=ratio_zero, ratio_increase=ratio_increase)
        self.beta = beta_max

    def on_train_begin(self, args, state, control, **kwargs):
        if self.cycle_steps is None:
            if self.num_cycles < 1:
                raise ValueError(f"`num_cycles` must be >= 1, got {self.num_cycles}.")
            self.cycle_steps = max(1, math.ceil(state.max_steps / self.num_cycles))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.beta = cyclical_beta(state.global_step, self.cycle_steps, **self.kwargs)
        target = getattr(model, "module", model)  # unwrap DDP
        if target is not None:
            target.kl_weight = self.beta


@dataclass
class DataCollatorForTextVAE:
    """Pads ``input_ids`` (lists of ints) to the longest example, right side.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding, and on the source when an example
    has ``source_length`` = number of leading source tokens; then ``source_mask`` is returned too, for conditional
    DELLA).

    Args:
        pad_token_id (`int`): the id used for padding (ignored by the loss through the mask).
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("DataCollatorForTextVAE got an empty batch.")
        lengths = [len(f["input_ids"]) for f in features]
        for i, n in enumerate(lengths):
            if n == 0:
                raise ValueError(f"Example {i} of the batch has no tokens (empty text); filter empty lines first.")
        width = max(lengths)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, : lengths[i]] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, : lengths[i]] = 1
        labels = ids.masked_fill(mask == 0, -100)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "source_length" in features[0]:
            src = torch.zeros_like(mask)
            for i, f in enumerate(features):
                src[i, : f["source_length"]] = 1
            batch["source_mask"] = src
            batch["labels"] = labels.masked_fill(src == 1, -100)
        return batch


class TextVAETrainer(HfExtModelCardMixin, Trainer):
    """`Trainer` for DELLA / TRACE (any model whose output has ``rec_loss`` and ``kl``).

    Installs a :class:`CyclicalBetaCallback` (or a constant beta), applies ``args.free_bits`` to the model config,
    defaults the collator to :class:`DataCollatorForTextVAE`, and logs ``rec_loss``, ``kl``, ``elbo`` (per sequence,
    ``-(rec + KL)`` with the model's KL reduction) and ``beta`` for train and eval.
    """

    def __init__(self, model=None, args: TextVAEConfig | None = None, data_collator=None, **kwargs):
        if args is None:
            args = TextVAEConfig("text-vae")
        if not isinstance(args, TextVAEConfig):
            raise ValueError("TextVAETrainer needs `args` to be a TextVAEConfig (it carries the KL schedule).")
        if data_collator is None:
            pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
            if pad is None:
                raise ValueError("Set `model.config.pad_token_id` (or pass a data_collator) to pad text batches.")
            data_collator = DataCollatorForTextVAE(pad_token_id=pad)
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        if args.free_bits is not None:
            self.model.config.free_bits = args.free_bits
        if args.beta_schedule == "cyclical":
            self.beta_callback = CyclicalBetaCallback(
                cycle_steps=args.cycle_steps,
                num_cycles=args.num_cycles,
                beta_min=args.beta_min,
                beta_max=args.beta_max,
                ratio_zero=args.ratio_zero,
                ratio_increase=args.ratio_increase,
            )
            self.add_callback(self.beta_callback)
        elif args.beta_schedule == "della_original":
            self.beta_callback = DellaOriginalBetaCallback(
                cycle_epochs=args.cycle_epochs, beta_min=args.beta_min, beta_max=args.beta_max
            )
            self.add_callback(self.beta_callback)
        else:
            self.model.kl_weight = args.beta_max
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        mode = "train" if model.training else "eval"
        if outputs.rec_loss is not None:
            self._metrics[mode]["rec_loss"].append(outputs.rec_loss.mean().item())
        if outputs.kl is not None:
            self._metrics[mode]["kl"].append(outputs.kl.mean().item())
            self._metrics[mode]["elbo"].append(-(outputs.rec_loss + outputs.kl).mean().item())
        self._metrics[mode]["beta"].append(float(getattr(self.accelerator.unwrap_model(model), "kl_weight", 1.0)))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()
