"""RLHF-V builder: Hub schema in, TRL vision preference rows out; bad rows raise or are skipped and reported."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_builders._common import BadRowError
from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet
from dataset_builders.rlhf_v.rlhf_v import REQUIRED_COLUMNS


def test_fixture_has_exact_hub_schema(tmp_path):
    path = write_rlhf_v_parquet(make_rlhf_v_rows(n=3), tmp_path / "a.parquet")
    schema = pq.read_schema(path)
    assert schema.names == list(REQUIRED_COLUMNS)
    assert str(schema.field("idx").type) == "int64"
    assert {f.name for f in schema.field("image").type} == {"bytes", "path"}
    row = pq.read_table(path).slice(0, 1).to_pylist()[0]
    text = json.loads(row["text"])
    assert set(text) == {"question", "chosen", "rejected"}
    json.loads(row["origin_split"])
    with Image.open(io.BytesIO(row["image"]["bytes"])) as img:
        assert img.format == "PNG" and img.size == (32, 32)


def test_conversion(tmp_path):
    rows = make_rlhf_v_rows(n=5, seed=3)
    a = write_rlhf_v_parquet(rows[:3], tmp_path / "a.parquet")
    b = write_rlhf_v_parquet(rows[3:], tmp_path / "b.parquet")
    ds = load_rlhf_v([a, b])
    assert len(ds) == 5
    assert ds.column_names == ["prompt", "chosen", "rejected", "images", "idx", "origin_dataset"]
    for out, src in zip(ds, rows):
        text = json.loads(src["text"])
        assert out["prompt"] == [{"role": "user", "content": text["question"]}]
        assert out["chosen"] == [{"role": "assistant", "content": text["chosen"]}]
        assert out["rejected"] == [{"role": "assistant", "content": text["rejected"]}]
        assert out["idx"] == src["idx"] and out["origin_dataset"] == src["origin_dataset"]
        with Image.open(io.BytesIO(src["image"]["bytes"])) as expected:
            assert list(out["images"][0].convert("RGB").getdata()) == list(expected.convert("RGB").getdata())


def _bad_rows():
    rows = make_rlhf_v_rows(n=7, seed=1)
    rows[1]["text"] = "{not json"
    rows[2]["text"] = json.dumps({"question": "q", "chosen": "a"})
    rows[3]["text"] = json.dumps({"question": "q", "chosen": "  ", "rejected": "b"})
    rows[4]["image"] = {"bytes": b"not a png", "path": "x.png"}
    rows[5]["text"] = json.dumps({"question": "q", "chosen": "same answer", "rejected": "same answer"})
    return rows


@pytest.mark.parametrize(
    "bad_index, reason",
    [(1, "not valid JSON"), (2, "lacks key"), (3, "empty"), (4, "does not decode"), (5, "identical")],
)
def test_bad_row_raises(tmp_path, bad_index, reason):
    rows = _bad_rows()
    good = [r for i, r in enumerate(rows) if i in (0, 6)]
    path = write_rlhf_v_parquet([good[0], rows[bad_index], good[1]], tmp_path / "bad.parquet")
    with pytest.raises(BadRowError, match=rf"bad.parquet: row 1 \(idx={rows[bad_index]['idx']}\).*{reason}"):
        load_rlhf_v(path)


def test_bad_rows_skipped_and_reported(tmp_path):
    rows = _bad_rows()
    path = write_rlhf_v_parquet(rows, tmp_path / "bad.parquet")
    ds, report = load_rlhf_v(path, on_bad_row="skip", return_report=True)
    assert list(ds["idx"]) == [rows[0]["idx"], rows[6]["idx"]]
    assert len(report) == 5 and report.idxs == [rows[i]["idx"] for i in range(1, 6)]
    assert "skipped 5 bad row(s)" in ds.info.description


def test_missing_file_and_column(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_rlhf_v(tmp_path / "nope.parquet")
    table = pq.read_table(write_rlhf_v_parquet(make_rlhf_v_rows(n=2), tmp_path / "a.parquet")).drop_columns(["text"])
    pq.write_table(table, tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]"):
        load_rlhf_v(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_rlhf_v(tmp_path / "a.parquet", on_bad_row="ignore")


def _with_text(row, **extra):
    text = json.loads(row["text"])
    text.update(extra)
    return {**row, "text": json.dumps(text)}


def test_segments_passed_through_on_request(tmp_path):
    rows = make_rlhf_v_rows(n=3, seed=2)
    first = json.loads(rows[0]["text"])
    chosen0 = [[0, len(first["chosen"].split()[0])]]  # the first word of the chosen answer
    rejected0 = [[0, len(first["rejected"])]]  # the whole rejected answer
    rows[0] = _with_text(rows[0], chosen_segments=chosen0, rejected_segments=rejected0)
    rows[1] = _with_text(rows[1], chosen_segments=[], rejected_segments=[[0, 5]])  # row 2 carries none
    path = write_rlhf_v_parquet(rows, tmp_path / "s.parquet")
    plain = load_rlhf_v(path)
    assert plain.column_names == ["prompt", "chosen", "rejected", "images", "idx", "origin_dataset"]
    ds = load_rlhf_v(path, with_segments=True)
    assert ds.column_names == plain.column_names + ["chosen_segments", "rejected_segments"]
    assert list(ds["chosen_segments"]) == [chosen0, [], None]
    assert list(ds["rejected_segments"]) == [rejected0, [[0, 5]], None]
    for key in ("prompt", "chosen", "rejected", "idx", "origin_dataset"):
        assert list(ds[key]) == list(plain[key])


@pytest.mark.parametrize("spans", [[[3, 3]], [[0, 10_000]], [[1]], "0-3", [[0.5, 2]], [[-1, 2]]])
def test_bad_segments_are_bad_rows(tmp_path, spans):
    rows = make_rlhf_v_rows(n=3, seed=4)
    rows[1] = _with_text(rows[1], rejected_segments=spans)
    path = write_rlhf_v_parquet(rows, tmp_path / "s.parquet")
    assert len(load_rlhf_v(path)) == 3  # spans are not read unless asked for
    with pytest.raises(BadRowError, match=r"row 1 \(idx=1\).*`rejected_segments` must be a list of \[start, end\]"):
        load_rlhf_v(path, with_segments=True)
    ds, report = load_rlhf_v(path, with_segments=True, on_bad_row="skip", return_report=True)
    assert list(ds["idx"]) == [0, 2] and report.idxs == [1]
