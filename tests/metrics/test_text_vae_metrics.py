"""Tests for hf_ext.metrics.diversity and hf_ext.metrics.text_vae."""

import math
import random
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.text import bleu_score

from hf_ext.metrics.diversity import distinct_n, self_bleu, sentence_bleu

# ----------------------------------------------------------------------------------------------------------- Dist-n


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 7 total, 3 distinct; bigrams: ab ba ab ab bc -> 5 total, 3 distinct
    out = distinct_n(texts, n=(1, 2))
    assert out == {"dist-1": 3 / 7, "dist-2": 3 / 5}


def test_distinct_n_token_lists_and_empty_order():
    out = distinct_n([["x", "y"], ["y"]], n=3)
    assert out == {"dist-3": 0.0}


def test_distinct_n_bad_input():
    with pytest.raises(ValueError, match="single string"):
        distinct_n("a b c")
    with pytest.raises(ValueError, match="positive integers"):
        distinct_n(["a"], n=0)


# ------------------------------------------------------------------------------------------------------------- BLEU


def _random_corpus(seed, n=12, vocab=6):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 11))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sentence_bleu_matches_torchmetrics(seed):
    corpus = _random_corpus(seed, vocab=3)
    hyp, refs = corpus[0], corpus[1:]
    assert bleu_score([hyp], [refs], n_gram=4).item() > 0  # every order matched (see below)
    # small vocabulary -> every order has matches, so torchmetrics' "any zero count -> 0" rule does not trigger
    for smoothing, smooth in (("none", False), ("add1", True)):
        ours = sentence_bleu(hyp, refs, smoothing=smoothing)
        theirs = bleu_score([hyp], [refs], n_gram=4, smooth=smooth).item()
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_sentence_bleu_epsilon_smoothing_by_hand():
    # hyp "a b c d" vs ref "a b x y z": p1 = 2/4, p2 = 1/3, p3 = 0 -> 0.1/2, p4 = 0 -> 0.1/1; BP = exp(1 - 5/4)
    expected = math.exp(1 - 5 / 4) * math.exp((math.log(2 / 4) + math.log(1 / 3) + math.log(0.05) + math.log(0.1)) / 4)
    assert sentence_bleu("a b c d", ["a b x y z"]) == pytest.approx(expected)
    assert sentence_bleu("a b c d", ["a b x y z"], smoothing="none") == 0.0


@pytest.mark.parametrize("smoothing", ["epsilon", "add1", "none"])
def test_self_bleu_equals_leave_one_out_loop(smoothing):
    corpus = _random_corpus(3, n=15, vocab=8) + ["w1 w2", "w1 w2"]  # duplicates exercise the "second best" count
    expected = sum(
        sentence_bleu(t, corpus[:i] + corpus[i + 1 :], smoothing=smoothing) for i, t in enumerate(corpus)
    ) / len(corpus)
    assert self_bleu(corpus, smoothing=smoothing) == pytest.approx(expected, rel=1e-12)


def test_self_bleu_identical_and_disjoint():
    assert self_bleu(["a b c d e"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "e f g h"], smoothing="none") == 0.0


def test_self_bleu_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        self_bleu(["only one"])
    with pytest.raises(ValueError, match="smoothing"):
        self_bleu(["a", "b"], smoothing="method7")


def test_diversity_evaluate_module():
    import evaluate  # a declared dependency: a broken install must fail, not skip

    path = Path(__file__).resolve().parents[2] / "hf_ext" / "metrics" / "diversity.py"
    metric = evaluate.load(str(path))
    texts = _random_corpus(5)
    out = metric.compute(predictions=texts, dist_orders=[2])
    assert out["dist-2"] == distinct_n(texts, n=2)["dist-2"]
    assert out["self-bleu"] == pytest.approx(self_bleu(texts))


# ------------------------------------------------------------------------------------------------- text VAE


def test_active_units_by_hand():
    from hf_ext.metrics.text_vae import active_units

    # dim 0: values 0, 1, 2 -> unbiased variance 1.0; dim 1: 0, 0.1, 0.2 -> 0.01; dim 2: constant -> 0
    means = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.1, 5.0], [2.0, 0.2, 5.0]])
    assert active_units(means, threshold=0.2) == (1, 1 / 3)
    assert active_units(means, threshold=0.005) == (2, 2 / 3)
    with pytest.raises(ValueError, match="num_examples >= 2"):
        active_units(torch.zeros(1, 3))


