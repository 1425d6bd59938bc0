"""CARE attention regulariser and trainer.

Reference values are computed from the attention probabilities that transformers' own *eager* attention returns
with ``output_attentions=True`` (an independent code path), with the entropy formulas written out here.
"""

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_ext.trainers.care import (
    CAREConfig,
    CARERegularizer,
    CARETrainer,
    care_attention_forward,
    enable_care_attention,
)

VOCAB = 40


# ----------------------------------------------------------------------------------------------------------- models
def tiny_gpt2(n_layer=2, n_head=2):
    cfg = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=16,
        vocab_size=VOCAB,
        n_positions=32,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def tiny_llama():
    cfg = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=16,
        intermediate_size=32,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def tiny_t5():
    cfg = T5Config(
        num_layers=2,
        num_heads=2,
        d_model=16,
        d_kv=8,
        d_ff=32,
        vocab_size=VOCAB,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(cfg)


def tiny_bart():
    cfg = BartConfig(
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(cfg)


def causal_batch():
    input_ids = torch.randint(3, VOCAB, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # right padding in the second row
    return input_ids, attention_mask


def seq2seq_batch():
    input_ids = torch.randint(3, VOCAB, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    labels = torch.randint(3, VOCAB, (2, 5))
    labels[0, 3:] = -100
    return input_ids, attention_mask, labels


def eager_copy(model):
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return ref


# -------------------------------------------------------------------------------------------- reference formulas
def shannon(p):
    # -Σ p log p with 0 log 0 = 0 (the clamp keeps the gradient finite at p = 0), independent of the implementation
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def renyi(p, alpha):
    return torch.log((p**alpha).sum(-1)) / (1 - alpha)


def reference_penalty(groups, row_fn=shannon, heads=None):
    """groups: list of (attention tuple/list of (B,H,Q,K) tensors, valid rows (B,Q)). Mean over (layer, head, row)."""
    total, count = 0.0, 0.0
    for attentions, valid in groups:
        for a in attentions:
            if heads is not None:
                a = a[:, heads]
            h = row_fn(a)
            total = total + (h * valid[:, None, :].float()).sum()
            count = count + valid.float().sum() * a.shape[1]
    return total / count


# ------------------------------------------------------------------------------------------------------ penalty
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama-gqa"])
def test_entropy_penalty_equals_eager_attention_entropy_causal_lm(factory):
    model = factory()
    input_ids, attention_mask = causal_batch()
    ref = eager_copy(model)(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    expected = reference_penalty([(ref.attentions, attention_mask.bool())])

    enable_care_attention(model)
    collector = CARERegularizer().new_collector(model, attention_mask=attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, care_collector=collector)
    result = collector.finalize()

    torch.testing.assert_close(result.penalty, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.attention_entropy, expected.detach(), rtol=1e-5, atol=1e-6)
    heads = model.config.num_attention_heads
    assert result.num_rows == model.config.num_hidden_layers * heads * int(attention_mask.sum())
    # the regularised forward is eager attention: same logits on the real tokens
    real = attention_mask.bool()
    torch.testing.assert_close(out.logits[real], ref.logits[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0])
def test_renyi_penalty_equals_reference(alpha):
    model = tiny_llama()
    input_ids, attention_mask = causal_batch()
    ref = eager_copy(model)(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    expected = reference_penalty([(ref.attentions, attention_mask.bool())], row_fn=lambda p: renyi(p, alpha))

    enable_care_attention(model)
    collector = CARERegularizer(penalty="renyi", alpha=alpha).new_collector(model, attention_mask=attention_mask)
    model(input_ids=input_ids, attention_mask=attention_mask, care_collector=collector)
    result = collector.finalize()
    torch.testing.assert_close(result.penalty, expected, rtol=1e-5, atol=1e-6)
    # the logged entropy stays Shannon whatever the penalty
    torch.testing.assert_close(
        result.attention_entropy, reference_penalty([(ref.attentions, attention_mask.bool())]), rtol=1e-5, atol=1e-6
    )


def test_renyi_alpha_one_is_shannon():
    model = tiny_gpt2()
    input_ids, attention_mask = causal_batch()
    enable_care_attention(model)
    values = []
    for reg in (CARERegularizer(), CARERegularizer(penalty="renyi", alpha=1.0)):
        collector = reg.new_collector(model, attention_mask=attention_mask)
        model(input_ids=input_ids, attention_mask=attention_mask, care_collector=collector)
        values.append(collector.finalize().penalty)
    torch.testing.assert_close(values[0], values[1])


def test_layer_and_head_selection():
    model = tiny_gpt2(n_layer=3, n_head=4)
    input_ids, attention_mask = causal_batch()
    ref = eager_copy(model)(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    layers, heads = [0, 2], [1, 3]
    expected = reference_penalty([([ref.attentions[i] for i in layers], attention_mask.bool())], heads=heads)

    enable_care_attention(model)
    collector = CARERegularizer(layers=layers, heads=heads).new_collector(model, attention_mask=attention_mask)
    model(input_ids=input_ids, attention_mask=attention_mask, care_collector=collector)
    result = collector.finalize()
    torch.testing.assert_close(result.penalty, expected, rtol=1e-5, atol=1e-6)
    assert [s.layer for s in result.sites] == layers
    assert result.num_rows == len(layers) * len(heads) * int(attention_mask.sum())


def test_normalize_and_target_entropy():
    model = tiny_gpt2()
    input_ids = torch.randint(3, VOCAB, (2, 6))
    ref = eager_copy(model)(input_ids=input_ids, output_attentions=True)
    valid = torch.ones(2, 6, dtype=torch.bool)
    log_keys = torch.log(torch.arange(1, 7, dtype=torch.float32))  # causal row t sees t + 1 keys

    def normalized(p):
        return torch.where(log_keys > 0, shannon(p) / log_keys.clamp_min(1e-12), torch.zeros_like(log_keys))

    enable_care_attention(model)
    for reg, row_fn in [
        (CARERegularizer(normalize=True), normalized),
        (CARERegularizer(target_entropy=0.5), lambda p: torch.relu(shannon(p) - 0.5)),
    ]:
        collector = reg.new_collector(model)
        model(input_ids=input_ids, care_collector=collector)
        expected = reference_penalty([(ref.attentions, valid)], row_fn=row_fn)
        torch.testing.assert_close(collector.finalize().penalty, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_t5, tiny_bart], ids=["t5", "bart"])
@pytest.mark.parametrize("types", [("self", "encoder", "cross"), ("cross",), ("encoder",)])
def test_seq2seq_penalty_equals_eager(factory, types):
    model = factory()
    input_ids, attention_mask, labels = seq2seq_batch()
    ref = eager_copy(model)(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_attentions=True)
    decoder_valid = labels != -100
    groups = {
        "encoder": (ref.encoder_attentions, attention_mask.bool()),
        "self": (ref.decoder_attentions, decoder_valid),
        "cross": (ref.cross_attentions, decoder_valid),
    }
    expected = reference_penalty([groups[t] for t in types])

    enable_care_attention(model)
    reg = CARERegularizer(attention_types=types)
    collector = reg.new_collector(model, attention_mask=attention_mask, labels=labels)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, care_collector=collector)
    result = collector.finalize()
    torch.testing.assert_close(result.penalty, expected, rtol=1e-5, atol=1e-6)
    assert {s.kind for s in result.sites} == set(types)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_t5], ids=["gpt2", "t5"])
def test_penalty_gradient_equals_eager_reference_gradient(factory):
    model = factory()
    if model.config.is_encoder_decoder:
        input_ids, attention_mask, labels = seq2seq_batch()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    else:
        input_ids, attention_mask = causal_batch()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    model.train()
    ref_model = eager_copy(model)
    ref = ref_model(**kwargs, output_attentions=True)
    if model.config.is_encoder_decoder:
        dv = labels != -100
        groups = [(ref.encoder_attentions, attention_mask.bool()), (ref.decoder_attentions, dv)]
        groups.append((ref.cross_attentions, dv))
    else:
        groups = [(ref.attentions, attention_mask.bool())]
    reference_penalty(groups).backward()

    enable_care_attention(model)
    collector = CARERegularizer().new_collector(
        model, attention_mask=attention_mask, labels=kwargs.get("labels") if model.config.is_encoder_decoder else None
    )
    model(**kwargs, care_collector=collector)
    collector.finalize().penalty.backward()

    n_nonzero = 0
    for (name, p), (_, p_ref) in zip(model.named_parameters(), ref_model.named_parameters()):
        if p_ref.grad is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
            continue
        assert torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
        n_nonzero += int(torch.count_nonzero(p.grad) > 0)
    assert n_nonzero > 0


def test_penalty_gradient_with_gradient_checkpointing():
    model = tiny_gpt2()
    input_ids, attention_mask = causal_batch()
    enable_care_attention(model)
    model.train()
    ckpt = copy.deepcopy(model)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grads = []
    for m in (model, ckpt):
        collector = CARERegularizer().new_collector(m, attention_mask=attention_mask)
        m(input_ids=input_ids, attention_mask=attention_mask, care_collector=collector)
        result = collector.finalize()
        result.penalty.backward()  # recomputation in backward hits the closed collector and adds nothing
        assert len(result.sites) == 2
        grads.append(m.transformer.h[0].attn.c_attn.weight.grad)
    assert torch.count_nonzero(grads[0]) > 0
    torch.testing.assert_close(grads[1], grads[0])


# ------------------------------------------------------------------------------------------- SDPA / generation
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_t5, tiny_bart], ids=["gpt2", "llama", "t5", "bart"])
def test_without_collector_outputs_equal_sdpa(factory):
    model = factory()
    assert model.config._attn_implementation == "sdpa"
    sdpa = copy.deepcopy(model)
    enable_care_attention(model)
    assert model.config._attn_implementation == "care"
    if model.config.is_encoder_decoder:
        input_ids, attention_mask, labels = seq2seq_batch()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    else:
        input_ids, attention_mask = causal_batch()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": input_ids}
    for train in (False, True):
        model.train(train)
        sdpa.train(train)
        torch.manual_seed(1)
        a = model(**kwargs)
        torch.manual_seed(1)
        b = sdpa(**kwargs)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_t5], ids=["gpt2", "t5"])
