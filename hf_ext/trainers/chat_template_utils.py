"""Chat templates for prompt/completion training data: choosing the training template and checking the split.

TRL renders a conversational prompt with `add_generation_prompt=True` and takes the completion to be what follows the
common prefix of that rendering and the rendering of prompt + completion (`trl.data_utils.apply_chat_template`, the
token-level `tokenize_fn` of `DPOTrainer`). This silently assumes that the template renders the prompt as a prefix of
prompt + completion. Templates whose generation prompt is an *inference* prompt in another layout (Muffin's default
`"muffin_original"`: training layout for conversations, evaluation layout for a generation prompt) break it: the
"prompt" shrinks to the system line and the "completion" swallows the question and the image.

hf_ext's trainers therefore

* let the user choose the training template (`chat_template=` of their config; a template name of the processor or a
  Jinja string), applied per row through TRL's `chat_template_kwargs` column, so the caller's processor is not
  modified;
* default to the processor's `training_chat_template` attribute when it has one: the name of the template the
  processor's model family trains with (e.g. [`~hf_ext.models.muffin.MuffinProcessor`] names `"muffin_v0"`, the v0
  training format of Muffin / RLHF-V, when its default template is `"muffin_original"`);
* check the first row of every dataset at init and raise a `ValueError` naming the template and the fix when the
  prompt would be mis-split ([`check_prompt_completion_split`]).
"""

from __future__ import annotations

import copy
from typing import Any

from datasets import Dataset
from trl.data_utils import is_conversational, prepare_multimodal_messages

__all__ = [
    "apply_training_chat_template",
    "check_prompt_completion_split",
    "resolve_training_chat_template",
]

_COMPLETION_KEYS = ("chosen", "rejected", "completion")


def _named_templates(processing_class) -> dict[str, str]:
    templates = getattr(processing_class, "chat_template", None)
    return dict(templates) if isinstance(templates, dict) else {}


def resolve_training_chat_template(processing_class, chat_template: str | None) -> str | None:
    """The chat template a trainer renders conversational training rows with.

    Args:
        processing_class ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`]):
            The trainer's processing class.
        chat_template (`str`, *optional*):
            The user's choice: the name of one of the processing class's templates or a Jinja template. When `None`,
            the processing class's `training_chat_template` attribute (a template name) if it has one, else `None`
            (the processing class's default template).

    Returns:
        `str` or `None`: the value to pass as `chat_template` to `apply_chat_template`.
    """
    names = _named_templates(processing_class)
    if chat_template is None:
        chat_template = getattr(processing_class, "training_chat_template", None)
        if chat_template is not None and names and chat_template not in names:
            return None  # the processor was given other templates: its default applies
        return chat_template
    if not isinstance(chat_template, str) or not chat_template:
        raise TypeError(f"`chat_template` must be a template name or a Jinja template string, got {chat_template!r}.")
    if "{" not in chat_template and chat_template not in names:
        available = f"its templates are {sorted(names)}" if names else "it has no named templates"
        raise ValueError(
            f"`chat_template={chat_template!r}` is neither a Jinja template nor a template name of the "
            f"{type(processing_class).__name__} ({available})."
        )
    return chat_template


def apply_training_chat_template(dataset, chat_template: str | None, dataset_name: str = "train"):
    """Add `chat_template` to every row's `chat_template_kwargs` (TRL's per-row template arguments).

    A row that already names a `chat_template` in its `chat_template_kwargs` keeps it. Returns the dataset unchanged
    when `chat_template` is `None` or the dataset is not conversational.
    """
    if dataset is None or chat_template is None:
        return dataset
    first = next(iter(dataset))
    if not is_conversational(first):
        return dataset

    def add_template(example):
        kwargs = {k: v for k, v in (example.get("chat_template_kwargs") or {}).items() if v is not None}
        kwargs.setdefault("chat_template", chat_template)
        return {"chat_template_kwargs": kwargs}

    if isinstance(dataset, Dataset):  # `IterableDataset.map` has no `desc`
        return dataset.map(add_template, desc=f"Setting the chat template of the {dataset_name} dataset")
    return dataset.map(add_template)


def _describe_template(processing_class, chat_template: str | None) -> str:
    names = _named_templates(processing_class)
    kind = type(processing_class).__name__
    if chat_template is None:
        if names:
            default = names.get("default")
            aliases = [n for n, t in names.items() if n != "default" and t == default]
            return f"'default' of the {kind}" + (f" (= {aliases[0]!r})" if aliases else "")
        return f"the default chat template of the {kind}"
    if chat_template in names:
        return f"{chat_template!r} of the {kind}"
    return "the given Jinja chat template"


def _render(processing_class, example: dict[str, Any], messages_key: str | None, kwargs: dict[str, Any]) -> str:
    prompt = example["prompt"]
    if messages_key is None:
        last_role = prompt[-1]["role"]
        if last_role not in ("user", "tool", "assistant"):
            raise ValueError(f"Invalid role in the last prompt message: {last_role!r}.")
        return processing_class.apply_chat_template(
            prompt,
            tokenize=False,
            add_generation_prompt=last_role != "assistant",
            continue_final_message=last_role == "assistant",
            **kwargs,
        )
    return processing_class.apply_chat_template(prompt + example[messages_key], tokenize=False, **kwargs)


