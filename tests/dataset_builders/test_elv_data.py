"""ELV dataset readers: SemEval-2010 Task 8 and SemEval-2014 Task 4 from local files, bad-row handling."""

from __future__ import annotations

import json

import pytest

from dataset_builders._common import BadRowError
from dataset_builders.elv import (
    ABSA_LABELS,
    ELV_FEATURE_NAMES,
    SEMEVAL2010_LABELS,
    load_semeval2010_task8,
    load_semeval2014_absa,
)

SEMEVAL_TXT = (
    '1\t"The <e1>system</e1> as described has an arrayed <e2>configuration</e2>."\n'
    "Component-Whole(e2,e1)\n"
    "Comment: Not a collection.\n"
    "\n"
    '2\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\n'
    "Other\n"
    "Comment:\n"
    "\n"
)
BAD_BLOCK = '3\t"A sentence with only <e1>one</e1> entity."\nOther\nComment:\n\n'
UNKNOWN_REL = '4\t"The <e1>a</e1> b <e2>c</e2>."\nPart-Of(e1,e2)\nComment:\n\n'


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_semeval2010_official_format(tmp_path):
    ds = load_semeval2010_task8({"train": _write(tmp_path, "TRAIN_FILE.TXT", SEMEVAL_TXT)})["train"]
    assert tuple(ds.column_names) == ELV_FEATURE_NAMES
    assert len(SEMEVAL2010_LABELS) == 19 and SEMEVAL2010_LABELS[0] == "Other"
    first = ds[0]
    assert first["text"] == "The system as described has an arrayed configuration."
    assert first["text"][first["subj_start"] : first["subj_end"]] == "system"
    assert first["text"][first["obj_start"] : first["obj_end"]] == "configuration"
    assert ds.features["label"].int2str(first["label"]) == "Component-Whole(e2,e1)"
    assert ds[1]["label"] == 0 and ds[1]["idx"] == "2" and ds[1]["explanation"] is None


def test_semeval2010_test_file_without_labels(tmp_path):
    text = (
        '8001\t"The <e1>most common</e1> audits were about <e2>waste</e2>."\n8002\t"The <e1>a</e1> of <e2>b</e2>."\n'
    )
    ds = load_semeval2010_task8(_write(tmp_path, "TEST_FILE.TXT", text))["train"]
    assert ds["label"][:] == [-1, -1] and ds["idx"][:] == ["8001", "8002"]


def test_semeval2010_bad_rows_raise_or_are_reported(tmp_path):
    path = _write(tmp_path, "train.txt", SEMEVAL_TXT + BAD_BLOCK + UNKNOWN_REL)
    with pytest.raises(BadRowError, match=r"train.txt: row 9 \(idx='3'\).*exactly once"):
        load_semeval2010_task8(path)
    ds, report = load_semeval2010_task8(path, on_bad_row="skip", return_report=True)
    assert len(ds["train"]) == 2
    assert report.idxs == ["3", "4"]
    assert "unknown relation 'Part-Of(e1,e2)'" in report.rows[1].reason
    assert "skipped 2 bad row(s)" in ds["train"].info.description


def test_elv_json_relation_and_aspect(tmp_path):
    rel = [
        {
            "rel": "Cause-Effect(e1,e2)",
            "exp": 'SUBJ and OBJ sandwich the phrase "cause"',
            "sent": "those SUBJ-O cause OBJ-O .",
        },
        {"rel": "Other", "sent": "no SUBJ-O here"},  # one placeholder only -> bad row
    ]
    ds, report = load_semeval2010_task8(
        _write(tmp_path, "semeval_exp.json", json.dumps(rel)), on_bad_row="skip", return_report=True
    )
    row = ds["train"][0]
    assert row["text"][row["subj_start"] : row["subj_end"]] == "SUBJ-O"
    assert row["text"][row["obj_start"] : row["obj_end"]] == "OBJ-O"
    assert row["explanation"] == 'SUBJ and OBJ sandwich the phrase "cause"'
    assert report.rows[0].row == 1 and "OBJ-" in report.rows[0].reason

    absa = [
        {"term": "battery", "sent": "the $T$ lasts long", "exp": "the word long follows the term", "label": 1},
        {"term": "screen", "sent": "the $T$ is dim", "label": -1},
        {"term": "keys", "sent": "the $T$ are keys", "label": 0},
        {"term": "x", "sent": "no placeholder", "label": 1},
    ]
    ds, report = load_semeval2014_absa(
        _write(tmp_path, "laptop_exp.json", json.dumps(absa)), on_bad_row="skip", return_report=True
    )
    train = ds["train"]
    assert train["text"][:] == ["the battery lasts long", "the screen is dim", "the keys are keys"]
    assert train["aspect"][:] == ["battery", "screen", "keys"]
    # official ELV coding: 1 -> 1 (positive), -1 -> 2 (negative), 0 -> 0 (neutral)
    assert train["label"][:] == [1, 2, 0] and ABSA_LABELS == ("neutral", "positive", "negative")
    assert report.idxs == ["laptop_exp.json:3"]


