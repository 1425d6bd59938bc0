"""``hf-ext annotate``: correct a model's answers segment by segment, in the browser, into RLHF-V preference data.

    hf-ext annotate --model ./my-vlm --images photos/ --out pairs.parquet [--annotator alice] [--overlap 2]
    hf-ext annotate export --images photos/ --out pairs.parquet --to all_pairs.parquet --policy all
    hf-ext annotate stats --images photos/ --out pairs.parquet

For each image of the queue the model's answer is generated live (streamed, with a token count); the annotator
selects a wrong span of the answer (or types its character offsets), writes its correction and presses Enter, as
often as needed, then accepts (``Alt+A``). ``Alt+C`` marks an answer correct, ``Alt+N`` skips it, ``Alt+Z`` undoes the
last edit. Each accepted item is on disk before the next one is shown (:class:`AnnotationStore`), ``out`` is an
``openbmb/RLHF-V-Dataset``-schema parquet whose ``text`` JSON also holds the explicit ``chosen_segments`` /
``rejected_segments`` character spans, read by ``load_rlhf_v(out, with_segments=True)`` and weighted by
``DenseDPOTrainer``. A question per image comes from ``--prompt`` or a ``<image stem>.txt`` file next to the image.
"""

import argparse
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ._common import launch, require_gradio
from .annotation_store import AnnotationStore
from .corrections import SegmentCorrection

logger = logging.get_logger(__name__)

__all__ = ["annotate_main", "build_annotation_app", "model_answer_fn"]

DEFAULT_PROMPT = "Describe the image in detail."
AnswerFn = Callable[[Any, str], Iterator[tuple[str, int]]]  # (PIL image, question) -> (text so far, tokens)


def model_answer_fn(model, processor, max_new_tokens: int | None = None, **generate_kwargs: Any) -> AnswerFn:
    """An answer function for :func:`build_annotation_app` streaming ``model``'s reply to one image + question."""
    from ._common import stream_generate

    def answer(image, question: str) -> Iterator[tuple[str, int]]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        yield from stream_generate(model, processor, messages, [image], max_new_tokens, **generate_kwargs)

    return answer


def _question(store: AnnotationStore, item: str, prompt: str) -> str:
    sidecar = store.image_path(item).with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8").strip()
        if text:
            return text
    return prompt


def _load_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise ValueError(f"The image {path.name} cannot be read ({type(e).__name__}: {e}). Press Skip.") from e