def test_generation_unaffected(factory):
    model = factory().eval()
    sdpa = copy.deepcopy(model)
    enable_care_attention(model)
    input_ids = torch.randint(3, VOCAB, (2, 5))
    gen = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(input_ids, **gen), sdpa.generate(input_ids, **gen))


def test_care_implementation_is_not_saved(tmp_path):
    model = enable_care_attention(tiny_gpt2())
    model.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "care" not in json.loads(text).values()
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert reloaded.config._attn_implementation == "sdpa"


def test_closed_collector_ignores_later_calls():
    model = enable_care_attention(tiny_gpt2())
    input_ids, _ = causal_batch()
    collector = CARERegularizer().new_collector(model)
    model(input_ids=input_ids, care_collector=collector)
    first = collector.finalize()
    model(input_ids=input_ids, care_collector=collector)
    second = collector.finalize()
    assert first.num_rows == 2 * 2 * input_ids.numel()
    assert second.num_rows == first.num_rows and torch.equal(second.penalty, first.penalty)


def test_float_mask_with_minus_inf_gives_finite_penalty():
    # a hand-made additive mask with -inf entries (as some users pass) must not produce NaN
    module = torch.nn.Module()
    module.is_causal = False
    q = torch.randn(1, 2, 3, 4, requires_grad=True)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 2] = float("-inf")
    reg = CARERegularizer()
    collector = reg.new_collector(torch.nn.Sequential(module))
    out, _ = care_attention_forward(module, q, k, v, mask, care_collector=collector)
    pen = collector.finalize().penalty
    p = torch.softmax((q @ k.transpose(-1, -2)) / 2 + mask, -1)
    torch.testing.assert_close(out, (p @ v).transpose(1, 2))
    # self-attention rule without a query mask: a row counts only if it may attend to its own position, and key 2 is
    # masked for every query, so query row 2 is excluded
    torch.testing.assert_close(pen, shannon(p)[..., :2].mean())
    pen.backward()
    assert torch.isfinite(q.grad).all()


