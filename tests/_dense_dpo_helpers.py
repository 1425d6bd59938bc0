"""Shared tiny fixtures for the dense-DPO tests and the 2-process script (not collected by pytest)."""

from __future__ import annotations

import copy
import math

import torch
from _cpu_training import cpu_training_args
from datasets import Dataset
from transformers import PretrainedConfig, PreTrainedModel

TEXT_ROWS = [
    ("describe the image .", "a red circle is on the left .", "a blue circle is on the left ."),
    ("what is in the image ?", "there are two blue squares at the top .", "there are three blue squares at the top ."),
    ("describe the image .", "the green triangle is in the middle .", "the green triangle is on the left ."),
    (
        "what is in the image ?",
        "the quick brown fox jumps over the lazy dog .",
        "the quick red fox jumps over the dog .",
    ),
]


def perturbed(model, scale: float = 0.05, seed: int = 1):
    """A copy of ``model`` with noise on every weight (a reference that differs from the policy)."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def text_dataset(rows=TEXT_ROWS, **extra_columns) -> Dataset:
    data = {
        "prompt": [r[0] + " " for r in rows],
        "chosen": [r[1] for r in rows],
        "rejected": [r[2] for r in rows],
    }
    data.update(extra_columns)
    return Dataset.from_dict(data)


def base_args(output_dir, **kwargs) -> dict:
    """:func:`cpu_training_args` of the dense-DPO tests: batches of 4 (4 pairs), 64 tokens, seed 0."""
    defaults = dict(
        per_device_train_batch_size=4, per_device_eval_batch_size=4, max_length=64, seed=0, disable_tqdm=True
    )
    return cpu_training_args(output_dir, **{**defaults, **kwargs})


def lora_trainer(output_dir, tokenizer):
    """A `DenseDPOTrainer` that trains a LoRA adapter (r = 4 on `c_attn`) of a tiny GPT-2 for 2 steps on
    :func:`text_dataset`, the reference log-probs precomputed (the base model without the adapter)."""
    from peft import LoraConfig

    from hf_ext import DenseDPOConfig, DenseDPOTrainer
    from hf_ext.testing import tiny_gpt2

    return DenseDPOTrainer(
        model=tiny_gpt2(tokenizer),
        args=DenseDPOConfig(**base_args(output_dir), max_steps=2, learning_rate=1e-2, precompute_ref_log_probs=True),
        train_dataset=text_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True),
    )


def token_logps(model, batch) -> torch.Tensor:
    """Per-token log-probs (2B, L - 1) from a plain forward (full logits), zero outside the completion."""
    kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    was_training = model.training
    model.eval()  # no dropout (the trainer disables it too)
    logits = model(**kwargs).logits.float()
    model.train(was_training)
    ids = batch["input_ids"]
    logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp * batch["completion_mask"][:, 1:]


# ---------------------------------------------------------------- a model whose log-probs are given (golden fixtures)


class _TableConfig(PretrainedConfig):
    model_type = "hf_ext_test_logprob_table"

    def __init__(self, vocab_size: int = 560, pad_token_id: int = 0, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = vocab_size
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class _TableBackbone(torch.nn.Module):
    def __init__(self, table: list):
        super().__init__()
        self.table = table  # batch row -> (full sequence ids, (L, V) float64 hidden states = logits)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        rows = []
        for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            real = [i for i, m in zip(ids, mask) if m]
            table_ids, hidden = self.table[row]
            if real != table_ids:
                raise ValueError(f"row {row}: the batch holds other ids than the table")
            pad = torch.zeros(len(ids) - len(real), hidden.size(1), dtype=hidden.dtype)
            rows.append(torch.cat([hidden, pad]) if mask[0] else torch.cat([pad, hidden]))
        return BaseModelOutput(last_hidden_state=torch.stack(rows))


class LogProbTableLM(PreTrainedModel):
    """A causal LM whose next-token log-probs are read from a table (float64): ``log_softmax(logits)[label] = lp``.

    The backbone returns, for each known full sequence, hidden states equal to the wanted logits; the LM head is the
    identity. Logits are built so that the label gets exactly the stored log-prob: 0 for the label, ``c`` elsewhere
    with ``(V - 1) e^c = e^{-lp} - 1``. Used to run the real trainer on the log-probs of the golden fixtures.
    """

    config_class = _TableConfig
    base_model_prefix = "backbone"
    _no_split_modules = []

    def __init__(self, config, table=None):
        super().__init__(config)
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(pad_token_id=config.pad_token_id)
        self.backbone = _TableBackbone(table if table is not None else [])
        self.lm_head = torch.nn.Linear(config.vocab_size, config.vocab_size, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(config.vocab_size, dtype=torch.float64))

    def get_output_embeddings(self):
        return self.lm_head

    def get_input_embeddings(self):
        return None

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return CausalLMOutput(logits=self.lm_head(hidden))

    @staticmethod
    def logits_for(ids: list[int], logps: list[float], vocab_size: int) -> torch.Tensor:
        """(L, V) logits whose log-softmax at position j gives ``logps[j]`` for ``ids[j + 1]``."""
        out = torch.zeros(len(ids), vocab_size, dtype=torch.float64)
        for j, lp in enumerate(logps):
            c = math.log(math.expm1(-lp) / (vocab_size - 1))
            out[j].fill_(c)
            out[j, ids[j + 1]] = 0.0
        return out


def use_float64_fused_head(model) -> None:
    """Replace TRL's fused LM head of ``model`` (fp32 kernel) by the same computation in float64 from full logits.

    TRL's `add_fused_lm_head` computes the per-token fields in float32; the golden fixtures are compared at 1e-6 in
    float64, as the issue asks, so the test double computes the same `FusedCausalLMOutput` fields from the model's
    float64 logits. Everything downstream (the dense hook, TRL's loss, the SFT term, the metrics) is the real code.
    """
    import types

    from trl.trainer.utils import FusedCausalLMOutput

    original = type(model).forward

    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        kwargs.pop("use_cache", None)
        if not fused_lm_head:
            return original(self, *args, labels=labels, **kwargs)
        logits = original(self, *args, **kwargs).logits
        shift_labels = labels[:, 1:]
        mask = shift_labels != -100
        logp_all = logits[:, :-1].log_softmax(-1)
        log_probs = logp_all.gather(-1, shift_labels.clamp(min=0)[..., None]).squeeze(-1).masked_fill(~mask, 0)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~mask, 0)
            log_sum_sq = torch.logsumexp(2 * logp_all, dim=-1).masked_fill(~mask, 0)
            mean_logits = logits[:, :-1].mean(-1).masked_fill(~mask, 0)
            is_top1 = (logits[:, :-1].argmax(-1) == shift_labels) & mask
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / mask.sum().clamp(min=1),
            log_probs=log_probs,
            entropy=entropy,
            log_sum_sq_probs=log_sum_sq,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
