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
_POOLER_ACTIVATIONS = ("gelu_new", "gelu")
_LMF_FORMS = ("per_rank", "summed_factors")
_FREE_BITS_REDUCTIONS = ("batch", "sample")
_CONDITION_ENCODINGS = ("joint", "separate")
_BOW_HEADS = ("linear", "lm_head")
_PRIOR_NETWORKS = ("latent_layers", "from_first")

#: The value of every flag under which DELLA computes exactly what the official code (``OpenVLG/DELLA``) computes;
#: :meth:`DellaConfig.from_original_defaults` applies them. Each key is also documented on [`DellaConfig`].
ORIGINAL_DELLA_FLAGS: dict[str, object] = {
    "value_fusion": "replace",
    "kl_reduction": "mean",
    "pooling": "attention",
    "pooling_mask_padding": False,
    "pooler_activation": "gelu_new",
    "first_layer_prior": "learned",
    "latent_clamp": 5.0,
    "lmf_form": "summed_factors",
    "free_bits_reduction": "sample",
    "condition_encoding": "separate",
    "bow_head": "lm_head",
    "bow_shift_labels": True,
    "ignore_pad_token_in_loss": True,
    "generation_prior_networks": "from_first",
    "tie_word_embeddings": False,
}


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
            Which layers carry a latent (0-based, increasing). Defaults to all layers (the paper). The official
            ``--begin_layer b --end_layer e`` is ``list(range(b, e + 1))``: its ``end_layer`` is inclusive (see
            :meth:`from_original_defaults`).
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
            ``max(lambda, KL_l)``, with KL_l averaged over the batch or per row (``free_bits_reduction``). The
            official ``--kl_threshold``. 0 disables it (the paper).
        conditional (`bool`, *optional*, defaults to `False`):
            The CVAE variant (paper Eq. 11-12): the prior of every layer also sees the pooled source c^(l), computed
            by the same encoder on the source tokens only. The inputs are source and target concatenated, with
            ``source_mask`` marking the source.
        bow_weight (`float`, *optional*, defaults to 0.0):
            Weight of the optional bag-of-words loss (the paper's ``--use_bow``, 0.2 there); 0 disables it.
        pooler_activation (`str`, *optional*, defaults to `"gelu_new"`):
            Activation of the attention pooler's scores: ``"gelu_new"`` (tanh approximation, the official
            ``AverageSelfAttention``) or ``"gelu"`` (exact erf; what hf_ext used before 0.x, 4e-5 relative apart).
        lmf_form (`str`, *optional*, defaults to `"per_rank"`):
            ``"per_rank"``: the standard LMF of Liu et al. (2018), ``sum_r w_r (V_r [v;1]) * (Z_r [z;1]) + b``.
            ``"summed_factors"``: the official code, ``(sum_r V_r [v;1]) * (sum_r Z_r [z;1])``: the factors are summed
            over the rank *before* the product (rank 1 in effect, no rank weights, no bias).
        free_bits_reduction (`str`, *optional*, defaults to `"batch"`):
            Where ``free_bits`` applies: ``"batch"`` clamps each layer's batch-mean KL (Kingma et al., 2016);
            ``"sample"`` clamps every row's KL of every layer (the official ``--kl_threshold``), which also lifts
            the examples whose KL is below lambda.
        condition_encoding (`str`, *optional*, defaults to `"joint"`):
            Conditional variant: how the source is encoded for the prior. ``"joint"``: the joint sequence with target
            keys masked, pooled over the source tokens (``source_mask``). ``"separate"``: the official code, the source
            alone as its own right-padded tensor (``condition_ids``, or cut out of ``input_ids`` by ``source_mask``
            and padded to the longest source of the batch), pooled over its padded length when
            ``pooling_mask_padding=False``.
        bow_head (`str`, *optional*, defaults to `"linear"`):
            The bag-of-words head: ``"linear"`` maps all latents (concatenated) to the vocabulary; ``"lm_head"`` is the
            official ``lm_head(mlp_bow(z_L))``: the last latent layer's z through a linear map to ``n_embd``, then the
            LM head.
        bow_shift_labels (`bool`, *optional*, defaults to `False`):
            Score the bag of words against the shifted labels ``labels[:, 1:]`` (the official code) instead of all
            labels (hf_ext, which also counts the first token).
        ignore_pad_token_in_loss (`bool`, *optional*, defaults to `False`):
            Also ignore every label equal to ``pad_token_id`` in the reconstruction and BOW losses (the official code,
            which drops a pad id even where it is attended text). hf_ext ignores only ``-100``.
        generation_prior_networks (`str`, *optional*, defaults to `"latent_layers"`):
            Which latent networks draw prior samples (:meth:`~DellaForCausalLM.sample_latents`) when the latents do
            not start at layer 0: ``"latent_layers"`` uses the networks trained for those layers; ``"from_first"``
            reproduces the official ``get_prior``, which indexes them from 0 (``--begin_layer 1`` samples with the
            networks of layers 0, 1, ...; the model then holds latent networks for every layer, as the original's
            checkpoints do, and those of layers below ``begin_layer`` get no gradient in training: multi-GPU
            training needs ``ddp_find_unused_parameters=True``).
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
    pooler_activation: str = "gelu_new"
    lmf_form: str = "per_rank"
    free_bits_reduction: str = "batch"
    condition_encoding: str = "joint"
    bow_head: str = "linear"
    bow_shift_labels: bool = False
    ignore_pad_token_in_loss: bool = False
    generation_prior_networks: str = "latent_layers"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name, value, allowed in (
            ("latent_injection", self.latent_injection, _INJECTIONS),
            ("value_fusion", self.value_fusion, _FUSIONS),
            ("kl_reduction", self.kl_reduction, _KL_REDUCTIONS),
            ("pooling", self.pooling, _POOLINGS),
            ("first_layer_prior", self.first_layer_prior, _FIRST_PRIORS),
            ("pooler_activation", self.pooler_activation, _POOLER_ACTIVATIONS),
            ("lmf_form", self.lmf_form, _LMF_FORMS),
            ("free_bits_reduction", self.free_bits_reduction, _FREE_BITS_REDUCTIONS),
            ("condition_encoding", self.condition_encoding, _CONDITION_ENCODINGS),
            ("bow_head", self.bow_head, _BOW_HEADS),
            ("generation_prior_networks", self.generation_prior_networks, _PRIOR_NETWORKS),
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

    @classmethod
    def from_original_defaults(cls, begin_layer: int | None = None, end_layer: int | None = None, **kwargs):
        r"""A configuration under which DELLA computes what the official code (``OpenVLG/DELLA``) computes.

        Every flag of [`ORIGINAL_DELLA_FLAGS`] takes the original's value; ``kwargs`` (GPT-2 sizes, ``latent_size``,
        ``free_bits`` = the original's ``--kl_threshold``, ``bow_weight``, ``conditional``, ...) override anything.

        Args:
            begin_layer (`int`, *optional*): the original's ``--begin_layer`` (first layer with a latent).
            end_layer (`int`, *optional*): the original's ``--end_layer``, **inclusive** (the original's
                ``range(begin, end + 1)``); ``0`` counts as unset, as in the original.
            kwargs: any other [`DellaConfig`] argument.

        Example:

        ```python
        >>> from hf_ext.models.della import DellaConfig
        >>> cfg = DellaConfig.from_original_defaults(n_layer=12, latent_size=32, begin_layer=1, end_layer=2)
        >>> cfg.latent_layers, cfg.lmf_form
        ([1, 2], 'summed_factors')
        ```
        """
        flags = dict(ORIGINAL_DELLA_FLAGS)
        flags.update(kwargs)
        n_layer = flags.get("n_layer", cls.n_layer if isinstance(cls.n_layer, int) else 12)
        if "latent_layers" not in kwargs and (begin_layer or end_layer):
            begin = begin_layer or 0
            end = end_layer if end_layer else n_layer - 1
            flags["latent_layers"] = list(range(begin, end + 1))
        return cls(**flags)

    @property
    def latent_layer_ids(self) -> list[int]:
        """The layers that carry a latent variable."""
        return list(self.latent_layers) if self.latent_layers is not None else list(range(self.n_layer))


__all__ = ["DellaConfig", "ORIGINAL_DELLA_FLAGS"]