def build_annotation_app(
    store: AnnotationStore,
    answer_fn: AnswerFn,
    prompt: str = DEFAULT_PROMPT,
    annotator: str | None = None,
    model_name: str | None = None,
):
    """The annotation UI (a ``gr.Blocks``) over ``store``; ``answer_fn(image, question)`` streams the model's answer.

    Args:
        store ([`AnnotationStore`]): the queue and its on-disk state.
        answer_fn (`Callable`): yields ``(answer so far, tokens so far)``; see [`model_answer_fn`].
        prompt (`str`, *optional*): the question asked about every image without a ``.txt`` sidecar.
        annotator (`str`, *optional*): pre-filled annotator name (each browser session may change it).
        model_name (`str`, *optional*): recorded with each pair (``origin_split``).
    """
    gr = require_gradio()

    def status_line(session: dict, extra: str = "") -> str:
        p = store.progress(session.get("annotator"))
        item = session.get("item")
        where = f"item idx {store.idx(item)} (`{item}`)" if item else "no item"
        text = (
            f"**{session.get('annotator', '?')}** · {where} · {p['finished']}/{p['total']} items finished · "
            f"you: {p['mine']} · pairs in `{store.out.name}`: {p['pairs']}"
        )
        return text + (f" · {extra}" if extra else "")

    def empty_outputs(session, status, message):
        return session, status, None, "", "", "", [], 0, 0, "", message

    def load_next(session: dict):
        """Claim the next item and stream the model's answer (yields the full output tuple)."""
        item = store.next_item(session["annotator"])
        session.update(item=item, answer=None, correction=None, error=None)
        if item is None:
            yield empty_outputs(session, status_line(session), "The queue is finished for you. Thank you!")
            return
        question = _question(store, item, prompt)
        session["question"] = question
        try:
            image = _load_image(store.image_path(item))
        except ValueError as e:
            session["error"] = str(e)
            yield empty_outputs(session, status_line(session), f"**Error:** {e}")
            return
        path = str(store.image_path(item))
        answer = store.cached_answer(item)
        if answer is None:
            base = status_line(session)  # read the journals once, not once per token
            yield session, f"{base} · generating…", path, question, "", "", [], 0, 0, "", ""
            answer, count = "", 0
            try:
                for answer, count in answer_fn(image, question):
                    yield (
                        session,
                        f"{base} · generating… {count} tokens",
                        path,
                        question,
                        answer,
                        answer,
                        [],
                        0,
                        0,
                        "",
                        "",
                    )
            except Exception as e:  # a model error is shown, not a stack trace
                logger.exception("generation failed for %s", item)
                session["error"] = f"The model failed on this image ({type(e).__name__}: {e}). Press Skip."
                yield empty_outputs(session, status_line(session), f"**Error:** {session['error']}")
                return
            answer = store.save_answer(item, answer, model_name)
        session["answer"] = answer
        try:
            correction = SegmentCorrection(answer)
        except ValueError as e:
            session["error"] = str(e)
            yield session, status_line(session), path, question, answer, answer, [], 0, 0, "", f"**Error:** {e}"
            return
        session["correction"] = correction.to_dict()
        yield (
            session,
            status_line(session, f"answer ready ({len(answer)} characters)"),
            path,
            question,
            answer,
            answer,
            correction.highlights(),
            0,
            0,
            "",
            "Select the wrong words in **Current answer**, type the correction and press Enter.",
        )

    def start(name: str, session: dict):
        name = (name or "").strip()
        try:
            from .annotation_store import _check_annotator

            _check_annotator(name)
        except ValueError as e:
            yield empty_outputs(session, "", f"**Error:** {e}")
            return
        if session.get("item") and session.get("annotator") not in (None, name):
            store.release(session["item"], session["annotator"])
        session = {"annotator": name}
        yield from load_next(session)

    def correction_outputs(session, correction: SegmentCorrection, message: str):
        session["correction"] = correction.to_dict()
        return session, correction.text, correction.highlights(), message

    def replace(session: dict, start_: float | None, end_: float | None, new: str):
        if not session.get("correction"):
            return (
                session,
                gr.skip(),
                gr.skip(),
                "**Error:** No answer to correct yet (press Start, or wait for the model).",
            )
        correction = SegmentCorrection.from_dict(session["correction"])
        try:
            if start_ is None or end_ is None or int(start_) != start_ or int(end_) != end_:
                raise ValueError(f"The span must be two whole numbers, got start={start_!r}, end={end_!r}.")
            correction.replace(int(start_), int(end_), new or "")
        except ValueError as e:
            return session, gr.skip(), gr.skip(), f"**Error:** {e}"
        chosen, rejected = correction.spans()
        return correction_outputs(session, correction, f"Edit {correction.num_edits} applied. Corrected: {chosen}.")

    def undo(session: dict):
        if not session.get("correction"):
            return session, gr.skip(), gr.skip(), "**Error:** Nothing to undo."
        correction = SegmentCorrection.from_dict(session["correction"])
        message = "Last edit undone." if correction.undo() else "**Error:** Nothing to undo."
        return correction_outputs(session, correction, message)

    def on_select(session: dict, evt: gr.SelectData):
        start_, end_ = evt.index if isinstance(evt.index, (list, tuple)) else (evt.index, evt.index)
        return start_, end_, evt.value if isinstance(evt.value, str) else ""

    def on_typed(session: dict):
        # the current answer changes through Replace only: restore it
        if not session.get("correction"):
            return gr.skip(), gr.skip()
        correction = SegmentCorrection.from_dict(session["correction"])
        return (
            correction.text,
            "**Error:** Do not type in the current answer: select a span and write its correction below.",
        )

    def finish(status: str):
        def handler(session: dict):
            item = session.get("item")
            if not item or not session.get("annotator"):
                yield empty_outputs(session, status_line(session), "**Error:** Press Start first.")
                return
            kwargs: dict[str, Any] = {}
            if status in ("corrected", "correct"):
                if session.get("error") or not session.get("correction"):
                    yield (*[gr.skip()] * 10, f"**Error:** {session.get('error') or 'The answer is not ready yet.'}")
                    return
                correction = SegmentCorrection.from_dict(session["correction"])
                if status == "corrected":
                    if not correction.changed:
                        yield (
                            *[gr.skip()] * 10,
                            "**Error:** No correction made: correct a span first, or mark the answer correct (Alt+C).",
                        )
                        return
                    chosen_segments, rejected_segments = correction.spans()
                    kwargs = dict(
                        chosen=correction.text, chosen_segments=chosen_segments, rejected_segments=rejected_segments
                    )
            extra = {"reason": session["error"]} if status == "skipped" and session.get("error") else None
            try:
                store.submit(
                    session["annotator"],
                    item,
                    status,
                    question=session.get("question", prompt),
                    answer=session.get("answer") or "",
                    model=model_name,
                    extra=extra,
                    **kwargs,
                )
            except ValueError as e:
                yield (*[gr.skip()] * 10, f"**Error:** {e}")
                return
            yield from load_next(session)

        return handler

    with gr.Blocks(title="hf-ext annotate") as demo:
        session = gr.State({})
        gr.Markdown(
            "## Segment-level correction (RLHF-V)\n"
            "Select wrong words in the current answer, type the correction, **Enter**; then **Accept** (Alt+A). "
            "**Correct** (Alt+C) if nothing is wrong, **Skip** (Alt+N), **Undo** (Alt+Z)."
        )
        with gr.Row():
            name = gr.Textbox(annotator or "", label="Annotator", elem_id="annotator", scale=3)
            start_btn = gr.Button("Start / resume", elem_id="start", variant="primary", scale=1)
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(label="Image", type="filepath", interactive=False, elem_id="image", height=320)
            with gr.Column(scale=3):
                question = gr.Textbox(label="Question", interactive=False, elem_id="question")
                answer = gr.Textbox(label="Model answer (rejected)", interactive=False, lines=3, elem_id="answer")
                current = gr.Textbox(
                    label="Current answer (select a span)", lines=3, elem_id="current", interactive=True
                )
                with gr.Row():
                    span_start = gr.Number(label="Span start", precision=0, elem_id="span_start", minimum=0)
                    span_end = gr.Number(label="Span end", precision=0, elem_id="span_end", minimum=0)
                    selected = gr.Textbox(label="Selected text", interactive=False, elem_id="selected")
                replacement = gr.Textbox(label="Correction (Enter to apply)", elem_id="replacement")
                with gr.Row():
                    replace_btn = gr.Button("Replace span", elem_id="replace")
                    undo_btn = gr.Button("Undo (Alt+Z)", elem_id="undo")
                diff = gr.HighlightedText(
                    label="Corrected answer (chosen)", elem_id="diff", color_map={"corrected": "green"}
                )
                with gr.Row():
                    accept_btn = gr.Button("Accept (Alt+A)", elem_id="accept", variant="primary")
                    correct_btn = gr.Button("Answer is correct (Alt+C)", elem_id="correct")
                    skip_btn = gr.Button("Skip (Alt+N)", elem_id="skip")
        message = gr.Markdown(elem_id="message")

        item_outputs = [
            session,
            status,
            image,
            question,
            answer,
            current,
            diff,
            span_start,
            span_end,
            selected,
            message,
        ]
        start_btn.click(start, [name, session], item_outputs)
        name.submit(start, [name, session], item_outputs)
        edit_outputs = [session, current, diff, message]
        replace_btn.click(replace, [session, span_start, span_end, replacement], edit_outputs)
        replacement.submit(replace, [session, span_start, span_end, replacement], edit_outputs)
        undo_btn.click(undo, [session], edit_outputs)
        current.select(on_select, [session], [span_start, span_end, selected])
        current.input(on_typed, [session], [current, message])
        accept_btn.click(finish("corrected"), [session], item_outputs)
        correct_btn.click(finish("correct"), [session], item_outputs)
        skip_btn.click(finish("skipped"), [session], item_outputs)
    return demo


