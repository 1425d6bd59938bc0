"""`hf-ext annotate` in a real headless Chromium: UI -> RLHF-V parquet -> kill -9 mid-queue -> restart -> nothing lost
or duplicated -> load_rlhf_v(with_segments=True) -> one DenseDPOTrainer step on the pairs."""

import copy
import json
import math

import pytest
from _browser import (
    AppProcess,
    artifacts_dir,
    browser_test,
    record_values,
    watch_console,
    watch_stream_messages,
)
from _cpu_training import cpu_training_args
from PIL import Image

pytestmark = [browser_test, pytest.mark.slow]

QUESTION_4 = "How many shapes are there?"


def _make_images(folder):
    folder.mkdir()
    for i, color in enumerate([(220, 40, 40), (40, 170, 60), (40, 80, 220)]):
        Image.new("RGB", (40 + 8 * i, 32), color).save(folder / f"{i:02d}.png")
    (folder / "03_broken.png").write_bytes(b"this is not a png")  # an unreadable image in the middle of the queue
    Image.new("RGB", (36, 36), (230, 210, 40)).save(folder / "04.png")
    (folder / "04.txt").write_text(QUESTION_4)  # a per-image question


def _expected_answers(model_dir, images):
    """The model's greedy answers, computed outside the app."""
    from hf_ext.apps._common import load_vlm
    from hf_ext.apps.annotate import DEFAULT_PROMPT, model_answer_fn

    model, processor = load_vlm(str(model_dir))
    answer = model_answer_fn(model, processor)
    out = {}
    for name, question in [("00.png", DEFAULT_PROMPT), ("01.png", DEFAULT_PROMPT), ("02.png", DEFAULT_PROMPT)]:
        *_, (text, _) = answer(Image.open(images / name).convert("RGB"), question)
        out[name] = text
    return out


def _wait_ready(page, idx, timeout=60_000):
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_contain_text(f"item idx {idx} ", timeout=timeout)
    expect(page.locator("#status")).to_contain_text("answer ready", timeout=timeout)


def _edit(page, start, end, text):
    from playwright.sync_api import expect

    page.fill("#span_start input", str(start))
    page.fill("#span_end input", str(end))
    page.fill("#replacement textarea", text)
    before = page.locator("#message").inner_text()
    page.press("#replacement textarea", "Enter")
    expect(page.locator("#message")).not_to_have_text(before)


