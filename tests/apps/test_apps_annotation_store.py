"""The annotation store (journals, claims, export, agreement) and segment corrections, without a browser."""

import json
import multiprocessing
import random

import pytest
from PIL import Image

from dataset_builders.rlhf_v import load_rlhf_v
from hf_ext.apps.annotation_store import AnnotationStore, agreement_statistics
from hf_ext.apps.corrections import SegmentCorrection


def _images(folder, n=4):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i:02d}.png")
    return folder


# ----------------------------------------------------------------------------- corrections


def _reference_spans(original, edits):
    """Brute force: track per character where it came from, edit by edit (independent of the class)."""
    chars = [(c, i) for i, c in enumerate(original)]
    for start, end, new in edits:
        chars = chars[:start] + [(c, None) for c in new] + chars[end:]
    text = "".join(c for c, _ in chars)
    new_pos = [i for i, (_, src) in enumerate(chars) if src is None]
    kept = {src for _, src in chars if src is not None}
    gone = [i for i in range(len(original)) if i not in kept]

    def runs(positions):
        out = []
        for p in positions:
            if out and out[-1][1] == p:
                out[-1][1] = p + 1
            else:
                out.append([p, p + 1])
        return out

    return text, runs(new_pos), runs(gone)


def test_correction_spans_match_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        original = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 20))) + "x"
        c, edits = SegmentCorrection(original), []
        for _ in range(rng.randint(1, 4)):
            n = len(c.text)
            start = rng.randint(0, n)
            end = rng.randint(start, n)
            new = "".join(rng.choice("XY") for _ in range(rng.randint(0, 3)))
            try:
                c.replace(start, end, new)
            except ValueError:
                continue  # empty or identical edits are refused
            edits.append((start, end, new))
        text, chosen, rejected = _reference_spans(original, edits)
        assert c.text == text
        assert c.spans() == (chosen, rejected)
        assert "".join(t for t, _ in c.highlights()) == text


def test_correction_example_undo_and_errors():
    c = SegmentCorrection("there are two red circles on the left .")
    c.replace(10, 13, "three")
    c.replace(20, 27, "squares")
    assert c.text == "there are three red squares on the left ."
    assert c.spans() == ([[10, 15], [20, 27]], [[10, 13], [18, 25]])
    assert c.undo() and c.text == "there are three red circles on the left ."
    assert c.undo() and not c.changed and not c.undo()
    c.replace(5, 5, " really")  # pure insertion: chosen span only
    assert c.spans() == ([[5, 12]], [])
    c.replace(0, 6, "")  # a deletion that also removes part of the insertion
    assert c.text == "really are two red circles on the left ."
    assert c.spans() == ([[0, 6]], [[0, 5]])
    assert SegmentCorrection.from_dict(json.loads(json.dumps(c.to_dict()))).spans() == c.spans()
    with pytest.raises(ValueError, match="outside the answer"):
        c.replace(3, 500, "x")
    with pytest.raises(ValueError, match="Nothing to do"):
        c.replace(2, 2, "")
    with pytest.raises(ValueError, match="identical"):
        c.replace(0, 6, "really")
    with pytest.raises(ValueError, match="empty"):
        SegmentCorrection("   ")


# ----------------------------------------------------------------------------- store


def _submit_corrected(store, annotator, item, answer="a red circle", start=2, end=5, new="blue"):
    c = SegmentCorrection(answer)
    c.replace(start, end, new)
    chosen, rejected = c.spans()
    return store.submit(annotator, item, "corrected", "q?", answer, c.text, chosen, rejected, model="tiny")


def test_store_resume_idempotent_export(tmp_path):
    images = _images(tmp_path / "img")
    out = tmp_path / "pairs.parquet"
    store = AnnotationStore(images, out)
    assert store.next_item("alice") == "00.png"
    assert store.next_item("alice") == "00.png"  # a claim is resumed, not doubled
    assert store.next_item("bob") == "01.png"  # bob does not get alice's item
    _submit_corrected(store, "alice", "00.png")
    _submit_corrected(store, "alice", "00.png", new="green")  # a double submit is a no-op
    store.submit("bob", "01.png", "correct", "q?", "fine answer")
    assert store.next_item("alice") == "02.png"
    # a new process on the same files: same queue, same progress
    again = AnnotationStore(images, out)
    assert again.next_item("alice") == "02.png"
    assert again.progress("alice") == {"total": 4, "finished": 2, "mine": 1, "pairs": 1}
    data = load_rlhf_v(out, with_segments=True)
    assert data["idx"] == [0]
    assert data[0]["chosen"][0]["content"] == "a blue circle"
    assert data[0]["chosen_segments"] == [[2, 6]] and data[0]["rejected_segments"] == [[2, 5]]
    assert json.loads(json.dumps(data[0]["rejected"])) == [{"role": "assistant", "content": "a red circle"}]
    # new images are appended with new idx; known ones keep theirs
    Image.new("RGB", (16, 16)).save(images / "000_new.png")
    assert AnnotationStore(images, out).items == ["00.png", "01.png", "02.png", "03.png", "000_new.png"]


