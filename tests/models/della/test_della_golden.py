"""DELLA in official mode against golden fixtures made by running the original code (OpenVLG/DELLA, unmodified).

The fixtures (tests/fixtures/della/, README there) hold tiny original-format checkpoints, inputs, the fixed
reparameterisation noise, and every quantity the original computed. Each test converts the original checkpoint with
`convert_della_original_to_hf`, builds `DellaConfig.from_original_defaults()` and compares with the original's values
(max|got - expected| <= 1e-4 * max(1, max|expected|), ids exactly).
"""

import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ext.metrics.text_vae import (
    active_units,
    della_official_active_units,
    della_official_au_count,
    della_official_iw_nll,
    iw_log_likelihood,
)
from hf_ext.models.della import DellaConfig, DellaForCausalLM
from hf_ext.models.della.convert_della_original_to_hf import (
    convert_della_checkpoint,
    convert_della_state_dict,
    della_config_from_original,
)
from hf_ext.models.della.modeling_della import gaussian_log_prob
from hf_ext.trainers.text_vae import della_original_beta_schedule

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "della"
TOL = 1e-4


@cache
def _inputs():
    return load_file(str(FIX / "inputs.safetensors"))


@cache
def _expected(name):
    return load_file(str(FIX / "expected" / f"{name}.safetensors"))


@cache
def _metrics():
    return json.loads((FIX / "expected" / "metrics.json").read_text())


@cache
def _cases():
    return json.loads((FIX / "cases.json").read_text())


def inp(key):
    return _inputs()[key]


