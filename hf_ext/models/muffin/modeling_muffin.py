"""PyTorch Muffin: BEiT-3 as the bridge between images and a causal LLM (Yu et al. 2023, arXiv:2310.00653).

The layout follows transformers' Llava on purpose (attribute names are a contract for checkpoints, PEFT and TRL):
``MuffinForConditionalGeneration.model`` is a [`MuffinModel`] with ``vision_tower`` (BEiT-3), ``query`` (the learned
query tokens), ``multi_modal_projector`` and ``language_model``; ``lm_head`` sits on top. TRL's fused LM head calls
``model.base_model`` (= ``model.model``) and reads ``last_hidden_state``, exactly as for Llava.

Depends on the sibling folder ``..beit3`` through a relative import (remote code must ship both folders' files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..beit3.modeling_beit3 import Beit3Model
from .configuration_muffin import MuffinConfig

logger = logging.get_logger(__name__)


@dataclass
class MuffinModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    Output of [`MuffinModel`]: the LLM backbone's outputs plus `image_outputs` (BEiT-3's output, whose
    `pooler_output` is the list of projected per-image query features, each `(num_query, text_hidden_size)`).
    """


@dataclass
class MuffinCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    Output of [`MuffinForConditionalGeneration`]: `loss`, `logits`, `cache`, `hidden_states`, `attentions` and
    `image_outputs` (see [`MuffinModelOutputWithPast`]).
    """


class MuffinMultiModalProjector(nn.Module):
    """Maps BEiT-3 query outputs to the LLM width: one Linear (Muffin) or Linear-act-Linear (VisCPM-Chat)."""

    def __init__(self, config: MuffinConfig):
        super().__init__()
        vision_hidden = config.vision_config.hidden_size
        text_hidden = config.text_config.hidden_size
        self.projector_type = config.projector_type
        if config.projector_type == "linear":
            self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        else:
            inner = config.projector_hidden_size or text_hidden
            self.linear_1 = nn.Linear(vision_hidden, inner)
            self.act = ACT2FN[config.projector_hidden_act]
            self.linear_2 = nn.Linear(inner, text_hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        if self.projector_type == "mlp2":
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class MuffinPreTrainedModel(PreTrainedModel):
    config: MuffinConfig
    config_class = MuffinConfig  # kept for remote code loaders that read it
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["Beit3Layer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MuffinModel):
            # Official init: timm's trunc_normal_(std=0.02) (cut at +-2, i.e. effectively N(0, 0.02)); the first/last
            # query then copy BEiT-3's <s>/</s> rows (`MuffinModel.init_query_from_beit3`, once BEiT-3 is loaded).
            init.trunc_normal_(module.query, std=0.02)


class MuffinModel(MuffinPreTrainedModel):
    """Muffin without the LM head: BEiT-3 bridge + queries + projector + LLM backbone."""

    def __init__(self, config: MuffinConfig):
        super().__init__(config)
        self.vision_tower = Beit3Model._from_config(config.vision_config)
        self.query = nn.Parameter(torch.zeros(config.num_query, config.vision_config.hidden_size))
        self.multi_modal_projector = MuffinMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @torch.no_grad()
    def init_query_from_beit3(self) -> None:
        """Copy BEiT-3's `<s>` / `</s>` word embeddings into the first / last query (official Muffin init).

        Call after loading a pre-trained BEiT-3 into `vision_tower` when training the bridge from scratch.
        """
        if self.config.query_init != "bos_eos":
            return
        words = self.vision_tower.embeddings.word_embeddings.weight
        vcfg = self.config.vision_config
        self.query[0].copy_(words[vcfg.bos_token_id])
        self.query[-1].copy_(words[vcfg.eos_token_id])

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Run the queries through BEiT-3 beside the image patches and project the query outputs.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                All images of the batch, in placeholder order.
            kwargs: `output_attentions` (`bool`, *optional*) returns BEiT-3's attention probabilities and
                `output_hidden_states` (`bool`, *optional*) its hidden states (both default to the config's);
                `return_dict` (`bool`, *optional*) returns a tuple when `False`. They are keyword arguments, not
                parameters, as in transformers' Llava: `generate` hands the image encoder the model kwargs its
                signature names and removes them from the language model's, so named output flags would be
                consumed by the image encoder.

        Returns:
            [`~modeling_outputs.BaseModelOutputWithPooling`] (or a tuple): BEiT-3's output, with `pooler_output` set
            to a list of `num_images` tensors of shape `(num_query, text_hidden_size)`.
        """
        output_attentions = kwargs.get("output_attentions")
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        output_hidden_states = kwargs.get("output_hidden_states")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        queries = self.query.unsqueeze(0).expand(pixel_values.shape[0], -1, -1)
        image_outputs = self.vision_tower(
            pixel_values=pixel_values,
            inputs_embeds=queries,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        query_states = image_outputs.last_hidden_state[:, image_outputs.split_position :]
        image_features = self.multi_modal_projector(query_states)
        image_outputs.pooler_output = list(image_features)
        return image_outputs

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Mask of the `<im_patch>` positions; raises when their number differs from the number of features."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embed).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = special_image_mask.sum()
        n_image_features = image_features.shape[0] * image_features.shape[1]
        # a tensor condition (not `int(...)`): checked eagerly, and a hint instead of a graph break under
        # torch.compile / torch.export, as transformers' Llava does
        torch_compilable_check(
            n_image_tokens * inputs_embeds.shape[-1] == image_features.numel(),
            lambda: (
                f"Image features and image tokens do not match, tokens: {int(n_image_tokens)}, features: "
                f"{n_image_features}. Each image needs exactly {self.config.num_query} `<im_patch>` tokens "
                "(let MuffinProcessor expand the image placeholder, and do not truncate inside an image block)."
            ),
        )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> tuple | MuffinModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids; each image is `num_query` `<im_patch>` tokens (normally wrapped in `<im_start>`/`<im_end>`).
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
                All images of the batch in order of appearance; samples may carry any number of images, or none.
            cache (`Cache`, *optional*):
                KV cache of the LLM (`past_key_values` is accepted as a deprecated alias).
            mm_encoder_outputs (`dict`, *optional*):
                Pre-computed `{"image": get_image_features(...)}` (what `generate` passes at prefill).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None and mm_encoder_outputs.get("image") is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        mm_encoder_outputs = dict(mm_encoder_outputs) if mm_encoder_outputs is not None else {}
        if mm_encoder_outputs.get("image") is None and pixel_values is not None and pixel_values.shape[0] > 0:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values=pixel_values, return_dict=True)

        image_outputs = mm_encoder_outputs.get("image")
        if image_outputs is not None:
            image_features = image_outputs.pooler_output
            if isinstance(image_features, (list, tuple)):
                image_features = torch.stack(list(image_features), dim=0)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
        elif input_ids is not None and (cache is None or cache.get_seq_length() == 0):
            n_image_tokens = (input_ids == self.config.image_token_id).sum()
            torch_compilable_check(
                n_image_tokens == 0,
                lambda: (
                    f"Image features and image tokens do not match, tokens: {int(n_image_tokens)}, features: 0. "
                    "The text has image placeholders but no pixel_values were given."
                ),
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        return MuffinModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )


