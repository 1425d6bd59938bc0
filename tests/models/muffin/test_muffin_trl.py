"""Muffin trains with TRL 1.16 (fused LM head, vision preference collator) and with hf_ext's DenseDPOTrainer.

TRL renders prompts with `add_generation_prompt=True` and needs them to be a prefix of prompt + completion, so these
tests use the `"muffin_v0"` template (the default, the original's formats, switches to the evaluation prompt)."""

import copy

import numpy as np
import pytest
import torch
from _cpu_training import cpu_training_args
from _muffin_data import CHOSEN, PROMPT, REJECTED, preference_dataset, random_image

from hf_ext.testing import tiny_muffin


def _reference_logps(model, processor, completion):
    """Sum of log p(completion tokens | image, prompt) from the ordinary forward (full logits), tokenized as TRL does
    (prompt and completion separately, no special tokens)."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    full = processor.apply_chat_template(msgs + [{"role": "assistant", "content": completion}])
    assert full.startswith(prompt)
    enc = processor(images=[random_image()], text=prompt, return_tensors="pt", add_special_tokens=False)
    comp = processor.tokenizer(full[len(prompt) :], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([enc["input_ids"], comp], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    n = comp.shape[1]
    targets = ids[0, -n:]
    return logp[-n:].gather(-1, targets[:, None]).sum().item()


def _args(cls, tmp_path, **kw):
    return cls(**cpu_training_args(tmp_path, per_device_train_batch_size=1, max_steps=1, learning_rate=1e-3, **kw))


def test_trl_dpo_trainer_logps_and_update(tmp_path):
    from trl import DPOConfig, DPOTrainer

    model, processor = tiny_muffin(chat_template="muffin_v0")
    ref_chosen = _reference_logps(model, processor, CHOSEN)
    ref_rejected = _reference_logps(model, processor, REJECTED)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=_args(DPOConfig, tmp_path),
        train_dataset=preference_dataset(1),
        processing_class=processor,
    )
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["logps/chosen"] == pytest.approx(ref_chosen, rel=1e-4)
    assert logs["logps/rejected"] == pytest.approx(ref_rejected, rel=1e-4)
    assert logs["loss"] == pytest.approx(np.log(2), rel=1e-5)  # policy == reference at step 1
    for name in (
        "model.query",
        "model.multi_modal_projector.linear_1.weight",
        "model.vision_tower.layers.0.vision_expert.q_proj.weight",
        "model.vision_tower.layers.0.language_expert.fc1.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
    ):
        assert not torch.equal(dict(model.named_parameters())[name], before[name]), name


def test_dense_dpo_trainer_trains_muffin(tmp_path):
    import hf_ext.trainers.dense_dpo as dense  # hf_ext's own trainer: a broken import must fail, not skip

    model, processor = tiny_muffin(chat_template="muffin_v0")
    ref_chosen = _reference_logps(model, processor, CHOSEN)
    ref_rejected = _reference_logps(model, processor, REJECTED)
    # character spans of the assistant message text (the corrected segments of RLHF-V)
    extra = {"chosen_segments": [[0, len(CHOSEN)]], "rejected_segments": [[2, len(REJECTED)]]}
    trainer = dense.DenseDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=_args(dense.DenseDPOConfig, tmp_path, dense_gamma=1.0),
        train_dataset=preference_dataset(1, extra),
        processing_class=processor,
    )
    before = model.model.query.detach().clone()
    trainer.train()
    logs = trainer.state.log_history[0]
    # gamma = 1: every weight is 1, so the dense sequence score is the plain sum of token log-probs
    assert logs["logps/chosen"] == pytest.approx(ref_chosen, rel=1e-4)
    assert logs["logps/rejected"] == pytest.approx(ref_rejected, rel=1e-4)
    assert logs["loss"] == pytest.approx(np.log(2), rel=1e-5)  # policy == reference at step 1: -log sigmoid(0)
    assert not torch.equal(model.model.query, before)


def test_trl_dpo_with_per_row_template_on_the_default_processor(tmp_path):
    """A processor with the original formats as default (converted checkpoints) trains with TRL when the rows name
    the prefix-consistent `muffin_v0` template through TRL's `chat_template_kwargs` column."""
    from trl import DPOConfig, DPOTrainer

    model, processor = tiny_muffin()  # default template: muffin_original
    _, v0 = tiny_muffin(chat_template="muffin_v0")
    ref_chosen = _reference_logps(model, v0, CHOSEN)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=_args(DPOConfig, tmp_path),
        train_dataset=preference_dataset(1, {"chat_template_kwargs": {"chat_template": "muffin_v0"}}),
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.log_history[0]["logps/chosen"] == pytest.approx(ref_chosen, rel=1e-4)
