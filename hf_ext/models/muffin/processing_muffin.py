"""Processor for Muffin / VisCPM-Chat: image processor + tokenizer + the conversation formats of the original code.

Named chat templates (``processor.chat_template`` is a dict; pick one with
``processor.apply_chat_template(messages, chat_template="muffin_v0")``):

* ``"default"`` = ``"muffin_original"``: what the original code (thunlp/Muffin @ 85d72b4, RLHF-V) feeds the LLM in each
  situation. A conversation without a generation prompt renders in the v0 *training* format
  (``train_utils.preprocess`` / ``_add_speaker_and_signal``)::

      "{system}\\n\\n### Human: <image>\\n{q1}\\n### Assistant: {a1}\\n### Human: {q2}\\n### Assistant: {a2}\\n### "

  (note the trailing space of the final ``"### "``), and a prompt with ``add_generation_prompt=True`` renders in the
  *inference* format of ``muffin/eval/muffin_vqa.py`` (used by ``muffin_chat.py`` and RLHF-V's evaluation)::

      "{system}\\n###Human: {q}\\n<image>\\n###"

  (no space after ``"###"``, the image after the question, no ``"Assistant:"``: the model continues with
  ``" Assistant: ..."`` and stops at the next ``"###"``).
* ``"muffin_v0"``: the v0 training format throughout; its generation prompt is ``"### Assistant:"``, so a prompt is a
  prefix of the prompt + completion rendering (what TRL's prompt-completion and preference datasets need).
* ``"muffin_eval"``: the inference format throughout (earlier turns as ``"Human: ...\\n###Assistant: ...\\n###"``,
  the generalisation of the original's single-turn prompt; the original has no multi-turn inference prompt with an
  image: ``MuffinForMultiTurnChat.resume`` re-renders the history in the training format and drops the image).

``<image>`` is expanded by the processor to ``<im_start>`` + ``num_query`` x ``<im_patch>`` + ``<im_end>``.
Assistant turns are ``{% generation %}`` blocks (``return_assistant_tokens_mask=True``, TRL's ``assistant_only_loss``):
``"### Assistant: {answer}\\n###"``, i.e. the whole turn and the ``"###"`` stop marker after it.
"""

from __future__ import annotations

from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

_SYSTEM = (
    "{%- set system = '" + DEFAULT_SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- set msgs = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- set msgs = messages[1:] -%}"
    "{%- endif -%}"
)

# v0 training format. `ns.open` is true when the "###" of the next "### " has already been written (inside the
# previous assistant turn's generation block, so that the stop marker is supervised).
_TRAIN_BODY = (
    "{{ system + '\\n\\n' }}"
    "{%- set ns = namespace(open=false) -%}"
    "{%- for message in msgs -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set parts = namespace(text='') -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{%- set parts.text = parts.text + '<image>\\n' -%}"
    "{%- elif block['type'] == 'text' -%}{%- set parts.text = parts.text + block['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = parts.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ ('' if ns.open else '###') + ' Human: ' + content + '\\n' }}"
    "{%- set ns.open = false -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if ns.open -%}{{ raise_exception('Muffin chat template: two assistant turns in a row') }}{%- endif -%}"
    "{% generation %}{{ '### Assistant: ' + content + '\\n###' }}{% endgeneration %}"
    "{%- set ns.open = true -%}"
    "{%- else -%}{{ raise_exception('Muffin chat template: unsupported role ' + message['role']) }}{%- endif -%}"
    "{%- endfor -%}"
)
_TRAIN_END = "{{ ' ' if ns.open else '### ' }}"
_TRAIN_GENERATION_PROMPT = (
    "{%- if add_generation_prompt -%}{{ ' Assistant:' if ns.open else '### Assistant:' }}"
    "{%- else -%}" + _TRAIN_END + "{%- endif -%}"
)

# inference format of muffin_vqa.wrap_question_with_default_conv: conv_templates['default'] (SINGLE) with sep "\n###";
# "<image>" is removed from the question and the image block goes after it, preceded by "\n".
_EVAL_BODY = (
    "{{ system + '\\n###' }}"
    "{%- for message in msgs -%}"
    "{%- set parts = namespace(text='', images=0) -%}"
    "{%- if message['content'] is string -%}{%- set parts.text = message['content'] -%}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{%- set parts.images = parts.images + 1 -%}"
    "{%- elif block['type'] == 'text' -%}{%- set parts.text = parts.text + block['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- set parts.images = parts.images + (parts.text.split('<image>') | length) - 1 -%}"
    "{%- set text = parts.text | replace('<image>', '') -%}"
    "{%- if message['role'] == 'user' -%}{{ 'Human: ' + text }}"
    "{%- for _ in range(parts.images) -%}{{ '\\n<image>' }}{%- endfor -%}{{ '\\n###' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ 'Assistant: ' + text + '\\n###' }}{% endgeneration %}"
    "{%- else -%}{{ raise_exception('Muffin chat template: unsupported role ' + message['role']) }}{%- endif -%}"
    "{%- endfor -%}"
)

