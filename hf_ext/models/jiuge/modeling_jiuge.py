"""Jiuge: one GPT-2 model for the major forms of classical Chinese poetry (Hu & Sun, LREC 2020).

The model is GPT-2 unchanged; what makes it Jiuge is the unified sample format (see ``tokenization_jiuge``), the
form-stressed weighted loss (:func:`form_stressed_weights`) and form-constrained decoding
(:class:`PoemFormLogitsProcessor`, used by :meth:`JiugeForCausalLM.write_poem`). Only the paper's abstract could be
read; the weighting scheme and the constrained decoder are reconstructions, configurable through
:class:`JiugeConfig` and documented in ``docs/care_jiuge.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel, LogitsProcessorList
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ...utils.poetry_forms import BUILTIN_FORMS, PoemForm
from .configuration_jiuge import JiugeConfig
from .logits_process_jiuge import PoemFormLogitsProcessor
from .tokenization_jiuge import format_sample

logger = logging.get_logger(__name__)

__all__ = [
    "JiugePreTrainedModel",
    "JiugeModel",
    "JiugeForCausalLM",
    "JiugeCausalLMOutput",
    "form_stressed_weights",
    "weighted_lm_loss",
]


def form_stressed_weights(tokens: torch.LongTensor, config: JiugeConfig) -> torch.FloatTensor:
    """Per-token loss weights of the form-stressed loss for a batch of unified samples.

    Args:
        tokens (`torch.LongTensor` of shape `(batch_size, sequence_length)`): the label tokens (the input ids of
            a causal LM), with the prompt included so that ``[BODY]`` can be found.
        config (`JiugeConfig`): weights and token ids (see its docstring for the formula).

    Returns:
        `torch.FloatTensor` of shape `(batch_size, sequence_length)`: the weight of each token as a label.
    """
    if config.body_token_id is None or config.eos_token_id is None:
        raise ValueError(
            "The form-stressed loss needs config.body_token_id and config.eos_token_id; build the config with "
            "JiugeConfig.from_tokenizer(tokenizer) or set use_form_weighting=False."
        )
    line_end = torch.tensor(config.line_end_token_ids or [], dtype=torch.long, device=tokens.device)
    sentence_end = torch.tensor(config.sentence_end_token_ids or [], dtype=torch.long, device=tokens.device)
    is_line_end = torch.isin(tokens, line_end)
    is_sentence_end = torch.isin(tokens, sentence_end)
    is_eos = tokens == config.eos_token_id
    is_body_marker = tokens == config.body_token_id
    # A token is in the body when a [BODY] token comes before it in its row.
    in_body = (torch.cumsum(is_body_marker.long(), dim=1) > 0) & ~is_body_marker

    n_lines = ((is_line_end | is_sentence_end) & in_body).sum(dim=1, keepdim=True).float()
    scale = (n_lines / config.long_form_reference_lines).clamp(min=1.0) ** config.long_form_exponent

    def stressed(base: float) -> torch.Tensor:
        return 1.0 + (base - 1.0) * scale

    weights = torch.full(tokens.shape, config.prompt_weight, dtype=torch.float, device=tokens.device)
    weights = torch.where(in_body, torch.full_like(weights, config.content_weight), weights)
    weights = torch.where(in_body & is_line_end, stressed(config.line_end_weight).expand_as(weights), weights)
    weights = torch.where(in_body & is_sentence_end, stressed(config.sentence_end_weight).expand_as(weights), weights)
    weights = torch.where(is_eos, stressed(config.eos_weight).expand_as(weights), weights)
    return weights


def weighted_lm_loss(
    logits: torch.FloatTensor,
    labels: torch.LongTensor | None,
    weights: torch.FloatTensor | None,
    normalization: str = "tokens",
    ignore_index: int = -100,
    shift_labels: torch.LongTensor | None = None,
) -> torch.FloatTensor:
    """Causal-LM cross-entropy with per-label weights.

    ``loss = sum_t w_t * CE_t / N`` over labelled positions ``t`` (labels ``!= ignore_index``), with ``N`` the
    number of labelled positions (``normalization="tokens"``) or ``sum_t w_t`` (``"weights"``). With
    ``weights=None`` it is the usual mean cross-entropy. ``labels`` are shifted by one inside and ``weights`` is
    aligned with them (the weight of the token as a label), like ``labels`` before the shift. ``shift_labels``
    (already aligned with ``logits``, as sequence-parallel trainers pass them) replace ``labels``; ``weights`` is then
    aligned with ``shift_labels``.
    """
    if shift_labels is not None:
        if shift_labels.shape != logits.shape[:2]:
            raise ValueError(
                f"shift_labels has shape {tuple(shift_labels.shape)} but the logits cover {tuple(logits.shape[:2])}."
            )
        step_logits, targets = logits.float(), shift_labels
        aligned_weights = weights
    else:
        step_logits, targets = logits[:, :-1, :].float(), labels[:, 1:]
        aligned_weights = None if weights is None else weights[:, 1:]
    mask = targets != ignore_index
    ce = F.cross_entropy(
        step_logits.reshape(-1, step_logits.size(-1)),
        targets.reshape(-1).masked_fill(~mask.reshape(-1), 0),
        reduction="none",
    ).view_as(targets)
    w = mask.float() if aligned_weights is None else aligned_weights.float() * mask
    total = (w * ce).sum()
    if normalization == "tokens":
        return total / mask.sum().clamp(min=1)
    if normalization == "weights":
        return total / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
    raise ValueError(f"normalization must be 'tokens' or 'weights', got {normalization!r}.")


@dataclass
class JiugeCausalLMOutput(CausalLMOutputWithCrossAttentions):
    """`CausalLMOutputWithCrossAttentions` plus the unweighted loss.

    Args:
        lm_loss (`torch.FloatTensor` of shape `()`, *optional*): the plain mean cross-entropy of the labels, returned
            with ``loss`` when the form-stressed loss is used (for perplexity and logging).
    """

    lm_loss: torch.FloatTensor | None = None


class JiugePreTrainedModel(GPT2PreTrainedModel):
    """Holds the config class of the Jiuge models; the weights and their initialisation are GPT-2's."""

    config_class = JiugeConfig
    config: JiugeConfig