SEMEVAL2014_XML = """<?xml version="1.0" encoding="UTF-8"?>
<sentences>
  <sentence id="1"><text>The battery life is great but the screen is dim.</text>
    <aspectTerms>
      <aspectTerm term="battery life" polarity="positive" from="4" to="16"/>
      <aspectTerm term="screen" polarity="negative" from="34" to="40"/>
    </aspectTerms>
  </sentence>
  <sentence id="2"><text>I bought it yesterday.</text></sentence>
  <sentence id="3"><text>Keyboard is ok.</text>
    <aspectTerms><aspectTerm term="Keyboard" polarity="conflict" from="0" to="8"/></aspectTerms>
  </sentence>
  <sentence id="4"><text>Fine price.</text>
    <aspectTerms><aspectTerm term="price" polarity="neutral" from="0" to="4"/></aspectTerms>
  </sentence>
</sentences>
"""


def test_semeval2014_xml(tmp_path):
    path = _write(tmp_path, "Laptop_Train.xml", SEMEVAL2014_XML)
    with pytest.raises(BadRowError, match="polarity 'conflict'"):
        load_semeval2014_absa(path)
    ds, report = load_semeval2014_absa({"test": path}, on_bad_row="skip", return_report=True)
    test = ds["test"]
    assert test["idx"][:] == ["1:0", "1:1"]
    assert test["aspect"][:] == ["battery life", "screen"]
    assert [ABSA_LABELS[i] for i in test["label"]] == ["positive", "negative"]
    assert report.idxs == ["3:0", "4:0"] and "does not match term 'price'" in report.rows[1].reason


def test_absa_3line_format(tmp_path):
    text = "the $T$ is great\nfood\n1\nthe $T$ was slow\nservice\n-1\nthe $T$ is\nx\n7\n"
    ds, report = load_semeval2014_absa(_write(tmp_path, "restaurant.raw", text), on_bad_row="skip", return_report=True)
    assert ds["train"]["text"][:] == ["the food is great", "the service was slow"]
    assert ds["train"]["label"][:] == [1, 2]
    assert report.rows[0].row == 9 and "got '7'" in report.rows[0].reason
    with pytest.raises(ValueError, match="multiple of 3"):
        load_semeval2014_absa(_write(tmp_path, "broken.raw", "a $T$\nb\n"))


def test_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_semeval2010_task8({"train": str(tmp_path / "nope.txt")})
    with pytest.raises(ValueError, match="on_bad_row"):
        load_semeval2010_task8(_write(tmp_path, "t.txt", SEMEVAL_TXT), on_bad_row="ignore")


def test_loaded_rows_feed_the_trainer_format(tmp_path):
    """The reader's rows are what ELVModel.format_example expects (markers around the e1/e2 spans)."""
    from hf_ext.trainers.elv.elv_model import ELVModel

    ds = load_semeval2010_task8(_write(tmp_path, "TRAIN_FILE.TXT", SEMEVAL_TXT))["train"]
    formatted = ELVModel.format_example(_FakeModel(), ds[0])
    assert formatted == "The <subj> system </subj> as described has an arrayed <obj> configuration </obj>."


class _FakeModel:
    """Just enough of an ELVModel for format_example (its config)."""

    class config:  # noqa: N801
        entity_markers = ["<subj>", "</subj>", "<obj>", "</obj>"]
        aspect_template = "{aspect} || {text}"
