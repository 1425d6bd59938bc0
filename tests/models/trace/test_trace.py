"""Tests for hf_ext.models.trace (TRACE, reconstructed from the abstract)."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import hf_ext  # noqa: F401
from hf_ext.models.trace import TraceConfig, TraceForCausalLM
from hf_ext.models.trace.modeling_trace import compute_latent_index, segment_ids
from hf_ext.testing import tiny_text_vae_config

VOCAB = 40
SEP = 3


def tiny_config(**kw):
    base = dict(vocab_size=VOCAB, n_positions=48, separator_token_ids=[SEP], bos_token_id=0, eos_token_id=1)
    return tiny_text_vae_config(
        "trace", **{**base, "pad_token_id": 1, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **kw}
    )


def activate_fusion(model):
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.lmf.rank_weight.normal_(0.0, 1.0)
            block.attn.lmf.latent_factor.normal_(0.0, 0.5)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (3, 12), generator=g)
    ids[:, 3] = SEP
    ids[1, 7] = SEP
    ids[2, 10] = SEP
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    ids[0, 9:] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def test_segment_ids_by_hand():
    cfg = tiny_config()
    ids = torch.tensor([[5, 3, 6, 7, 3, 8, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    assert segment_ids(ids, mask, cfg).tolist() == [[0, 0, 1, 1, 1, 2, -1]]
    # the decoder at position t uses the segment of token t+1
    assert compute_latent_index(ids, cfg).tolist() == [[0, 1, 1, 1, 2, 2, 2]]
    fixed = tiny_config(segmentation="fixed", segment_length=3)
    assert segment_ids(ids, mask, fixed).tolist() == [[0, 0, 0, 1, 1, 1, -1]]
    assert compute_latent_index(ids, fixed).tolist() == [[0, 0, 1, 1, 1, 2, 2]]


def test_kl_lower_bound_holds_and_is_tight():
    torch.manual_seed(0)
    gamma = 1.5
    model = TraceForCausalLM(tiny_config(posterior_ln_gain=gamma)).eval()
    with torch.no_grad():  # random, non-trivial prior and posterior scales
        model.transformer.latent.prior_logvar.normal_()
        model.transformer.latent.posterior_logvar.weight.normal_()
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels)
    feats, valid, _ = model.transformer.segment_features(ids, mask)
    pre = model.transformer.latent.posterior_mean(feats)
    var = pre.var(-1, unbiased=False)
    bound = 0.5 * gamma**2 * 6 * var / (var + 1e-6)  # 1/2 gamma^2 p var/(var+eps): the LN output's squared norm
    kl = out.kl_per_group
    assert (kl[valid] >= bound[valid] - 1e-5).all()
    assert (bound[valid] > 0.5 * gamma**2 * 6 * 0.99).all()  # i.e. ~1/2 gamma^2 p, clearly non-zero
    # KL against torch.distributions on the returned Gaussians
    lo = out.latent_output
    ref = kl_divergence(
        Normal(lo.posterior_mean, torch.exp(0.5 * lo.posterior_logvar)),
        Normal(lo.prior_mean, torch.exp(0.5 * lo.prior_logvar)),
    ).sum(-1)
    torch.testing.assert_close(kl[valid], ref[valid], rtol=1e-5, atol=1e-5)
    assert (kl[~valid] == 0).all()
    # with no variance offset the bound is attained
    with torch.no_grad():
        model.transformer.latent.posterior_logvar.weight.zero_()
        model.transformer.latent.posterior_logvar.bias.zero_()
    kl0 = model(ids, attention_mask=mask, labels=labels).kl_per_group
    torch.testing.assert_close(kl0[valid], bound[valid], rtol=1e-5, atol=1e-5)


def test_plain_posterior_has_no_lower_bound():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config(residual_posterior=False)).eval()
    with torch.no_grad():
        for lin in (model.transformer.latent.posterior_mean, model.transformer.latent.posterior_logvar):
            lin.weight.zero_()
            lin.bias.zero_()
    ids, mask, labels = batch()
    kl = model(ids, attention_mask=mask, labels=labels, latents=None).kl_per_group
    # q = N(0, 1); p(z_1) = N(0, 1) exactly -> 0; later segments differ only through W z_{k-1}
    assert torch.allclose(kl[:, 0], torch.zeros(3), atol=1e-6)


def test_parallel_equals_sequential_when_exactly_idempotent():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config(transition="exact_idempotent", transition_rank=3)).eval()
    with torch.no_grad():
        model.transformer.latent.transition_v.normal_()
    w = model.transformer.latent.transition()
    torch.testing.assert_close(w @ w, w, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(w, w.T, atol=1e-3)  # an oblique (non-orthogonal) projection
    ids, mask, _ = batch()
    feats, valid, _ = model.transformer.segment_features(ids, mask)
    noise = torch.randn(3, feats.shape[1], 6)
    par = model.transformer.latent_chain(feats, valid, mode="parallel", noise=noise)
    seq = model.transformer.latent_chain(feats, valid, mode="sequential", noise=noise)
    torch.testing.assert_close(par.latents, seq.latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(par.prior_mean, seq.prior_mean, rtol=1e-4, atol=1e-5)
    # the sequential chain is the recurrence z_k = W z_{k-1} + e_k, checked by hand
    delta, dlogvar = model.transformer.innovations(feats)
    p_std = torch.exp(0.5 * model.transformer.latent.prior_logvar)
    e = (p_std * delta + p_std * torch.exp(0.5 * dlogvar) * noise) * valid[..., None]
    z = torch.zeros(3, 6)
    for k in range(feats.shape[1]):
        z = z @ w.T + e[:, k]
        torch.testing.assert_close(seq.latents[:, k], z, rtol=1e-4, atol=1e-5)


def test_parallel_differs_from_sequential_for_non_idempotent_w():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config()).eval()
    lat = model.transformer.latent
    assert lat.idempotence_gap() < 1e-8  # free W starts at a projection
    with torch.no_grad():
        lat.transition_weight.add_(0.3 * torch.randn(6, 6))
    ids, mask, labels = batch()
    feats, valid, _ = model.transformer.segment_features(ids, mask)
    noise = torch.randn(3, feats.shape[1], 6)
    par = model.transformer.latent_chain(feats, valid, mode="parallel", noise=noise)
    seq = model.transformer.latent_chain(feats, valid, mode="sequential", noise=noise)
    torch.testing.assert_close(par.latents[:, 0], seq.latents[:, 0])  # the first segment has no history
    assert not torch.allclose(par.latents[:, 1:], seq.latents[:, 1:], atol=1e-4)
    # the loss carries the idempotence penalty
    torch.manual_seed(1)
    out = model(ids, attention_mask=mask, labels=labels, kl_weight=0.5)
    w = lat.transition_weight
    expected = out.rec_loss.mean() + 0.5 * out.kl.mean() + ((w @ w - w) ** 2).sum()
    torch.testing.assert_close(out.loss, expected)


def test_kl_sum_vs_mean_over_segments():
    torch.manual_seed(0)
    ids, mask, labels = batch()
    m_sum = TraceForCausalLM(tiny_config()).eval()
    m_mean = TraceForCausalLM(tiny_config(kl_reduction="mean")).eval()
    m_mean.load_state_dict(m_sum.state_dict())
    o_sum, o_mean = m_sum(ids, attention_mask=mask), m_mean(ids, attention_mask=mask)
    n_segments = torch.tensor([2.0, 3.0, 3.0])  # row 0: "xxx|" + 5 tokens; rows 1, 2: two separators each
    torch.testing.assert_close(o_mean.kl, o_sum.kl_per_group.sum(1) / n_segments)
    torch.testing.assert_close(o_sum.kl, o_sum.kl_per_group.sum(1))


def test_generate_cache_equals_no_cache_across_segments():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config()).eval()
    activate_fusion(model)
    prompt = torch.tensor([[0, 5], [0, 9]])
    z = model.sample_latents(2)
    assert z.shape == (2, 8, 6)
    kw = dict(max_new_tokens=14, do_sample=False, attention_mask=torch.ones_like(prompt), sequence_bias={(SEP,): 4.0})
    a = model.generate(prompt, latents=z, use_cache=True, **kw)
    b = model.generate(prompt, latents=z, use_cache=False, **kw)
    assert (a == SEP).sum() >= 2  # the test crosses segment boundaries
    assert torch.equal(a, b)
    # token-by-token decoding with the cache equals one full pass with per-position latents
    full = model(a, latents=z).logits
    cache_out = model(a[:, :1], latents=z, use_cache=True)
    for t in range(1, a.shape[1]):
        idx = compute_latent_index(a[:, : t + 1], model.config)[:, -1:]
        cache_out = model(a[:, t : t + 1], latents=z, latent_index=idx, cache=cache_out.cache, use_cache=True)
        torch.testing.assert_close(cache_out.logits[:, -1], full[:, t], rtol=1e-4, atol=1e-5)


def test_encode_and_reconstruct():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config()).eval()
    ids, mask, _ = batch()
    lo = model.encode(ids, mask, use_mean=True)
    assert lo.latents.shape == (3, 3, 6)
    # use_mean: the chain z_k = W z_{k-1} + e_k with the innovations' means only (no noise), by hand
    with torch.no_grad():
        feats, valid, _ = model.transformer.segment_features(ids, mask)
        delta, _ = model.transformer.innovations(feats)
        p_std = torch.exp(0.5 * model.transformer.latent.prior_logvar)
        w = model.transformer.latent.transition()
    e = p_std * delta * valid[..., None]
    z = torch.zeros(3, 6)
    for k in range(feats.shape[1]):
        z = z @ w.T + e[:, k]
        torch.testing.assert_close(lo.latents[:, k], z, rtol=1e-4, atol=1e-5)
    out = model.generate(ids[:, :1], latents=lo.latents, max_new_tokens=4, do_sample=False)
    assert out.shape == (3, 5)
    # reconstruction = greedy decoding from those latents: a loop over full forward passes
    manual, done = ids[:, :1], torch.zeros(3, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(4):
            nxt = model(manual, latents=lo.latents).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, model.config.pad_token_id), nxt)
            done |= nxt == model.config.eos_token_id
            manual = torch.cat([manual, nxt[:, None]], 1)
    assert torch.equal(out, manual)


def test_save_load_round_trip_and_from_backbone(tmp_path):
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config(segmentation="fixed", segment_length=4, training_mode="sequential")).eval()
    activate_fusion(model)
    model.save_pretrained(tmp_path / "trace")
    cfg = AutoConfig.from_pretrained(tmp_path / "trace")
    assert isinstance(cfg, TraceConfig) and cfg.segment_length == 4 and cfg.training_mode == "sequential"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "trace").eval()
    assert isinstance(loaded, TraceForCausalLM)
    ids, mask, _ = batch()
    z = model.sample_latents(3, num_segments=4)
    torch.testing.assert_close(loaded(ids, latents=z).logits, model(ids, latents=z).logits)

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=48)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    tr = TraceForCausalLM.from_backbone(str(tmp_path / "gpt2"), latent_size=4, separator_token_ids=[SEP]).eval()
    for key, value in gpt2.transformer.state_dict().items():
        assert torch.equal(tr.transformer.state_dict()[key], value), key
    torch.testing.assert_close(tr(ids, latents=tr.sample_latents(3)).logits, gpt2(ids).logits, rtol=1e-5, atol=1e-5)


def test_bad_input_errors():
    model = TraceForCausalLM(tiny_config(max_segments=2)).eval()
    ids, mask, _ = batch()
    empty = mask.clone()
    empty[2] = 0
    with pytest.raises(ValueError, match=r"rows \[2\].*empty"):
        model(ids, attention_mask=empty)
    with pytest.raises(ValueError, match=r"Rows \[1, 2\] have \[3, 3\] segments"):
        model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="segment cannot be longer than the context"):
        tiny_config(segmentation="fixed", segment_length=49)
    with pytest.raises(ValueError, match="separator_token_ids"):
        tiny_config(separator_token_ids=None)
    with pytest.raises(ValueError, match="longer than the context"):
        TraceForCausalLM(tiny_config())(torch.randint(4, VOCAB, (1, 60)))
    with pytest.raises(ValueError, match="training_mode"):
        tiny_config(training_mode="fast")


def test_default_config_is_gpt2_small_trace_and_auto_config_builds_it():
    config = AutoConfig.for_model("trace")
    assert isinstance(config, TraceConfig)
    # GPT-2's BPE ids of ".", "?" and "!" (the GPT-2 tokenizer gives [13, 30, 0] for them)
    assert config.separator_token_ids == [13, 30, 0]
    assert (config.vocab_size, config.n_embd, config.n_layer) == (50257, 768, 12)
    assert TraceConfig(separator_token_ids=[7]).separator_token_ids == [7]
    with pytest.raises(ValueError, match="only GPT-2's vocabulary of 50257 tokens has a default"):
        TraceConfig(vocab_size=100)


def test_forward_contract_return_dict_outputs_inputs_embeds_shift_labels():
    torch.manual_seed(0)
    model = TraceForCausalLM(tiny_config(attn_implementation="eager")).eval()  # SDPA returns no attention weights
    ids, mask, labels = batch()
    z = model.encode(ids, mask, use_mean=True).latents
    out = model(ids, attention_mask=mask, latents=z, labels=labels, output_hidden_states=True, output_attentions=True)
    # return_dict=False: the values, in field order (loss, logits, ...), not the field names
    as_tuple = model(ids, attention_mask=mask, latents=z, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)
    elbo = model(ids, attention_mask=mask, labels=labels, use_mean=True, return_dict=False)
    torch.testing.assert_close(elbo[0], model(ids, attention_mask=mask, labels=labels, use_mean=True).loss)
    assert len(out.hidden_states) == model.config.n_layer + 1
    torch.testing.assert_close(out.hidden_states[0], model.transformer.wte(ids) + model.transformer.wpe.weight[:12])
    assert len(out.attentions) == model.config.n_layer
    # inputs_embeds with the segment index the tokens give: the same logits
    index = compute_latent_index(ids, model.config)
    by_embeds = model(
        inputs_embeds=model.transformer.wte(ids), attention_mask=mask, latents=z, latent_index=index
    ).logits
    torch.testing.assert_close(by_embeds, out.logits)
    with pytest.raises(ValueError, match="needs `latents`"):
        model(inputs_embeds=model.transformer.wte(ids))
    # shift_labels = labels shifted by hand replace labels (whatever labels say)
    shift = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    shifted = model(ids, attention_mask=mask, latents=z, labels=torch.zeros_like(labels), shift_labels=shift)
    torch.testing.assert_close(shifted.loss, out.loss)


def test_orthogonal_init_under_fp16():
    # QR has no half-precision CPU kernel: the initial idempotent projection is computed in float32 and cast
    model = TraceForCausalLM._from_config(tiny_config(), dtype=torch.float16)
    w = model.transformer.latent.transition_weight
    assert w.dtype == torch.float16
    w32 = w.float()
    torch.testing.assert_close(w32 @ w32, w32, atol=1e-2, rtol=0)  # idempotent (up to fp16 rounding)
    exact = TraceForCausalLM._from_config(tiny_config(transition="exact_idempotent"), dtype=torch.float16)
    assert exact.transformer.latent.transition().dtype == torch.float16


@pytest.mark.slow
def test_example_script_trains_and_saves(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i} is here . and a second sentence {i % 7} ?" for i in range(32)) + "\n\n")
    script = Path(__file__).resolve().parents[3] / "examples" / "text_vae" / "train_text_vae.py"
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--model", "trace", "--train_file", str(text), "--eval_file", str(text)]
    cmd += ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--latent_size", "4", "--vocab_size", "300"]
    cmd += ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none"]
    cmd += ["--save_strategy", "no", "--use_cpu", "true"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(loaded, TraceForCausalLM) and loaded.config.separator_token_ids