def close(got, expected, name=""):
    got = got.detach().double()
    expected = torch.as_tensor(expected).double()
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(expected.shape)}"
    diff = (got - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert diff <= TOL * scale, f"{name}: max|diff| {diff:.3e} > {TOL} x {scale:.3g}"


def _read_json(folder, name):
    return json.loads((FIX / folder / name).read_text())


def build(folder="original_checkpoint", **overrides):
    cfg = della_config_from_original(
        _read_json(folder, "config.json"),
        _read_json(folder, "train_opt.json"),
        _read_json(folder, "special_tokens.json"),
        **overrides,
    )
    state = load_file(str(FIX / folder / "model.safetensors"))
    bow = load_file(str(FIX / folder / "bow_head.safetensors")) if cfg.bow_weight > 0 else None
    converted, _ = convert_della_state_dict(state, cfg, bow)
    model = DellaForCausalLM(cfg).eval()
    model.load_state_dict(converted, strict=True)  # every parameter comes from the original checkpoint
    return model


def eps(key):
    """[layer, row, dim] (the fixtures' layout) -> [row, layer, dim] (`latent_noise`)."""
    return inp(key).permute(1, 0, 2).contiguous()


def check_forward(model, expected, prefix, ids, mask, noise, labels=None, lam=0.0, **extra):
    betas = _metrics()["betas"]
    labels = ids if labels is None else labels
    losses = []
    with torch.no_grad():
        for beta in betas:
            out = model(ids, attention_mask=mask, labels=labels, latent_noise=noise, kl_weight=beta, **extra)
            losses.append(out.loss)
    lo = out.latent_output
    E = {k[len(prefix) :]: v for k, v in expected.items() if k.startswith(prefix)}
    assert E, prefix
    kl_raw = out.kl_per_group
    kl_layer = kl_raw.clamp(min=lam) if lam > 0 else kl_raw
    got = {
        "state": lo.states,
        "prior_mean_raw": lo.prior_mean_raw,
        "prior_logvar_raw": lo.prior_logvar_raw,
        "post_mean_raw": lo.posterior_mean_raw,
        "post_logvar_raw": lo.posterior_logvar_raw,
        "prior_mean": lo.prior_mean,
        "prior_logvar": lo.prior_logvar,
        "post_mean": lo.posterior_mean,
        "post_logvar": lo.posterior_logvar,
        "post_mean_concat_raw": lo.posterior_mean_raw.flatten(1),
        "z": lo.latents,
        "kl_layer_raw": kl_raw,
        "kl_layer": kl_layer,
        "kl_seq": kl_layer.mean(1),
        "kl": kl_layer.mean(1).mean(),
        "log_prior_layer": gaussian_log_prob(lo.latents, lo.prior_mean, lo.prior_logvar),
        "log_post_layer": gaussian_log_prob(lo.latents, lo.posterior_mean, lo.posterior_logvar),
        "logits": out.logits,
        "ce_seq": out.rec_loss,
        "ce": out.rec_loss.mean(),
        "loss": torch.stack(losses),
    }
    got["log_prior_mean"] = got["log_prior_layer"].mean(1)
    got["log_post_mean"] = got["log_post_layer"].mean(1)
    if lam == 0 and "kl_seq" in E:  # the model's own KL term (mean over layers, official)
        close(out.kl, E["kl_seq"], prefix + "model kl")
    if "pooled" in E:
        with torch.no_grad():
            states = model.transformer.encoder_states(ids, mask)
            pooled = [model.transformer.latent_layers[i].pooler(states[i], mask) for i in range(len(states))]
        got["pooled"] = torch.stack(pooled, 1)
    if "cond_pooled" in E:
        with torch.no_grad():
            cond = model._condition_features(extra["condition_ids"], extra["condition_attention_mask"])
        got["cond_pooled"] = torch.stack(cond, 1)
    if "ce_token" in E:
        logp = torch.log_softmax(out.logits[:, :-1].double(), -1)
        tgt = labels[:, 1:]
        ce = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        # the model's ignore rule: every pad-id label (official flag), computed here from the config
        ignored = tgt == model.config.pad_token_id
        got["ce_token"] = ce.masked_fill(ignored, 0.0)
        close(got["ce_token"].sum(1), out.rec_loss, prefix + "ce_token sums to the model's rec_loss")
    for name, value in E.items():
        if name.startswith("bow"):
            continue
        close(got[name], value, prefix + name)
    return out


# ------------------------------------------------------------------------------------------------------ forward


def test_pooler_probe_gelu_new():
    model = build()
    pooler = model.transformer.latent_layers[0].pooler
    h = inp("pooler_probe.hidden_states")
    E = _expected("uncond")
    with torch.no_grad():
        rep = pooler(h, None)
        weights = torch.softmax(pooler.act(h @ pooler.weight), -1)
    close(weights, E["pooler_probe.weights"], "weights")
    close(rep, E["pooler_probe.representation"], "representation")
    # the exact-erf gelu (hf_ext's former choice, now `pooler_activation="gelu"`) misses the probe
    erf = build(pooler_activation="gelu").transformer.latent_layers[0].pooler
    with torch.no_grad():
        diff = (erf(h, None) - E["pooler_probe.representation"]).abs().max().item()
    assert diff > 10 * TOL


@pytest.mark.parametrize("case,noise", [("forward", "eps_forward"), ("forward_mean", None)])
def test_forward(case, noise):
    model = build()
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    n = eps(noise) if noise else torch.zeros(4, 3, 16)
    check_forward(model, _expected("uncond"), case + ".", ids, mask, n)


def test_pad_in_text_ignored_only_under_the_official_flag():
    model = build()
    ids, mask = inp("batch_pad_in_text.input_ids"), inp("batch_pad_in_text.attention_mask")
    out = check_forward(model, _expected("uncond"), "pad_in_text.", ids, mask, eps("eps_pad_in_text"))
    hf = build(ignore_pad_token_in_loss=False)
    with torch.no_grad():
        out_hf = hf(ids, attention_mask=mask, labels=ids, latent_noise=eps("eps_pad_in_text"))
    # hf_ext's rule scores the attended pad ids too: one more token per row, a larger NLL
    assert (out_hf.num_tokens - out.num_tokens).tolist() == [int((ids[r, 1:] == 297).sum()) for r in range(len(ids))]
    assert (out_hf.rec_loss > out.rec_loss).all()


@pytest.mark.parametrize("index", [0, 1])
def test_kl_threshold_per_row_and_layer(index):
    lam = _metrics()["kl_threshold_lambdas"][index]
    model = build(free_bits=lam)
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    check_forward(model, _expected("uncond"), f"kl_threshold_{index}.", ids, mask, eps("eps_forward"), lam=lam)
    # hf_ext's batch-level free bits give another loss on this batch
    batch_level = build(free_bits=lam, free_bits_reduction="batch")
    with torch.no_grad():
        loss = batch_level(ids, attention_mask=mask, labels=ids, latent_noise=eps("eps_forward"), kl_weight=1.0).loss
    assert abs(loss.item() - _expected("uncond")[f"kl_threshold_{index}.loss"][-1].item()) > 1e-2


def test_bow_loss():
    model = build(bow_weight=0.2)
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    E = _expected("uncond")
    out = check_forward(model, E, "bow.", ids, mask, eps("eps_forward"))
    with torch.no_grad():
        z_last = out.latent_output.latents[:, -1]
        close(model.lm_head(model.bow_head(z_last)), E["bow.bow_logits"], "bow_logits")
        labels = model._ignore_pad_labels(ids)  # the pad id is ignored (official flag)
        close(model._bow_loss(out.latent_output.latents, labels), E["bow.bow_seq"], "bow_seq")
        close(model._bow_loss(out.latent_output.latents, labels).mean(), E["bow.bow"], "bow")
    # hf_ext's rule also scores the first label: the official loss is recovered only with the shifted labels
    unshifted = build(bow_weight=0.2, bow_shift_labels=False)
    with torch.no_grad():
        other = unshifted._bow_loss(out.latent_output.latents, labels)
    assert (other - E["bow.bow_seq"]).abs().max() > 1e-2


def test_layers_1_2_forward_prior_and_generation():
    model = build(begin_layer=1, end_layer=2)
    assert model.config.latent_layers == [1, 2]  # end_layer is inclusive
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    E = _expected("uncond")
    check_forward(model, E, "layers_1_2.forward.", ids, mask, eps("eps_layers_1_2"))
    check_prior(model, E, "layers_1_2.prior.", eps("eps_prior_layers_1_2"))
    check_greedy(model, E, "layers_1_2.greedy_prior.", E["layers_1_2.prior.z"], "layers_1_2.greedy_prior")
    # with the networks of the latent layers themselves (hf_ext's default) the prior differs
    own = build(begin_layer=1, end_layer=2, generation_prior_networks="latent_layers")
    own.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("transformer.latent_layers.")}, strict=False
    )
    for k in (0, 1):
        own.transformer.latent_layers[k].load_state_dict(model.transformer.latent_layers[k + 1].state_dict())
    with torch.no_grad():
        z = own.sample_latents(4, latent_noise=eps("eps_prior_layers_1_2"))
    assert (z - E["layers_1_2.prior.z"]).abs().max() > 0.1


