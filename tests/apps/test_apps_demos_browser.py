"""`hf-ext app chat|poetry|paint|vae` in a real headless Chromium against tiny random models: each page loads, takes
an input, shows the output the model gives outside the app, with no console errors; one app exported as a Space."""

import io
import re

import pytest
import torch
from _browser import artifacts_dir, browser_test, watch_console, watch_stream_messages
from PIL import Image

pytestmark = [browser_test, pytest.mark.slow]


@pytest.fixture
def serve():
    """Launch a Blocks app in this process (server thread); closed after the test."""
    from _browser import free_port

    from hf_ext.apps._common import launch

    demos = []

    def start(demo):
        launch(demo, port=free_port(), block=False)
        demos.append(demo)
        return demo.local_url

    yield start
    for demo in demos:
        demo.close()


def record_text(page, selector):
    """Record every innerText the element takes (``window.texts``)."""
    page.evaluate(
        """(sel) => { window.texts = []; (function poll() { const t = document.querySelector(sel);
          const v = t ? t.innerText : null; if (v && window.texts.at(-1) !== v) window.texts.push(v);
          requestAnimationFrame(poll); })(); }""",
        selector,
    )


def test_chat_app(page, tmp_path, serve):
    from playwright.sync_api import expect

    from hf_ext.apps._common import load_vlm, stream_generate
    from hf_ext.apps.demos import load_app
    from hf_ext.testing import save_tiny_muffin

    model_dir = save_tiny_muffin(tmp_path / "chat", model_type="viscpm_chat")
    picture = tmp_path / "red.png"
    Image.new("RGB", (48, 40), (220, 40, 40)).save(picture)
    # the reply computed outside the app
    model, processor = load_vlm(str(model_dir))
    question = "What is in the image?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    *_, (want, n_tokens) = stream_generate(model, processor, messages, [Image.open(picture).convert("RGB")])

    errors = watch_console(page)
    watch_stream_messages(page)
    page.goto(serve(load_app("chat", str(model_dir))))
    page.fill("#message textarea", question)
    page.click("#send")
    expect(page.locator("#status")).to_contain_text("Upload an image first")
    page.locator("#image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#image img")).to_be_visible()
    record_text(page, "#status")
    page.fill("#message textarea", question)
    page.press("#message textarea", "Enter")
    expect(page.locator("#status")).to_have_text(f"done ({n_tokens} tokens)", timeout=60_000)
    bot = page.locator("#chatbot .message.bot").last
    expect(bot).to_contain_text(want.strip())
    # streamed: an update per token reached the page; the token counts it showed only went up
    assert page.evaluate("window.generating") >= n_tokens
    counts = [int(m.group(1)) for t in page.evaluate("window.texts") if (m := re.search(r"generating… (\d+)", t))]
    assert counts == sorted(counts), counts
    page.screenshot(path=artifacts_dir(tmp_path) / "app_chat.png", full_page=True)
    assert errors == [], errors


def _hand_check(poem, chars_per_line, lines):
    """The form checked by hand: ``lines`` lines of ``chars_per_line`` Chinese characters, each ending in a mark."""
    parts = re.findall(r"([\u4e00-\u9fff]+)([，。！？；、])", poem)
    return "".join(a + b for a, b in parts) == poem and [len(a) for a, _ in parts] == [chars_per_line] * lines


def test_poetry_app(page, tmp_path, serve):
    from playwright.sync_api import expect

    from hf_ext.apps.demos import load_app
    from hf_ext.testing import save_tiny_jiuge

    model_dir = save_tiny_jiuge(tmp_path / "jiuge")
    errors = watch_console(page)
    page.goto(serve(load_app("poetry", str(model_dir))))
    page.click("#form input")
    page.get_by_role("option", name="七言绝句", exact=True).click()
    page.fill("#title textarea", "春晓")
    page.click("#write")
    expect(page.locator("#checks")).to_contain_text("Form check", timeout=60_000)
    poem = page.locator("#poem textarea").input_value()
    assert _hand_check(poem, 7, 4), poem  # constrained decoding guarantees the form
    expect(page.locator("#checks")).to_contain_text("follows 七言绝句")
    expect(page.locator("#checks")).to_contain_text("Detected form: 七言绝句")
    page.screenshot(path=artifacts_dir(tmp_path) / "app_poetry.png", full_page=True)
    # unconstrained, a random model breaks the form: the check says so, consistently with the hand check
    page.click("#constrained input")
    page.click("#write")
    expect(page.locator("#poem textarea")).not_to_have_value(poem, timeout=60_000)
    free = page.locator("#poem textarea").input_value()
    verdict = "follows 七言绝句" if _hand_check(free, 7, 4) else "does not follow the form"
    expect(page.locator("#checks")).to_contain_text(verdict)
    assert errors == [], errors