def test_store_cut_journal_line_and_bad_input(tmp_path):
    images = _images(tmp_path / "img", 2)
    store = AnnotationStore(images, tmp_path / "pairs.parquet")
    _submit_corrected(store, "alice", "00.png")
    journal = store.journal_path("alice")
    with open(journal, "ab") as f:
        f.write(b'{"item": "01.png", "idx": 1, "annot')  # a crash in the middle of an append
    assert [r["item"] for r in store.records("alice")] == ["00.png"]
    assert store.next_item("alice") == "01.png"
    journal.write_bytes(b'{"bad json\n' + journal.read_bytes())
    with pytest.raises(ValueError, match=r"alice.jsonl: line 1 is not valid JSON"):
        store.records("alice")
    journal.unlink()
    with pytest.raises(ValueError, match="Invalid annotator name"):
        store.next_item("../evil")
    with pytest.raises(ValueError, match="identical to the model's answer"):
        store.submit("alice", "00.png", "corrected", "q", "same", "same", [[0, 4]], [[0, 4]])
    with pytest.raises(ValueError, match="rejected_segments must be"):
        store.submit("alice", "00.png", "corrected", "q", "abc", "abd", [[2, 3]], [[2, 9]])
    with pytest.raises(ValueError, match="no image files"):
        AnnotationStore(tmp_path / "pairs.parquet.annotations", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="must be a .parquet"):
        AnnotationStore(images, tmp_path / "x.json")


def _worker(args):
    images, out, name, seen = args
    store = AnnotationStore(images, out)
    mine = []
    while (item := store.next_item(name)) is not None:
        mine.append(item)
        _submit_corrected(store, name, item)
    return mine


def test_several_annotator_processes_never_share_an_item(tmp_path):  # three processes racing for claims
    images = _images(tmp_path / "img", 12)
    out = tmp_path / "pairs.parquet"
    AnnotationStore(images, out)  # create the queue once
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_worker, [(images, out, name, None) for name in ("ann1", "ann2", "ann3")])
    done = [item for r in results for item in r]
    assert sorted(done) == [f"{i:02d}.png" for i in range(12)]  # every item exactly once
    assert load_rlhf_v(out, with_segments=True)["idx"] == list(range(12))


def test_overlap_and_agreement(tmp_path):
    images = _images(tmp_path / "img", 3)
    store = AnnotationStore(images, tmp_path / "pairs.parquet", overlap=2)
    a, b = store.next_item("alice"), store.next_item("bob")
    assert a == b == "00.png"  # overlap 2: both get the first item
    assert store.next_item("carol") == "01.png"  # ... a third annotator does not
    _submit_corrected(store, "alice", "00.png", start=2, end=5, new="blue")  # rejects chars 2..4
    _submit_corrected(store, "bob", "00.png", start=2, end=12, new="blue square")  # rejects chars 2..11
    store.submit("alice", "01.png", "correct", "q", "ok answer")
    store.submit("carol", "01.png", "corrected", "q", "ok answer", "no answer", [[0, 2]], [[0, 2]])
    stats = store.agreement()
    # item 00: both corrected (agree), span F1 = 2*3/(3+10); item 01: correct vs corrected (disagree)
    assert stats["items"] == 2 and stats["pairs"] == 2
    assert stats["label_agreement"] == 0.5
    assert stats["span_f1"] == pytest.approx(6 / 13)
    assert stats["exact_match"] == 0.0
    # kappa over the pooled pairs: labels a = [T, F], b = [T, T]: p_o = .5, p_e = .5*1 + .5*0 = .5 -> 0
    assert stats["cohen_kappa"] == pytest.approx(0.0)
    assert stats["per_annotator"]["alice"] == {"corrected": 1, "correct": 1, "skipped": 0}
    assert [r["annotator"] for r in store.pairs("all")] == ["alice", "bob", "carol"]
    assert [r["annotator"] for r in store.pairs("first")] == ["alice", "carol"]
    assert agreement_statistics([])["cohen_kappa"] is None


def test_annotate_cli_export_and_stats(tmp_path):
    from hf_ext.cli import run

    images = _images(tmp_path / "img", 2)
    out = tmp_path / "pairs.parquet"
    store = AnnotationStore(images, out, overlap=2)
    for name in ("alice", "bob"):
        store.next_item(name)
        _submit_corrected(store, name, "00.png")
    result = run(
        [
            "annotate",
            "export",
            "--images",
            str(images),
            "--out",
            str(out),
            "--to",
            str(tmp_path / "all.parquet"),
            "--policy",
            "all",
        ]
    )
    assert result["rows"] == 2
    assert load_rlhf_v(tmp_path / "all.parquet", with_segments=True)["idx"] == [0, 0]
    stats = run(["annotate", "stats", "--images", str(images), "--out", str(out), "--overlap", "2"])
    assert stats["agreement"]["exact_match"] == 1.0 and stats["agreement"]["span_f1"] == 1.0
