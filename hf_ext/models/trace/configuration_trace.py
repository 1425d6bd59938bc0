"""TRACE configuration (Hu et al., Findings of EMNLP 2022, "Recurrence Boosts Diversity!").

TRACE's method section could not be read: the model is **reconstructed** from the abstract (segment-wise recurrent
latents, a residual posterior with layer normalisation and a non-zero KL lower bound, parallel training through an
idempotent transition). Every reconstructed choice is a field below; see ``docs/text_vae.md``.
"""

from __future__ import annotations

from transformers import GPT2Config
from transformers.utils import logging

logger = logging.get_logger(__name__)

# GPT-2's BPE ids of ".", "?" and "!": the sentence ends that close a segment with the default (GPT-2) vocabulary
GPT2_SENTENCE_END_IDS = [13, 30, 0]
GPT2_VOCAB_SIZE = 50257

_CHOICES = {
    "segmentation": ("separator", "fixed"),
    "training_mode": ("parallel", "sequential"),
    "transition": ("free", "exact_idempotent"),
    "posterior_context": ("prefix", "full"),
    "latent_injection": ("lmf", "embedding"),
    "value_fusion": ("residual", "replace"),
    "kl_reduction": ("sum", "mean"),
}


class TraceConfig(GPT2Config):
    r"""Configuration of a TRACE model: a GPT-2 VAE with one latent per text segment and a recurrent prior.

    **Reconstructed from the abstract**: the generative model used here is the linear-Gaussian recurrence
    ``p(z_k | z_<k) = N(W z_{k-1}, diag(sigma_p^2))`` and the residual posterior
    ``q(z_k | z_<k, x) = N(W z_{k-1} + sigma_p * gamma * LN(A h_k), diag(sigma_p^2 * exp(B h_k)))`` where ``h_k`` pools
    the encoder states of segment k and ``LN`` has no learned affine. Then
    ``KL_k = 1/2 sum_d [gamma^2 LN(.)_d^2 + exp(B h_k)_d - (B h_k)_d - 1] >= 1/2 gamma^2 p var/(var+eps)``: a non-zero
    lower bound (the LN output has unit variance). Because the posterior mean is *linear* in z_{k-1},
    ``z_k = e_k + W z_{k-1}`` with an innovation ``e_k`` that depends on segment k only; if W is idempotent
    (W^2 = W) the recurrence unrolls to ``z_k = e_k + W sum_{j<k} e_j``: a prefix sum, computed in parallel.

    All GPT-2 arguments keep their [`GPT2Config`] meaning.

    Args:
        latent_size (`int`, *optional*, defaults to 32): dimension of each segment latent.
        latent_lmf_rank (`int`, *optional*, defaults to 4): rank of the low-rank tensor product fusing z into values.
        segmentation (`str`, *optional*, defaults to `"separator"`): ``"separator"`` (a segment ends with any token of
            `separator_token_ids`, e.g. sentence ends) or ``"fixed"`` (every `segment_length` tokens).
        separator_token_ids (`list[int]`, *optional*): token ids that close a segment (``"separator"`` mode). When
            omitted with GPT-2's vocabulary (``vocab_size=50257``, the default) they are GPT-2's ids of ``.``, ``?``
            and ``!`` (``[13, 30, 0]``), so ``TraceConfig()`` is the GPT-2-small TRACE; with another vocabulary they
            must be given.
        segment_length (`int`, *optional*, defaults to 16): tokens per segment (``"fixed"`` mode); must fit the context.
        max_segments (`int`, *optional*, defaults to 64): most segments a text may have (bad input beyond it raises);
            also the number of latents drawn for generation.
        training_mode (`str`, *optional*, defaults to `"parallel"`): ``"parallel"`` uses the idempotent prefix-sum
            (exact only when W is idempotent); ``"sequential"`` runs the exact recurrence segment by segment.
        transition (`str`, *optional*, defaults to `"free"`): ``"free"``: W is a free matrix, pushed towards
            idempotence by `idempotent_penalty` (the paper's "approximating idempotent matrices", as reconstructed);
            ``"exact_idempotent"``: W = U (V^T U)^{-1} V^T of rank `transition_rank`, idempotent by construction.
        transition_rank (`int`, *optional*): rank of the exact idempotent W (defaults to ``latent_size // 2``).
        idempotent_penalty (`float`, *optional*, defaults to 1.0): weight of ``||W^2 - W||_F^2`` in the loss
            (``"free"`` transition only).
        residual_posterior (`bool`, *optional*, defaults to `True`): the residual, layer-normalised posterior above;
            `False` gives a plain posterior N(A h_k, exp(B h_k)) with no KL lower bound (ablation).
        posterior_ln_gain (`float`, *optional*, defaults to 1.0): the fixed gain gamma of the posterior layer norm;
            sets the KL lower bound 1/2 gamma^2 latent_size (nats per segment).
        posterior_context (`str`, *optional*, defaults to `"prefix"`): ``"prefix"``: q(z_k) sees segments <= k
            (a causal encoder pass); ``"full"``: it sees the whole text (a bidirectional pass).
        latent_injection (`str`, *optional*, defaults to `"lmf"`): ``"lmf"`` fuses each token's segment latent into
            every layer's values (DELLA's operator); ``"embedding"`` adds a projection of it to the token embedding.
        value_fusion (`str`, *optional*, defaults to `"residual"`): ``"residual"`` (v + LMF) or ``"replace"``.
        kl_reduction (`str`, *optional*, defaults to `"sum"`): combine segment KLs by ``"sum"`` (ELBO) or ``"mean"``.
        free_bits (`float`, *optional*, defaults to 0.0): free-bits threshold per segment (0 = off).
        latent_clamp (`float`, *optional*, defaults to 5.0): clamp of the posterior log-variance offsets.
    """

    model_type = "trace"

    latent_size: int = 32
    latent_lmf_rank: int = 4
    segmentation: str = "separator"
    separator_token_ids: list[int] | None = None
    segment_length: int = 16
    max_segments: int = 64
    training_mode: str = "parallel"
    transition: str = "free"
    transition_rank: int | None = None
    idempotent_penalty: float = 1.0
    residual_posterior: bool = True
    posterior_ln_gain: float = 1.0
    posterior_context: str = "prefix"
    latent_injection: str = "lmf"
    value_fusion: str = "residual"
    kl_reduction: str = "sum"
    free_bits: float = 0.0
    latent_clamp: float | None = 5.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TraceConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.segmentation == "separator" and not self.separator_token_ids and self.vocab_size == GPT2_VOCAB_SIZE:
            self.separator_token_ids = list(GPT2_SENTENCE_END_IDS)
        if self.segmentation == "separator" and not self.separator_token_ids:
            raise ValueError(
                "TraceConfig.segmentation='separator' needs `separator_token_ids` (e.g. the ids of '.', '?', '!'); "
                f"or use segmentation='fixed' with `segment_length` (only GPT-2's vocabulary of {GPT2_VOCAB_SIZE} "
                "tokens has a default)."
            )
        if self.segment_length < 1 or self.segment_length > self.n_positions:
            raise ValueError(
                f"TraceConfig.segment_length={self.segment_length} must be in [1, n_positions={self.n_positions}]: "
                "a segment cannot be longer than the context."
            )
        if self.max_segments < 1:
            raise ValueError(f"TraceConfig.max_segments must be >= 1, got {self.max_segments}.")
        rank = self.transition_rank if self.transition_rank is not None else max(1, self.latent_size // 2)
        if not 1 <= rank <= self.latent_size:
            raise ValueError(f"TraceConfig.transition_rank must be in [1, latent_size], got {self.transition_rank}.")
        if self.free_bits < 0 or self.idempotent_penalty < 0:
            raise ValueError("TraceConfig.free_bits and idempotent_penalty must be >= 0.")

    @property
    def effective_transition_rank(self) -> int:
        return self.transition_rank if self.transition_rank is not None else max(1, self.latent_size // 2)


__all__ = ["TraceConfig"]
