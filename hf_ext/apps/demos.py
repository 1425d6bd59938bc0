"""``hf-ext app chat|paint|poetry|vae --model PATH_OR_ID``: one small Gradio demo per hf_ext model family.

* ``chat``: multimodal chat with Muffin / VisCPM-Chat (or any image-text-to-text model): image upload, streamed reply;
* ``paint``: VisCPM-Paint / IAP text-to-image: negative prompt, steps, guidance, seed, a progress bar;
* ``poetry``: Jiuge: a form picker (绝句, 律诗, 对联, the 词牌 of the checkpoint), title, and the form checks of the
  result;
* ``vae``: DELLA / TRACE text VAEs: sample from the prior, interpolate between two sentences in latent space.

``--export_space DIR`` writes a Hugging Face Space folder (``app.py``, ``requirements.txt``, ``README.md``) instead of
serving; see :func:`hf_ext.apps.space.export_space`.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ._common import launch, load_vlm, require_gradio, stream_generate

logger = logging.get_logger(__name__)

__all__ = [
    "APPS",
    "app_main",
    "build_chat_app",
    "build_paint_app",
    "build_poetry_app",
    "build_vae_app",
    "load_app",
]


def _error(e: Exception) -> str:
    return f"**Error:** {e}"


# ----------------------------------------------------------------------------- chat


def build_chat_app(model, processor, max_new_tokens: int | None = None, title: str = "Multimodal chat"):
    """Chat about an image with an image-text-to-text model (Muffin, VisCPM-Chat, ...), replies streamed.

    The uploaded image goes with the first user turn of the conversation (uploading another image starts a new one).
    """
    gr = require_gradio()

    def to_model_messages(history: list[dict], has_image: bool) -> list[dict]:
        messages = []
        for i, turn in enumerate(history):
            text = turn["content"] if isinstance(turn["content"], str) else str(turn["content"])
            if turn["role"] == "user" and i == 0 and has_image:
                messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
            else:
                messages.append({"role": turn["role"], "content": [{"type": "text", "text": text}]})
        return messages

    def respond(message: str, image, history: list[dict]):
        message = (message or "").strip()
        if not message:
            yield history, gr.skip(), _error("Type a message first.")
            return
        if image is None and not history:
            yield history, gr.skip(), _error("Upload an image first: this model answers questions about an image.")
            return
        history = [*history, {"role": "user", "content": message}]
        images = [image.convert("RGB")] if image is not None else None
        messages = to_model_messages(history, images is not None)
        history = [*history, {"role": "assistant", "content": ""}]
        yield history, "", "generating…"
        try:
            for text, count in stream_generate(model, processor, messages, images, max_new_tokens):
                history[-1] = {"role": "assistant", "content": text}
                yield history, "", f"generating… {count} tokens"
        except Exception as e:  # shown to the user, not a stack trace
            logger.exception("chat generation failed")
            yield history[:-1], gr.skip(), _error(f"generation failed ({type(e).__name__}: {e})")
            return
        yield history, "", f"done ({count} tokens)"

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nUpload an image, ask about it; **Enter** or Alt+G sends.")
        with gr.Row():
            image = gr.Image(label="Image", type="pil", elem_id="image", height=300, scale=2)
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=300)
                message = gr.Textbox(label="Message", elem_id="message", placeholder="What is in the image?")
                with gr.Row():
                    send = gr.Button("Send (Alt+G)", elem_id="send", variant="primary")
                    clear = gr.Button("New conversation", elem_id="clear")
                status = gr.Markdown(elem_id="status")
        send.click(respond, [message, image, chatbot], [chatbot, message, status])
        message.submit(respond, [message, image, chatbot], [chatbot, message, status])
        clear.click(lambda: ([], "", ""), None, [chatbot, message, status])
        image.upload(lambda: ([], "new image: new conversation"), None, [chatbot, status])
    return demo


# ----------------------------------------------------------------------------- poetry


def build_poetry_app(model, tokenizer, title: str = "Jiuge classical Chinese poetry"):
    """Write a poem of a chosen form with Jiuge and show whether it follows the form (lines, characters, marks)."""
    gr = require_gradio()
    import torch

    from ..models.jiuge import classify_shi

    model.set_tokenizer(tokenizer)
    forms = list(model.forms)

    def write(form: str, theme: str, constrained: bool, seed: float | None):
        try:
            poem_form = model.get_form(form)
            if seed is not None:
                torch.manual_seed(int(seed))
            poem = model.write_poem(poem_form, title=(theme or "").strip(), constrained=constrained)
        except ValueError as e:
            return "", _error(e)
        problems = poem_form.check(poem)
        lines = [f"**Form:** {poem_form.name} · template `{poem_form.template()}`"]
        if problems:
            lines.append("**Form check: does not follow the form** — " + "; ".join(problems))
        else:
            lines.append(f"**Form check: follows {poem_form.name}** ({poem_form.num_lines} lines)")
        try:
            detected = classify_shi(poem)
        except ValueError:  # not even split into lines
            detected = None
        lines.append(f"**Detected form:** {detected.name if detected else 'none of the 诗 forms'}")
        return poem, "\n\n".join(lines)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nPick a form, give a title (the theme) and write.")
        with gr.Row():
            form = gr.Dropdown(forms, value=forms[0], label="Form", elem_id="form")
            theme = gr.Textbox(label="Title", elem_id="title", placeholder="春晓")
        with gr.Row():
            constrained = gr.Checkbox(True, label="Constrained decoding (guarantees the form)", elem_id="constrained")
            seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
            button = gr.Button("Write", elem_id="write", variant="primary")
        poem = gr.Textbox(label="Poem", lines=4, elem_id="poem")
        checks = gr.Markdown(elem_id="checks")
        button.click(write, [form, theme, constrained, seed], [poem, checks])
    return demo


# ----------------------------------------------------------------------------- paint


def build_paint_app(pipe, title: str = "Text to image"):
    """Text-to-image with a VisCPM-Paint / IAP (or any diffusers) pipeline: negative prompt, steps, seed, progress."""
    gr = require_gradio()
    import torch

    def paint(prompt: str, negative: str, steps: float, guidance: float, seed: float | None, progress=gr.Progress()):
        prompt = (prompt or "").strip()
        if not prompt:
            return None, _error("Type a prompt first.")
        steps = int(steps)
        progress(0, desc="denoising", total=steps)

        def on_step(pipeline, step, timestep, kwargs):
            progress((step + 1, steps), desc="denoising")
            return kwargs

        generator = torch.Generator(device="cpu").manual_seed(int(seed or 0))
        try:
            image = pipe(
                prompt,
                negative_prompt=(negative or None),
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                generator=generator,
                callback_on_step_end=on_step,
            ).images[0]
        except (ValueError, TypeError) as e:
            return None, _error(e)
        return image, f"done: {steps} steps, seed {int(seed or 0)}, {image.width}×{image.height}"

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\n{type(pipe).__name__}")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", elem_id="prompt", placeholder="a red cat wearing a hat")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                steps = gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(1.0, 15.0, value=7.5, step=0.5, label="Guidance scale", elem_id="guidance")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                button = gr.Button("Paint", elem_id="paint", variant="primary")
            with gr.Column():
                image = gr.Image(label="Result", type="pil", elem_id="result", interactive=False, format="png")
                status = gr.Markdown(elem_id="status")
        button.click(paint, [prompt, negative, steps, guidance, seed], [image, status])
    return demo


# ----------------------------------------------------------------------------- vae


def build_vae_app(model, tokenizer, title: str = "Text VAE playground"):
    """DELLA / TRACE: sample sentences from the prior; interpolate linearly between the posterior means of two
    sentences and decode each point greedily. TRACE chains of different lengths are padded with their last latent."""
    gr = require_gradio()
    import torch

    def decode(latents) -> list[str]:
        out = model.generate(latents=latents, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]

    def sample(n: float, temperature: float, seed: float | None):
        torch.manual_seed(int(seed or 0))
        with torch.no_grad():
            latents = model.sample_latents(int(n), temperature=float(temperature))
            texts = decode(latents)
        return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts)), f"{len(texts)} samples"

    def encode(text: str, name: str):
        text = (text or "").strip()
        if not text:
            raise ValueError(f"{name} is empty.")
        enc = tokenizer([text], return_tensors="pt")
        return model.encode(enc["input_ids"], enc["attention_mask"], use_mean=True).latents

    def interpolate(a: str, b: str, points: float):
        try:
            with torch.no_grad():
                za, zb = encode(a, "Sentence A"), encode(b, "Sentence B")
                if za.shape[1] != zb.shape[1]:  # TRACE: one latent per segment
                    k = max(za.shape[1], zb.shape[1])
                    za, zb = (torch.cat([z, z[:, -1:].expand(1, k - z.shape[1], -1)], 1) for z in (za, zb))
                alphas = torch.linspace(0, 1, int(points))
                latents = torch.cat([(1 - t) * za + t * zb for t in alphas])
                texts = decode(latents)
        except ValueError as e:
            return "", _error(e)
        return "\n".join(f"{t:.2f}: {s}" for t, s in zip(alphas.tolist(), texts)), f"{len(texts)} points"

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\n{type(model).__name__}")
        with gr.Tab("Sample"):
            with gr.Row():
                n = gr.Slider(1, 8, value=3, step=1, label="Samples", elem_id="num_samples")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Latent temperature")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
            sample_btn = gr.Button("Sample", elem_id="sample", variant="primary")
            samples = gr.Textbox(label="Samples", lines=4, elem_id="samples")
        with gr.Tab("Interpolate", elem_id="interpolate_tab"):
            a = gr.Textbox(label="Sentence A", elem_id="sentence_a")
            b = gr.Textbox(label="Sentence B", elem_id="sentence_b")
            points = gr.Slider(2, 9, value=5, step=1, label="Points", elem_id="points")
            interp_btn = gr.Button("Interpolate", elem_id="interpolate", variant="primary")
            path = gr.Textbox(label="Interpolation", lines=6, elem_id="interpolation")
        status = gr.Markdown(elem_id="status")
        sample_btn.click(sample, [n, temperature, seed], [samples, status])
        interp_btn.click(interpolate, [a, b, points], [path, status])
    return demo


# ----------------------------------------------------------------------------- loading and command line


def _load_causal_lm(model: str, expected: Sequence[str], app: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import hf_ext  # noqa: F401  (registers the Auto classes)

    try:
        model_type = AutoConfig.from_pretrained(model).model_type
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {model!r}: cannot read its config ({e}).") from e
    if model_type not in expected:
        raise ValueError(f"`hf-ext app {app}` needs a {' or '.join(expected)} model; {model!r} is {model_type!r}.")
    return AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)


def _load_pipeline(model: str):
    from huggingface_hub import hf_hub_download

    path = Path(model)
    try:
        index = path / "model_index.json" if path.is_dir() else Path(hf_hub_download(model, "model_index.json"))
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--model {model!r}: not a diffusers pipeline (no readable model_index.json: {e}).") from e
    if class_name == "VisCPMPaintPipeline":
        from ..pipelines.viscpm_paint import VisCPMPaintPipeline as cls
    elif class_name == "IAPStableDiffusionPipeline":
        from ..pipelines.iap import IAPStableDiffusionPipeline as cls
    else:
        from diffusers import DiffusionPipeline as cls
    pipe = cls.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_app(app: str, model: str, **kwargs: Any):
    """Load ``model`` (a local folder or a Hub id) and build the ``app`` demo (``chat``, ``paint``, ``poetry`` or
    ``vae``); ``kwargs`` go to the builder (e.g. ``max_new_tokens`` for chat)."""
    if app == "chat":
        return build_chat_app(*load_vlm(model), **kwargs)
    if app == "poetry":
        return build_poetry_app(*_load_causal_lm(model, ("jiuge",), app), **kwargs)
    if app == "vae":
        return build_vae_app(*_load_causal_lm(model, ("della", "trace"), app), **kwargs)
    if app == "paint":
        return build_paint_app(_load_pipeline(model), **kwargs)
    raise ValueError(f"Unknown app {app!r}; choose from {sorted(APPS)}.")


APPS = {
    "chat": "multimodal chat (Muffin, VisCPM-Chat, any image-text-to-text model)",
    "paint": "text to image (VisCPM-Paint, IAP, diffusers pipelines)",
    "poetry": "classical Chinese poetry (Jiuge)",
    "vae": "text VAE playground (DELLA, TRACE)",
}


def app_main(argv: Sequence[str] | None = None):
    """``hf-ext app NAME --model PATH_OR_ID [--port P] [--export_space DIR [--copy_model]]``."""
    parser = argparse.ArgumentParser(prog="hf-ext app", description=__doc__.split("\n\n")[0])
    parser.add_argument("app", choices=sorted(APPS), help="; ".join(f"{k}: {v}" for k, v in APPS.items()))
    parser.add_argument("--model", required=True, help="A local folder or a Hub id.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="Default: the first free port from 7860.")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="chat: reply length (default: the model's).")
    parser.add_argument("--export_space", default=None, metavar="DIR", help="Write a Space folder instead of serving.")
    parser.add_argument("--copy_model", action="store_true", help="With --export_space: copy a local model into it.")
    args = parser.parse_args(list(argv or []))
    if args.export_space:
        from .space import export_space

        return export_space(args.app, args.model, args.export_space, copy_model=args.copy_model)
    kwargs = {"max_new_tokens": args.max_new_tokens} if args.app == "chat" and args.max_new_tokens else {}
    demo = load_app(args.app, args.model, **kwargs)
    launch(demo, host=args.host, port=args.port)
    return demo
