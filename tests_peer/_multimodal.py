"""Tester and test-class settings shared by Muffin and VisCPM-Chat: images and the matching `<im_patch>` tokens (like
transformers' Llava)."""

import torch
from peer_utils import PeerModelTestMixin, skip_tests_starting_with
from tests.test_modeling_common import floats_tensor, ids_tensor

from hf_ext.testing import tiny_muffin_config, tiny_muffin_tokenizer


class MuffinModelTester:
    # 7 rows: the eager-vs-SDPA test takes up to 7 and would pad a shorter batch with random rows without image
    # tokens, which no longer match the images
    def __init__(self, parent, config_class, projector_type, batch_size=7, text_length=6, is_training=True):
        self.parent = parent
        self.config_class = config_class
        self.projector_type = projector_type
        self.batch_size = batch_size
        self.is_training = is_training
        self.tokenizer = tiny_muffin_tokenizer()
        config = self.get_config()
        self.num_query = config.num_query
        self.vocab_size = config.text_config.vocab_size
        self.hidden_size = config.text_config.hidden_size
        self.num_hidden_layers = config.text_config.num_hidden_layers
        self.num_attention_heads = config.text_config.num_attention_heads
        self.image_size = config.vision_config.image_size
        # <im_start> num_query x <im_patch> <im_end>, then text
        self.seq_length = self.num_query + 2 + text_length
        self.text_length = text_length
        # a generated <im_patch> would need an image of its own: the generation checks never produce one
        self.suppressed_token_ids = [config.image_token_id, config.image_start_token_id, config.image_end_token_id]

    def get_config(self):
        return tiny_muffin_config(self.tokenizer, projector_type=self.projector_type, config_class=self.config_class)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        special = {config.image_token_id, config.image_start_token_id, config.image_end_token_id}
        text = ids_tensor([self.batch_size, self.text_length], self.vocab_size)
        for token in special:
            text[text == token] = config.text_config.eos_token_id or 1
        image = torch.tensor(
            [config.image_start_token_id] + [config.image_token_id] * self.num_query + [config.image_end_token_id]
        )
        input_ids = torch.cat([image.expand(self.batch_size, -1), text], dim=1)
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        return config, {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
        }


class MuffinModelTestMixin(PeerModelTestMixin):
    """The settings of the Muffin-bridge test classes (Muffin, VisCPM-Chat on a transformers LLM)."""

    _is_composite = True
    # the images go with the prompt's image tokens (as transformers' Llava tester does)
    additional_model_inputs = ["pixel_values"]
    # Muffin feeds BEiT-3 its learned queries as embeddings: BEiT-3's word embeddings and masked-image-modelling
    # token are never used, so they get no gradient (by design, docs/conformance.md)
    test_all_params_have_gradient = False
    # the prompt's image tokens are replaced by image features inside: generation needs the token ids
    generate_from_inputs_embeds = False


# The mixin's RoPE-scaling test draws up to 768 random ids from the whole vocabulary, which holds the <im_patch>
# token: a text-only forward pass with an image placeholder and no image raises, by design (docs/conformance.md).
skip_rope_scaling_tests = skip_tests_starting_with(
    "test_model_rope_scaling_from_config", "random ids contain image placeholders without images (by design)"
)