def _prompt_pieces(example: dict[str, Any], image_token: str | None) -> list[str]:
    """The text of the last prompt message, split into lines (image placeholders removed): what must be in the prompt."""
    content = example["prompt"][-1].get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(block.get("text") or "" for block in content or [] if block.get("type") == "text")
    if image_token:
        text = text.replace(image_token, "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _prepared(example: dict[str, Any]) -> dict[str, Any]:
    """The row as TRL's vision collator renders it (string contents turned into blocks, image blocks in the prompt)."""
    images = example.get("images")
    if images is None:
        images = [example["image"]] if example.get("image") is not None else []
    if "image" not in example and "images" not in example:
        return example
    out = dict(example)
    out["prompt"] = prepare_multimodal_messages(copy.deepcopy(example["prompt"]), images=[None] * len(images))
    for key in _COMPLETION_KEYS:
        if key in example:
            out[key] = prepare_multimodal_messages(copy.deepcopy(example[key]))
    return out


def _split_problem(processing_class, example: dict[str, Any], kwargs: dict[str, Any]) -> tuple | None:
    """`None` if TRL's prompt/completion split of this row is sound, else `(side, prompt, full, common)`."""
    image_token = getattr(processing_class, "image_token", None)
    pieces = _prompt_pieces(example, image_token)
    prompt = _render(processing_class, example, None, kwargs)
    for side in _COMPLETION_KEYS:
        if side not in example:
            continue
        full = _render(processing_class, example, side, kwargs)
        common = 0
        for a, b in zip(prompt, full):
            if a != b:
                break
            common += 1
        if common == len(prompt):
            continue
        # TRL tolerates a generation prompt that the full rendering writes differently (DeepSeek-R1's "<think>"),
        # as long as everything of the prompt is in the part it keeps. A dropped question or image is a mis-split.
        kept = full[:common]
        needles = [*pieces, *([image_token] if image_token else [])]
        if any(kept.count(n) < prompt.count(n) for n in needles):
            return side, prompt, full, common
    return None


def _excerpt(text: str, at: int) -> str:
    start = max(0, at - 40)
    return ("…" if start else "") + repr(text[start : at + 80]) + ("…" if at + 80 < len(text) else "")


def check_prompt_completion_split(
    dataset, processing_class, dataset_name: str = "train", num_rows: int = 1, option: str = "chat_template"
) -> None:
    """Raise a `ValueError` if TRL would mis-split the first `num_rows` conversational rows into prompt and completion.

    TRL renders the prompt with `add_generation_prompt=True` and keeps the common prefix of that rendering and of the
    prompt + completion rendering as the prompt. The split is sound when the prompt rendering is a prefix of the full
    one, or when it only differs in the generation prompt (TRL's own tolerance); it is not when the kept prefix lost
    part of the last prompt message's text or an image placeholder (the completion would then contain them). Each row's
    `chat_template_kwargs` are used, as TRL does.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): preference or prompt-completion rows.
        processing_class: the trainer's tokenizer or processor.
        dataset_name (`str`, *optional*, defaults to `"train"`): named in the error.
        num_rows (`int`, *optional*, defaults to `1`): how many rows to check (a few renders each).
        option (`str`, *optional*, defaults to `"chat_template"`): the config field that chooses the template, named
            in the error.
    """
    if dataset is None:
        return
    for index, example in enumerate(dataset):
        if index >= num_rows:
            break
        if not is_conversational(example) or "prompt" not in example:
            return
        example = _prepared(example)
        kwargs = {k: v for k, v in (example.get("chat_template_kwargs") or {}).items() if v is not None}
        problem = _split_problem(processing_class, example, kwargs)
        if problem is None:
            continue
        side, prompt, full, common = problem
        label = _describe_template(processing_class, kwargs.get("chat_template"))
        working = [
            name
            for name in _named_templates(processing_class)
            if _split_problem(processing_class, example, {**kwargs, "chat_template": name}) is None
        ]
        hint = f" (templates of this processor that render this row consistently: {working})" if working else ""
        own = getattr(processing_class, "training_chat_template", None)
        if own in working:
            hint = f" (the processor's own training template is {own!r}; all that render this row consistently: {working})"
        raise ValueError(
            f"{dataset_name} dataset, row {index}: the chat template {label} does not render the prompt as a prefix "
            f"of the prompt + {side}. They differ from character {common}: rendered with `add_generation_prompt=True` "
            f"the prompt is {_excerpt(prompt, common)}, but prompt + {side} is {_excerpt(full, common)}. TRL keeps "
            f"their common prefix as the prompt, so this row would be trained on the completion "
            f"{_excerpt(full[common:], 0)}, with part of the prompt in it. Choose a training template whose generation prompt is a prefix of the "
            f"full conversation: `{option}=NAME` in the trainer's config (`--{option} NAME` on the command line){hint}, "
            "or give each row a `chat_template_kwargs` column such as `{'chat_template': NAME}`."
        )
