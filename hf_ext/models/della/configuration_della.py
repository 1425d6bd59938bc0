"""DELLA configuration (Hu et al., NAACL 2022, "Fuse It More Deeply!")."""

from __future__ import annotations

from transformers import GPT2Config
from transformers.utils import logging

logger = logging.get_logger(__name__)

_INJECTIONS = ("lmf", "embedding")
_FUSIONS = ("residual", "replace")
_KL_REDUCTIONS = ("sum", "mean")
_POOLINGS = ("attention", "mean", "first", "last")
_FIRST_PRIORS = ("standard", "learned")


class DellaConfig(GPT2Config):
    r"""Configuration of a DELLA variational Transformer: a GPT-2 backbone shared by a bidirectional encoder pass and a
    causal decoder pass, with one latent variable per layer.

    All GPT-2 arguments (``vocab_size``, ``n_embd``, ``n_layer``, ...) keep their [`GPT2Config`] meaning. The latent
    arguments below default to the paper's equations; the flag noted under each one reproduces the official code
    (``OpenVLG/DELLA``) instead.

    Args:
        latent_size (`int`, *optional*, defaults to 32):
            Dimension p of each layer's latent z_l.
        latent_lmf_rank (`int`, *optional*, defaults to 4):
            Rank r of the low-rank tensor product that fuses z_l into the decoder's value vectors.
        latent_layers (`list[int]`, *optional*):
            Which layers carry a latent (0-based, increasing). Defaults to all layers (the paper). The paper's
            ``begin_layer``/``end_layer`` experiment is ``list(range(begin, end))``.
        latent_injection (`str`, *optional*, defaults to `"lmf"`):
            ``"lmf"``: each z_l is fused into layer l's values (DELLA). ``"embedding"``: the latents are concatenated,
            projected and added to every input embedding (Optimus' "Embed" paradigm; with ``latent_layers=[n_layer-1]``
            this is the plain one-latent GPT-2 VAE used as a baseline).
        value_fusion (`str`, *optional*, defaults to `"residual"`):
            ``"residual"``: v + LMF(v, z), so a pretrained value path survives initialisation. ``"replace"``: v is
            replaced by LMF(v, z) (the official code; destroys the pretrained V path at step 0).
        kl_reduction (`str`, *optional*, defaults to `"sum"`):
            How the per-layer KLs combine: ``"sum"`` (paper Eq. 6, a true ELBO) or ``"mean"`` (the official code;
            each layer's KL then effectively weighs beta / L).
        pooling (`str`, *optional*, defaults to `"attention"`):
            How layer l's token states become x^(l): ``"attention"`` (the official learned attention pooling),
            ``"mean"``, ``"first"`` (the paper's wording) or ``"last"`` (last non-pad token).
        pooling_mask_padding (`bool`, *optional*, defaults to `True`):
            Exclude pad positions from pooling. ``False`` reproduces the official code, which pools pads too.
        first_layer_prior (`str`, *optional*, defaults to `"standard"`):
            ``"standard"``: p(z_1) = N(0, I) (the paper). ``"learned"``: from the prior net on a zero state, i.e. from
            its biases (the official code).
        latent_clamp (`float`, *optional*, defaults to 5.0):
            Clamp of the Gaussian means and log-variances (the official code uses 5). ``None`` disables it.
        free_bits (`float`, *optional*, defaults to 0.0):
            Free-bits threshold lambda (Kingma et al., 2016) in nats per latent group (a layer): the training loss uses
            ``max(lambda, KL_l)`` with KL_l averaged over the batch. 0 disables it (the paper).
        conditional (`bool`, *optional*, defaults to `False`):
            The CVAE variant (paper Eq. 11-12): the prior of every layer also sees the pooled source c^(l), computed
            by the same encoder on the source tokens only. The inputs are source and target concatenated, with
            ``source_mask`` marking the source.
        bow_weight (`float`, *optional*, defaults to 0.0):
            Weight of the optional bag-of-words loss (the paper's ``--use_bow``, 0.2 there); 0 disables it.
    """

    model_type = "della"

    latent_size: int = 32
    latent_lmf_rank: int = 4
    latent_layers: list[int] | None = None
    latent_injection: str = "lmf"
    value_fusion: str = "residual"
    kl_reduction: str = "sum"
    pooling: str = "attention"
    pooling_mask_padding: bool = True
    first_layer_prior: str = "standard"
    latent_clamp: float | None = 5.0
    free_bits: float = 0.0
    conditional: bool = False
    bow_weight: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name, value, allowed in (
            ("latent_injection", self.latent_injection, _INJECTIONS),
            ("value_fusion", self.value_fusion, _FUSIONS),
            ("kl_reduction", self.kl_reduction, _KL_REDUCTIONS),
            ("pooling", self.pooling, _POOLINGS),
            ("first_layer_prior", self.first_layer_prior, _FIRST_PRIORS),
        ):
            if value not in allowed:
                raise ValueError(f"DellaConfig.{name} must be one of {allowed}, got {value!r}.")
        if self.latent_size < 1 or self.latent_lmf_rank < 1:
            raise ValueError(
                f"DellaConfig.latent_size and latent_lmf_rank must be >= 1, got {self.latent_size} and "
                f"{self.latent_lmf_rank}."
            )
        if self.latent_layers is not None:
            layers = list(self.latent_layers)
            if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= self.n_layer:
                raise ValueError(
                    f"DellaConfig.latent_layers must be a non-empty increasing list of layer indices in "
                    f"[0, {self.n_layer}), got {self.latent_layers}."
                )
        if self.free_bits < 0:
            raise ValueError(f"DellaConfig.free_bits must be >= 0, got {self.free_bits}.")

    @property
    def latent_layer_ids(self) -> list[int]:
        """The layers that carry a latent variable."""
        return list(self.latent_layers) if self.latent_layers is not None else list(range(self.n_layer))


__all__ = ["DellaConfig"]
