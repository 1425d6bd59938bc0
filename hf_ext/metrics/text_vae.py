"""Latent-variable text model metrics: ELBO, KL, mutual information, active units, importance-weighted perplexity.

Plain tensor functions, a driver (:func:`evaluate_text_vae`) that runs a DELLA / TRACE model (or a plain LM) over a
dataloader, and an ``evaluate`` module wrapper (``evaluate.load("path/to/hf_ext/metrics/text_vae.py")``) that takes
per-example statistics.

Definitions (DELLA's evaluation suite):

* IW-PPL (Burda et al., 2016): ``log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K`` with
  z_k ~ q(z|x); PPL = exp(-sum_x log p(x) / #tokens). Log-densities are **summed** over latent groups (the official
  DELLA code averaged them over layers, which is not a valid importance weight and biases PPL down). Tokens are the
  predicted (label != -100) tokens.
* MI (Hoffman & Johnson 2016; He et al. 2019 estimator): ``E_x E_q(z|x)[log q(z|x) - log q(z)]`` with q(z) the
  aggregate posterior over the evaluated examples, q(z|x) treated as the diagonal Gaussian of the concatenated
  conditional posteriors (each latent group conditioned on the example's own lower / earlier latents). For TRACE
  each (text, segment) posterior is one example.
* AU (Burda et al.): dimensions whose posterior-mean variance across examples exceeds ``threshold`` (DELLA: 0.2).

Two conventions. The definitions above are the **textbook** ones (hf_ext's default). The DELLA paper's tables were
computed by the official code (``train_utils.calc_iwnll`` / ``calc_au``), whose estimators differ; to compare with
those tables use the **official** ones (``convention="della_official"`` in :func:`evaluate_text_vae`, or
:func:`della_official_iw_nll` / :func:`della_official_active_units`):

==============  =====================================================  ===============================================
quantity        textbook (``"textbook"``)                              official DELLA (``"della_official"``)
==============  =====================================================  ===============================================
IW weight       log p(x|z) + **sum** over layers of log p(z_l) - log   log p(x|z) + **mean** over layers of log p(z_l)
                q(z_l|x)                                               - log q(z_l|x)
PPL tokens      predicted tokens (labels != -100)                      ``attention_mask.sum()`` (``<s>`` counted)
KL              as the model config reduces it (sum over layers)       mean over layers, after ``--kl_threshold``
ELBO            ``-(rec + KL)`` per example (a log-likelihood bound)   ``kl + nll`` per sentence (a positive loss; nll =
                                                                       mean over the K samples of -log p(x|z_k))
AU              ``var > delta`` of the clamped means of the posterior  ``var >= delta`` of the **unclamped** means,
                mean chain (z_<l = means)                              each encoder pass sampling its own lower z
MI              He et al. (2019) aggregate-posterior estimator         (no estimator in the official code)
==============  =====================================================  ===============================================
"""

from __future__ import annotations

import math

import datasets
import evaluate
import torch

__all__ = [
    "active_units",
    "della_official_active_units",
    "della_official_au_count",
    "della_official_iw_nll",
    "gaussian_mutual_information",
    "iw_log_likelihood",
    "iw_perplexity",
    "evaluate_text_vae",
    "TextVAEMetrics",
]

_LOG_2PI = math.log(2 * math.pi)


def active_units(posterior_mean: torch.Tensor, threshold: float = 0.2) -> tuple[int, float]:
    """Number and share of active latent dimensions.

    Args:
        posterior_mean (`torch.Tensor` of shape `(num_examples, latent_dim)`): E_q[z | x] per example.
        threshold (`float`, *optional*, defaults to 0.2): DELLA's delta (0.01 in Burda et al.).

    Returns:
        `(count, fraction)` of dimensions with ``Var_x(E_q[z|x]) > threshold`` (unbiased variance).
    """
    if posterior_mean.dim() != 2 or posterior_mean.shape[0] < 2:
        raise ValueError(
            f"`posterior_mean` must have shape (num_examples >= 2, latent_dim), got {tuple(posterior_mean.shape)}."
        )
    var = posterior_mean.double().var(dim=0, unbiased=True)
    count = int((var > threshold).sum())
    return count, count / posterior_mean.shape[1]