MUFFIN_ORIGINAL_CHAT_TEMPLATE = (
    _SYSTEM
    + "{%- if add_generation_prompt -%}"
    + _EVAL_BODY
    + "{%- else -%}"
    + _TRAIN_BODY
    + _TRAIN_END
    + "{%- endif -%}"
)
MUFFIN_V0_CHAT_TEMPLATE = _SYSTEM + _TRAIN_BODY + _TRAIN_GENERATION_PROMPT
MUFFIN_EVAL_CHAT_TEMPLATE = _SYSTEM + _EVAL_BODY

MUFFIN_CHAT_TEMPLATES: dict[str, str] = {
    "muffin_original": MUFFIN_ORIGINAL_CHAT_TEMPLATE,
    "muffin_v0": MUFFIN_V0_CHAT_TEMPLATE,
    "muffin_eval": MUFFIN_EVAL_CHAT_TEMPLATE,
}
# Backwards-compatible name: the default template.
MUFFIN_CHAT_TEMPLATE = MUFFIN_ORIGINAL_CHAT_TEMPLATE

MUFFIN_IMAGE_TOKENS = ("<im_patch>", "<im_start>", "<im_end>")
LABEL_MASKINGS = ("assistant", "original", "none")
IGNORE_INDEX = -100


def add_muffin_image_tokens(tokenizer) -> int:
    """Add `<im_patch>`, `<im_start>`, `<im_end>` as special tokens (and a pad token if missing).

    Returns the number of tokens added; resize the LLM's embeddings (`model.resize_token_embeddings(len(tokenizer))`)
    when it is not zero.
    """
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(MUFFIN_IMAGE_TOKENS)})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return added