# ---------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"penalty": "kl"}, "`penalty` must be one of"),
        ({"alpha": 0.0}, "`alpha` must be a finite number > 0"),
        ({"layers": [-1]}, "`layers` must be a non-empty list"),
        ({"heads": []}, "`heads` must be a non-empty list"),
        ({"attention_types": ["decoder"]}, "`attention_types` must be a non-empty subset"),
        ({"target_modules": "("}, "`target_modules` is not a valid regular expression"),
        ({"target_entropy": -1.0}, "`target_entropy`"),
    ],
)
def test_regularizer_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CARERegularizer(**kwargs)


def test_head_index_out_of_range_names_the_module():
    model = enable_care_attention(tiny_gpt2(n_head=2))
    collector = CARERegularizer(heads=[5]).new_collector(model)
    with pytest.raises(ValueError, match=r"`heads`=\[5\] but attention module `transformer.h.0.attn` has 2 heads"):
        model(input_ids=torch.randint(3, VOCAB, (1, 4)), care_collector=collector)


def test_config_errors_name_care_fields(tmp_path):
    with pytest.raises(ValueError, match="Invalid CARE setting in CAREConfig"):
        CAREConfig(str(tmp_path), care_penalty="kl", report_to="none")
    with pytest.raises(ValueError, match="care_warmup_steps"):
        CAREConfig(str(tmp_path), care_warmup_steps=-1, report_to="none")


