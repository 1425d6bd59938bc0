"""Fault regressions (issue #16): dataset builders facing edited, empty, corrupt or odd input files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_builders._common import BadRowError
from dataset_builders.chinese_poetry import load_chinese_poetry
from dataset_builders.elv import load_semeval2010_task8
from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet
from dataset_builders.unimm_chat import load_unimm_chat

SEMEVAL_BLOCK = '{i}\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\nOther\nComment:\n\n'
POEM = {
    "author": "王之涣",
    "title": "登鹳雀楼",
    "paragraphs": ["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"],
}


def _write_fixture(path, n: int = 8, rows: list[dict] | None = None):
    """The builder's writer on `rows` (default: `n` fixture rows)."""
    return write_rlhf_v_parquet(rows if rows is not None else make_rlhf_v_rows(n=n), path)


def test_cache_dir_is_rebuilt_when_the_file_changes(tmp_path):
    rows = make_rlhf_v_rows(4)
    path = _write_fixture(tmp_path / "a.parquet", rows=rows[:2])
    cache = tmp_path / "cache"
    assert load_rlhf_v(path, cache_dir=cache)["idx"] == [0, 1]
    _write_fixture(path, rows=rows[2:])  # overwrite: the old rows must not be served
    assert load_rlhf_v(path, cache_dir=cache)["idx"] == [2, 3]
    bad = [dict(rows[0]), dict(rows[1], text="not json")]
    _write_fixture(path, rows=bad)  # a newly bad row is caught, not hidden by the cache
    with pytest.raises(BadRowError, match="row 1"):
        load_rlhf_v(path, cache_dir=cache)


def test_no_temporary_directory_outlives_the_process(tmp_path):
    path = _write_fixture(tmp_path / "a.parquet", n=2)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = (
        "from dataset_builders.rlhf_v import load_rlhf_v; import sys; ds = load_rlhf_v(sys.argv[1]); "
        "assert len(ds) == 2\ntry:\n    load_rlhf_v(sys.argv[2])\nexcept ValueError:\n    pass"
    )
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"")
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(bad)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp.iterdir() if p.name.startswith("rlhf_v_")] == []


@pytest.mark.parametrize("content", [b"", b"PAR1 truncated", b"not a parquet file at all\n"])
def test_unreadable_parquet_names_the_file(tmp_path, content):
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}: cannot be read as a parquet file"):
        load_rlhf_v(path)


def test_truncated_parquet_names_the_file(tmp_path):
    good = _write_fixture(tmp_path / "good.parquet", n=4)
    data = good.read_bytes()
    path = tmp_path / "cut.parquet"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path)):
        load_rlhf_v(path)


def test_all_rows_skipped_keeps_the_report(tmp_path):
    rows = [dict(r, text="not json") for r in make_rlhf_v_rows(2)]
    path = _write_fixture(tmp_path / "bad.parquet", rows=rows)
    with pytest.raises(ValueError, match="no rows loaded") as exc:
        load_rlhf_v(path, on_bad_row="skip")
    message = str(exc.value)
    assert "skipped 2 bad row(s)" in message and "bad.parquet: row 1 (idx=1)" in message


def test_zero_row_file(tmp_path):
    table = pq.read_table(_write_fixture(tmp_path / "one.parquet", n=1))
    path = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), path)  # the schema, no rows
    with pytest.raises(ValueError, match=r"no rows loaded.*empty\.parquet.*hold no rows"):
        load_rlhf_v(path)


def _with_idx(tmp_path, values):
    path = _write_fixture(tmp_path / "ints.parquet", rows=make_rlhf_v_rows(len(values)))
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("idx"), "idx", pa.array(values))
    out = tmp_path / "idx.parquet"
    pq.write_table(table, out)
    return out


