"""DenseDPOTrainer: token weights, equivalence with TRL's DPO, Eq. 5, spans, VLM path, reference precompute."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from _dense_dpo_helpers import base_args, lora_trainer, perturbed, text_dataset, token_logps
from trl import DPOConfig, DPOTrainer

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2, tiny_llava
from hf_ext.trainers.dense_dpo import DataCollatorForDensePreference, correction_weights
from hf_ext.trainers.dense_dpo.weights import span_token_mask

# ---------------------------------------------------------------- correction_weights (hand-derived diffs)


def test_diff_replacement():
    # rejected:  1 2 3 [9]   4 5 6      chosen: 1 2 3 [7 8] 4 5 6
    rej, cho = correction_weights([1, 2, 3, 9, 4, 5, 6], [1, 2, 3, 7, 8, 4, 5, 6], gamma=5.0)
    assert rej == [1, 1, 1, 5, 1, 1, 1]
    assert cho == [1, 1, 1, 5, 5, 1, 1, 1]


def test_diff_insertion_and_deletion():
    base, inserted = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 4, 5, 6]
    # pure insertion in chosen: official rule leaves it at weight 1
    assert correction_weights(base, inserted, gamma=2.0) == ([1.0] * 6, [1.0] * 7)
    assert correction_weights(base, inserted, gamma=2.0, weight_insertions=True) == ([1.0] * 6, [1, 1, 1, 2, 1, 1, 1])
    # pure deletion from rejected (rejected has the extra token)
    assert correction_weights(inserted, base, gamma=2.0) == ([1.0] * 7, [1.0] * 6)
    assert correction_weights(inserted, base, gamma=2.0, weight_insertions=True) == ([1, 1, 1, 2, 1, 1, 1], [1.0] * 6)


def test_diff_identical_and_empty():
    assert correction_weights([4, 5, 6, 7], [4, 5, 6, 7], gamma=3.0) == ([1.0] * 4, [1.0] * 4)
    assert correction_weights([], [], gamma=3.0) == ([], [])
    assert correction_weights([], [1, 2], gamma=3.0) == ([], [1.0, 1.0])
    assert correction_weights([], [1, 2], gamma=3.0, weight_insertions=True) == ([], [3.0, 3.0])
    assert correction_weights([1, 2], [], gamma=3.0, weight_insertions=True) == ([3.0, 3.0], [])


def test_diff_short_matches_absorbed_and_edges():
    rej = [1, 2, 3, 10, 4, 11, 5, 6, 7]
    cho = [1, 2, 3, 12, 4, 13, 5, 6, 7]
    # the 1-token match "4" inside the edit is shorter than min_match=3: the whole gap 10 4 11 / 12 4 13 is corrected
    assert correction_weights(rej, cho, gamma=5.0) == ([1, 1, 1, 5, 5, 5, 1, 1, 1], [1, 1, 1, 5, 5, 5, 1, 1, 1])
    # with min_match=1 the "4" is kept as a match and splits the edit into two replacements
    assert correction_weights(rej, cho, gamma=5.0, min_match=1) == (
        [1, 1, 1, 5, 1, 5, 1, 1, 1],
        [1, 1, 1, 5, 1, 5, 1, 1, 1],
    )
    # leading and trailing gaps are paired too
    assert correction_weights([8, 1, 2, 3, 9], [7, 1, 2, 3, 6, 6], gamma=2.0) == ([2, 1, 1, 1, 2], [2, 1, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="min_match"):
        correction_weights([1], [1], gamma=2.0, min_match=0)


def test_span_token_mask_offsets():
    # rendered "Q: hi. A: red ball" with completion "red ball" at char 10; span "ball" = [4, 8)
    offsets = [(0, 2), (3, 6), (7, 9), (10, 13), (13, 18), (18, 18)]
    assert span_token_mask(offsets, [(4, 8)], char_shift=10) == [False, False, False, False, True, False]


# ---------------------------------------------------------------- collator


def test_collator_padding_and_weights():
    collator = DataCollatorForDensePreference(pad_token_id=0)
    examples = [
        {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5, 8, 6, 7, 9], "rejected_ids": [3, 4, 5, 6, 7, 9]},
        {"prompt_ids": [1], "chosen_ids": [3, 4, 5, 12, 6, 7, 9], "rejected_ids": [3, 4, 5, 11, 6, 7, 9]},
    ]
    batch = collator(examples)
    expected_ids = torch.tensor(
        [
            [1, 2, 3, 4, 5, 8, 6, 7, 9],
            [1, 3, 4, 5, 12, 6, 7, 9, 0],
            [1, 2, 3, 4, 5, 6, 7, 9, 0],
            [1, 3, 4, 5, 11, 6, 7, 9, 0],
        ]
    )
    assert torch.equal(batch["input_ids"], expected_ids)
    expected_corrected = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0],  # pure insertion (8): not corrected
            [0, 0, 0, 0, 1, 0, 0, 0, 0],  # replacement 11 -> 12
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(batch["corrected_mask"], expected_corrected)
    assert "ref_token_logps" not in batch and "token_weights" not in batch  # γ is applied by the trainer only


# ---------------------------------------------------------------- trainer vs TRL


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _on_copies(trainer_class, model, ref, args, dataset, processing_class):
    """`trainer_class` on deep copies of `model` and `ref` (the originals stay as they are for the next trainer)."""
    return trainer_class(
        model=copy.deepcopy(model),
        ref_model=copy.deepcopy(ref),
        args=args,
        train_dataset=dataset,
        processing_class=processing_class,
    )


def _first_rows(trainer, n: int) -> dict:
    """The collated batch of the trainer's first `n` training rows."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def _loss(trainer, batch) -> float:
    """The trainer's loss on `batch`, without gradients."""
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(batch)).item()