# -------------------------------------------------------------------------------------------- prior, generation


def check_prior(model, E, prefix, noise, **kw):
    with torch.no_grad():
        lo = model.sample_latents(noise.shape[0], latent_noise=noise, return_latent_output=True, **kw)
    got = {
        "state": lo.states,
        "prior_mean_raw": lo.prior_mean_raw,
        "prior_logvar_raw": lo.prior_logvar_raw,
        "prior_mean": lo.prior_mean,
        "prior_logvar": lo.prior_logvar,
        "z": lo.latents,
    }
    for name, value in got.items():
        close(value, E[prefix + name], prefix + name)


def check_greedy(model, E, prefix, z, case, prompt=None, prompt_mask=None):
    kw = dict(_cases()["cases"][case]["generate_kwargs"])
    if prompt is None:
        prompt = torch.full((z.shape[0], 1), model.config.bos_token_id)
        prompt_mask = torch.ones_like(prompt)
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=prompt_mask,
            latents=z,
            eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
    assert torch.equal(out.sequences, E[prefix + "sequences"]), (out.sequences, E[prefix + "sequences"])
    close(torch.stack(out.scores, 1).clamp(min=-1e30), E[prefix + "scores"].clamp(min=-1e30), prefix + "scores")


def test_prior_chain():
    check_prior(build(), _expected("uncond"), "prior.", eps("eps_prior"))


@pytest.mark.parametrize(
    "case,z_key",
    [
        ("greedy_prior", "prior.z"),
        ("greedy_prior_cli", "prior.z"),
        ("greedy_posterior_mean", "forward_mean.z"),
        ("greedy_posterior_sampled", "forward.z"),
    ],
)
def test_greedy_generation(case, z_key):
    E = _expected("uncond")
    check_greedy(build(), E, case + ".", E[z_key], case)


# ------------------------------------------------------------------------------------------------- conditional


@pytest.mark.parametrize("case,suffix", [("forward", ""), ("forward_extra_source_pad", "_extra_pad")])
def test_cvae_forward(case, suffix):
    model = build("original_checkpoint_cvae")
    assert model.config.conditional
    E = _expected("cvae")
    cond, cond_mask = inp("cvae.condition" + suffix), inp("cvae.condition_mask" + suffix)
    check_forward(
        model,
        E,
        case + ".",
        inp("cvae.input_ids"),
        inp("cvae.attention_mask"),
        eps("eps_cvae"),
        labels=inp("cvae.labels"),
        condition_ids=cond,
        condition_attention_mask=cond_mask,
    )