def extract_muffin_answer(text: str, stop: str = "###") -> str:
    """The answer in a decoded Muffin continuation, as the original chat/eval code extracts it
    (`MuffinForSingleTurnChat.decode`): cut at the first `"###"`, drop everything up to the first `"Assistant:"`
    (the evaluation prompt ends with `"###"`, so the model first writes `" Assistant:"`), strip whitespace.

    Args:
        text (`str`): decoded new tokens (special tokens skipped).
        stop (`str`, *optional*, defaults to `"###"`): the turn separator.
    """
    if stop in text:
        text = text[: text.index(stop)]
    if "Assistant:" in text:
        text = text[text.index("Assistant:") + len("Assistant:") :]
    return text.strip()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join("<image>\n" if b.get("type") == "image" else b.get("text", "") for b in content)


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
        chat_template (`str` or `dict[str, str]`, *optional*):
            A Jinja template, a dict of named templates, or the name of a built-in template (`"muffin_original"`,
            `"muffin_v0"`, `"muffin_eval"`, see the module docstring) to use as the default. Defaults to all
            built-in templates with `"muffin_original"` (the original code's formats) as the default.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Placeholder for an image in the text (never reaches the tokenizer).
        image_patch_token, image_start_token, image_end_token (`str`, *optional*):
            The three image tokens of the LLM vocabulary. `image_start_token=None, image_end_token=None` gives an
            image block of exactly `num_query` placeholders, VisCPM-Chat's layout (its 64-slot image segment has no
            start/end markers).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_query: int = 64,
        chat_template: str | dict[str, str] | None = None,
        image_token: str = "<image>",
        image_patch_token: str = "<im_patch>",
        image_start_token: str | None = "<im_start>",
        image_end_token: str | None = "<im_end>",
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("MuffinProcessor needs a tokenizer.")
        self.num_query = int(num_query)
        self.image_token = image_token
        self.image_patch_token = image_patch_token
        self.image_start_token = image_start_token or None
        self.image_end_token = image_end_token or None
        vocab = tokenizer.get_vocab()
        wanted = [t for t in (image_patch_token, self.image_start_token, self.image_end_token) if t is not None]
        missing = [t for t in wanted if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer has no {missing} token(s). Add them with "
                "`hf_ext.models.muffin.add_muffin_image_tokens(tokenizer)` and resize the model's embeddings."
            )
        self.image_patch_token_id = vocab[image_patch_token]
        self.image_start_token_id = vocab[self.image_start_token] if self.image_start_token else None
        self.image_end_token_id = vocab[self.image_end_token] if self.image_end_token else None
        if chat_template is None:
            chat_template = {"default": MUFFIN_ORIGINAL_CHAT_TEMPLATE, **MUFFIN_CHAT_TEMPLATES}
        elif isinstance(chat_template, str) and chat_template in MUFFIN_CHAT_TEMPLATES:
            chat_template = {"default": MUFFIN_CHAT_TEMPLATES[chat_template], **MUFFIN_CHAT_TEMPLATES}
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_ids = [
            t for t in (self.image_patch_token_id, self.image_start_token_id, self.image_end_token_id) if t is not None
        ]

    @property
    def image_seq_length(self) -> int:
        """Tokens one image occupies in the LLM sequence, `<im_start>` and `<im_end>` included (when used)."""
        return self.num_query + (self.image_start_token is not None) + (self.image_end_token is not None)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        start, end = self.image_start_token or "", self.image_end_token or ""
        return start + self.image_patch_token * self.num_query + end

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        from transformers.processing_utils import MultiModalData

        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    def encode_conversation(
        self,
        conversation: list[dict[str, Any]],
        images: list | None = None,
        label_masking: str = "assistant",
        chat_template: str | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        r"""
        Tokenize one training conversation with labels, as Muffin's data pipeline does (`encode_multimodal_sample`).

        Args:
            conversation (`list[dict]`):
                Chat messages (`system`, `user`, `assistant`); image blocks (`{"type": "image"}`) mark where each
                image goes.
            images (`list[PIL.Image.Image]`, *optional*):
                One image per image block, in order (or put them in the blocks as `{"type": "image", "image": ...}`).
            label_masking (`str`, *optional*, defaults to `"assistant"`):
                Which tokens are supervised (the others get -100):

                - `"assistant"`: every assistant turn, `"### Assistant: {answer}\n###"` (the turn and the stop
                  marker after it), i.e. the template's `{% generation %}` blocks, the same tokens TRL's
                  `assistant_only_loss` trains. The default because it is what the original *meant* (LLaVA-v0's
                  "mask human words") and does not depend on how the tokenizer treats a string alone.
                - `"original"`: Muffin's / RLHF-V's `train_utils._mask_targets`, bug for bug, for exact replication of
                  the released runs. Each turn's length is measured by tokenizing it alone, with its own `<s>`, so the
                  mask drifts one token to the right per turn: it supervises `"### Human"` before the first question,
                  misses the first tokens of later assistant turns and supervises the first tokens of human turns.
                  Needs the v0 training layout (`"muffin_original"` or `"muffin_v0"` template).
                - `"none"`: every token.
            chat_template (`str`, *optional*):
                Template or template name; defaults to the processor's default.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Tensor type of the result.

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask`, `labels` and, with images, `pixel_values` (batch of 1).
        """
        if label_masking not in LABEL_MASKINGS:
            raise ValueError(f"label_masking must be one of {LABEL_MASKINGS}, got {label_masking!r}.")
        if not isinstance(conversation, (list, tuple)) or not all(isinstance(m, dict) for m in conversation):
            raise TypeError("encode_conversation takes one conversation: a list of message dicts.")
        processor_kwargs = {"images": list(images)} if images else {}
        out = self.apply_chat_template(
            list(conversation),
            chat_template=chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=label_masking == "assistant",
            processor_kwargs=processor_kwargs,
            return_tensors=None,
        )
        input_ids = list(out["input_ids"][0])
        if label_masking == "assistant":
            labels = [t if m else IGNORE_INDEX for t, m in zip(input_ids, out.pop("assistant_masks")[0])]
        elif label_masking == "none":
            labels = list(input_ids)
        else:
            labels = self._original_v0_labels(conversation, input_ids, chat_template)
        data = {k: v for k, v in out.items()}
        data["labels"] = [labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _original_v0_labels(self, conversation, input_ids: list[int], chat_template: str | None) -> list[int]:
        """`train_utils.preprocess` + `_mask_targets` of the original code (v0 conversations)."""
        messages = list(conversation)
        system = DEFAULT_SYSTEM_PROMPT
        if messages and messages[0]["role"] == "system":
            content = messages[0]["content"]
            system = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
            messages = messages[1:]
        header = system + "\n\n"
        turns, speakers = [], []
        for m in messages:
            if m["role"] not in ("user", "assistant"):
                raise ValueError(f"label_masking='original': unsupported role {m['role']!r} (user/assistant only).")
            role = "Human" if m["role"] == "user" else "Assistant"
            turns.append(f"### {role}: {_content_text(m['content'])}\n")
            speakers.append("human" if m["role"] == "user" else "gpt")
        rendered = self.apply_chat_template(list(conversation), chat_template=chat_template)
        if rendered != header + "".join(turns) + "### ":
            raise ValueError(
                "label_masking='original' reproduces Muffin's v0 `_mask_targets` and needs the v0 training layout "
                "('muffin_original' or 'muffin_v0' chat template, no generation prompt); this template renders the "
                "conversation differently."
            )
        block = self.replace_image_token({}, 0)
        lengths = [len(self.tokenizer(s.replace(self.image_token, block))["input_ids"]) for s in [header, *turns]]
        labels = list(input_ids)
        cur = lengths[0]
        labels[:cur] = [IGNORE_INDEX] * min(cur, len(labels))
        for length, speaker in zip(lengths[1:], speakers):
            if speaker == "human":
                for i in range(cur + 2, min(cur + length, len(labels))):
                    labels[i] = IGNORE_INDEX
            cur += length
        return labels


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "MUFFIN_CHAT_TEMPLATE",
    "MUFFIN_CHAT_TEMPLATES",
    "MuffinProcessor",
    "add_muffin_image_tokens",
    "extract_muffin_answer",
]
