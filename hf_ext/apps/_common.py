"""Shared pieces of the hf_ext apps: the optional Gradio import, model loading, streaming generation, launching."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["launch", "load_vlm", "require_gradio", "stream_generate"]

# Keyboard shortcuts: Alt+<key> clicks the button with that elem_id (when it exists on the page).
SHORTCUTS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  if (!event.altKey || event.ctrlKey || event.metaKey) return;
  const target = {KeyA: "accept", KeyC: "correct", KeyN: "skip", KeyZ: "undo", KeyG: "send"}[event.code];
  const button = target && document.getElementById(target);
  if (button && !button.disabled) { event.preventDefault(); button.click(); }
});
</script>
"""


def require_gradio():
    """Import Gradio, or explain how to install it (it is the optional ``apps`` extra)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The hf_ext apps need Gradio: `pip install 'hf_ext[apps]'` (or `pip install gradio`)."
        ) from e
    return gr


def launch(demo, host: str = "127.0.0.1", port: int | None = None, block: bool = True, **kwargs: Any):
    """Launch a Blocks app built by :mod:`hf_ext.apps` (with its keyboard shortcuts and local fonts only)."""
    demo.queue(default_concurrency_limit=4)
    head = getattr(demo, "hf_ext_head", "") + SHORTCUTS_JS
    return demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, head=head, quiet=not block, **kwargs
    )


def load_vlm(model_name_or_path: str, device: str | None = None, dtype: str | None = None):
    """``(model, processor)`` of an image-text-to-text checkpoint (a Hub id or a local folder), e.g. Muffin or
    VisCPM-Chat (registered by ``import hf_ext``) or any transformers VLM, in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_ext  # noqa: F401  (registers hf_ext's Auto classes)

    kwargs: dict[str, Any] = {}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        processor = AutoProcessor.from_pretrained(model_name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--model {model_name_or_path!r}: cannot load an image-text-to-text model and processor ({e})."
        ) from e
    if device:
        model.to(device)
    return model.eval(), processor


def stream_generate(
    model,
    processor,
    messages: list[dict],
    images: list | None = None,
    max_new_tokens: int | None = None,
    **generate_kwargs: Any,
) -> Iterator[tuple[str, int]]:
    """Generate an assistant reply to chat ``messages`` (TRL/transformers structured messages, ``{"type": "image"}``
    blocks for images) and yield ``(text so far, tokens so far)`` while it streams. ``max_new_tokens=None`` and
    other unset options come from the model's generation config."""
    from transformers import TextIteratorStreamer

    tokenizer = getattr(processor, "tokenizer", processor)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if images:
        inputs = processor(images=images, text=prompt, return_tensors="pt")
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    inputs = inputs.to(model.device)

    class CountingStreamer(TextIteratorStreamer):
        num_tokens = 0

        def put(self, value):
            is_prompt = self.skip_prompt and self.next_tokens_are_prompt
            super().put(value)
            if not is_prompt:
                self.num_tokens += value.numel()

    streamer = CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    error: list[BaseException] = []

    def run():
        try:
            if max_new_tokens is not None:
                generate_kwargs["max_new_tokens"] = max_new_tokens
            model.generate(**inputs, streamer=streamer, **generate_kwargs)
        except BaseException as e:  # surfaced in the caller's thread below
            error.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text, streamer.num_tokens
    thread.join()
    if error:
        raise error[0]
    yield text, streamer.num_tokens