def test_cvae_source_mask_interface_equals_condition_ids():
    """`condition_encoding="separate"` cuts the source out of the joint input: same as passing the condition."""
    model = build("original_checkpoint_cvae")
    ids, mask = inp("cvae.input_ids"), inp("cvae.attention_mask")
    source_mask = torch.zeros_like(mask)
    for r, n in enumerate(inp("cvae.condition_mask").sum(1).tolist()):
        source_mask[r, :n] = 1
    labels = inp("cvae.labels")
    with torch.no_grad():
        a = model(ids, attention_mask=mask, labels=labels, source_mask=source_mask, latent_noise=eps("eps_cvae"))
    close(a.logits, _expected("cvae")["forward.logits"], "logits via source_mask")
    close(a.latent_output.prior_mean, _expected("cvae")["forward.prior_mean"], "prior via source_mask")
    # hf_ext's joint encoding pools over the joint length (pads of the official layout are not there): it differs
    joint = build("original_checkpoint_cvae", condition_encoding="joint")
    with torch.no_grad():
        b = joint(ids, attention_mask=mask, labels=labels, source_mask=source_mask, latent_noise=eps("eps_cvae"))
    assert (b.latent_output.prior_mean - a.latent_output.prior_mean).abs().max() > 1e-2


def test_cvae_prior_and_generation():
    model = build("original_checkpoint_cvae")
    E = _expected("cvae")
    cond, cond_mask = inp("cvae.condition"), inp("cvae.condition_mask")
    check_prior(model, E, "prior.", eps("eps_cvae_prior"), source_ids=cond, source_attention_mask=cond_mask)
    check_greedy(model, E, "greedy_prior.", E["prior.z"], "cvae.greedy_prior", cond, cond_mask)


# ------------------------------------------------------------------------------------------------------ metrics


def test_iw_ppl_official_estimator():
    model = build()
    E = _expected("uncond")
    batches = [
        {"input_ids": inp(f"{b}.input_ids"), "attention_mask": inp(f"{b}.attention_mask")}
        for b in _cases()["cases"]["iw"]["batches"]
    ]
    K = _cases()["cases"]["iw"]["K"]
    noise = inp("eps_iw").permute(0, 1, 3, 2, 4)  # [batch, pass, row, layer, dim]
    res = della_official_iw_nll(model, batches, num_samples=K, latent_noise=[n for n in noise])
    res.update({k: torch.stack(res[k]) for k in ("log_weight", "log_gen", "log_prior_mean", "log_post_mean")})
    res.update({k: torch.stack(res[k]) for k in ("log_prob_iw", "kl_seq")})
    close(res["log_weight"], E["iw.log_weight"], "log_weight")
    close(res["log_gen"], E["iw.log_gen"], "log_gen")
    close(res["log_prior_mean"], E["iw.log_prior_mean"], "log_prior_mean")
    close(res["log_post_mean"], E["iw.log_post_mean"], "log_post_mean")
    close(res["log_prob_iw"], E["iw.log_prob_iw"], "log_prob_iw")
    close(res["kl_seq"], E["iw.kl_seq"], "kl_seq")
    ref = _metrics()["iw"]
    assert res["num_words"] == ref["report_num_words"] and res["num_sents"] == ref["report_num_sents"]
    assert math.isclose(math.log(res["ppl"]), math.log(ref["ppl"]), rel_tol=TOL)
    for key in ("nll", "kl", "elbo"):
        assert math.isclose(res[key], ref[key], rel_tol=TOL), key
    # the textbook estimator sums the log-densities over the 3 layers: another number on the same samples
    lw = res["log_gen"] + 3 * res["log_prior_mean"] - 3 * res["log_post_mean"]  # [batch, K, B]
    flat = lambda t: t.transpose(1, 2).reshape(-1, K)  # noqa: E731
    textbook = iw_log_likelihood(flat(lw), torch.zeros(8, K), torch.zeros(8, K))
    assert (textbook - res["log_prob_iw"].reshape(-1).double()).abs().max() > 1.0


