"""Dense DPO against the golden fixtures made by running the official RLHF-V code (thunlp/Muffin @ 85d72b4).

`tests/fixtures/dense_dpo/` (see its README): `weights.jsonl` holds the official token weights of 156 pairs (full
sequences, prompt included), `loss.jsonl` the official scores and losses of 22 batches from stored per-token
log-probs (β 0.1/0.5 × γ 1.1/5 × sum/average × SFT weight 0/0.3, batch 1 and 3). The weights are compared exactly; the
losses go through the real trainer (collator → coefficients → hook → TRL's loss → SFT term) with a model whose
log-probs are the stored ones, in float64, to 1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _dense_dpo_helpers import (
    LogProbTableLM,
    _TableConfig,
    base_args,
    text_dataset,
    use_float64_fused_head,
)

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.testing import tiny_bpe_tokenizer
from hf_ext.trainers.dense_dpo import (
    DataCollatorForDensePreference,
    dense_token_coefficients,
    sequence_correction_weights,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dense_dpo"
VOCAB = 560  # fixture ids are < 560 (README)


def _load(name):
    with open(FIXTURES / name) as f:
        return [json.loads(line) for line in f if line.strip()]


WEIGHT_CASES = _load("weights.jsonl")
LOSS_CASES = _load("loss.jsonl")


def _example(case):
    p = len(case["prompt_ids"])
    return {
        "prompt_ids": case["prompt_ids"],
        "chosen_ids": case["chosen_ids"][p:],
        "rejected_ids": case["rejected_ids"][p:],
    }


def test_fixture_coverage():
    # the scenarios the issue names are all there: a shared answer start, long sequences with image tokens, ...
    assert len(WEIGHT_CASES) == 156 and len(LOSS_CASES) == 22
    assert sum(c["answer_only_diff_differs"] for c in WEIGHT_CASES) == 57
    assert sum(c["autojunk_sensitive"] for c in WEIGHT_CASES) == 13
    settings = {(c["beta"], c["gamma"], c["use_average"], c["sft_weight"]) for c in LOSS_CASES if c["batch_size"] == 1}
    assert len(settings) == 16


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=lambda c: f"{c['case']}-{c['tag']}")
def test_official_weights(case):
    gamma = case["gamma"]
    # the function: every position (prompt ones included), exactly
    rejected_w, chosen_w = sequence_correction_weights(case["rejected_ids"], case["chosen_ids"], gamma)
    assert chosen_w == case["chosen_weights"]
    assert rejected_w == case["rejected_weights"]

    # the collator + the trainer's coefficients: the scored (answer) positions, exactly
    batch = DataCollatorForDensePreference(pad_token_id=0)([_example(case)])
    coefficients = dense_token_coefficients(batch["corrected_mask"][:, 1:], batch["completion_mask"][:, 1:], gamma)
    p = len(case["prompt_ids"])
    for row, side in ((0, "chosen"), (1, "rejected")):
        n = len(case[f"{side}_ids"])
        assert coefficients[row, p - 1 : n - 1].tolist() == case[f"{side}_weights"][p - 1 :]
        assert coefficients[row, : p - 1].tolist() == [0.0] * (p - 1)  # prompt positions are not scored


def test_official_weights_in_a_padded_batch():
    """A batch of several pairs gets each pair's own (batch-1) weights: padding never enters the diff."""
    cases = [c for c in WEIGHT_CASES if c["gamma"] == 5.0][:24]
    batch = DataCollatorForDensePreference(pad_token_id=0)([_example(c) for c in cases])
    coefficients = dense_token_coefficients(batch["corrected_mask"][:, 1:], batch["completion_mask"][:, 1:], 5.0)
    n = len(cases)
    assert len({len(c["chosen_ids"]) for c in cases}) > 1  # rows really are padded
    for i, case in enumerate(cases):
        p = len(case["prompt_ids"])
        for row, side in ((i, "chosen"), (n + i, "rejected")):
            length = len(case[f"{side}_ids"])
            assert coefficients[row, p - 1 : length - 1].tolist() == case[f"{side}_weights"][p - 1 :]
            assert coefficients[row, length - 1 :].abs().sum() == 0  # padding


def _table(examples, kind):
    rows = []
    for side in ("chosen", "rejected"):
        for e in examples:
            ids = e[f"{side}_ids"]
            rows.append((ids, LogProbTableLM.logits_for(ids, e[f"{kind}_{side}_logps"], VOCAB)))
    return rows


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: f"{c['case']}-bsz{c['batch_size']}")
def test_official_loss(tmp_path, case):
    examples = case["examples"]
    config = _TableConfig(vocab_size=VOCAB)
    policy = LogProbTableLM(config, _table(examples, "policy"))
    reference = LogProbTableLM(config, _table(examples, "reference"))
    args = DenseDPOConfig(
        **base_args(tmp_path, max_length=None, per_device_train_batch_size=case["batch_size"]),
        beta=case["beta"],
        dense_gamma=case["gamma"],
        dense_normalize=case["use_average"],
        sft_weight=case["sft_weight"],
    )
    trainer = DenseDPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=text_dataset(),
        processing_class=tiny_bpe_tokenizer(),
    )
    batch = trainer.data_collator([_example(e) for e in examples])
    # TRL's fused LM head computes the log-probs in float32: the loss agrees to float32 precision
    with torch.no_grad():
        fp32_loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert fp32_loss == pytest.approx(case["batch_loss"], abs=1e-4)
    # ... and with the same computation in float64, to 1e-6
    use_float64_fused_head(trainer.model)
    use_float64_fused_head(trainer.ref_model)
    # the logits reproduce the stored log-probs (float64), checked on the scored positions
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = logits[0, :-1].log_softmax(-1).gather(-1, batch["input_ids"][0, 1:, None]).squeeze(-1)
    p, n = len(examples[0]["prompt_ids"]), len(examples[0]["chosen_ids"])
    torch.testing.assert_close(
        lp[p - 1 : n - 1],
        torch.tensor(examples[0]["policy_chosen_logps"][p - 1 :], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )

    loss = trainer.compute_loss(trainer.model, dict(batch))
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(case["batch_loss"], abs=1e-6)
    metrics = trainer._metrics["train"]
    mean = lambda key: sum(e[key] for e in examples) / len(examples)  # noqa: E731
    assert metrics["rewards/chosen"][-1] == pytest.approx(mean("chosen_reward"), abs=1e-6)
    assert metrics["rewards/rejected"][-1] == pytest.approx(mean("rejected_reward"), abs=1e-6)
    assert metrics["logps/chosen"][-1] == pytest.approx(mean("policy_chosen_score"), abs=1e-6)
    assert metrics["logps/rejected"][-1] == pytest.approx(mean("policy_rejected_score"), abs=1e-6)
    if case["sft_weight"] > 0:
        assert metrics["dense/sft_loss"][-1] == pytest.approx(-mean("policy_chosen_score"), abs=1e-6)
    dpo_only = loss.item() + case["sft_weight"] * mean("policy_chosen_score")
    assert dpo_only == pytest.approx(mean("dpo_loss"), abs=1e-6)
