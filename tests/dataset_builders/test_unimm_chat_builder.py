"""UniMM-Chat builder: Hub schema → TRL conversational rows with images; bad rows raise or are reported."""

import json

import pytest

from dataset_builders._common import BadRowError
from dataset_builders.unimm_chat import load_unimm_chat, make_unimm_chat_rows, write_unimm_chat_parquet


def test_rows_convert_to_trl_messages(tmp_path):
    rows = make_unimm_chat_rows(3)
    ds = load_unimm_chat(write_unimm_chat_parquet(tmp_path / "u.parquet", rows))
    assert len(ds) == 3
    for row, src in zip(ds, rows):
        turns = json.loads(src["conversation"])
        expected = [
            {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"].replace("<image>\n", "")}
            for t in turns
        ]
        assert row["messages"] == expected
        assert row["idx"] == src["idx"] and row["image_path"] == src["image_path"]
        assert row["images"][0].size == (32, 32)


@pytest.mark.parametrize(
    "patch, reason",
    [
        ({"conversation": "not json"}, "not valid JSON"),
        ({"conversation": json.dumps([])}, "non-empty list"),
        ({"conversation": json.dumps([{"from": "gpt", "value": "x"}])}, "alternate"),
        (
            {"conversation": json.dumps([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}])},
            "unknown speaker",
        ),
        (
            {"conversation": json.dumps([{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a"}])},
            "empty",
        ),
        ({"conversation": json.dumps([{"from": "human", "value": "q"}])}, "does not end"),
        ({"image": {"bytes": b"not an image", "path": "x.png"}}, "does not decode"),
    ],
)
def test_bad_rows_raise_with_location(tmp_path, patch, reason):
    rows = make_unimm_chat_rows(3)
    rows[1].update(patch)
    path = write_unimm_chat_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(BadRowError, match=rf"bad.parquet: row 1 \(idx=1\) is invalid: .*{reason}"):
        load_unimm_chat(path)


def test_bad_rows_skipped_and_reported(tmp_path):
    rows = make_unimm_chat_rows(4)
    rows[2]["conversation"] = "{"
    path = write_unimm_chat_parquet(tmp_path / "bad.parquet", rows)
    ds, report = load_unimm_chat(path, on_bad_row="skip", return_report=True)
    assert [r["idx"] for r in ds] == [0, 1, 3]
    assert report.idxs == [2]
    assert "skipped 1 bad row" in ds.info.description


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_unimm_chat(tmp_path / "nope.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"idx": [1]}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="missing column"):
        load_unimm_chat(tmp_path / "cols.parquet")