def _assert_same_loss_and_grads(trl_trainer, trl_batch, dense, dense_batch):
    """One forward and backward each: dense DPO's loss and every gradient equal TRL's. Returns TRL's loss and grads."""
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, trl_batch)
    trl_loss.backward()
    dense_loss = dense.compute_loss(dense.model, dense_batch)
    dense_loss.backward()
    assert abs(dense_loss.item() - trl_loss.item()) < 1e-6
    g_trl, g_dense = _grads(trl_trainer.model), _grads(dense.model)
    assert g_trl.keys() == g_dense.keys() and g_trl
    for name in g_trl:
        torch.testing.assert_close(g_dense[name], g_trl[name], atol=1e-6, rtol=0)
    return trl_loss.item(), g_trl


def test_gamma_one_equals_trl_sigmoid_dpo(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok).train()  # training mode: the losses below log the trainers' "train" metrics
    ref = perturbed(model)
    ds = text_dataset()
    trl_trainer = _on_copies(DPOTrainer, model, ref, DPOConfig(**base_args(tmp_path / "trl")), ds, tok)
    dense_args = DenseDPOConfig(**base_args(tmp_path / "dense"), dense_gamma=1.0, dense_normalize=False)
    dense = _on_copies(DenseDPOTrainer, model, ref, dense_args, ds, tok)
    trl_batch, dense_batch = _first_rows(trl_trainer, 4), _first_rows(dense, 4)
    assert torch.equal(trl_batch["input_ids"], dense_batch["input_ids"])
    # the pairs do contain corrections: γ = 1 must still reduce to plain DPO
    assert dense_batch["corrected_mask"].any()

    trl_loss, _ = _assert_same_loss_and_grads(trl_trainer, trl_batch, dense, dense_batch)
    assert abs(trl_loss - math.log(2)) > 1e-4  # the reference differs from the policy
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert abs(dense._metrics["train"][key][-1] - trl_trainer._metrics["train"][key][-1]) < 1e-5