@pytest.mark.parametrize("entropy", ["analytic", "sample"])
def test_mutual_information_matches_explicit_double_loop(entropy):
    from torch.distributions import Normal

    from hf_ext.metrics.text_vae import gaussian_mutual_information

    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g) * 0.3
    z = mean + torch.exp(0.5 * logvar) * torch.randn(7, 3, generator=g)
    dists = [Normal(mean[j].double(), torch.exp(0.5 * logvar[j].double())) for j in range(7)]
    if entropy == "analytic":
        own = sum(-d.entropy().sum() for d in dists) / 7
    else:
        own = sum(d.log_prob(z[i].double()).sum() for i, d in enumerate(dists)) / 7
    log_qz = [
        torch.logsumexp(torch.stack([d.log_prob(z[i].double()).sum() for d in dists]), 0) - math.log(7)
        for i in range(7)
    ]
    expected = float(own - sum(log_qz) / 7)
    assert gaussian_mutual_information(mean, logvar, z, entropy=entropy) == pytest.approx(expected, rel=1e-9)


def test_mutual_information_limits():
    from hf_ext.metrics.text_vae import gaussian_mutual_information

    # identical posteriors for every x: I(x; z) = 0, exactly with the paired ("sample") entropy term; the analytic
    # form is 0 up to Monte-Carlo error ~ sqrt(d / 2n)
    g = torch.Generator().manual_seed(0)
    assert gaussian_mutual_information(torch.zeros(300, 4), torch.zeros(300, 4), generator=g) == pytest.approx(
        0.0, abs=1e-9
    )
    mi0 = gaussian_mutual_information(torch.zeros(2000, 4), torch.zeros(2000, 4), generator=g, entropy="analytic")
    assert abs(mi0) < 5 * math.sqrt(4 / 2 / 2000)
    # far-apart sharp posteriors, z at each mean: log q(z_i|x_i) - (log q(z_i|x_i) - log n) = log n
    n = 50
    far = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 2) * 100
    assert gaussian_mutual_information(far, torch.full((n, 2), -6.0), z=far) == pytest.approx(math.log(n), rel=1e-9)
    # analytic entropy at z = mean: -d/2 per example relative to the paired form
    mi = gaussian_mutual_information(far, torch.full((n, 2), -6.0), z=far, entropy="analytic")
    assert mi == pytest.approx(math.log(n) - 2 / 2, rel=1e-9)


def test_iw_log_likelihood_and_perplexity_by_hand():
    from hf_ext.metrics.text_vae import iw_log_likelihood, iw_perplexity

    ll = torch.tensor([[-10.0, -12.0, -11.0]])
    lp = torch.tensor([[-1.0, -2.0, -1.5]])
    lq = torch.tensor([[-0.5, -1.0, -3.0]])
    w = [ll[0, k] + lp[0, k] - lq[0, k] for k in range(3)]
    expected = math.log(sum(math.exp(float(x)) for x in w) / 3)
    assert float(iw_log_likelihood(ll, lp, lq)[0]) == pytest.approx(expected)
    assert iw_perplexity(torch.tensor([-20.0, -10.0]), torch.tensor([4, 6])) == pytest.approx(math.exp(30 / 10))
    with pytest.raises(ValueError, match="sums to 0"):
        iw_perplexity(torch.tensor([-1.0]), torch.tensor([0]))


def _tiny_loader():
    from hf_ext.trainers.text_vae import DataCollatorForTextVAE

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(2, 40, (int(n),), generator=g).tolist()} for n in (5, 7, 4, 6, 8, 3)]
    return torch.utils.data.DataLoader(rows, batch_size=3, collate_fn=DataCollatorForTextVAE(pad_token_id=1))


def test_evaluate_text_vae_on_plain_lm_is_exact_perplexity():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ext.metrics.text_vae import evaluate_text_vae

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    loader = _tiny_loader()
    total_nll, total_tokens = 0.0, 0
    for b in loader:
        out = lm(**b)  # GPT-2's own loss: mean CE over the batch's target tokens
        n = int((b["labels"][:, 1:] != -100).sum())
        total_nll += float(out.loss.detach()) * n
        total_tokens += n
    result = evaluate_text_vae(lm, loader)
    assert result["num_tokens"] == total_tokens == 33 - 6
    assert result["ppl"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)


@pytest.mark.parametrize("family", ["della", "trace"])
def test_evaluate_text_vae_runs_on_vaes(family):
    from hf_ext.metrics.text_vae import evaluate_text_vae

    common = dict(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, latent_size=4)
    if family == "della":
        from hf_ext.models.della import DellaConfig, DellaForCausalLM

        model = DellaForCausalLM(DellaConfig(**common))
        dims = 2 * 4
    else:
        from hf_ext.models.trace import TraceConfig, TraceForCausalLM

        model = TraceForCausalLM(TraceConfig(**common, segmentation="fixed", segment_length=3))
        dims = 4
    r = evaluate_text_vae(model, _tiny_loader(), num_importance_samples=2)
    assert r["elbo"] == pytest.approx(-(r["rec"] + r["kl"]), rel=1e-6)
    assert r["latent_dims"] == dims and 0 <= r["au"] <= dims
    assert r["kl"] > 0 and math.isfinite(r["ppl"]) and math.isfinite(r["mi"])