# ----------------------------------------------------------------------------- command line


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="Folder of images to annotate (searched recursively).")
    parser.add_argument("--out", required=True, help="The RLHF-V parquet file written after every correction.")
    parser.add_argument("--state_dir", default=None, help="Journals and claims (default: <out>.annotations).")
    parser.add_argument("--overlap", type=int, default=1, help="Annotators per item (> 1 to measure agreement).")


def annotate_main(argv: Sequence[str] | None = None):
    """``hf-ext annotate``: serve the annotation app; ``hf-ext annotate export|stats``: write pairs / agreement."""
    argv = list(argv or [])
    if argv and argv[0] in ("export", "stats"):
        command = argv.pop(0)
        parser = argparse.ArgumentParser(prog=f"hf-ext annotate {command}")
        _store_args(parser)
        if command == "export":
            parser.add_argument("--to", required=True, help="Parquet file to write.")
            parser.add_argument("--policy", default="first", choices=["first", "all"])
        args = parser.parse_args(argv)
        store = AnnotationStore(args.images, args.out, args.state_dir, overlap=args.overlap)
        if command == "export":
            path = store.export(args.to, policy=args.policy)
            result = {"path": str(path), "rows": len(store.pairs(args.policy))}
        else:
            result = {"progress": store.progress(), "agreement": store.agreement()}
        print(json.dumps(result, indent=1))
        return result

    parser = argparse.ArgumentParser(prog="hf-ext annotate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Image-text-to-text model: a local folder or a Hub id.")
    _store_args(parser)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="Question asked about every image.")
    parser.add_argument("--annotator", default=os.environ.get("USER", ""), help="Pre-filled annotator name.")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="Default: the model's generation config.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="Default: the first free port from 7860.")
    parser.add_argument("--claim_timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    store = AnnotationStore(
        args.images, args.out, args.state_dir, overlap=args.overlap, claim_timeout=args.claim_timeout
    )
    from ._common import load_vlm

    model, processor = load_vlm(args.model)
    demo = build_annotation_app(
        store,
        model_answer_fn(model, processor, args.max_new_tokens),
        prompt=args.prompt,
        annotator=args.annotator,
        model_name=args.model,
    )
    launch(demo, host=args.host, port=args.port)
    return demo