def test_active_units_official_convention():
    model = build()
    E = _expected("uncond")
    batches = [
        {"input_ids": inp(f"{b}.input_ids"), "attention_mask": inp(f"{b}.attention_mask")}
        for b in _cases()["cases"]["au"]["batches"]
    ]
    noise = inp("eps_au").permute(0, 1, 3, 2, 4)  # [stage, batch, row, layer, dim]
    au = _metrics()["au"]
    res = della_official_active_units(model, batches, delta=au["delta"], latent_noise=noise)
    close(res["means"], E["au.means"], "means")
    close(res["mean_mean"], E["au.mean_mean"], "mean_mean")
    close(res["var"], E["au.var"], "var")
    assert res["au_count"] == au["au_count"] and res["au_prop"] == pytest.approx(au["au_prop"], abs=1e-12)
    # the tie case: delta equal to one unit's variance (the original's own float32 value) counts that unit
    tie = au["tie_case"]
    count, prop = della_official_au_count(E["au.var"], tie["delta"])
    assert count == tie["au_count"] and prop == pytest.approx(tie["au_prop"])
    # the textbook rule (strict >, here on the same variances) misses it
    assert int((E["au.var"] > tie["delta"]).sum()) == tie["au_count_if_strict_greater"]
    # and the textbook procedure (clamped means of the mean chain) counts another number of units on these batches
    with torch.no_grad():
        textbook = torch.cat([model.encode(**b, use_mean=True).posterior_mean.flatten(1) for b in batches])
    assert active_units(textbook, au["delta"])[0] != au["au_count"]


# ----------------------------------------------------------------------------------------------------- beta


@pytest.mark.parametrize("name", ["A", "B"])
def test_beta_schedule_original(name):
    spec = _metrics()["beta_schedule"][name]
    got = della_original_beta_schedule(
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        batches_per_epoch=spec["batches_per_epoch"],
        epochs=spec["epochs"],
        cycle_epochs=spec["cycle_iters"],
    )
    assert len(got) == len(spec["beta_per_micro_batch"])
    for a, b in zip(got, spec["beta_per_micro_batch"]):
        assert abs(a - b) <= 1e-12


# ---------------------------------------------------------------------------------------------------- converter


def test_converter_cli_round_trip(tmp_path):
    from hf_ext.models.della import convert_della_original_to_hf as conv

    conv.main(["--input_dir", str(FIX / "original_checkpoint"), "--output_dir", str(tmp_path / "u")])
    loaded = DellaForCausalLM.from_pretrained(tmp_path / "u").eval()
    assert loaded.config.lmf_form == "summed_factors" and loaded.config.pad_token_id == 297
    assert (loaded.config.bos_token_id, loaded.config.eos_token_id) == (298, 299)
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    with torch.no_grad():
        out = loaded(ids, attention_mask=mask, labels=ids, latent_noise=eps("eps_forward"))
    close(out.logits, _expected("uncond")["forward.logits"], "logits after save/load")
    # every original tensor is used: only the buffers and the decoder copies have no key of their own
    report = convert_della_checkpoint(FIX / "original_checkpoint_cvae", tmp_path / "w")
    assert all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in report["dropped"])
    assert len(report["dropped"]) == 2 * 2 * 3


def test_converter_lmf_mapping_is_exact():
    """One layer's fused value, by hand from the original's nn.Linear factors, vs the converted module."""
    state = load_file(str(FIX / "original_checkpoint" / "model.safetensors"))
    model = build()
    g = torch.Generator().manual_seed(0)
    v, z = torch.randn(2, 5, 64, generator=g), torch.randn(2, 1, 16, generator=g)
    one = torch.ones(2, 5, 1)
    tf = sum(
        torch.cat([v, one], -1) @ state[f"encoder.h.1.attn.lmf.text_factor.{r}.weight"].T
        + state[f"encoder.h.1.attn.lmf.text_factor.{r}.bias"]
        for r in range(4)
    )
    lf = sum(
        torch.cat([z, torch.ones(2, 1, 1)], -1) @ state[f"encoder.h.1.attn.lmf.latent_factor.{r}.weight"].T
        + state[f"encoder.h.1.attn.lmf.latent_factor.{r}.bias"]
        for r in range(4)
    )
    with torch.no_grad():
        close(model.transformer.h[1].attn.lmf(v, z), tf * lf, "lmf")


