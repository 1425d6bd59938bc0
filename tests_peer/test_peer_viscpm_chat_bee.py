"""transformers' own ModelTesterMixin / ConfigTester on VisCPM-Chat with its original LLM, CPM-Bee
(`VisCPMChatBeeForConditionalGeneration`: a `viscpm_chat` config whose `text_config` is `cpmbee`).

The tester builds VisCPM-Chat's real prompts with [`CpmBeeTokenizer`] (`build_viscpm_chat_prompt`: the image segment
of `num_query` `<unk>`, the question, the answer slot), the structured inputs CPM-Bee needs, an image per row and each
row's `image_bound` (the span the image's query states overwrite) as a `(batch, 1, 2)` tensor, so the mixins' batch
slicing keeps images, spans and prompts together.
"""

import unittest

import torch
from _cpmbee import CpmBeePromptTester
from peer_utils import PeerModelTestMixin, forward_twice, skip_tests_starting_with
from tests.test_modeling_common import ModelTesterMixin, floats_tensor

from hf_ext.models.viscpm_chat import (
    VisCPMChatBeeForConditionalGeneration,
    VisCPMChatConfig,
    build_viscpm_chat_prompt,
    viscpm_chat_image_bound,
)


class VisCPMChatBeeModelTester(CpmBeePromptTester):
    num_query = 4
    image_size = 32

    def prompts(self):
        return [build_viscpm_chat_prompt(q, num_query=self.num_query) for q in ("what is it?", "hello")]

    def __init__(self, parent):
        super().__init__(parent)
        ids = self.encoding["input_ids"]
        self.image_bound = torch.tensor(
            [[viscpm_chat_image_bound(info, ids, b)] for b, info in enumerate(self.prompt_infos)]
        )

    def get_config(self):
        tok = self.tokenizer
        return VisCPMChatConfig(
            vision_config=dict(
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads,
                intermediate_size=2 * self.hidden_size,
                image_size=self.image_size,
                patch_size=16,
                vocab_size=64,
                max_position_embeddings=16,
            ),
            text_config=dict(model_type="cpmbee", **self.cpmbee_config_kwargs()),
            num_query=self.num_query,
            projector_type="mlp2",
            image_token_id=tok.unk_token_id,
            image_start_token_id=tok.bos_token_id,
            image_end_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        inputs = self.structured_inputs()
        inputs["pixel_values"] = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        inputs["image_bound"] = self.image_bound.clone()
        return config, inputs


# The mixin's eager-vs-SDPA test re-pads the prompts (left and right), which moves the image spans `image_bound` points
# at; and the LLM, CPM-Bee, has one (eager) attention implementation. BEiT-3's SDPA path is compared in the Muffin and
# VisCPM-Chat testers (by design, docs/conformance.md).
@skip_tests_starting_with(
    "test_eager_matches_sdpa_inference", "re-padding moves the image spans; CPM-Bee is eager only (by design)"
)
class VisCPMChatBeeModelTest(PeerModelTestMixin, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VisCPMChatBeeForConditionalGeneration,)
    model_tester_class = VisCPMChatBeeModelTester
    config_tester_kwargs = {"config_class": VisCPMChatConfig, "has_text_modality": False}
    _is_composite = True
    additional_model_inputs = ["pixel_values", "image_bound"]
    # as Muffin: BEiT-3's word embeddings and masked-image-modelling token are never used (docs/conformance.md)
    test_all_params_have_gradient = False
    # CPM-Bee's embedding is also its output projection with extension columns (see test_peer_cpmbee.py)
    test_resize_embeddings = False
    # VisCPM-Chat on CPM-Bee decodes with CPM-Bee's own beam search (`chat`, `cpmbee_beam_search`, tested against the
    # original code in tests/models/viscpm_chat/test_viscpm_chat_bee.py): the image overwrites the prompt's span at prefill only, which
    # stock `generate` has no hook for (by design, docs/conformance.md)
    all_generative_model_classes = ()
    # `image_bound` spans are values that choose where the image is written: export would have to specialise them
    # (by design, docs/conformance.md)
    test_torch_exportable = False

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            # CPM-Bee's aligned targets (the label at position i is token i + 1), -100 at the end and on padding
            ids = inputs_dict["input_ids"]
            labels = torch.full_like(ids, -100)
            labels[:, :-1] = ids[:, 1:]
            labels[:, :-1][inputs_dict["attention_mask"][:, 1:] == 0] = -100
            inputs_dict["labels"] = labels
        return inputs_dict

    def test_image_reaches_the_language_model(self):
        # the image reaches the LLM: another image changes the logits (the tester's inputs are really multimodal)
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        other = dict(inputs, pixel_values=inputs["pixel_values"].flip(-1) + 1.0)
        a, b = forward_twice(VisCPMChatBeeForConditionalGeneration, config, inputs, other)
        self.assertFalse(torch.allclose(a[:, -1], b[:, -1], atol=1e-4))
