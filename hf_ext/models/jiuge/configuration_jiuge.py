"""Jiuge model configuration: a GPT-2 config plus the token ids and weights of the form-stressed loss."""

from __future__ import annotations

from typing import Any, Literal

from transformers import GPT2Config
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["JiugeConfig"]


class JiugeConfig(GPT2Config):
    r"""Configuration of a Jiuge poetry model (Hu & Sun, "Generating Major Types of Chinese Classical Poetry in a
    Uniformed Framework", LREC 2020): a GPT-2 language model over a character vocabulary, trained on samples in the
    unified ``[FORM]…[TITLE]…[BODY]…[EOS]`` format with a form-stressed weighted loss.

    All GPT-2 arguments (``n_embd``, ``n_layer``, ...) keep their meaning. The weighting below is a
    **reconstruction**: the paper's abstract says only that a "simple form-stressed weighting method" strengthens
    form control "with special emphasis on those forms with longer body length"; the exact weights could not be
    read. The per-token weight of a label in the body is

    ``w = 1 + (w_class - 1) * max(1, n_lines / long_form_reference_lines) ** long_form_exponent``

    for structural tokens (line-end marks, sentence-end marks, ``[EOS]``), ``content_weight`` for characters and
    ``prompt_weight`` for the form and title fields, where ``n_lines`` is the number of lines of the sample's body.

    Args:
        form_token_id (`int`, *optional*): id of ``[FORM]``.
        title_token_id (`int`, *optional*): id of ``[TITLE]``.
        body_token_id (`int`, *optional*): id of ``[BODY]``; required by the weighted loss.
        line_end_token_ids (`list[int]`, *optional*): ids of the marks that end a line inside a sentence
            (``，、；：``).
        sentence_end_token_ids (`list[int]`, *optional*): ids of the marks that end a sentence (``。？！``).
        use_form_weighting (`bool`, *optional*, defaults to `True`): use the form-stressed loss; `False` gives
            the plain mean cross-entropy of GPT-2.
        content_weight (`float`, *optional*, defaults to 1.0): weight of body characters.
        prompt_weight (`float`, *optional*, defaults to 1.0): weight of the form and title tokens (and of
            ``[BODY]`` itself). Mask the prompt with ``-100`` labels to leave it out of the loss entirely.
        line_end_weight (`float`, *optional*, defaults to 2.0): base weight of line-end marks.
        sentence_end_weight (`float`, *optional*, defaults to 2.0): base weight of sentence-end marks.
        eos_weight (`float`, *optional*, defaults to 3.0): base weight of ``[EOS]`` (end of poem).
        long_form_exponent (`float`, *optional*, defaults to 0.5): how much longer bodies strengthen the
            structural weights; 0 disables the length emphasis.
        long_form_reference_lines (`int`, *optional*, defaults to 4): bodies with at most this many lines (a
            quatrain) get the base weights.
        loss_normalization (`str`, *optional*, defaults to `"tokens"`): divide the weighted sum by the number of
            labelled tokens (`"tokens"`, so weighting adds emphasis) or by the sum of the weights
            (`"weights"`, a weighted mean).
        ci_forms (`dict[str, dict]`, *optional*): the 词 forms the model knows, 词牌 -> ``PoemForm.to_dict()``
            (learned from the training corpus with ``learn_ci_forms``), so that ``write_poem`` works after
            ``from_pretrained``.

    Example:

    ```python
    >>> from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM, JiugeTokenizer
    >>> tokenizer = JiugeTokenizer.from_corpus(["白日依山尽，黄河入海流。"])
    >>> config = JiugeConfig.from_tokenizer(tokenizer, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    >>> model = JiugeForCausalLM(config)
    ```
    """

    model_type = "jiuge"

    form_token_id: int | None = None
    title_token_id: int | None = None
    body_token_id: int | None = None
    line_end_token_ids: list[int] | None = None
    sentence_end_token_ids: list[int] | None = None
    use_form_weighting: bool = True
    content_weight: float = 1.0
    prompt_weight: float = 1.0
    line_end_weight: float = 2.0
    sentence_end_weight: float = 2.0
    eos_weight: float = 3.0
    long_form_exponent: float = 0.5
    long_form_reference_lines: int = 4
    loss_normalization: Literal["tokens", "weights"] = "tokens"
    ci_forms: dict[str, Any] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.loss_normalization not in ("tokens", "weights"):
            raise ValueError(f"loss_normalization must be 'tokens' or 'weights', got {self.loss_normalization!r}.")
        for name in ("content_weight", "prompt_weight", "line_end_weight", "sentence_end_weight", "eos_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.long_form_reference_lines < 1:
            raise ValueError(f"long_form_reference_lines must be >= 1, got {self.long_form_reference_lines}.")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> JiugeConfig:
        """A config whose vocabulary size and special/punctuation token ids come from a :class:`JiugeTokenizer`.

        ``kwargs`` set any other field (``n_embd``, ``n_layer``, ``ci_forms``, weights, ...).
        """
        from ...utils.poetry_forms import PUNCTUATION, SENTENCE_END_PUNCTUATION

        line_end = "".join(m for m in PUNCTUATION if m not in SENTENCE_END_PUNCTUATION)
        ids = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            form_token_id=tokenizer.form_token_id,
            title_token_id=tokenizer.title_token_id,
            body_token_id=tokenizer.body_token_id,
            line_end_token_ids=tokenizer.punctuation_token_ids(line_end),
            sentence_end_token_ids=tokenizer.punctuation_token_ids(SENTENCE_END_PUNCTUATION),
        )
        ids.update(kwargs)
        return cls(**ids)