def test_converter_rejects_a_foreign_checkpoint():
    state = load_file(str(FIX / "original_checkpoint" / "model.safetensors"))
    cfg = DellaConfig.from_original_defaults(
        vocab_size=300, n_embd=64, n_layer=3, n_head=4, n_positions=64, latent_size=16
    )
    bad = dict(state)
    bad["decoder.wte.weight"] = bad["decoder.wte.weight"] + 1
    with pytest.raises(ValueError, match="differ"):
        convert_della_state_dict(bad, cfg)
    with pytest.raises(ValueError, match="Unknown key"):
        convert_della_state_dict({**state, "encoder.extra.weight": torch.zeros(1)}, cfg)


def test_beta_schedule_original_in_the_trainer(tmp_path):
    """TextVAETrainer(beta_schedule="della_original") gives schedule B step by step (4 steps/epoch, 8 epochs)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from hf_ext.trainers.text_vae import TextVAEConfig, TextVAETrainer

    spec = _metrics()["beta_schedule"]["B"]
    cfg = DellaConfig(
        vocab_size=20, n_embd=16, n_layer=1, n_head=2, n_positions=16, latent_size=2, latent_lmf_rank=1, pad_token_id=0
    )
    model = DellaForCausalLM(cfg)
    rows = [{"input_ids": [1 + (i % 5), 2, 3]} for i in range(spec["batches_per_epoch"])]
    args = TextVAEConfig(
        output_dir=str(tmp_path),
        num_train_epochs=spec["epochs"],
        per_device_train_batch_size=1,
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        beta_schedule="della_original",
        cycle_epochs=spec["cycle_iters"],
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        dataloader_drop_last=False,
    )
    trainer = TextVAETrainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            seen.append(model.kl_weight)

    trainer.add_callback(Record())
    trainer.train()
    assert len(seen) == len(spec["beta_per_optimizer_step"])
    for a, b in zip(seen, spec["beta_per_optimizer_step"]):
        assert abs(a - b) <= 1e-12


def test_converter_reads_the_original_pt_files_and_layer_options(tmp_path):
    """`model_epoch_N.pt` as the original's `save` writes it (a state dict), read with weights_only=True, and the
    original's `--begin_layer 1 --end_layer 2` (inclusive) given on the command line."""
    from hf_ext.models.della import convert_della_original_to_hf as conv

    run = tmp_path / "run"
    run.mkdir()
    torch.save(load_file(str(FIX / "original_checkpoint" / "model.safetensors")), run / "model_epoch_3.pt")
    for name in ("config.json", "train_opt.json", "special_tokens.json"):
        (run / name).write_text((FIX / "original_checkpoint" / name).read_text())
    argv = ["--input_dir", str(run), "--checkpoint", "model_epoch_3.pt", "--output_dir", str(tmp_path / "out")]
    conv.main([*argv, "--begin_layer", "1", "--end_layer", "2"])
    loaded = DellaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.latent_layers == [1, 2]
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    with torch.no_grad():
        out = loaded(ids, attention_mask=mask, labels=ids, latent_noise=eps("eps_layers_1_2"))
    close(out.logits, _expected("uncond")["layers_1_2.forward.logits"], "layers 1-2 logits after conversion")
    (run / "other.pt").write_bytes((run / "model_epoch_3.pt").read_bytes())
    with pytest.raises(ValueError, match="--checkpoint"):
        conv.main(["--input_dir", str(run), "--output_dir", str(tmp_path / "x")])


@pytest.mark.parametrize(
    "flag,hf_ext_value",
    [
        ("value_fusion", "residual"),
        ("kl_reduction", "sum"),
        ("pooling_mask_padding", True),
        ("first_layer_prior", "standard"),
        ("ignore_pad_token_in_loss", False),
        # pooler_activation: 4e-5 relative on the loss, caught by test_pooler_probe_gelu_new
    ],
)
def test_each_official_flag_is_needed(flag, hf_ext_value):
    """Official mode with one flag set back to hf_ext's value no longer reproduces the original's loss."""
    model = build(**{flag: hf_ext_value})
    ids, mask = inp("batch_a.input_ids"), inp("batch_a.attention_mask")
    with torch.no_grad():
        loss = model(ids, attention_mask=mask, labels=ids, latent_noise=eps("eps_forward"), kl_weight=1.0).loss
    expected = _expected("uncond")["forward.loss"][-1].item()
    assert abs(loss.item() - expected) > TOL * max(1.0, abs(expected))