@pytest.mark.parametrize("kind", ["viscpm_paint", "iap"])
def test_paint_app(page, tmp_path, serve, kind):
    from playwright.sync_api import expect

    from hf_ext import testing
    from hf_ext.apps.demos import _load_pipeline, load_app

    model_dir = getattr(testing, f"save_tiny_{kind}_pipeline")(tmp_path / kind)
    pipe = _load_pipeline(str(model_dir))
    want = pipe(
        "a red cat",
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3),
    ).images[0]

    errors = watch_console(page)
    page.goto(serve(load_app("paint", str(model_dir))))
    page.fill("#prompt textarea", "a red cat")
    page.fill("#negative textarea", "blurry")
    page.fill("#steps input[type=number]", "4")
    page.fill("#seed input", "3")
    page.evaluate(
        """() => { window.progress = false; (function poll() {
          if (document.querySelector('#result .progress-text, #result .eta-bar, #result .progress-level'))
            window.progress = true; requestAnimationFrame(poll); })(); }"""
    )
    page.click("#paint")
    expect(page.locator("#status")).to_contain_text("done: 4 steps, seed 3", timeout=60_000)
    src = page.locator("#result img").get_attribute("src")
    got = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    assert got.size == want.size
    assert list(got.getdata()) == list(want.convert("RGB").getdata())  # the pipeline's own image (PNG, lossless)
    assert page.evaluate("window.progress")  # a progress indicator was shown while denoising
    page.screenshot(path=artifacts_dir(tmp_path) / f"app_paint_{kind}.png", full_page=True)
    assert errors == [], errors


@pytest.mark.parametrize("model_type", ["della", "trace"])
def test_vae_app(page, tmp_path, serve, model_type):
    from playwright.sync_api import expect
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.apps.demos import load_app
    from hf_ext.testing import save_tiny_text_vae

    model_dir = save_tiny_text_vae(tmp_path / model_type, model_type)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(latents=model.sample_latents(3), do_sample=False, pad_token_id=tok.pad_token_id)
    want = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    errors = watch_console(page)
    page.goto(serve(load_app("vae", str(model_dir))))
    page.click("#sample")
    expect(page.locator("#status")).to_have_text("3 samples", timeout=60_000)
    assert page.locator("#samples textarea").input_value() == "\n".join(f"{i + 1}. {t}" for i, t in enumerate(want))

    a, b = "the red circle is on the left .", "a blue square ."
    with torch.no_grad():
        enc = tok([a], return_tensors="pt")
        za = model.encode(enc["input_ids"], enc["attention_mask"], use_mean=True).latents
        start = tok.decode(model.generate(latents=za, do_sample=False, pad_token_id=tok.pad_token_id)[0], True)
    page.get_by_role("tab", name="Interpolate").click()
    page.fill("#sentence_a textarea", a)
    page.fill("#sentence_b textarea", b)
    page.fill("#points input[type=number]", "3")
    page.click("#interpolate")
    expect(page.locator("#status")).to_have_text("3 points", timeout=60_000)
    lines = page.locator("#interpolation textarea").input_value().split("\n")
    assert [line.split(":")[0] for line in lines] == ["0.00", "0.50", "1.00"]
    assert lines[0] == f"0.00: {start.strip()}"  # the first point decodes sentence A's posterior mean
    page.fill("#sentence_b textarea", "")
    page.click("#interpolate")
    expect(page.locator("#status")).to_contain_text("Sentence B is empty")
    page.screenshot(path=artifacts_dir(tmp_path) / f"app_vae_{model_type}.png", full_page=True)
    assert errors == [], errors


def test_space_export_runs(page, tmp_path):
    from playwright.sync_api import expect

    from hf_ext.cli import run
    from hf_ext.testing import save_tiny_jiuge

    model_dir = save_tiny_jiuge(tmp_path / "jiuge")
    space = run(
        ["app", "poetry", "--model", str(model_dir), "--export_space", str(tmp_path / "space"), "--copy_model"]
    )
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "model", "requirements.txt"]
    readme = (space / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "hf_ext[apps]" in (space / "requirements.txt").read_text()
    model_dir.rename(tmp_path / "moved")  # the Space must use its own copy

    import os
    import subprocess
    import sys

    from _browser import REPO, free_port, wait_http

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log = open(tmp_path / "space.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#write")
        expect(page.locator("#checks")).to_contain_text("follows 五言绝句", timeout=60_000)
    finally:
        proc.kill()
        proc.wait()
        log.close()