@pytest.mark.parametrize("normalize", [True, False])
def test_eq5_by_hand(tmp_path, normalize):
    """Score = (Σ_u log p + γ Σ_c log p) / (|y_u| + γ|y_c|) (or the numerator alone), policy and reference alike."""
    gamma, beta = 5.0, 0.5
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ref = perturbed(model)
    args = DenseDPOConfig(**base_args(tmp_path), dense_gamma=gamma, dense_normalize=normalize, beta=beta)
    trainer = _on_copies(DenseDPOTrainer, model, ref, args, text_dataset(), tok)
    batch = _first_rows(trainer, 4)
    loss = _loss(trainer, batch)
    with torch.no_grad():
        pol, rf = token_logps(model, batch), token_logps(ref, batch)
    comp = batch["completion_mask"][:, 1:].bool()
    attended = batch["attention_mask"].bool()
    n = 4
    scores = {"pol": [], "ref": []}
    for i in range(n):
        # official weights: diff of the whole sequences minus their first token, kept on the completion positions
        full_c, full_r = (
            batch["input_ids"][i][attended[i]].tolist(),
            batch["input_ids"][n + i][attended[n + i]].tolist(),
        )
        rej_w, cho_w = correction_weights(full_r[1:], full_c[1:], gamma)
        cho_w = [w for w, m in zip(cho_w, comp[i][: len(cho_w)].tolist()) if m]
        rej_w = [w for w, m in zip(rej_w, comp[n + i][: len(rej_w)].tolist()) if m]
        for name, lp in (("pol", pol), ("ref", rf)):
            pair = []
            for row, w in ((i, cho_w), (n + i, rej_w)):
                values = lp[row][comp[row]].tolist()
                assert len(values) == len(w)
                unchanged = sum(v for v, wi in zip(values, w) if wi == 1.0)
                corrected = sum(v for v, wi in zip(values, w) if wi == gamma)
                n_u, n_c = sum(wi == 1.0 for wi in w), sum(wi == gamma for wi in w)
                numerator = unchanged + gamma * corrected
                pair.append(numerator / (n_u + gamma * n_c) if normalize else numerator)
            scores[name].append(pair)
    losses = []
    for (pc, pr), (rc, rr) in zip(scores["pol"], scores["ref"]):
        losses.append(-F.logsigmoid(torch.tensor(beta * ((pc - rc) - (pr - rr)), dtype=torch.float64)).item())
    assert batch["corrected_mask"].any()
    assert loss == pytest.approx(sum(losses) / n, abs=1e-5)


def test_sft_weight_and_fraction_metric(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok).train()  # training mode: the losses below log the trainer's "train" metrics
    ref = perturbed(model)
    losses = {}
    for sft in (0.0, 0.5):
        args = DenseDPOConfig(**base_args(tmp_path / str(sft)), dense_gamma=3.0, sft_weight=sft)
        trainer = _on_copies(DenseDPOTrainer, model, ref, args, text_dataset(), tok)
        batch = _first_rows(trainer, 4)
        losses[sft] = _loss(trainer, batch)
    with torch.no_grad():
        pol = token_logps(model, batch)
    weights = torch.where(batch["corrected_mask"], 3.0, 1.0) * batch["completion_mask"]
    chosen_scores = (pol * weights[:, 1:])[:4].sum(1)
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * -chosen_scores.mean().item(), abs=1e-5)
    comp = batch["completion_mask"][:, 1:].bool()
    expected_fraction = batch["corrected_mask"][:, 1:][comp].float().mean().item()
    assert trainer._metrics["train"]["dense/weighted_token_fraction"][-1] == pytest.approx(expected_fraction)
    assert "dense/sft_loss" in trainer._metrics["train"]


