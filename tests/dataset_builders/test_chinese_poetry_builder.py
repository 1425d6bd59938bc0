"""The chinese-poetry builder on fixture files written in code: traditional -> simplified, forms, bad-row reports."""

import json

import pytest

from dataset_builders._common import BadRowError
from dataset_builders.chinese_poetry import load_chinese_poetry

# 王之涣《登鹳雀楼》 as the corpus stores Tang poems: traditional characters.
DENG_TRAD = {
    "author": "王之渙",
    "title": "登鸛雀樓",
    "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"],
}
DENG_SIMP_BODY = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
# 杜甫《登高》, a 七言律诗.
DENGGAO = {
    "author": "杜甫",
    "title": "登高",
    "paragraphs": [
        "風急天高猿嘯哀，渚清沙白鳥飛迴。",
        "無邊落木蕭蕭下，不盡長江滾滾來。",
        "萬里悲秋常作客，百年多病獨登臺。",
        "艱難苦恨繁霜鬢，潦倒新停濁酒杯。",
    ],
}
SIX_LINES = {"author": "某", "title": "六句", "paragraphs": ["一二三四五，一二三四五。"] * 3}  # 6 x 5: no form
LOST_CHAR = {"author": "某", "title": "缺字", "paragraphs": ["白日依山□，黄河入海流。"]}
NOT_A_LIST = {"author": "某", "title": "坏", "paragraphs": "白日依山尽，黄河入海流。"}
NO_TITLE = {"author": "某", "paragraphs": ["白日依山尽，黄河入海流。"]}
UNCLOSED = {"author": "某", "title": "无标点", "paragraphs": ["白日依山尽，黄河入海流"]}
HUANXISHA = {
    "author": "晏殊",
    "rhythmic": "浣溪沙·春恨",
    "paragraphs": [
        "一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回。",
        "无可奈何花落去，似曾相识燕归来。小园香径独徘徊。",
    ],
}
LOST_TUNE = {"author": "无名氏", "rhythmic": "失调名", "paragraphs": ["春风吹，柳絮飞。"]}


@pytest.fixture
def corpus(tmp_path):
    shi = tmp_path / "poet.tang.0.json"
    shi.write_text(json.dumps([DENG_TRAD, SIX_LINES, LOST_CHAR, DENGGAO, NOT_A_LIST, "oops", NO_TITLE, UNCLOSED]))
    ci = tmp_path / "ci.song.0.json"
    ci.write_text(json.dumps([HUANXISHA, LOST_TUNE], ensure_ascii=False), encoding="utf-8")
    return shi, ci


def test_forms_simplification_and_reports(corpus):
    shi, ci = corpus
    ds, report = load_chinese_poetry([str(shi), str(ci)], on_bad_row="skip", return_report=True)
    rows = {r["source"]: r for r in ds}
    assert sorted(rows) == ["ci.song.0.json#0", "poet.tang.0.json#0", "poet.tang.0.json#3"]

    deng = rows["poet.tang.0.json#0"]
    assert (deng["title"], deng["author"], deng["body"]) == ("登鹳雀楼", "王之涣", DENG_SIMP_BODY)
    assert (deng["form"], deng["kind"], deng["line_lengths"]) == ("五言绝句", "jueju", [5, 5, 5, 5])
    denggao = rows["poet.tang.0.json#3"]
    assert (denggao["form"], denggao["kind"], denggao["line_lengths"]) == ("七言律诗", "lushi", [7] * 8)
    assert denggao["body"].startswith("风急天高猿啸哀")  # 風 -> 风, 嘯 -> 啸
    ci_row = rows["ci.song.0.json#0"]
    assert (ci_row["form"], ci_row["title"], ci_row["kind"]) == ("浣溪沙", "春恨", "ci")
    assert ci_row["line_lengths"] == [7] * 6

    malformed = {r.row: r.reason for r in report["malformed"].rows}
    assert malformed == {
        2: "the body contains '□' (a lost character)",
        4: "'paragraphs' must be a list of strings",
        5: "a poem must be a JSON object, got str",
        6: "a shi needs a 'title' (a ci needs 'rhythmic')",
        7: "text '黄河入海流' after the last punctuation mark is not closed by one of '，。、；：？！'.",
    }
    assert all(r.source == str(shi) for r in report["malformed"].rows)
    unclassified = {(r.source, r.row): r.reason for r in report["unclassified"].rows}
    assert unclassified == {
        (str(shi), 1): "6 lines of [5] characters match no regulated form",
        (str(ci), 1): "ci whose tune name was lost (失调名)",
    }
    assert "skipped 5 bad row(s)" in ds.info.description


def test_raise_names_file_and_row_and_keep_unclassified(corpus, tmp_path):
    shi, ci = corpus
    with pytest.raises(BadRowError, match=r"poet\.tang\.0\.json: row 2 .* contains '□'"):
        load_chinese_poetry(str(shi))
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([DENG_TRAD, SIX_LINES]))
    ds = load_chinese_poetry(str(clean), keep_unclassified=True, convert_to_simplified=False)
    assert ds["form"] == ["五言绝句", ""]
    assert ds[0]["body"] == "".join(DENG_TRAD["paragraphs"])  # left traditional


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*fetch the corpus with `make poetry-corpus`"):
        load_chinese_poetry(str(tmp_path / "missing.json"))
    bad = tmp_path / "dict.json"
    bad.write_text(json.dumps({"author": "x"}))
    with pytest.raises(ValueError, match=r"dict\.json: expected a JSON list of poems, got dict"):
        load_chinese_poetry(str(bad))
