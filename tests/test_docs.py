"""Every ```python block of README.md and docs/*.md runs, as written, so the docs cannot rot.

How blocks run:

* the blocks of one page run in order in one namespace (a page reads like a notebook), in a fresh temporary working
  directory, against the test session's local Hub;
* the placeholders the docs use for user files and Hub repos (``path/to/sft-model``, ``RLHF-V-Dataset.parquet``,
  ``me/tiny-muffin``, ...) are created first as tiny offline stand-ins (see :data:`STAND_INS`), so the text stays
  what a user would type;
* a block that cannot run offline (real checkpoints, a GPU, names defined only in prose) is marked in the page with an
  HTML comment on the line right above its fence, which renders as nothing:
  ``<!-- docs-test: skip (the reason) -->``. Keep these few: :data:`MAX_SKIPPED` caps them;
* only ``python`` blocks run; shell blocks are covered by their own tests (e.g. ``tests/test_cli.py``).

Pages whose blocks train or sample models take longer and are marked slow (``make test-all``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hf_ext.testing import save_tiny_gpt2, save_tiny_muffin

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\b(?P<reason>.*?)-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
MAX_SKIPPED = 4
SLOW_PAGES = {"README.md", "docs/care_jiuge.md", "docs/elv.md"}  # each > 20 s on 2 shared cores


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip_reason)`` of every python block of a page."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("python", "py"):
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP_MARK.search(before)
        reason = (skip.group("reason").strip(" ():") or "not runnable offline") if skip else None
        blocks.append((text[: m.start()].count("\n") + 2, m.group("body"), reason))
    return blocks


# ---------------------------------------------------------------------------------------------- stand-ins
def _push_tiny_muffin(repo_id: str) -> None:
    from hf_ext.testing import tiny_muffin

    model, processor = tiny_muffin()
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)


def _rlhf_v_parquet(path: Path) -> None:
    from dataset_builders.rlhf_v import make_rlhf_v_rows, write_rlhf_v_parquet

    write_rlhf_v_parquet(make_rlhf_v_rows(n=4), path)


def _poetry_file(path: Path) -> None:
    poems = [
        {
            "author": "王之涣",
            "title": "登鹳雀楼",
            "paragraphs": ["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"],
        },
        {"author": "孟浩然", "title": "春晓", "paragraphs": ["春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。"]},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")


def _semeval2010(path: Path) -> None:
    path.write_text('1\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\nOther\nComment:\n\n')


def _semeval2014_xml(path: Path) -> None:
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<sentences>\n  <sentence id="1">\n'
        "    <text>The battery life is great.</text>\n    <aspectTerms>\n"
        '      <aspectTerm term="battery life" polarity="positive" from="4" to="16"/>\n'
        "    </aspectTerms>\n  </sentence>\n</sentences>\n"
    )


# placeholder as written in the docs -> how to make a tiny offline stand-in (a local path or a local-Hub repo)
STAND_INS = {
    "path/or/hub-id": save_tiny_muffin,
    "muffin-13b-hf": save_tiny_muffin,
    "path/to/sft-model": save_tiny_gpt2,
    "RLHF-V-Dataset.parquet": _rlhf_v_parquet,
    "data/chinese-poetry/dist/quantangshi/poet.tang.0.json": _poetry_file,
    "data/chinese-poetry/dist/songci/ci.song.0.json": _poetry_file,
    "TRAIN_FILE.TXT": _semeval2010,
    "TEST_FILE_FULL.TXT": _semeval2010,
    "Laptop_Train_v2.xml": _semeval2014_xml,
}
HUB_STAND_INS = {"me/tiny-muffin": _push_tiny_muffin}


def _fixture_dir(name: str):
    """Pages that use the golden fixtures of a fresh clone (`tests/fixtures/<name>`) get a copy in the page's cwd."""

    def make(path: Path) -> None:
        shutil.copytree(ROOT / "tests" / "fixtures" / name, path)

    return make


STAND_INS["tests/fixtures/cpmbee"] = _fixture_dir("cpmbee")
CPMBEE_FIXTURES = ROOT / "tests" / "fixtures" / "cpmbee"


def _cpmbee_dir(path: Path) -> None:
    """The tiny original-format CPM-Bee of the golden fixtures, through the converter the page documents."""
    from hf_ext.models.cpmbee.convert_cpmbee_original_to_hf import convert_cpmbee_checkpoint

    fix = CPMBEE_FIXTURES
    convert_cpmbee_checkpoint(
        fix / "original_checkpoint" / "model.safetensors", fix / "original_checkpoint" / "config.json",
        fix / "vocab.txt", path, dtype="float32",
    )  # fmt: skip


def _viscpm_chat_bee_dir(path: Path) -> None:
    from hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf import convert_viscpm_chat_bee_checkpoint

    fix = CPMBEE_FIXTURES
    convert_viscpm_chat_bee_checkpoint(
        fix / "original_checkpoint" / "viscpm_chat.safetensors", fix / "vocab.txt",
        fix / "original_checkpoint" / "config.json", path, vision_num_attention_heads=4, dtype="float32",
    )  # fmt: skip


def _image(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 32), (200, 30, 30)).save(path)


STAND_INS["cpm-bee-10b-hf"] = _cpmbee_dir
STAND_INS["viscpm-chat-hf"] = _viscpm_chat_bee_dir
STAND_INS["cat.jpg"] = _image
STAND_INS["pairs.parquet"] = _rlhf_v_parquet


def _page_params():
    params = []
    for page in PAGES:
        marks = [pytest.mark.slow] if page in SLOW_PAGES else []
        params.append(pytest.param(page, marks=marks, id=page))
    return params


def test_skip_marks_are_few_and_explained():
    skipped = [
        (page, line, reason)
        for page in PAGES
        for line, _, reason in python_blocks((ROOT / page).read_text(encoding="utf-8"))
        if reason is not None
    ]
    assert len(skipped) <= MAX_SKIPPED, f"too many doc blocks marked not runnable: {skipped}"
    assert all(reason != "not runnable offline" for *_, reason in skipped), "give each skip a reason"


def test_block_extraction():
    text = (
        "intro\n```python\nx = 1\n```\n<!-- docs-test: skip (needs a GPU) -->\n```python\ncuda()\n```\n"
        "```bash\nmake demo\n```\n"
    )
    assert python_blocks(text) == [(3, "x = 1\n", None), (7, "cuda()\n", "needs a GPU")]


@pytest.mark.parametrize("doc", _page_params())  # not "page": pytest-playwright owns that fixture name
def test_doc_page_runs(doc, tmp_path, monkeypatch, local_hub):
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if not blocks:
        pytest.skip(f"{doc} has no python block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    for placeholder, make in STAND_INS.items():
        if placeholder in text and not (tmp_path / placeholder).exists():
            make(tmp_path / placeholder)
    for repo_id, make in HUB_STAND_INS.items():
        if repo_id in text:
            make(repo_id)
    namespace: dict = {"__name__": "__docs__"}
    for line, code, reason in blocks:
        if reason is not None:
            continue
        try:
            exec(compile(code, f"{doc}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the python block at {doc}:{line} fails: {type(e).__name__}: {e}") from e
