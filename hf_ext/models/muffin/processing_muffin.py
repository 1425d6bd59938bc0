"""Processor for Muffin / VisCPM-Chat: image processor + tokenizer + Muffin's "### Human / ### Assistant" template."""

from __future__ import annotations

from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Muffin's training format (`conv_v1_2`, `train_utils._add_speaker_and_signal`):
#   "{system}\n\n### Human: {msg}\n### Assistant: {msg}\n### "
# An image block renders as "<image>\n" (Muffin prepends "<image>\n" to the first human turn); the processor expands
# "<image>" to <im_start> + num_query x <im_patch> + <im_end>. The generation prompt is "### Assistant:" as in
# Muffin's inference code; a conversation that ends with an assistant turn ends with "###", the stop marker the model
# learned (generate with `stop_strings="###"`).
MUFFIN_CHAT_TEMPLATE = (
    "{%- set system = '" + DEFAULT_SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{ system }}{{ '\\n\\n' }}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\\n' -%}"
    "{%- elif block['type'] == 'text' -%}{%- set ns.text = ns.text + block['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = ns.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ '### Human: ' + content + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    # the whole assistant turn is a training target, as in Muffin's `_mask_targets`
    "{%- generation -%}{{ '### Assistant: ' + content + '\\n' }}"
    "{%- if loop.last and not add_generation_prompt -%}{{ '###' }}{%- endif -%}{%- endgeneration -%}"
    "{%- else -%}{{ raise_exception('Muffin chat template: unsupported role ' + message['role']) }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:' }}{%- endif -%}"
)

MUFFIN_IMAGE_TOKENS = ("<im_patch>", "<im_start>", "<im_end>")


def add_muffin_image_tokens(tokenizer) -> int:
    """Add `<im_patch>`, `<im_start>`, `<im_end>` as special tokens (and a pad token if missing).

    Returns the number of tokens added; resize the LLM's embeddings (`model.resize_token_embeddings(len(tokenizer))`)
    when it is not zero.
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(MUFFIN_IMAGE_TOKENS)})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return added


class MuffinProcessor(ProcessorMixin):
    r"""
    Muffin / VisCPM-Chat processor: a [`MuffinImageProcessor`] and the LLM's tokenizer.

    Each `<image>` in the text is replaced by `<im_start>` + `num_query` x `<im_patch>` + `<im_end>` (the layout of
    the original checkpoints); [`MuffinModel`] scatters the query features into the `<im_patch>` positions. Works
    as `processing_class` of TRL's trainers and in `pipeline("image-text-to-text")`.

    Args:
        image_processor ([`MuffinImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The LLM tokenizer; it must contain `<im_patch>`, `<im_start>` and `<im_end>` (see
            [`add_muffin_image_tokens`]).
        num_query (`int`, *optional*, defaults to 64):
            `<im_patch>` tokens per image; must equal the model's `config.num_query`.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to Muffin's "### Human: ... ### Assistant:" format.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Placeholder for an image in the text (never reaches the tokenizer).
        image_patch_token, image_start_token, image_end_token (`str`, *optional*):
            The three image tokens of the LLM vocabulary.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_query: int = 64,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_patch_token: str = "<im_patch>",
        image_start_token: str = "<im_start>",
        image_end_token: str = "<im_end>",
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("MuffinProcessor needs a tokenizer.")
        self.num_query = int(num_query)
        self.image_token = image_token
        self.image_patch_token = image_patch_token
        self.image_start_token = image_start_token
        self.image_end_token = image_end_token
        vocab = tokenizer.get_vocab()
        missing = [t for t in (image_patch_token, image_start_token, image_end_token) if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer has no {missing} token(s). Add them with "
                "`hf_ext.models.muffin.add_muffin_image_tokens(tokenizer)` and resize the model's embeddings."
            )
        self.image_patch_token_id = vocab[image_patch_token]
        self.image_start_token_id = vocab[image_start_token]
        self.image_end_token_id = vocab[image_end_token]
        if chat_template is None:
            chat_template = MUFFIN_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_ids = [self.image_patch_token_id, self.image_start_token_id, self.image_end_token_id]

    @property
    def image_seq_length(self) -> int:
        """Tokens one image occupies in the LLM sequence, `<im_start>` and `<im_end>` included."""
        return self.num_query + 2

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_start_token + self.image_patch_token * self.num_query + self.image_end_token

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        from transformers.processing_utils import MultiModalData

        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)


__all__ = ["MuffinProcessor", "add_muffin_image_tokens", "MUFFIN_CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPT"]