class JiugeModel(GPT2Model):
    """The bare GPT-2 transformer of a Jiuge checkpoint (for ``AutoModel``)."""

    config_class = JiugeConfig
    config: JiugeConfig


class JiugeForCausalLM(GPT2LMHeadModel):
    """GPT-2 with a language-modeling head, the form-stressed loss and :meth:`write_poem`.

    ``forward`` takes the usual ``labels`` and, optionally, ``loss_weights`` (same shape as ``labels``) that replace
    the weights computed by :func:`form_stressed_weights`. With ``config.use_form_weighting=False`` and no
    ``loss_weights`` the loss is GPT-2's mean cross-entropy.
    """

    config_class = JiugeConfig
    config: JiugeConfig
    # The loss is a weighted mean computed here; let the Trainer scale it for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config: JiugeConfig):
        super().__init__(config)
        self.tokenizer = None  # set with `set_tokenizer` or loaded lazily by `write_poem`

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_weights: torch.FloatTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> JiugeCausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): unified samples (or pass
                `inputs_embeds`).
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): ``input_ids`` with
                ``-100`` at positions left out of the loss (padding, optionally the prompt); shifted inside.
            shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): targets already
                aligned with the logits (sequence-parallel training); they replace `labels`.
            loss_weights (`torch.FloatTensor` of shape `(batch_size, sequence_length)`, *optional*): per-label
                weights overriding the form-stressed ones, aligned with `labels` (or with `shift_labels`).
            cache, attention_mask, token_type_ids, position_ids, inputs_embeds, use_cache, logits_to_keep: as in
                [`GPT2LMHeadModel`]; `return_dict`, `output_hidden_states` and `output_attentions` are honoured.
        """
        outputs = self.transformer(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = lm_loss = None
        if labels is not None or shift_labels is not None:
            targets = shift_labels if shift_labels is not None else labels
            if loss_weights is not None and loss_weights.shape != targets.shape:
                name = "shift_labels" if shift_labels is not None else "labels"
                raise ValueError(
                    f"loss_weights has shape {tuple(loss_weights.shape)}, {name} {tuple(targets.shape)}; they must "
                    "match."
                )
            lm_loss = weighted_lm_loss(logits, labels, None, shift_labels=shift_labels)
            if loss_weights is None and self.config.use_form_weighting:
                if input_ids is None:
                    tokens = targets
                elif shift_labels is not None:
                    # position t of shift_labels is token t + 1 of the text
                    next_ids = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
                    tokens = torch.where(shift_labels == -100, next_ids, shift_labels)
                else:
                    tokens = torch.where(labels == -100, input_ids, labels)
                loss_weights = form_stressed_weights(tokens, self.config)
            loss = (
                lm_loss
                if loss_weights is None
                else weighted_lm_loss(
                    logits, labels, loss_weights, self.config.loss_normalization, shift_labels=shift_labels
                )
            )
        return JiugeCausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

    # ----------------------------------------------------------------------------------------------------------
    # Poem forms and generation

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the :class:`JiugeTokenizer` that :meth:`write_poem` uses."""
        if len(tokenizer) > self.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {self.config.vocab_size}.")
        self.tokenizer = tokenizer

    @property
    def forms(self) -> dict[str, PoemForm]:
        """Every form the model can be asked for: the built-in ones and the 词 forms of ``config.ci_forms``."""
        forms = dict(BUILTIN_FORMS)
        for name, d in (self.config.ci_forms or {}).items():
            forms[name] = PoemForm.from_dict(d)
        return forms

    def get_form(self, form: str | PoemForm) -> PoemForm:
        """Resolve a form name (``"七言律诗"``, a 词牌 in ``config.ci_forms``) or pass a :class:`PoemForm` through."""
        if isinstance(form, PoemForm):
            return form
        forms = self.forms
        if form not in forms:
            known = ", ".join(list(forms)[:12])
            raise ValueError(
                f"Unknown form {form!r}. Known forms: {known}{' ...' if len(forms) > 12 else ''} "
                f"({len(forms)} in all). Add 词 forms to config.ci_forms (learn_ci_forms) or pass a PoemForm."
            )
        return forms[form]

    def _resolve_tokenizer(self, tokenizer):
        if tokenizer is not None:
            return tokenizer
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            source = getattr(self.config, "name_or_path", None) or getattr(self.config, "_name_or_path", None)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(source) if source else None
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"write_poem needs the model's tokenizer and none could be loaded from {source!r} ({e}); pass "
                    "tokenizer=... or call model.set_tokenizer(tokenizer)."
                ) from e
            if self.tokenizer is None:
                raise ValueError("write_poem needs a tokenizer: pass tokenizer=... or call model.set_tokenizer().")
        return self.tokenizer

    @torch.no_grad()
    def write_poem(
        self,
        form: str | PoemForm,
        title: str = "",
        tokenizer=None,
        constrained: bool = True,
        num_poems: int = 1,
        do_sample: bool = True,
        top_k: int | None = 20,
        top_p: float | None = None,
        temperature: float = 1.0,
        max_new_tokens: int | None = None,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Write a poem of ``form`` on ``title``.

        Args:
            form (`str` or `PoemForm`): e.g. ``"五言绝句"``, ``"七言律诗"``, ``"七言对联"`` or a 词牌 from
                ``config.ci_forms`` such as ``"浣溪沙"``.
            title (`str`, *optional*, defaults to `""`): the title (the theme).
            tokenizer (`JiugeTokenizer`, *optional*): defaults to the attached or the checkpoint's tokenizer.
            constrained (`bool`, *optional*, defaults to `True`): decode with :class:`PoemFormLogitsProcessor`,
                which guarantees the form; `False` lets the model alone decide (for ablations).
            num_poems (`int`, *optional*, defaults to 1): poems to write; a list is returned when it is > 1.
            do_sample, top_k, top_p, temperature: sampling settings passed to ``generate``.
            max_new_tokens (`int`, *optional*): defaults to the form's body length + 1 (the ``[EOS]``) when
                constrained, and to twice that when unconstrained.
            generate_kwargs: any other ``generate`` argument (``num_beams``, ``repetition_penalty``, ...).

        Returns:
            `str` or `list[str]`: the poem body (or bodies), e.g. ``"白日依山尽，黄河入海流。…"``.
        """
        if isinstance(num_poems, bool) or not isinstance(num_poems, int) or num_poems < 1:
            raise ValueError(f"write_poem: num_poems must be an integer >= 1, got {num_poems!r}.")
        tokenizer = self._resolve_tokenizer(tokenizer)
        poem_form = self.get_form(form)
        prompt = tokenizer(format_sample(poem_form.name, title), return_tensors="pt").to(self.device)
        prompt_length = prompt["input_ids"].shape[1]
        needed = poem_form.body_length + 1
        if prompt_length + needed > self.config.n_positions:
            raise ValueError(
                f"write_poem: {poem_form.name} needs {needed} tokens (body + [EOS]) after a prompt of {prompt_length} "
                f"tokens, {prompt_length + needed} in all, but the model's context is n_positions="
                f"{self.config.n_positions}. Use a shorter form or title, or a model with a longer context."
            )
        if constrained:
            processors = LogitsProcessorList([PoemFormLogitsProcessor.from_tokenizer(poem_form, tokenizer)])
            processors.extend(generate_kwargs.pop("logits_processor", None) or [])
            generate_kwargs["logits_processor"] = processors
        if max_new_tokens is None:
            max_new_tokens = needed if constrained else min(2 * needed, self.config.n_positions - prompt_length)
        elif constrained and max_new_tokens < needed:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too short for {poem_form.name} (needs {needed}).")
        if prompt_length + max_new_tokens > self.config.n_positions:
            raise ValueError(
                f"write_poem: max_new_tokens={max_new_tokens} after a prompt of {prompt_length} tokens exceeds the "
                f"model's context n_positions={self.config.n_positions}; lower max_new_tokens."
            )
        sampling = {"top_k": top_k, "top_p": top_p, "temperature": temperature} if do_sample else {}
        out = self.generate(
            **prompt,
            do_sample=do_sample,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_poems,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **{k: v for k, v in sampling.items() if v is not None},
            **generate_kwargs,
        )
        bodies = tokenizer.decode(out[:, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        bodies = [bodies] if isinstance(bodies, str) else bodies
        bodies = ["".join(b.split()) for b in bodies]
        return bodies[0] if num_poems == 1 else bodies