def gaussian_mutual_information(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    entropy: str = "sample",
) -> float:
    """Estimate of I_q(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)] for diagonal-Gaussian posteriors.

    q(z) is the aggregate posterior of the given examples, ``log q(z_i) = logsumexp_j log q(z_i | x_j) - log N``
    (He et al., 2019). ``entropy="analytic"`` is He et al.'s form, with E_q[log q(z|x)] = -H(q(z|x)) in closed form;
    ``entropy="sample"`` (default) evaluates log q(z_i | x_i) at the same sample z_i: the same expectation with far
    less variance (it is exactly 0 when all posteriors are equal, where the analytic form has O(sqrt(d/N)) noise).

    Args:
        mean, logvar (`torch.Tensor` of shape `(num_examples, latent_dim)`): posterior parameters per example.
        z (`torch.Tensor`, *optional*): one sample per example from its posterior (drawn here if omitted).
        generator (`torch.Generator`, *optional*): for the draw.
        entropy (`str`, *optional*, defaults to `"sample"`): ``"sample"`` or ``"analytic"``.
    """
    if mean.shape != logvar.shape or mean.dim() != 2:
        raise ValueError(f"`mean` and `logvar` must both be (num_examples, dim); got {mean.shape} and {logvar.shape}.")
    if entropy not in ("sample", "analytic"):
        raise ValueError(f"`entropy` must be 'sample' or 'analytic', got {entropy!r}.")
    mean, logvar = mean.double(), logvar.double()
    n, d = mean.shape
    if z is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
    z = z.double()
    if entropy == "analytic":
        log_q_own = (-0.5 * d * _LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
    else:
        log_q_own = (-0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(-1)).mean()
    # log q(z_i | x_j) for all pairs, in chunks to bound memory
    log_qz = []
    for start in range(0, n, 256):
        zi = z[start : start + 256].unsqueeze(1)  # (c, 1, d)
        dens = -0.5 * (_LOG_2PI + logvar.unsqueeze(0) + (zi - mean.unsqueeze(0)).pow(2) * torch.exp(-logvar)).sum(-1)
        log_qz.append(torch.logsumexp(dens, dim=1) - math.log(n))
    return float(log_q_own - torch.cat(log_qz).mean())


def iw_log_likelihood(log_likelihood: torch.Tensor, log_prior: torch.Tensor, log_posterior: torch.Tensor):
    """Importance-weighted log p(x) per example from K samples: tensors of shape ``(num_examples, K)``."""
    if not (log_likelihood.shape == log_prior.shape == log_posterior.shape):
        raise ValueError("`log_likelihood`, `log_prior` and `log_posterior` must have the same (N, K) shape.")
    k = log_likelihood.shape[-1]
    return torch.logsumexp((log_likelihood + log_prior - log_posterior).double(), dim=-1) - math.log(k)


def iw_perplexity(log_px: torch.Tensor, num_tokens: torch.Tensor) -> float:
    """``exp(-sum log p(x) / sum #tokens)``."""
    total = float(num_tokens.sum())
    if total <= 0:
        raise ValueError("`num_tokens` sums to 0: nothing to compute a perplexity over.")
    return math.exp(-float(log_px.double().sum()) / total)


def _per_layer_log_densities(latent_output) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(z_l) and log q(z_l | x) of each latent layer, ``(batch, num_latents)`` each."""
    from ..models.text_vae_utils import gaussian_log_prob

    lo = latent_output
    return (
        gaussian_log_prob(lo.latents, lo.prior_mean, lo.prior_logvar),
        gaussian_log_prob(lo.latents, lo.posterior_mean, lo.posterior_logvar),
    )


def _official_kl_seq(model, kl_per_group: torch.Tensor) -> torch.Tensor:
    lam = getattr(model.config, "free_bits", 0.0) or 0.0
    return (kl_per_group.clamp(min=lam) if lam > 0 else kl_per_group).mean(1)


@torch.no_grad()
def della_official_iw_nll(
    model,
    batches,
    num_samples: int = 500,
    latent_noise: list[torch.Tensor] | None = None,
) -> dict:
    """Importance-weighted NLL / PPL as the official DELLA code computes them (``train_utils.calc_iwnll``).

    Per batch: one forward pass for the KL, then ``num_samples`` passes, each drawing its own latents from the
    posterior, with ``log w_k = log p(x|z_k) + mean_l log p(z_l) - mean_l log q(z_l|x)`` (log-densities *averaged*
    over the latent layers); ``log p(x) ~= logsumexp_k log w_k - log K``; ``ppl = exp(-sum log p(x) / sum
    attention_mask)`` (``<s>`` and ``</s>`` counted); ``nll = -sum_x mean_k log p(x|z_k) / N``; ``kl`` = the mean over
    layers of each row's KL (after ``free_bits``, the original's ``--kl_threshold``), summed / N; ``elbo = kl + nll``.
    The reconstruction term follows the model config (``ignore_pad_token_in_loss`` as the original).

    Args:
        model ([`DellaForCausalLM`]): the model (put in eval mode by the caller).
        batches (iterable of `dict`): ``input_ids``, ``attention_mask`` (and ``labels``, default ``input_ids``;
            ``condition_ids``/``source_mask`` for a conditional model).
        num_samples (`int`, *optional*, defaults to 500): K (the original's ``--sample_times`` / ``ns``).
        latent_noise (`list[torch.Tensor]`, *optional*): per batch, the noise of every pass, shape
            ``(1 + K, batch, num_latent_layers, latent_size)`` (pass 0 = the KL pass); drawn here if omitted.

    Returns:
        `dict` with ``ppl``, ``nll``, ``kl``, ``elbo``, ``num_words``, ``num_sents`` and per batch (lists of tensors)
        ``kl_seq`` `(B,)`, ``log_gen``, ``log_prior_mean``, ``log_post_mean``, ``log_weight`` `(K, B)`,
        ``log_prob_iw`` `(B,)`.
    """
    keys = ("kl_seq", "log_gen", "log_prior_mean", "log_post_mean", "log_weight", "log_prob_iw")
    res = {k: [] for k in keys}
    words = sents = 0
    for b, batch in enumerate(batches):
        batch = dict(batch)
        labels = batch.pop("labels", batch["input_ids"])
        mask = batch.get("attention_mask")
        if mask is None:
            raise ValueError("della_official_iw_nll counts words with `attention_mask`: every batch needs one.")
        noise = latent_noise[b] if latent_noise is not None else [None] * (1 + num_samples)
        if len(noise) != 1 + num_samples:
            raise ValueError(f"`latent_noise[{b}]` must hold 1 + num_samples = {1 + num_samples} passes.")
        out = model(**batch, latent_noise=noise[0])
        res["kl_seq"].append(_official_kl_seq(model, out.kl_per_group))
        gen, lp, lq = [], [], []
        for k in range(num_samples):
            o = model(**batch, labels=labels, latent_noise=noise[1 + k])
            lpl, lql = _per_layer_log_densities(o.latent_output)
            gen.append(-o.rec_loss)
            lp.append(lpl.mean(1))
            lq.append(lql.mean(1))
        gen, lp, lq = torch.stack(gen), torch.stack(lp), torch.stack(lq)
        lw = gen + lp - lq
        res["log_gen"].append(gen)
        res["log_prior_mean"].append(lp)
        res["log_post_mean"].append(lq)
        res["log_weight"].append(lw)
        res["log_prob_iw"].append(torch.logsumexp(lw.double(), dim=0) - math.log(num_samples))
        words += int(mask.sum())
        sents += int(mask.shape[0])
    if not sents:
        raise ValueError("della_official_iw_nll got no batches.")
    log_prob = torch.cat(res["log_prob_iw"])
    nll = -float(sum(g.double().mean(0).sum() for g in res["log_gen"])) / sents
    kl = float(sum(k.double().sum() for k in res["kl_seq"])) / sents
    res.update(
        ppl=math.exp(-float(log_prob.sum()) / words),
        nll=nll,
        kl=kl,
        elbo=kl + nll,
        num_words=words,
        num_sents=sents,
    )
    return res


def della_official_au_count(variance: torch.Tensor, delta: float = 0.2) -> tuple[int, float]:
    """The official active-units rule: ``var >= delta`` (not ``>``); returns ``(count, fraction)``."""
    count = int((variance >= delta).sum())
    return count, count / variance.numel()


@torch.no_grad()
def della_official_active_units(
    model,
    batches,
    delta: float = 0.2,
    latent_noise: torch.Tensor | list | None = None,
) -> dict:
    """Active units as the official DELLA code counts them (``train_utils.calc_au``).

    Two sweeps over ``batches``, each batch encoded afresh (each pass samples its own lower-layer latents, so the
    means of layers > 0 differ between sweeps): sweep 1 gives the mean of the **unclamped** posterior means (layers
    concatenated); sweep 2 the variance around it, ``sum (m - mean)^2 / (N - 1)``, accumulated in the model's dtype
    as the original does; a unit is active when ``var >= delta``.

    Args:
        model ([`DellaForCausalLM`]): the model (eval mode).
        batches (sequence of `dict`): ``input_ids``, ``attention_mask`` (and what a conditional model needs); it is
            iterated twice.
        delta (`float`, *optional*, defaults to 0.2): the threshold.
        latent_noise (`torch.Tensor`, *optional*): ``[sweep][batch]`` of noise ``(batch, num_latents, latent_size)``.

    Returns:
        `dict` with ``au_count``, ``au_prop``, ``var`` `(units,)`, ``mean_mean`` `(1, units)` and ``means``
        `(2, num_batches, batch, units)` when all batches have the same size (else a nested list).
    """
    batches = list(batches)
    means = [[], []]
    for sweep in range(2):
        for b, batch in enumerate(batches):
            batch = {k: v for k, v in batch.items() if k != "labels"}
            noise = latent_noise[sweep][b] if latent_noise is not None else None
            lo = model.encode(**batch, latent_noise=noise)
            means[sweep].append(lo.posterior_mean_raw.flatten(1))
    n = sum(m.shape[0] for m in means[0])
    if n < 2:
        raise ValueError("Active units need at least 2 examples.")
    means_sum = None
    for m in means[0]:
        means_sum = m.sum(0, keepdim=True) if means_sum is None else means_sum + m.sum(0, keepdim=True)
    mean_mean = means_sum / n
    var_sum = None
    for m in means[1]:
        sq = ((m - mean_mean) ** 2).sum(0)
        var_sum = sq if var_sum is None else var_sum + sq
    var = var_sum / (n - 1)
    count, prop = della_official_au_count(var, delta)
    same = len({m.shape[0] for m in means[0] + means[1]}) == 1
    stacked = torch.stack([torch.stack(s) for s in means]) if same else means
    return {"au_count": count, "au_prop": prop, "var": var, "mean_mean": mean_mean, "means": stacked}


@torch.no_grad()
def evaluate_text_vae(
    model,
    dataloader,
    num_importance_samples: int = 30,
    au_threshold: float = 0.2,
    max_batches: int | None = None,
    seed: int = 0,
    convention: str = "textbook",
) -> dict[str, float]:
    """Run a text VAE (DELLA, TRACE) or a plain causal LM over ``dataloader`` and compute the metric suite.

    Batches are dicts with ``input_ids``, ``attention_mask``, ``labels`` (as :class:`DataCollatorForTextVAE` makes).

    Args:
        model: a DELLA / TRACE model, or a causal LM.
        dataloader: the batches.
        num_importance_samples (`int`, *optional*, defaults to 30): K.
        au_threshold (`float`, *optional*, defaults to 0.2): delta of the active units.
        max_batches (`int`, *optional*): stop after this many batches.
        seed (`int`, *optional*, defaults to 0): seeds the latent draws.
        convention (`str`, *optional*, defaults to `"textbook"`): ``"textbook"``, ``"della_official"`` (the
            estimators of the official DELLA code, what the paper's tables report: see the module doc) or ``"both"``
            (textbook keys, plus the official ones prefixed ``della_official_``). The official conventions apply to
            DELLA only; the same K posterior samples serve both.

    Returns:
        ``{"ppl", "nll", "rec", "kl", "elbo", "mi", "au", "au_fraction", "latent_dims", "num_tokens"}``; for a plain LM only ``ppl``,
        ``nll`` and ``num_tokens`` (PPL is then exact). ``nll`` is -log p(x) per example (IW for VAEs), ``elbo`` is
        per example, ``rec`` the posterior-sample reconstruction NLL, ``kl`` per example. Official keys: ``ppl``
        (mean-over-layers weights, ``attention_mask`` tokens), ``nll`` (mean over samples of -log p(x|z), per
        sentence), ``kl`` (mean over layers, after ``free_bits``), ``elbo`` (= kl + nll), ``au`` / ``au_fraction``
        (``>=``, unclamped means, sampled chain), ``latent_dims``, ``num_tokens`` (``attention_mask.sum()``).
    """
    if convention not in ("textbook", "della_official", "both"):
        raise ValueError(f"`convention` must be 'textbook', 'della_official' or 'both', got {convention!r}.")
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    log_px, tokens, rec, kl, means, logvars, mean_means = [], [], [], [], [], [], []
    is_trace = getattr(model.config, "model_type", "") == "trace"
    official = convention != "textbook"
    if official and getattr(model.config, "model_type", "") != "della":
        raise ValueError(f"convention={convention!r} (the official DELLA estimators) needs a DELLA model.")
    off = {k: [] for k in ("log_px", "words", "gen", "kl", "au1", "au2")}
    for b, batch in enumerate(dataloader):
        if max_batches is not None and b >= max_batches:
            break
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model(**batch)
        if getattr(out, "kl", None) is None:  # plain language model
            if getattr(out, "rec_loss", None) is None:
                logits = out.logits[:, :-1].float()
                labels = batch["labels"][:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
                ).view(labels.shape)
                lp = -nll.sum(1)
                n = (labels != -100).sum(1)
            else:
                lp, n = -out.rec_loss, out.num_tokens
            log_px.append(lp)
            tokens.append(n)
            continue
        rec.append(out.rec_loss)
        kl.append(out.kl)
        tokens.append(out.num_tokens)
        lo = out.latent_output
        if is_trace:
            # each (text, segment) posterior is one example; padding segments are dropped
            feats, valid, _ = model.transformer.segment_features(batch["input_ids"], batch.get("attention_mask"))
            means.append(lo.posterior_mean[valid])
            logvars.append(lo.posterior_logvar[valid])
            mean_lo = model.transformer.latent_chain(feats, valid, use_mean=True)
            mean_means.append(mean_lo.posterior_mean[valid])
        else:
            means.append(lo.posterior_mean.flatten(1))
            logvars.append(lo.posterior_logvar.flatten(1))
            mean_lo = model.encode(
                batch["input_ids"], batch.get("attention_mask"), **_extra(batch, model), use_mean=True
            )
            mean_means.append(mean_lo.posterior_mean.flatten(1))
        outs = [out] + [model(**batch) for _ in range(num_importance_samples - 1)]
        ll, lpz, lqz = (
            torch.stack(t, dim=-1) for t in zip(*[(-o.rec_loss, o.log_prior, o.log_posterior) for o in outs])
        )
        log_px.append(iw_log_likelihood(ll, lpz, lqz))
        if official:
            dens = [_per_layer_log_densities(o.latent_output) for o in outs]
            lw = torch.stack([-o.rec_loss + p.mean(1) - q.mean(1) for o, (p, q) in zip(outs, dens)], dim=-1)
            off["log_px"].append(torch.logsumexp(lw.double(), dim=-1) - math.log(len(outs)))
            mask = batch.get("attention_mask")
            off["words"].append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
            off["gen"].append(ll.double().mean(-1))
            off["kl"].append(_official_kl_seq(model, out.kl_per_group).double())
            off["au1"].append(out.latent_output.posterior_mean_raw.flatten(1))
            if len(outs) > 1:
                second = outs[1]
            else:  # one more draw, from its own seed, so that the textbook numbers do not depend on `convention`
                devices = [model.device] if model.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, device_type=model.device.type):
                    torch.manual_seed(seed + 1 + b)
                    second = model(**batch)
            off["au2"].append(second.latent_output.posterior_mean_raw.flatten(1))
    model.train(was_training)
    log_px_all, tokens_all = torch.cat(log_px), torch.cat(tokens)
    result = {
        "ppl": iw_perplexity(log_px_all, tokens_all),
        "nll": float(-log_px_all.mean()),
        "num_tokens": int(tokens_all.sum()),
    }
    if kl:
        rec_all, kl_all = torch.cat(rec), torch.cat(kl)
        mean_all = torch.cat(mean_means)
        au, au_frac = active_units(mean_all, au_threshold)
        result.update(
            rec=float(rec_all.mean()),
            kl=float(kl_all.mean()),
            elbo=float(-(rec_all + kl_all).mean()),
            mi=gaussian_mutual_information(torch.cat(means), torch.cat(logvars)),
            au=au,
            au_fraction=au_frac,
            latent_dims=int(mean_all.shape[1]),
        )
    if official and off["log_px"]:
        n = sum(len(t) for t in off["log_px"])
        words = sum(off["words"])
        m1, m2 = torch.cat(off["au1"]), torch.cat(off["au2"])
        var = ((m2 - m1.mean(0, keepdim=True)) ** 2).sum(0) / max(1, n - 1)
        au_count, au_prop = della_official_au_count(var, au_threshold)
        nll = -float(torch.cat(off["gen"]).sum()) / n
        kl_off = float(torch.cat(off["kl"]).sum()) / n
        official_metrics = {
            "ppl": math.exp(-float(torch.cat(off["log_px"]).sum()) / words),
            "nll": nll,
            "kl": kl_off,
            "elbo": kl_off + nll,
            "au": au_count,
            "au_fraction": au_prop,
            "latent_dims": int(m1.shape[1]),
            "num_tokens": words,
        }
        if convention == "della_official":
            return official_metrics
        result.update({f"della_official_{k}": v for k, v in official_metrics.items()})
    return result


def _extra(batch, model):
    return {"source_mask": batch["source_mask"]} if "source_mask" in batch else {}


_KWARGS = """
Args:
    log_weights (`list[list[float]]`): per example, K importance log-weights log p(x|z_k) + log p(z_k) - log q(z_k|x).
    num_tokens (`list[int]`): predicted tokens per example.
    kl (`list[float]`): KL term per example.
    rec (`list[float]`): reconstruction NLL per example.
    posterior_mean, posterior_logvar (`list[list[float]]`): flattened posterior parameters per example.
    au_threshold (`float`, *optional*, defaults to 0.2).
    convention (`str`, *optional*, defaults to `"textbook"`): ``"della_official"`` counts a unit active when its
        variance is ``>=`` the threshold and reports ``elbo`` as the official positive ``mean(rec + kl)``. The
        log-weights and token counts are the caller's: for the official PPL pass weights with log-densities averaged
        over layers and ``attention_mask`` counts (see `evaluate_text_vae(convention="della_official")`).
Returns:
    ppl, nll, kl, elbo, mi, au, au_fraction.
"""


class TextVAEMetrics(evaluate.Metric):
    """``evaluate`` wrapper: IW-PPL, ELBO, KL, MI and AU from per-example statistics."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Text VAE metrics: importance-weighted PPL, ELBO, KL, mutual information, active units.",
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "log_weights": datasets.Sequence(datasets.Value("float64")),
                    "num_tokens": datasets.Value("int64"),
                    "kl": datasets.Value("float64"),
                    "rec": datasets.Value("float64"),
                    "posterior_mean": datasets.Sequence(datasets.Value("float64")),
                    "posterior_logvar": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(
        self,
        log_weights,
        num_tokens,
        kl,
        rec,
        posterior_mean,
        posterior_logvar,
        au_threshold=0.2,
        convention="textbook",
    ):
        if convention not in ("textbook", "della_official"):
            raise ValueError(f"`convention` must be 'textbook' or 'della_official', got {convention!r}.")
        lw = torch.tensor(log_weights, dtype=torch.float64)
        log_px = torch.logsumexp(lw, dim=-1) - math.log(lw.shape[-1])
        kl_t, rec_t = torch.tensor(kl, dtype=torch.float64), torch.tensor(rec, dtype=torch.float64)
        mean = torch.tensor(posterior_mean, dtype=torch.float64)
        if convention == "della_official":
            au, frac = della_official_au_count(mean.var(dim=0, unbiased=True), au_threshold)
        else:
            au, frac = active_units(mean, au_threshold)
        elbo = (rec_t + kl_t).mean() if convention == "della_official" else -(rec_t + kl_t).mean()
        return {
            "ppl": iw_perplexity(log_px, torch.tensor(num_tokens)),
            "nll": float(-log_px.mean()),
            "kl": float(kl_t.mean()),
            "elbo": float(elbo),
            "mi": gaussian_mutual_information(
                mean, torch.tensor(posterior_logvar, dtype=torch.float64), generator=torch.Generator().manual_seed(0)
            ),
            "au": au,
            "au_fraction": frac,
        }