# --------------------------------------------------------------------------------------------------------- trainer
def lm_dataset(n=8, length=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def care_args(tmp_path, **kwargs):
    base = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "care_coef": 0.5,
    }
    base.update(kwargs)
    return CAREConfig(**base)


def test_trainer_loss_is_lm_loss_plus_coef_times_reference_penalty(tmp_path):
    model = tiny_gpt2()
    trainer = CARETrainer(model, care_args(tmp_path, care_coef=0.7), train_dataset=lm_dataset())
    input_ids = torch.randint(3, VOCAB, (2, 6))
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
    ref = eager_copy(model).train()(**inputs, output_attentions=True)
    expected = ref.loss + 0.7 * reference_penalty([(ref.attentions, torch.ones_like(input_ids).bool())])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # evaluation: the plain LM loss
    trainer.model.eval()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, dict(inputs)), ref.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_t5], ids=["gpt2", "t5"])
def test_trainer_trains_and_logs(tmp_path, factory):
    model = factory()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if model.config.is_encoder_decoder:
        ds = lm_dataset().map(lambda ex: {"labels": ex["labels"][:5]})
    else:
        ds = lm_dataset()
    trainer = CARETrainer(model, care_args(tmp_path), train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert h["care/penalty"] > 0 and h["care/attention_entropy"] > 0 and h["care/coef"] == 0.5
    assert "train_loss" in trainer.state.log_history[-1]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


@pytest.mark.slow
def test_trainer_penalty_reduces_attention_entropy(tmp_path):
    # λ > 0 must sharpen attention relative to the same run with λ = 0 (same data, seed and steps)
    entropies = {}
    for coef in (0.0, 2.0):
        torch.manual_seed(0)
        trainer = CARETrainer(
            tiny_gpt2(), care_args(tmp_path / str(coef), care_coef=coef, max_steps=8), train_dataset=lm_dataset()
        )
        trainer.train()
        entropies[coef] = [h["care/attention_entropy"] for h in trainer.state.log_history if "loss" in h]
    assert entropies[0.0][0] == pytest.approx(entropies[2.0][0], rel=1e-5)  # same start
    assert entropies[2.0][-1] < entropies[0.0][-1]


def test_trainer_warmup_and_selection_error(tmp_path):
    trainer = CARETrainer(tiny_gpt2(), care_args(tmp_path, care_warmup_steps=4), train_dataset=lm_dataset())
    trainer.train()
    coefs = [h["care/coef"] for h in trainer.state.log_history if "loss" in h]
    assert coefs == pytest.approx([0.5 * s / 4 for s in range(3)])

    bad = CARETrainer(tiny_gpt2(), care_args(tmp_path, care_layers=[7]), train_dataset=lm_dataset())
    with pytest.raises(ValueError, match=r"CARE selected no attention rows.*care_layers=\[7\].*\{'self': \[0, 1\]\}"):
        bad.train()


def test_trainer_rejects_plain_training_arguments(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(ValueError, match="`args` must be a CAREConfig"):
        CARETrainer(tiny_gpt2(), TrainingArguments(str(tmp_path), report_to="none"))


def test_gradient_accumulation_scales_penalty_like_the_loss(tmp_path):
    # one step with GA=2 over two halves must give (almost) the same update as one step on the full batch
    ds = lm_dataset(n=4)
    params = []
    for bs, ga in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = tiny_gpt2()
        initial = model.transformer.h[0].attn.c_attn.weight.detach().clone()
        trainer = CARETrainer(
            model,
            care_args(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1),
            train_dataset=ds,
        )
        trainer.train()
        params.append(model.transformer.h[0].attn.c_attn.weight.detach().clone())
        assert not torch.equal(params[-1], initial)  # the step did update: two untrained models would trivially agree
    assert math.isclose(float((params[0] - params[1]).abs().max()), 0.0, abs_tol=1e-5)


def test_site_table_does_not_keep_model_alive():
    import gc

    reg = CARERegularizer()
    model = tiny_gpt2()
    reg.new_collector(model)
    assert len(reg._sites) == 1
    del model
    gc.collect()
    assert len(reg._sites) == 0


def test_config_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    argv = ["--output_dir", str(tmp_path), "--report_to", "none", "--care_layers", "1", "0", "--care_penalty", "renyi"]
    argv += ["--care_attention_types", "self", "cross", "--care_coef", "0.3"]
    (args,) = HfArgumentParser(CAREConfig).parse_args_into_dataclasses(argv)
    reg = args.to_regularizer()
    assert (args.care_coef, reg.penalty, reg.layers, reg.attention_types) == (0.3, "renyi", (0, 1), ("self", "cross"))