def test_text_vae_evaluate_module_matches_functions():
    import evaluate  # a declared dependency: a broken install must fail, not skip

    from hf_ext.metrics.text_vae import active_units, gaussian_mutual_information

    path = Path(__file__).resolve().parents[2] / "hf_ext" / "metrics" / "text_vae.py"
    metric = evaluate.load(str(path))
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(5, 3, generator=g) - 20
    mean, logvar = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g) * 0.1
    out = metric.compute(
        log_weights=lw.tolist(),
        num_tokens=[4, 5, 6, 7, 8],
        kl=[1.0, 2.0, 3.0, 4.0, 5.0],
        rec=[10.0] * 5,
        posterior_mean=mean.tolist(),
        posterior_logvar=logvar.tolist(),
    )
    log_px = torch.logsumexp(lw.double(), -1) - math.log(3)
    assert out["ppl"] == pytest.approx(math.exp(-float(log_px.sum()) / 30))
    assert out["kl"] == pytest.approx(3.0) and out["elbo"] == pytest.approx(-13.0)
    assert out["au"] == active_units(mean.double())[0]
    expected_mi = gaussian_mutual_information(
        mean.double(), logvar.double(), generator=torch.Generator().manual_seed(0)
    )
    assert out["mi"] == pytest.approx(expected_mi)


def test_evaluate_text_vae_della_official_convention_by_hand():
    """One batch, K = 1: the official estimators recomputed from the same two posterior draws."""
    from torch.distributions import Normal

    from hf_ext.metrics.text_vae import evaluate_text_vae
    from hf_ext.models.della import DellaConfig, DellaForCausalLM

    cfg = DellaConfig.from_original_defaults(
        vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, latent_size=4, pad_token_id=1, free_bits=0.3
    )
    model = DellaForCausalLM(cfg).eval()
    batch = next(iter(_tiny_loader()))
    loader = [batch]
    both = evaluate_text_vae(model, loader, num_importance_samples=1, convention="both", au_threshold=0.001)
    textbook = evaluate_text_vae(model, loader, num_importance_samples=1, au_threshold=0.001)
    official = evaluate_text_vae(
        model, loader, num_importance_samples=1, convention="della_official", au_threshold=0.001
    )
    assert {k: both[k] for k in textbook} == textbook
    assert {k: both[f"della_official_{k}"] for k in official} == official
    # the same draws: seed 0 for the first pass (IW sample and AU sweep 1); with K = 1 the second sweep has seed 1
    with torch.no_grad():
        torch.manual_seed(0)
        o1 = model(**batch)
        torch.manual_seed(1)
        o2 = model(**batch)
    lo = o1.latent_output
    n = batch["input_ids"].shape[0]
    log_p = Normal(lo.prior_mean, torch.exp(0.5 * lo.prior_logvar)).log_prob(lo.latents).sum(-1).mean(1)
    log_q = Normal(lo.posterior_mean, torch.exp(0.5 * lo.posterior_logvar)).log_prob(lo.latents).sum(-1).mean(1)
    words = int(batch["attention_mask"].sum())
    assert official["num_tokens"] == words
    assert official["ppl"] == pytest.approx(math.exp(float((o1.rec_loss - log_p + log_q).sum()) / words), rel=1e-5)
    assert official["nll"] == pytest.approx(float(o1.rec_loss.sum()) / n, rel=1e-5)
    assert official["kl"] == pytest.approx(float(o1.kl_per_group.clamp(min=0.3).mean(1).sum()) / n, rel=1e-5)
    assert official["elbo"] == pytest.approx(official["kl"] + official["nll"], rel=1e-12)
    m1 = lo.posterior_mean_raw.flatten(1)
    m2 = o2.latent_output.posterior_mean_raw.flatten(1)
    var = ((m2 - m1.mean(0)) ** 2).sum(0) / (n - 1)
    assert official["au"] == int((var >= 0.001).sum()) and official["latent_dims"] == 8
    with pytest.raises(ValueError, match="convention"):
        evaluate_text_vae(model, loader, convention="paper")


def test_text_vae_evaluate_module_della_official_rules():
    import evaluate

    path = Path(__file__).resolve().parents[2] / "hf_ext" / "metrics" / "text_vae.py"
    metric = evaluate.load(str(path))
    # unit 0: values 0, 1 -> unbiased variance exactly 0.5 (the threshold); unit 1: variance 0
    common = dict(
        log_weights=[[-3.0], [-5.0]],
        num_tokens=[2, 3],
        kl=[1.0, 2.0],
        rec=[4.0, 6.0],
        posterior_mean=[[0.0, 1.0], [1.0, 1.0]],
        posterior_logvar=[[0.0, 0.0], [0.0, 0.0]],
        au_threshold=0.5,
    )
    textbook = metric.compute(**common)
    official = metric.compute(**common, convention="della_official")
    assert (textbook["au"], official["au"]) == (0, 1)  # `>` vs `>=`
    assert textbook["elbo"] == pytest.approx(-6.5) and official["elbo"] == pytest.approx(6.5)
    assert official["ppl"] == pytest.approx(math.exp(8.0 / 5))