class MuffinForConditionalGeneration(MuffinPreTrainedModel, GenerationMixin):
    """Muffin with a language-modelling head; the class to train (SFT/DPO) and to `generate` with."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # as Llava: the LM head is column-parallel with gathered output; the LLM brings its own plan (its config's
    # `base_model_tp_plan`, e.g. Llama's), merged under `model.language_model.` by transformers
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MuffinConfig):
        super().__init__(config)
        self.model = MuffinModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        """See [`MuffinModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values=pixel_values, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> tuple | MuffinCausalLMOutputWithPast:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Next-token targets (shifted inside the loss); -100 is ignored.
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0):
                Compute logits only for the last `logits_to_keep` positions (0 = all).

        Example:

        ```python
        >>> from PIL import Image
        >>> from hf_ext.testing import tiny_muffin

        >>> model, processor = tiny_muffin()
        >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
        >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        >>> inputs = processor(images=[Image.new("RGB", (40, 30))], text=prompt, return_tensors="pt")
        >>> out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        ```
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MuffinCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )


__all__ = [
    "MuffinForConditionalGeneration",
    "MuffinModel",
    "MuffinPreTrainedModel",
    "MuffinMultiModalProjector",
    "MuffinModelOutputWithPast",
    "MuffinCausalLMOutputWithPast",
]