def test_annotation_round_trip_kill_and_resume(page, tmp_path):
    from playwright.sync_api import expect

    from dataset_builders.rlhf_v import load_rlhf_v
    from hf_ext.testing import save_tiny_muffin

    shots = artifacts_dir(tmp_path)
    images = tmp_path / "images"
    _make_images(images)
    model_dir = save_tiny_muffin(tmp_path / "model")
    expected = _expected_answers(model_dir, images)
    out = tmp_path / "pairs.parquet"
    app = AppProcess(
        ["annotate", "--model", str(model_dir), "--images", str(images), "--out", str(out), "--annotator", "alice"],
        tmp_path / "app.log",
    )
    app.start()
    try:
        errors = watch_console(page)
        watch_stream_messages(page)
        page.goto(app.url)
        expect(page.locator("#annotator textarea")).to_have_value("alice")
        record_values(page, "#answer textarea")
        page.click("#start")
        _wait_ready(page, 0)
        a0 = expected["00.png"]
        expect(page.locator("#answer textarea")).to_have_value(a0)
        # streamed: one update per generated token reached the page (12 tokens + start and end updates), and every
        # value the answer box showed on the way was a prefix of the final answer
        assert page.evaluate("window.generating") >= 12
        seen = [v for v in page.evaluate("window.seen") if v]
        assert seen[-1] == a0 and all(a0.startswith(v) for v in seen), seen

        # selecting text in the current answer fills the span (keyboard selection of the whole answer)
        page.click("#current textarea")
        page.keyboard.press("Control+Home")
        page.keyboard.press("Control+Shift+End")
        expect(page.locator("#span_end input")).to_have_value(str(len(a0)))
        expect(page.locator("#selected textarea")).to_have_value(a0)

        # a span outside the text is reported to the annotator, the answer is unchanged
        _edit(page, 500, 600, "x")
        expect(page.locator("#message")).to_contain_text("outside the answer")
        expect(page.locator("#current textarea")).to_have_value(a0)
        # two edits, one undone with Alt+Z
        _edit(page, 0, 2, "big")
        _edit(page, 4, 6, "zz")  # in the coordinates of the current text
        current = "big" + a0[2:]
        expect(page.locator("#current textarea")).to_have_value(current[:4] + "zz" + current[6:])
        page.keyboard.press("Alt+KeyZ")
        expect(page.locator("#current textarea")).to_have_value("big" + a0[2:])
        page.screenshot(path=shots / "annotate_edit.png", full_page=True)
        page.keyboard.press("Alt+KeyA")  # accept
        _wait_ready(page, 1)

        a1 = expected["01.png"]
        expect(page.locator("#answer textarea")).to_have_value(a1)
        _edit(page, 3, 5, "red")
        page.click("#accept")
        _wait_ready(page, 2)
        a2 = expected["02.png"]
        _edit(page, 0, 1, "Q")  # not accepted: lost with the crash, by design
        assert errors == [], errors
    finally:
        app.kill()  # kill -9 mid-queue (item idx 2 claimed and half edited)

    rows = load_rlhf_v(out, with_segments=True)
    assert rows["idx"] == [0, 1]

    app.start()  # same port, same files
    try:
        page.reload()
        page.fill("#annotator textarea", "alice")
        page.click("#start")
        _wait_ready(page, 2)  # resumed on the claimed item, with the answer generated before the crash
        expect(page.locator("#answer textarea")).to_have_value(a2)
        expect(page.locator("#current textarea")).to_have_value(a2)
        _edit(page, len(a2) - 2, len(a2), "ok")
        expect(page.locator("#message")).to_contain_text("applied")
        page.click("#accept")  # (the Alt+A shortcut is exercised before the crash)
        # the unreadable image is shown as an error; accepting is refused, skipping works
        expect(page.locator("#message")).to_contain_text("cannot be read", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("03_broken.png")
        page.screenshot(path=shots / "annotate_bad_image.png", full_page=True)
        page.click("#accept")
        expect(page.locator("#message")).to_contain_text("cannot be read")
        page.keyboard.press("Alt+KeyN")  # skip
        _wait_ready(page, 4)
        expect(page.locator("#question textarea")).to_have_value(QUESTION_4)
        page.keyboard.press("Alt+KeyC")  # the answer is correct: recorded, no pair
        expect(page.locator("#message")).to_contain_text("queue is finished")
    finally:
        app.kill()

    # --- the parquet: every accepted correction once, in the RLHF-V schema with explicit spans
    data = load_rlhf_v(out, with_segments=True)
    assert data["idx"] == [0, 1, 2]
    want = [
        ("big" + a0[2:], a0, [[0, 3]], [[0, 2]]),
        (a1[:3] + "red" + a1[5:], a1, [[3, 6]], [[3, 5]]),
        (a2[:-2] + "ok", a2, [[len(a2) - 2, len(a2)]], [[len(a2) - 2, len(a2)]]),
    ]
    for row, (chosen, rejected, chosen_spans, rejected_spans) in zip(data, want):
        assert row["chosen"][0]["content"] == chosen
        assert row["rejected"][0]["content"] == rejected
        assert row["chosen_segments"] == chosen_spans
        assert row["rejected_segments"] == rejected_spans
        assert row["prompt"][0]["content"] == "Describe the image in detail."
    journal = [json.loads(line) for line in (tmp_path / "pairs.parquet.annotations/journal/alice.jsonl").open()]
    assert [(r["item"], r["status"]) for r in journal] == [
        ("00.png", "corrected"),
        ("01.png", "corrected"),
        ("02.png", "corrected"),
        ("03_broken.png", "skipped"),
        ("04.png", "correct"),
    ]
    assert "cannot be read" in journal[3]["reason"]

    # --- one dense DPO step on the annotated pairs
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hf_ext import DenseDPOConfig, DenseDPOTrainer

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = DenseDPOConfig(
        **cpu_training_args(tmp_path / "ddpo", per_device_train_batch_size=3, max_steps=1, learning_rate=1e-3),
        dense_gamma=5.0,
        max_length=None,
    )
    before = model.model.query.detach().clone()
    trainer = DenseDPOTrainer(
        model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=processor
    )
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["loss"] == pytest.approx(math.log(2), rel=1e-5)  # policy == reference at the first step
    assert not model.model.query.detach().equal(before)