def test_explicit_spans_map_to_tokens(tmp_path):
    tok = tiny_bpe_tokenizer()
    rows = [("describe the image .", "the green triangle is in the middle .", "the red triangle is in the middle .")]
    chosen_spans = [[[4, 9]]]  # "green"
    rejected_spans = [[[4, 7]]]  # "red"
    ds = text_dataset(rows, chosen_segments=chosen_spans, rejected_segments=rejected_spans)
    trainer = DenseDPOTrainer(
        model=tiny_gpt2(tok),
        ref_model=tiny_gpt2(tok),
        args=DenseDPOConfig(**base_args(tmp_path), dense_gamma=4.0),
        train_dataset=ds,
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    for row, word in ((0, "green"), (1, "red")):
        flagged = batch["input_ids"][row][batch["corrected_mask"][row]]
        assert tok.decode(flagged).strip() == word

    # conversational rows: the spans are located inside the chat-template rendering
    from datasets import Dataset

    from hf_ext.testing import TINY_CHAT_TEMPLATE

    tok.chat_template = TINY_CHAT_TEMPLATE
    conv = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": rows[0][0]}]],
            "chosen": [[{"role": "assistant", "content": rows[0][1]}]],
            "rejected": [[{"role": "assistant", "content": rows[0][2]}]],
            "chosen_segments": chosen_spans,
            "rejected_segments": rejected_spans,
        }
    )
    trainer = DenseDPOTrainer(
        model=tiny_gpt2(tok),
        ref_model=tiny_gpt2(tok),
        args=DenseDPOConfig(**base_args(tmp_path / "conv"), dense_gamma=4.0),
        train_dataset=conv,
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    for row, word in ((0, "green"), (1, "red")):
        assert tok.decode(batch["input_ids"][row][batch["corrected_mask"][row]]).strip() == word

    bad = text_dataset(rows, chosen_segments=[[[4, 99]]], rejected_segments=[None])
    with pytest.raises(ValueError, match=r"row 0.*outside the completion text"):
        DenseDPOTrainer(
            model=tiny_gpt2(tok),
            ref_model=tiny_gpt2(tok),
            args=DenseDPOConfig(**base_args(tmp_path / "bad")),
            train_dataset=bad,
            processing_class=tok,
        )


def test_precomputed_reference_equals_live_and_cache_reuse(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ref = perturbed(model)
    ds = text_dataset()
    cache = tmp_path / "cache"

    def make(gamma, precompute):
        args = DenseDPOConfig(
            **base_args(tmp_path / f"{gamma}-{precompute}"),
            dense_gamma=gamma,
            precompute_ref_log_probs=precompute,
            ref_logps_cache_dir=str(cache),
            precompute_ref_batch_size=3,  # other padding than the training batch
        )
        return _on_copies(DenseDPOTrainer, model, ref, args, ds, tok)

    def loss_of(trainer):
        batch = _first_rows(trainer, 4)
        return _loss(trainer, batch), batch

    pre = make(2.0, True)
    files = list(cache.glob("train-*.safetensors"))
    assert len(files) == 1
    pre_loss, batch = loss_of(pre)
    assert "ref_token_logps" in batch
    live_loss, _ = loss_of(make(2.0, False))
    assert pre_loss == pytest.approx(live_loss, abs=1e-5)

    # another γ reuses the per-token cache: no second reference pass
    with mock.patch.object(DenseDPOTrainer, "_write_ref_cache", side_effect=AssertionError("recomputed")):
        pre5 = make(5.0, True)
    assert pre5.ref_model is not None  # a user-provided reference is kept
    live5, _ = loss_of(make(5.0, False))
    assert loss_of(pre5)[0] == pytest.approx(live5, abs=1e-5)


def test_precompute_frees_own_reference_and_model_card(tmp_path):
    tok = tiny_bpe_tokenizer()
    trainer = DenseDPOTrainer(
        model=tiny_gpt2(tok),
        args=DenseDPOConfig(**base_args(tmp_path), precompute_ref_log_probs=True, max_steps=2),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    assert trainer.ref_model is None
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(math.isfinite(x) for x in losses)
    # the reference is the initial policy, so the first step's margin is 0 and its loss is -log sigmoid(0) = log 2
    assert losses[0] == pytest.approx(math.log(2), rel=1e-5)
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "README.md").read_text()
    assert "2312.00849" in card and "Dense DPO" in card


def test_lora(tmp_path):
    trainer = lora_trainer(tmp_path, tiny_bpe_tokenizer())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_bad_config():
    with pytest.raises(ValueError, match="dense_gamma"):
        DenseDPOConfig("x", dense_gamma=0.0, use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="dense_min_match"):
        DenseDPOConfig("x", dense_min_match=0, use_cpu=True, bf16=False)


def test_rejects_plain_dpo_config(tmp_path):
    tok = tiny_bpe_tokenizer()
    with pytest.raises(TypeError, match="DenseDPOConfig"):
        DenseDPOTrainer(
            model=tiny_gpt2(tok),
            args=DPOConfig(**base_args(tmp_path)),
            train_dataset=text_dataset(),
            processing_class=tok,
        )


# ---------------------------------------------------------------- vision-language path (tiny Llava)


@pytest.fixture(scope="module")
def vlm_data(tmp_path_factory):
    from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet

    path = write_rlhf_v_parquet(make_rlhf_v_rows(n=4), tmp_path_factory.mktemp("rlhfv") / "s.parquet")
    return load_rlhf_v(path)


def _vlm_trainer(model, processor, dataset, output_dir):
    """Dense DPO (γ = 3, untruncated rows) of `model` against a perturbed copy, to look at its collated batches."""
    args = DenseDPOConfig(**base_args(output_dir, max_length=None), dense_gamma=3.0)
    return DenseDPOTrainer(
        model=model, ref_model=perturbed(model), args=args, train_dataset=dataset, processing_class=processor
    )


def test_vlm_gamma_one_equals_trl_and_precompute(tmp_path, vlm_data):
    model, processor = tiny_llava()
    ref = perturbed(model)
    kwargs = base_args(tmp_path, max_length=None, per_device_train_batch_size=2)
    trl_args = DPOConfig(**{**kwargs, "output_dir": str(tmp_path / "trl")})
    trl_trainer = _on_copies(DPOTrainer, model, ref, trl_args, vlm_data, processor)
    dense = _on_copies(DenseDPOTrainer, model, ref, DenseDPOConfig(**kwargs, dense_gamma=1.0), vlm_data, processor)
    trl_batch = trl_trainer.data_collator([vlm_data[i] for i in range(2)])
    dense_batch = dense.data_collator([vlm_data[i] for i in range(2)])
    assert "pixel_values" in dense_batch and dense_batch["corrected_mask"].any()
    _, g_trl = _assert_same_loss_and_grads(trl_trainer, trl_batch, dense, dense_batch)
    assert any("vision_tower" in n for n in g_trl)

    # precomputed reference (vision data, which TRL refuses) equals the live reference, γ = 5
    losses = {}
    for precompute in (True, False):
        args = DenseDPOConfig(
            **{**kwargs, "output_dir": str(tmp_path / f"p{precompute}")},
            dense_gamma=5.0,
            precompute_ref_log_probs=precompute,
        )
        trainer = _on_copies(DenseDPOTrainer, model, ref, args, vlm_data, processor)
        losses[precompute] = _loss(trainer, _first_rows(trainer, 2))
        # a vision dataset passed late to `evaluate` gets its reference log-probs precomputed too
        losses[f"eval-{precompute}"] = trainer.evaluate(eval_dataset=vlm_data)["eval_loss"]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert losses["eval-True"] == pytest.approx(losses["eval-False"], abs=1e-5)


def test_vlm_explicit_spans(tmp_path, vlm_data):
    model, processor = tiny_llava()
    row = vlm_data[0]
    chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
    # mark the first differing word on each side
    words_c, words_r = chosen.split(" "), rejected.split(" ")
    k = next(i for i, (a, b) in enumerate(zip(words_c, words_r)) if a != b)
    start_c, start_r = len(" ".join(words_c[:k])) + 1, len(" ".join(words_r[:k])) + 1
    ds = vlm_data.select([0]).add_column("chosen_segments", [[[start_c, start_c + len(words_c[k])]]])
    ds = ds.add_column("rejected_segments", [[[start_r, start_r + len(words_r[k])]]])
    trainer = _vlm_trainer(model, processor, ds, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    for r, word in ((0, words_c[k]), (1, words_r[k])):
        flagged = batch["input_ids"][r][batch["corrected_mask"][r]]
        assert processor.tokenizer.decode(flagged).strip() == word


# ---------------------------------------------------------------- 2 processes


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_run(tmp_path):
    script = Path(__file__).resolve().parents[2] / "_dense_dpo_ddp.py"
    path = os.pathsep.join(filter(None, [str(script.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    # --standalone: a free rendezvous port, so concurrent multi-process tests (xdist) do not collide on 29500
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    cmd.append(str(tmp_path))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RANK 0 world 2 MULTI_CPU" in proc.stdout and "RANK 1 world 2 MULTI_CPU" in proc.stdout

    # the cache the two ranks wrote together equals a single-process computation
    from safetensors.torch import load_file

    (two_proc,) = list((tmp_path / "cache").glob("train-*.safetensors"))
    tok = tiny_bpe_tokenizer()
    single = DenseDPOTrainer(
        model=tiny_gpt2(tok),
        args=DenseDPOConfig(
            **base_args(tmp_path / "single", per_device_train_batch_size=2),
            precompute_ref_log_probs=True,
            ref_logps_cache_dir=str(tmp_path / "single_cache"),
        ),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    (one_proc,) = list((tmp_path / "single_cache").glob("train-*.safetensors"))
    a, b = load_file(two_proc), load_file(one_proc)
    assert single.ref_model is None and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- WPO and LD-DPO with dense weights


def _expected_loss(policy, reference, batch, gamma, beta, normalize=False, wpo=False, ld_alpha=None):
    """Dense DPO (+ WPO, + LD-DPO) from plain full-logit forwards, written out token by token (float64)."""

    def per_token(model):
        kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        model.eval()
        logp_all = model(**kwargs).logits.double()[:, :-1].log_softmax(-1)
        labels = batch["input_ids"][:, 1:, None]
        return logp_all.gather(-1, labels).squeeze(-1), torch.logsumexp(2 * logp_all, -1)

    with torch.no_grad():
        (pol, pol_lss), (ref, _) = per_token(policy), per_token(reference)
    mask = batch["completion_mask"][:, 1:].bool()
    corrected = batch["corrected_mask"][:, 1:]
    n = mask.size(0) // 2
    scores = {"pol": [], "ref": []}
    wpo_weight = []
    for row in range(2 * n):
        positions = mask[row].nonzero().squeeze(1).tolist()
        other = (row + n) % (2 * n)
        shared = min(len(positions), int(mask[other].sum()))
        w = [gamma if corrected[row, j] else 1.0 for j in positions]
        norm = sum(w) if normalize else 1.0
        for name, lp in (("pol", pol), ("ref", ref)):
            total = 0.0
            for k, (j, wj) in enumerate(zip(positions, w)):
                factor = 1.0 if ld_alpha is None or k < shared else ld_alpha
                total += wj * factor * lp[row, j].item() / norm
            scores[name].append(total)
        mean = sum(pol[row, j].item() - pol_lss[row, j].item() for j in positions) / len(positions)
        wpo_weight.append(math.exp(mean))
    losses = []
    for i in range(n):
        margin = (scores["pol"][i] - scores["ref"][i]) - (scores["pol"][n + i] - scores["ref"][n + i])
        loss = -F.logsigmoid(torch.tensor(beta * margin, dtype=torch.float64)).item()
        losses.append(loss * (wpo_weight[i] * wpo_weight[n + i] if wpo else 1.0))
    return sum(losses) / n


def _pair_of_trainers(tmp_path, model, ref, ds, tok, **options):
    dense = _on_copies(
        DenseDPOTrainer, model, ref, DenseDPOConfig(**base_args(tmp_path / "dense"), **options), ds, tok
    )
    return dense, _first_rows(dense, 4)


@pytest.mark.parametrize(
    "options",
    [
        {"use_weighting": True},
        {"ld_alpha": 0.3},
        {"use_weighting": True, "ld_alpha": 0.5, "dense_normalize": True},
    ],
    ids=["wpo", "ld_alpha", "wpo+ld_alpha+normalize"],
)
def test_wpo_and_ld_alpha_with_dense_weights(tmp_path, options):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ref = perturbed(model)
    ds = text_dataset()
    gamma, beta = 3.0, 0.5
    dense, batch = _pair_of_trainers(tmp_path, model, ref, ds, tok, dense_gamma=gamma, beta=beta, **options)
    assert batch["corrected_mask"].any()
    lengths = batch["completion_mask"].sum(1)
    assert not torch.equal(lengths[:4], lengths[4:])  # LD-DPO has tails to down-weight
    loss = _loss(dense, batch)
    expected = _expected_loss(
        model,
        ref,
        batch,
        gamma,
        beta,
        normalize=options.get("dense_normalize", False),
        wpo=options.get("use_weighting", False),
        ld_alpha=options.get("ld_alpha"),
    )
    assert loss == pytest.approx(expected, abs=1e-5)
    # the option does change the loss (the test could fail)
    plain = _expected_loss(model, ref, batch, gamma, beta, normalize=options.get("dense_normalize", False))
    assert abs(expected - plain) > 1e-3


@pytest.mark.parametrize("options", [{"use_weighting": True}, {"ld_alpha": 0.3}], ids=["wpo", "ld_alpha"])
def test_wpo_and_ld_alpha_at_gamma_one_equal_trl(tmp_path, options):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ref = perturbed(model)
    ds = text_dataset()
    trl_trainer = _on_copies(DPOTrainer, model, ref, DPOConfig(**base_args(tmp_path / "trl"), **options), ds, tok)
    dense, dense_batch = _pair_of_trainers(tmp_path, model, ref, ds, tok, dense_gamma=1.0, **options)
    _assert_same_loss_and_grads(trl_trainer, _first_rows(trl_trainer, 4), dense, dense_batch)


@pytest.mark.parametrize("gamma", [1.0, 1.1])
def test_train_with_wpo(tmp_path, gamma):
    """Like TRL's `test_train_with_wpo`: training with `use_weighting=True` runs and moves every parameter."""
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    trainer = DenseDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),  # TRL's test loads both from a Hub id; here an in-memory copy
        args=DenseDPOConfig(
            **base_args(tmp_path, max_steps=3, per_device_train_batch_size=2),
            learning_rate=0.1,
            use_weighting=True,
            dense_gamma=gamma,
        ),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    previous = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    for name, before in previous.items():
        assert not torch.equal(before, trainer.model.get_parameter(name)), f"{name} has not changed"


def test_precomputed_reference_with_ld_alpha_equals_live(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ref = perturbed(model)
    losses = {}
    for precompute in (True, False):
        args = DenseDPOConfig(
            **base_args(tmp_path / str(precompute)),
            dense_gamma=2.0,
            ld_alpha=0.4,
            dense_normalize=True,
            precompute_ref_log_probs=precompute,
            ref_logps_cache_dir=str(tmp_path / "cache"),
        )
        trainer = _on_copies(DenseDPOTrainer, model, ref, args, text_dataset(), tok)
        losses[precompute] = _loss(trainer, _first_rows(trainer, 4))
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_vlm_diff_runs_over_the_whole_sequence_with_image_tokens(tmp_path, vlm_data):
    """VLM rows: the official diff sees prompt + expanded image placeholders + answer (left-padded prompts)."""
    model, processor = tiny_llava()
    trainer = _vlm_trainer(model, processor, vlm_data, tmp_path)
    batch = trainer.data_collator([vlm_data[i] for i in range(4)])
    image_id = model.config.image_token_id
    n = 4
    for i in range(n):
        rows = []
        for row in (i, n + i):
            positions = batch["attention_mask"][row].nonzero().squeeze(1)
            rows.append((positions, batch["input_ids"][row, positions].tolist()))
        (pos_c, ids_c), (pos_r, ids_r) = rows
        assert ids_c.count(image_id) > 1  # the placeholders are part of what is diffed
        rej_w, cho_w = correction_weights(ids_r[1:], ids_c[1:], gamma=3.0)  # official: first token dropped
        for row, positions, weights in ((i, pos_c, cho_w), (n + i, pos_r, rej_w)):
            completion = batch["completion_mask"][row].bool()
            expected = torch.zeros_like(completion)
            expected[positions[1:]] = torch.tensor([w == 3.0 for w in weights])
            assert torch.equal(batch["corrected_mask"][row], expected & completion)
    assert batch["corrected_mask"].any()


def test_precompute_really_frees_the_temporary_reference(tmp_path):
    """The reference copy made for precomputation is garbage-collected (no handle left, e.g. in the accelerator)."""
    import gc
    import weakref

    from hf_ext.trainers.dense_dpo import dense_dpo_trainer

    copies = []
    real_deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        result = real_deepcopy(obj, *args, **kwargs)
        if isinstance(result, torch.nn.Module):
            copies.append(weakref.ref(result))
        return result

    tok = tiny_bpe_tokenizer()
    with mock.patch.object(dense_dpo_trainer.copy, "deepcopy", side_effect=recording_deepcopy):
        trainer = DenseDPOTrainer(
            model=tiny_gpt2(tok),
            args=DenseDPOConfig(**base_args(tmp_path), precompute_ref_log_probs=True),
            train_dataset=text_dataset(),
            processing_class=tok,
        )
    gc.collect()
    assert len(copies) == 1  # the temporary reference
    assert copies[0]() is None, gc.get_referrers(copies[0]())
    assert trainer.ref_model is None and trainer.model is not None


def _precompute_error(trainer_cls, config_cls, tmp_path, where):
    """The `ValueError` a trainer raises for `precompute_ref_log_probs=True` with a streamed dataset at `where`."""
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    ds = text_dataset()
    streamed = ds.to_iterable_dataset()
    train, evals = (streamed, None) if where == "train" else (ds, {"held_out": streamed})
    args = config_cls(**base_args(tmp_path / trainer_cls.__name__), precompute_ref_log_probs=True, max_steps=1)
    with pytest.raises(ValueError) as info:
        trainer_cls(
            model=model,
            ref_model=perturbed(model),
            args=args,
            train_dataset=train,
            eval_dataset=evals,
            processing_class=tok,
        )
    return str(info.value)


@pytest.mark.parametrize("where", ["train", "eval", "evaluate"])
def test_precompute_refuses_iterable_dataset_like_trl(tmp_path, where):
    """Streamed data with a precomputed reference is refused with TRL's own wording (which callers match on)."""
    if where == "evaluate":
        # a late eval dataset: build without eval data, stream it to `evaluate()`
        tok = tiny_bpe_tokenizer()
        model = tiny_gpt2(tok)
        messages = []
        for trainer_cls, config_cls in ((DPOTrainer, DPOConfig), (DenseDPOTrainer, DenseDPOConfig)):
            trainer = trainer_cls(
                model=copy.deepcopy(model),
                ref_model=perturbed(model),
                args=config_cls(**base_args(tmp_path / trainer_cls.__name__), precompute_ref_log_probs=True),
                train_dataset=text_dataset(),
                processing_class=tok,
            )
            with pytest.raises(ValueError) as info:
                trainer.evaluate(eval_dataset=text_dataset().to_iterable_dataset())
            messages.append(str(info.value))
        trl_message, dense_message = messages
    else:
        trl_message = _precompute_error(DPOTrainer, DPOConfig, tmp_path, where)
        dense_message = _precompute_error(DenseDPOTrainer, DenseDPOConfig, tmp_path, where)
    trl_first_sentence = trl_message.split(". ")[0]
    assert "IterableDataset" in trl_first_sentence  # TRL refuses it too, and says so first
    assert dense_message.startswith(trl_first_sentence)
    assert "precompute_ref_log_probs=False" in dense_message  # and says how to fix it
