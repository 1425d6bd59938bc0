"""Tests for hf_ext.models.della (DELLA) and the text-VAE trainer pieces."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import hf_ext  # noqa: F401
from hf_ext.models.della import DellaConfig, DellaForCausalLM, DellaForConditionalGeneration, DellaModel
from hf_ext.models.della.modeling_della import DellaLowRankFusion, DellaPooler
from hf_ext.testing import tiny_text_vae_config

VOCAB = 40


def tiny_config(**kw):
    ids = dict(vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return tiny_text_vae_config("della", **{**ids, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **kw})


def activate_fusion(model, scale=1.0):
    """The residual fusion starts at zero (rank weights 0); give it weight so latents matter."""
    with torch.no_grad():
        for block in model.transformer.h:
            if block.attn.lmf is not None:
                block.attn.lmf.rank_weight.normal_(0.0, scale)
                block.attn.lmf.latent_factor.normal_(0.0, 0.5)


def batch(b=3, t=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, t - 3 :] = 0
    ids[0, t - 3 :] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------------- the ELBO


def test_reconstruction_matches_manual_cross_entropy():
    model = DellaForCausalLM(tiny_config()).eval()
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels)
    logp = torch.log_softmax(out.logits.double(), -1)
    expected = torch.zeros(ids.shape[0], dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if labels[b, t + 1] != -100:
                expected[b] -= logp[b, t, labels[b, t + 1]]
    torch.testing.assert_close(out.rec_loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert out.num_tokens.tolist() == [4, 7, 7]


def test_kl_and_densities_match_torch_distributions():
    model = DellaForCausalLM(tiny_config(first_layer_prior="learned")).eval()
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels)
    lo = out.latent_output
    q = Normal(lo.posterior_mean.double(), torch.exp(0.5 * lo.posterior_logvar.double()))
    p = Normal(lo.prior_mean.double(), torch.exp(0.5 * lo.prior_logvar.double()))
    torch.testing.assert_close(out.kl_per_group.double(), kl_divergence(q, p).sum(-1), rtol=1e-5, atol=1e-6)
    z = lo.latents.double()
    torch.testing.assert_close(out.log_prior.double(), p.log_prob(z).sum((-1, -2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.log_posterior.double(), q.log_prob(z).sum((-1, -2)), rtol=1e-5, atol=1e-5)
    # ELBO two ways: rec + closed-form KL, and the Monte-Carlo form E_q[log q - log p] (same draws of z_<l)
    reps = 300
    o = model(ids.repeat(reps, 1), attention_mask=mask.repeat(reps, 1), labels=labels.repeat(reps, 1))
    kls, mc = o.kl.view(reps, -1), (o.log_posterior - o.log_prior).view(reps, -1)
    stderr = mc.std(0) / math.sqrt(reps)
    assert ((kls.mean(0) - mc.mean(0)).abs() < 5 * stderr + 1e-3).all()


def test_first_layer_prior_standard_is_unit_gaussian():
    model = DellaForCausalLM(tiny_config()).eval()
    ids, mask, _ = batch()
    lo = model.encode(ids, mask)
    assert torch.equal(lo.prior_mean[:, 0], torch.zeros_like(lo.prior_mean[:, 0]))
    assert torch.equal(lo.prior_logvar[:, 0], torch.zeros_like(lo.prior_logvar[:, 0]))


def test_kl_sum_vs_mean_over_layers():
    ids, mask, labels = batch()
    torch.manual_seed(1)
    m_sum = DellaForCausalLM(tiny_config()).eval()
    m_mean = DellaForCausalLM(tiny_config(kl_reduction="mean")).eval()
    m_mean.load_state_dict(m_sum.state_dict())
    torch.manual_seed(5)
    o_sum = m_sum(ids, attention_mask=mask, labels=labels, kl_weight=0.7)
    torch.manual_seed(5)
    o_mean = m_mean(ids, attention_mask=mask, labels=labels, kl_weight=0.7)
    torch.testing.assert_close(o_sum.kl_per_group, o_mean.kl_per_group)
    torch.testing.assert_close(o_sum.kl, o_sum.kl_per_group.sum(1))
    torch.testing.assert_close(o_mean.kl, o_mean.kl_per_group.mean(1))
    rec = o_sum.rec_loss.mean()
    torch.testing.assert_close(o_sum.loss, rec + 0.7 * o_sum.kl_per_group.sum(1).mean())
    torch.testing.assert_close(o_mean.loss, rec + 0.7 * o_sum.kl_per_group.mean(1).mean())


def test_free_bits_clamps_each_layer():
    model = DellaForCausalLM(tiny_config(free_bits=50.0)).eval()
    ids, mask, labels = batch()
    torch.manual_seed(3)
    out = model(ids, attention_mask=mask, labels=labels, kl_weight=1.0)
    per_layer = out.kl_per_group.mean(0)
    expected = out.rec_loss.mean() + torch.clamp(per_layer, min=50.0).sum()
    torch.testing.assert_close(out.loss, expected)
    assert (per_layer < 50).all()  # the tiny random model is under the threshold: the KL term is the constant 3*50


# ------------------------------------------------------------------------------------------- building blocks


def test_low_rank_fusion_matches_explicit_sum():
    torch.manual_seed(0)
    lmf = DellaLowRankFusion(5, 3, 2)
    for p in lmf.parameters():
        torch.nn.init.normal_(p)
    v, z = torch.randn(2, 4, 5), torch.randn(2, 1, 3)
    out = lmf(v, z)
    expected = torch.zeros(2, 4, 5)
    for j in range(2):
        fv = torch.cat([v, torch.ones(2, 4, 1)], -1) @ lmf.value_factor[j]
        fz = torch.cat([z, torch.ones(2, 1, 1)], -1) @ lmf.latent_factor[j]
        expected += lmf.rank_weight[j] * fv * fz
    torch.testing.assert_close(out, expected + lmf.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["attention", "mean", "first", "last"])
def test_pooling_ignores_padding_only_when_masked(mode):
    torch.manual_seed(0)
    pool = DellaPooler(4, mode, mask_padding=True)
    if mode == "attention":
        torch.nn.init.normal_(pool.weight)
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    h2 = h.clone()
    h2[:, 3:] = torch.randn(1, 2, 4)
    torch.testing.assert_close(pool(h, mask), pool(h2, mask))
    if mode == "attention":
        expected = (torch.softmax(torch.nn.functional.gelu(h[0, :3] @ pool.weight), 0)[:, None] * h[0, :3]).sum(0)
    else:
        expected = {"mean": h[0, :3].mean(0), "first": h[0, 0], "last": h[0, 2]}[mode]
    torch.testing.assert_close(pool(h, mask)[0], expected)
    if mode in ("attention", "mean"):
        official = DellaPooler(4, mode, mask_padding=False)
        official.load_state_dict(pool.state_dict())
        assert not torch.allclose(official(h, mask), official(h2, mask))


def test_value_fusion_replace_vs_residual():
    torch.manual_seed(0)
    cfg_r = tiny_config(n_layer=1)
    model = DellaForCausalLM(cfg_r).eval()
    activate_fusion(model)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 3, 32)
    z = torch.randn(2, 1, 6)
    v_plain = attn.c_attn(x).split(32, dim=2)[2]
    fused = attn.lmf(v_plain, z)
    out_res, _ = attn(x, latent=z)
    attn.value_fusion = "replace"
    out_rep, _ = attn(x, latent=z)

    def manual(value):
        q, k, _ = attn.c_attn(x).split(32, dim=2)
        shape = (2, 3, 2, 16)
        q, k, value = (t.view(shape).transpose(1, 2) for t in (q, k, value))
        att = torch.softmax((q @ k.transpose(-1, -2)) / 4.0 + torch.triu(torch.full((3, 3), -1e9), 1), -1)
        return attn.c_proj((att @ value).transpose(1, 2).reshape(2, 3, 32))

    torch.testing.assert_close(out_res, manual(v_plain + fused), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_rep, manual(fused), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------- generation


def test_generate_cache_equals_no_cache_and_latents_matter():
    torch.manual_seed(0)
    model = DellaForCausalLM(tiny_config()).eval()
    activate_fusion(model)
    prompt = torch.tensor([[0, 5], [0, 9]])
    z = model.sample_latents(2)
    kw = dict(max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(prompt))
    with_cache = model.generate(prompt, latents=z, use_cache=True, **kw)
    without = model.generate(prompt, latents=z, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    # the cached logits equal one full forward pass over the generated text
    full = model(with_cache, latents=z).logits
    step = model(with_cache[:, :-1], latents=z, use_cache=True)
    last = model(with_cache[:, -1:], latents=z, cache=step.cache).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model(with_cache, latents=-3 * z).logits, full)


def test_generate_from_posterior_and_prior_shapes():
    torch.manual_seed(0)
    model = DellaForCausalLM(tiny_config()).eval()
    ids, mask, _ = batch()
    z = model.encode(ids, mask, use_mean=True).latents
    assert z.shape == (3, 3, 6)
    out = model.generate(ids[:, :1], latents=z, max_new_tokens=4, do_sample=True, num_return_sequences=2)
    assert out.shape == (6, 5)
    out = model.generate(max_new_tokens=3, do_sample=False)  # prior latents, BOS prompt
    assert out.shape == (1, 4) and out[0, 0] == 0
    beams = model.generate(ids[:, :1], latents=z, max_new_tokens=3, num_beams=2, do_sample=False)
    assert beams.shape[0] == 3


# --------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DellaForCausalLM(tiny_config(kl_reduction="mean", latent_layers=[0, 2])).eval()
    activate_fusion(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, DellaConfig) and cfg.latent_layers == [0, 2] and cfg.kl_reduction == "mean"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DellaForCausalLM)
    ids, mask, _ = batch()
    z = model.sample_latents(3)
    torch.testing.assert_close(
        loaded(ids, attention_mask=mask, latents=z).logits, model(ids, attention_mask=mask, latents=z).logits
    )
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert isinstance(AutoModel.from_pretrained(tmp_path), DellaModel)


def test_from_backbone_keeps_gpt2_weights(tmp_path):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()
    gpt2.save_pretrained(tmp_path)
    model = DellaForCausalLM.from_backbone(str(tmp_path), latent_size=4, latent_lmf_rank=2).eval()
    ref = gpt2.transformer.state_dict()
    mine = model.transformer.state_dict()
    for key, value in ref.items():
        assert torch.equal(mine[key], value), key
    # residual fusion starts at zero: DELLA decodes exactly like the GPT-2 it came from
    ids = torch.randint(0, VOCAB, (2, 6))
    z = model.sample_latents(2)
    torch.testing.assert_close(model(ids, latents=z).logits, gpt2(ids).logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------- variants


def test_embedding_injection_plain_vae():
    torch.manual_seed(0)
    model = DellaForCausalLM(tiny_config(latent_injection="embedding", latent_layers=[2])).eval()
    assert all(b.attn.lmf is None for b in model.transformer.h)
    ids, mask, labels = batch()
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.kl_per_group.shape == (3, 1)
    z = torch.randn(3, 1, 6)
    shift = model.transformer.latent_proj(z.flatten(1))
    emb = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(8)) + shift[:, None]
    plain = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=2, n_positions=32)).eval()
    plain.transformer.load_state_dict(model.transformer.state_dict(), strict=False)
    plain.lm_head.weight = plain.transformer.wte.weight
    # adding the latent to the input embedding = GPT-2 run on shifted embeddings (wpe added inside GPT-2: remove it)
    expected = plain(inputs_embeds=emb - model.transformer.wpe(torch.arange(8))).logits
    torch.testing.assert_close(model(ids, latents=z).logits, expected, rtol=1e-4, atol=1e-5)


def test_conditional_variant_prior_depends_on_source():
    torch.manual_seed(0)
    model = DellaForConditionalGeneration(tiny_config()).eval()
    assert model.config.conditional
    ids, mask, labels = batch()
    src = torch.zeros_like(mask)
    src[:, :3] = 1
    out = model(ids, attention_mask=mask, labels=labels.masked_fill(src == 1, -100), source_mask=src)
    assert out.num_tokens.tolist() == [2, 5, 5]  # target tokens: positions 3.. minus padding
    # the prior mean of layer 1 depends on the source: change the source, keep everything else
    ids2 = ids.clone()
    ids2[:, :3] = (ids2[:, :3] + 1) % VOCAB
    with torch.no_grad():
        p1 = model.transformer.latent_chain(
            3, condition_features=model._condition_features(ids[:, :3], None), use_mean=True
        )
        p2 = model.transformer.latent_chain(
            3, condition_features=model._condition_features(ids2[:, :3], None), use_mean=True
        )
    assert not torch.allclose(p1.prior_mean, p2.prior_mean)
    gen = model.generate(ids[:, :3], max_new_tokens=2, do_sample=False)
    assert gen.shape == (3, 5)
    with pytest.raises(ValueError, match="source_mask"):
        model(ids, attention_mask=mask)


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    model = DellaForCausalLM(tiny_config()).eval()
    ids, mask, _ = batch()
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\].*empty"):
        model(ids, attention_mask=empty)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.randint(2, VOCAB, (1, 40)))
    with pytest.raises(ValueError, match="latents"):
        model(ids, latents=torch.zeros(3, 2, 6))
    with pytest.raises(ValueError, match="kl_reduction"):
        tiny_config(kl_reduction="avg")
    with pytest.raises(ValueError, match="latent_layers"):
        tiny_config(latent_layers=[2, 1])
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 0, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------- training


def test_cyclical_beta_by_hand():
    from hf_ext.trainers.text_vae import cyclical_beta

    # period 8: steps 0-3 at beta_min, 4-5 rising (4 -> min, 5 -> halfway), 6-7 at max; then it repeats
    values = [cyclical_beta(s, 8, beta_min=0.0, beta_max=1.0) for s in range(10)]
    assert values == [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="cycle_steps"):
        cyclical_beta(0, 0)


def test_trainer_runs_with_cyclical_beta(tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback

    from hf_ext.trainers.text_vae import TextVAEConfig, TextVAETrainer, cyclical_beta

    torch.manual_seed(0)
    model = DellaForCausalLM(tiny_config())
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(2, VOCAB, (int(n),), generator=g).tolist()} for n in torch.randint(3, 9, (8,))]
    ds = Dataset.from_list(rows)
    seen = []

    args = TextVAEConfig(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        cycle_steps=3,
        beta_min=0.0,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        free_bits=0.5,
    )
    trainer = TextVAETrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds)

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            seen.append(model.kl_weight)

    trainer.add_callback(Record())
    trainer.train()
    assert seen == [cyclical_beta(s, 3, beta_min=0.0) for s in range(6)]
    assert model.config.free_bits == 0.5
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs if "loss" in h)
    metrics = trainer.evaluate()
    assert "eval_kl" in metrics and "eval_rec_loss" in metrics


# ------------------------------------------------------------------------------------- transformers forward contract


def _contract_inputs():
    model = DellaForCausalLM(tiny_config(attn_implementation="eager")).eval()
    activate_fusion(model)
    ids, mask, labels = batch()
    noise = torch.randn(ids.shape[0], 3, 6, generator=torch.Generator().manual_seed(1))
    return model, ids, mask, labels, noise


def test_return_dict_false_gives_the_outputs_tuple():
    model, ids, mask, labels, noise = _contract_inputs()
    with torch.no_grad():
        as_dict = model(ids, attention_mask=mask, labels=labels, latent_noise=noise)
        as_tuple = model(ids, attention_mask=mask, labels=labels, latent_noise=noise, return_dict=False)
    assert isinstance(as_tuple, tuple) and not any(isinstance(x, str) for x in as_tuple)
    loss, logits = as_tuple[:2]  # transformers' order: loss first, then logits
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    assert len(as_tuple) == len(as_dict.to_tuple())
    model.config.return_dict = False  # the config-level switch too (the LM head still reads its backbone's fields)
    with torch.no_grad():
        from_config = model(ids, attention_mask=mask, labels=labels, latent_noise=noise)
    model.config.return_dict = True
    assert isinstance(from_config, tuple) and torch.equal(from_config[0], as_dict.loss)
    base = model.transformer(ids, attention_mask=mask, return_dict=False)
    assert isinstance(base, tuple) and torch.equal(base[0], model.transformer(ids, attention_mask=mask)[0])


def test_hidden_states_and_attentions_are_returned():
    model, ids, mask, labels, noise = _contract_inputs()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, latent_noise=noise, output_hidden_states=True, output_attentions=True)
    n_layer, t = model.config.n_layer, ids.shape[1]
    assert len(out.hidden_states) == n_layer + 1 and len(out.attentions) == n_layer
    positions = torch.arange(t)
    torch.testing.assert_close(out.hidden_states[0], model.transformer.wte(ids) + model.transformer.wpe(positions))
    # the last hidden state is after ln_f: the LM head on it gives the logits
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)
    attn = out.attentions[0]
    assert attn.shape == (ids.shape[0], model.config.n_head, t, t)
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    assert attn.triu(1).abs().max() == 0  # causal decoder pass
    assert attn[0, :, :, t - 3 :].abs().max() == 0  # padding keys of row 0 get no weight


def test_inputs_embeds_shift_labels_and_logits_to_keep():
    model, ids, mask, labels, noise = _contract_inputs()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, labels=labels, latent_noise=noise)
        emb = model(inputs_embeds=model.transformer.wte(ids), attention_mask=mask, labels=labels, latent_noise=noise)
        shift = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        shifted = model(ids, attention_mask=mask, shift_labels=shift, latent_noise=noise)
        last = model(ids, attention_mask=mask, latent_noise=noise, logits_to_keep=1)
    torch.testing.assert_close(emb.logits, ref.logits)
    torch.testing.assert_close(emb.loss, ref.loss)
    torch.testing.assert_close(shifted.loss, ref.loss)
    torch.testing.assert_close(shifted.rec_loss, ref.rec_loss)
    torch.testing.assert_close(last.logits, ref.logits[:, -1:])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, attention_mask=mask, labels=labels, logits_to_keep=1)


def test_official_flags_one_by_one():
    """Each official flag on its own changes what it says, computed here independently."""
    cfg = tiny_config(lmf_form="summed_factors", value_fusion="replace")
    lmf = DellaForCausalLM(cfg).transformer.h[0].attn.lmf
    assert not hasattr(lmf, "rank_weight") and not hasattr(lmf, "bias")
    v, z = torch.randn(2, 3, 32), torch.randn(2, 1, 6)
    one = torch.ones
    by_hand = sum(torch.cat([v, one(2, 3, 1)], -1) @ lmf.value_factor[r] for r in range(2)) * sum(
        torch.cat([z, one(2, 1, 1)], -1) @ lmf.latent_factor[r] for r in range(2)
    )
    torch.testing.assert_close(lmf(v, z), by_hand)
    # free bits per row and layer vs on the batch mean
    from hf_ext.models.della.modeling_della import kl_loss_with_free_bits

    kl = torch.tensor([[0.5, 3.0], [2.0, 0.1]])
    assert kl_loss_with_free_bits(kl, "mean", 1.0, "sample").item() == pytest.approx(
        ((1.0 + 3.0) / 2 + (2.0 + 1.0) / 2) / 2
    )
    assert kl_loss_with_free_bits(kl, "mean", 1.0, "batch").item() == pytest.approx((1.25 + 1.55) / 2)
    # the pad id in the labels: ignored only with ignore_pad_token_in_loss
    ids, mask, _ = batch()
    ids[1, 4] = 1  # pad id (1) as attended text
    for flag in (False, True):
        m = DellaForCausalLM(tiny_config(ignore_pad_token_in_loss=flag)).eval()
        with torch.no_grad():
            out = m(ids, attention_mask=mask, labels=ids, latent_noise=torch.zeros(3, 3, 6))
        n_pad_labels = int((ids[:, 1:] == 1).sum())
        assert int(out.num_tokens.sum()) == ids[:, 1:].numel() - (n_pad_labels if flag else 0)


def test_generate_from_inputs_embeds_equals_from_ids():
    model, ids, mask, labels, noise = _contract_inputs()
    z = model.sample_latents(2, latent_noise=noise[:2])
    prompt = ids[1:3, :3]
    kw = dict(latents=z, max_new_tokens=4, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():
        from_ids = model.generate(prompt, **kw)
        from_embeds = model.generate(inputs_embeds=model.transformer.wte(prompt), **kw)
    # with embeddings only the new tokens come back, as for GPT-2
    assert torch.equal(from_embeds, from_ids[:, prompt.shape[1] :])


def test_past_key_values_is_a_deprecated_alias_of_cache():
    model, ids, mask, labels, noise = _contract_inputs()
    with torch.no_grad():
        first = model(ids[:, :4], latents=noise, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            nxt = model(ids[:, 4:5], latents=noise, past_key_values=first.cache, use_cache=True)
        full = model(ids[:, :5], latents=noise)
    torch.testing.assert_close(nxt.logits[:, -1], full.logits[:, 4])


def test_separate_condition_encoding_needs_a_source_prefix():
    model = DellaForConditionalGeneration(tiny_config(condition_encoding="separate")).eval()
    ids, mask, labels = batch()
    src = torch.zeros_like(mask)
    src[:, :3] = 1
    with torch.no_grad():
        model(ids, attention_mask=mask, labels=labels, source_mask=src)  # a prefix: fine
    src[1] = 0
    src[1, 2:4] = 1  # not a prefix
    with pytest.raises(ValueError, match="prefix"):
        model(ids, attention_mask=mask, labels=labels, source_mask=src)
