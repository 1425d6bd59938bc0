"""A tiny, offline transformers Llava for tests and benchmarks of VLM training code (no Hub access, < 1 s).

::

    from hf_ext.testing import tiny_llava

    model, processor = tiny_llava()  # LlavaForConditionalGeneration (CLIP vision, Llama text) + LlavaProcessor
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from hf_ext.testing.text_models import tiny_llama_config
from hf_ext.testing.tokenizers import DEFAULT_CORPUS, tiny_bpe_tokenizer

__all__ = ["TINY_CHAT_TEMPLATE", "tiny_llava"]

# A minimal chat template that renders TRL's structured messages (image blocks → "<image>").
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}<image>\n{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_llava(
    image_size: int = 32,
    patch_size: int = 16,
    hidden_size: int = 32,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random tiny `LlavaForConditionalGeneration` and a matching `LlavaProcessor`, built offline.

    The vision tower is a 1-layer CLIP, the language model a 2-layer Llama, both `hidden_size` wide. The image becomes
    `(image_size / patch_size) ** 2` tokens. The tokenizer is a 320-token byte-level BPE
    ([`tiny_bpe_tokenizer`]) with an `<image>` token and [`TINY_CHAT_TEMPLATE`]; the image processor is
    `CLIPImageProcessorPil` (no torchvision).

    Args:
        image_size (`int`, *optional*, defaults to 32): image side in pixels.
        patch_size (`int`, *optional*, defaults to 16): CLIP's patch side.
        hidden_size (`int`, *optional*, defaults to 32): width of both towers.
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the weights are drawn.
        texts (`Iterable[str]`, *optional*): the tokenizer's training text (words it has seen become few tokens);
            default: a small English corpus about shapes in images and the chat template's words.
    """
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    corpus = list(texts) if texts is not None else [DEFAULT_CORPUS, "USER: ASSISTANT: there is are on the of"] * 4
    tokenizer = tiny_bpe_tokenizer(
        texts=corpus,
        vocab_size=320,
        additional_special_tokens=["<image>"],
        chat_template=TINY_CHAT_TEMPLATE,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=TINY_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
        ),
        text_config=tiny_llama_config(tokenizer, hidden_size, max_position_embeddings=256),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), processor
