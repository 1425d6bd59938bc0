"""Shared tiny fixtures for the dense-DPO tests and the 2-process script (not collected by pytest)."""

from __future__ import annotations

import copy

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from hf_ext.testing_utils import tiny_bpe_tokenizer

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


def tiny_tokenizer():
    return tiny_bpe_tokenizer()


def tiny_gpt2(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


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
    args = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_length": 64,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
    }
    args.update(kwargs)
    return args


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