def test_string_idx_is_a_bad_row(tmp_path):
    path = _with_idx(tmp_path, ["0", "abc"])
    with pytest.raises(BadRowError, match=r"idx\.parquet: row 0 \(idx='0'\).*`idx` must be an integer"):
        load_rlhf_v(path)
    with pytest.raises(ValueError, match="skipped 2 bad row"):  # every row skipped: none left
        load_rlhf_v(path, on_bad_row="skip")


def test_null_idx_is_a_bad_row(tmp_path):
    path = _with_idx(tmp_path, [0, None, 2])
    with pytest.raises(BadRowError, match=r"row 1 \(idx=None\).*`idx` is null"):
        load_rlhf_v(path)
    ds, report = load_rlhf_v(path, on_bad_row="skip", return_report=True)
    assert ds["idx"] == [0, 2] and [(r.source, r.row) for r in report.rows] == [("idx.parquet", 1)]


def test_directories_and_globs(tmp_path):
    rows = make_rlhf_v_rows(3)
    _write_fixture(tmp_path / "d" / "x-0.parquet", rows=rows[:1])
    _write_fixture(tmp_path / "d" / "x-1.parquet", rows=rows[1:])
    (tmp_path / "d" / "notes.txt").write_text("not data")
    assert load_rlhf_v(tmp_path / "d")["idx"] == [0, 1, 2]
    assert load_rlhf_v(str(tmp_path / "d" / "x-1*.parquet"))["idx"] == [1, 2]
    with pytest.raises(ValueError, match="matches no file"):
        load_rlhf_v(str(tmp_path / "d" / "y-*.parquet"))
    with pytest.raises(ValueError, match="has no .parquet files"):
        load_rlhf_v(tmp_path)  # only a sub-directory, no parquet file at the top


def test_elv_and_poetry_accept_directories_and_report_empty_loads(tmp_path):
    d = tmp_path / "semeval"
    d.mkdir()
    (d / "a.txt").write_text(SEMEVAL_BLOCK.format(i=1))
    (d / "b.txt").write_text(SEMEVAL_BLOCK.format(i=2))
    assert len(load_semeval2010_task8(d)["train"]) == 2
    assert len(load_semeval2010_task8(str(d / "*.txt"))["train"]) == 2
    (d / "a.txt").write_text('1\t"No entities."\nOther\nComment:\n\n')
    with pytest.raises(ValueError, match="no rows loaded"):
        load_semeval2010_task8(d / "a.txt", on_bad_row="skip")
    p = tmp_path / "poems"
    p.mkdir()
    (p / "poet.tang.0.json").write_text(json.dumps([POEM], ensure_ascii=False), encoding="utf-8")
    assert load_chinese_poetry(p)["title"] == ["登鹳雀楼"]
    (p / "poet.tang.0.json").write_text("[]")
    with pytest.raises(ValueError, match=r"no rows loaded.*hold no rows"):
        load_chinese_poetry(p)


def test_unimm_chat_shares_the_file_checks(tmp_path):
    path = tmp_path / "u.parquet"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{path}: cannot be read as a parquet file"):
        load_unimm_chat(path)


def test_cached_load_reports_the_same_skipped_rows(tmp_path):
    rows = make_rlhf_v_rows(3)
    rows[1] = dict(rows[1], text="not json")
    path = _write_fixture(tmp_path / "a.parquet", rows=rows)
    first, report = load_rlhf_v(path, on_bad_row="skip", cache_dir=tmp_path / "c", return_report=True)
    assert len(list((tmp_path / "c").rglob("hf_ext_bad_rows.json"))) == 1  # kept with the cache
    again, cached = load_rlhf_v(path, on_bad_row="skip", cache_dir=tmp_path / "c", return_report=True)
    assert first["idx"] == again["idx"] == [0, 2]
    assert (
        [str(r) for r in cached.rows]
        == [str(r) for r in report.rows]
        == ["a.parquet: row 1 (idx=1): `text` is not valid JSON (Expecting value: line 1 column 1 (char 0))"]
    )
