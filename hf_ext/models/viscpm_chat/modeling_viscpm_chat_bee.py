"""VisCPM-Chat on its original LLM, CPM-Bee (OpenBMB ``VLU_CPMBee``): the released checkpoints run as they are.

The bridge (BEiT-3 with 64 learned queries, then ``mapping = Linear -> GELU -> Linear``) is Muffin's
(:class:`~hf_ext.models.muffin.MuffinModel` builds it; its ``language_model`` is a
:class:`~hf_ext.models.cpmbee.CpmBeeModel` here). What differs from the Muffin path is the prompt and the injection,
kept as VisCPM does them:

* the prompt is CPM-Bee's structured dict ``{"image": "<unk>" * 64, "context": ..., "question": ..., "<ans>": ""}``
  (:func:`build_viscpm_chat_prompt`);
* the 64 projected query states *overwrite* the input embeddings of the 64 ``<unk>`` of the image value segment
  (``image_bound`` = start + 1 .. end - 1 of that segment) at prefill; decode steps embed normally;
* decoding is VisCPM's beam search (beam 3, temperature 0.7, repetition penalty 1.1, length penalty 3),
  :meth:`VisCPMChatBeeForConditionalGeneration.chat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.utils import can_return_tuple, logging

from ..cpmbee.generation_cpmbee import VISCPM_CHAT_BEAM_SETTINGS, cpmbee_beam_search
from ..cpmbee.modeling_cpmbee import cpmbee_lm_loss
from ..muffin.modeling_muffin import MuffinCausalLMOutputWithPast, MuffinModel
from .configuration_viscpm_chat import VisCPMChatConfig
from .modeling_viscpm_chat import VisCPMChatPreTrainedModel

logger = logging.get_logger(__name__)

__all__ = ["VisCPMChatBeeForConditionalGeneration", "build_viscpm_chat_prompt", "viscpm_chat_image_bound"]


def build_viscpm_chat_prompt(question: str, context: str = "", num_query: int = 64) -> dict[str, Any]:
    """VisCPM-Chat's prompt dict: `{"image": "<unk>" * num_query, "context": context, "question": question,
    "<ans>": ""}` (`VisCPMChat.chat`)."""
    return {"image": "<unk>" * num_query, "context": context, "question": question, "<ans>": ""}


def viscpm_chat_image_bound(info: dict[str, Any], input_ids: torch.Tensor, row: int) -> tuple[int, int]:
    """`(start, end)` (end exclusive) of the image placeholders of `row` in the (left-padded) generation inputs: the
    value segment of the top-level `"image"` key without its `<s>` and `</s>`."""
    segments = info["segments"]
    image = next(
        (
            i
            for i, s in enumerate(segments)
            if s["parent"] is not None
            and segments[s["parent"]]["value"] == "image"
            and segments[s["parent"]]["depth"] == 1
        ),
        None,
    )
    if image is None:
        raise ValueError("The prompt has no top-level 'image' key; build it with `build_viscpm_chat_prompt`.")
    positions = info["kept_segment_ids"]
    idx = [j for j, s in enumerate(positions) if s == image]
    pad = input_ids.shape[1] - len(positions)
    return pad + idx[0] + 1, pad + idx[-1]


class VisCPMChatBeeForConditionalGeneration(VisCPMChatPreTrainedModel, GenerationMixin):
    r"""
    VisCPM-Chat with CPM-Bee as its LLM (a [`VisCPMChatConfig`] whose `text_config` is a `cpmbee` config). Loading a
    `viscpm_chat` checkpoint with a CPM-Bee text config through [`VisCPMChatForConditionalGeneration`] or
    `AutoModelForImageTextToText` returns this class.

    Parameters are `model.vision_tower.*`, `model.query`, `model.multi_modal_projector.*` (Muffin's names) and
    `model.language_model.*` (CPM-Bee's original names); the logits are CPM-Bee's (vocabulary + extension columns).
    """

    _no_split_modules = ["Beit3Layer", "CpmBeeTransformerBlock"]

    def __init__(self, config: VisCPMChatConfig):
        super().__init__(config)
        if getattr(config.text_config, "model_type", None) != "cpmbee":
            raise ValueError(
                "VisCPMChatBeeForConditionalGeneration needs a `cpmbee` text_config, got "
                f"{getattr(config.text_config, 'model_type', None)!r}; use VisCPMChatForConditionalGeneration."
            )
        self.model = MuffinModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.language_model.input_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.language_model.input_embedding = value

    def get_output_embeddings(self) -> None:
        return None

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """BEiT-3 over the image patches and the queries, then `mapping`: `pooler_output` is a list of
        `(num_query, hidden)` tensors (VisCPM's `vision_hidden_states`)."""
        return self.model.get_image_features(pixel_values=pixel_values, **kwargs)

    def inject_image_features(
        self,
        inputs_embeds: torch.Tensor,
        image_bound: Sequence[Sequence[tuple[int, int]]],
        vision_hidden_states: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Overwrite `inputs_embeds[b, start:end]` with the next image's states for every `(start, end)` of row `b`
        (images taken in order over the batch)."""
        out = inputs_embeds.clone()
        k = 0
        for b, bounds in enumerate(image_bound):
            for start, end in bounds:
                if k >= len(vision_hidden_states):
                    raise ValueError(f"image_bound names more images than the {len(vision_hidden_states)} given.")
                states = vision_hidden_states[k]
                if end - start != states.shape[0]:
                    raise ValueError(
                        f"image_bound ({start}, {end}) of row {b} spans {end - start} tokens but the image has "
                        f"{states.shape[0]} query states."
                    )
                out[b, start:end] = states.to(out.dtype)
                k += 1
        if k != len(vision_hidden_states):
            raise ValueError(f"{len(vision_hidden_states)} images were given but image_bound places {k}.")
        return out

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_hidden_states: Sequence[torch.Tensor] | None = None,
        image_bound: Sequence[Sequence[tuple[int, int]]] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        ext_table_ids: torch.LongTensor | None = None,
        ext_table_sub: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> tuple | MuffinCausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor`): CPM-Bee ids (the image segment holds `<unk>` placeholders).
            pixel_values (`torch.Tensor`, *optional*): images, one per `image_bound` entry (in order).
            vision_hidden_states (`list[torch.Tensor]`, *optional*): precomputed image states (reused across turns).
            image_bound (`list[list[tuple[int, int]]]`, *optional*): per row, the `(start, end)` spans to overwrite.
            labels (`torch.LongTensor`, *optional*): CPM-Bee's aligned targets (not shifted).
            All other arguments are [`CpmBeeModel.forward`]'s (structured inputs, `cache`, `use_cache`,
            `output_attentions`, `output_hidden_states`...).

        Returns:
            [`~hf_ext.models.muffin.MuffinCausalLMOutputWithPast`] (a tuple with `return_dict=False`): CPM-Bee's logits
            and states, and `image_outputs` (BEiT-3's output for `pixel_values`, as [`get_image_features`] returns it).
        """
        llm = self.model.language_model
        image_outputs = None
        if inputs_embeds is None and (pixel_values is not None or vision_hidden_states is not None):
            if image_bound is None:
                raise ValueError("Pass `image_bound` with `pixel_values` / `vision_hidden_states`.")
            if vision_hidden_states is None:
                image_outputs = self.get_image_features(
                    pixel_values,
                    output_attentions=kwargs.get("output_attentions"),
                    output_hidden_states=kwargs.get("output_hidden_states"),
                    return_dict=True,
                )
                vision_hidden_states = image_outputs.pooler_output
            inputs_embeds = llm.embed(
                input_ids,
                kwargs.get("input_id_sub"),
                torch.as_tensor(ext_table_ids) if ext_table_ids is not None else None,
                torch.as_tensor(ext_table_sub) if ext_table_sub is not None else None,
            )
            inputs_embeds = self.inject_image_features(inputs_embeds, image_bound, vision_hidden_states)
            input_ids = None
        outputs = llm(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            ext_table_ids=ext_table_ids,
            ext_table_sub=ext_table_sub,
            **{**kwargs, "return_dict": True},
        )
        logits = llm.lm_logits(outputs.last_hidden_state, ext_table_ids, ext_table_sub, logits_to_keep)
        loss = cpmbee_lm_loss(logits, labels) if labels is not None else None
        return MuffinCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )

    @torch.no_grad()
    def chat(
        self,
        tokenizer,
        image_processor,
        image,
        question: str,
        context: str = "",
        vision_hidden_states: Sequence[torch.Tensor] | None = None,
        max_length: int = 512,
        **beam_kwargs,
    ) -> tuple[str, str, list[torch.Tensor]]:
        """One turn of VisCPM-Chat (`VisCPMChat.chat`): returns `(answer, context for the next turn,
        vision_hidden_states)`. Beam settings default to VisCPM-Chat's (beam 3, temperature 0.7, repetition 1.1,
        length penalty 3); `vision_hidden_states` from an earlier turn skip the image encoder."""
        device = next(self.parameters()).device
        if vision_hidden_states is None:
            if image is None:
                raise ValueError("Pass an `image`, or the `vision_hidden_states` returned by an earlier turn.")
            pixel_values = image_processor([image], return_tensors="pt")["pixel_values"].to(device, self.dtype)
            vision_hidden_states = self.get_image_features(pixel_values).pooler_output
        data = build_viscpm_chat_prompt(question, context, num_query=self.config.num_query)
        enc, infos = tokenizer.prepare_for_generation(data)
        enc = {k: v.to(device) for k, v in enc.items()}
        bound = [[viscpm_chat_image_bound(infos[0], enc["input_ids"], 0)]]
        llm = self.model.language_model
        embeds = llm.embed(enc["input_ids"], enc["input_id_sub"], enc["ext_table_ids"], enc["ext_table_sub"])
        embeds = self.inject_image_features(embeds, bound, vision_hidden_states)
        settings = {**VISCPM_CHAT_BEAM_SETTINGS, **beam_kwargs}
        result = cpmbee_beam_search(
            self, tokenizer, model_inputs=enc, infos=infos, inputs_embeds=embeds, max_length=max_length, **settings
        )
        answer = result.answers[0]["<ans>"] or ""
        return answer, f"{context}User: {question}\nAI: {answer}\n", list(vision_hidden_states)
