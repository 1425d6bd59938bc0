"""CHAIR-i / CHAIR-s, Object HalBench-style rates and recall against hand-computed examples."""

from pathlib import Path

import pytest

from benchmarks.hallucination.grounded import COLOURS, SHAPES, describe_scene, generate_samples
from hf_ext.metrics.chair import COCO_SYNONYMS, SHAPES_SYNONYMS, ChairScorer, compute_chair, singularize

CHAIR_PATH = Path(__file__).resolve().parents[2] / "hf_ext" / "metrics" / "chair.py"


def test_coco_table_has_the_80_categories():
    assert len(COCO_SYNONYMS) == 80
    assert {"person", "hot dog", "teddy bear", "dining table", "tv", "hair drier"} <= set(COCO_SYNONYMS)
    ChairScorer("coco")  # no surface form is listed under two categories


def test_singularize():
    pairs = {
        "dogs": "dog",
        "buses": "bus",
        "benches": "bench",
        "ponies": "pony",
        "knives": "knife",
        "glasses": "glass",
        "skis": "skis",
        "bus": "bus",
        "boxes": "box",
        "cat": "cat",
    }
    assert {w: singularize(w) for w in pairs} == pairs


def test_extract_longest_phrase_first():
    sc = ChairScorer("coco")
    text = "Two hot dogs, a teddy bear and a dog near the toilet seat."
    got = [(m.surface, m.category) for m in sc.extract(text)]
    assert got == [("hot dogs", "hot dog"), ("teddy bear", "teddy bear"), ("dog", "dog"), ("toilet seat", "toilet")]
    m = sc.extract(text)[0]
    assert text[m.start : m.end] == "hot dogs"


def test_chair_hand_computed_coco():
    preds = [
        "A man riding a horse next to a dog. The man wears a hat.",  # person, horse, dog, person -> dog halluc.
        "A cat sleeping on a couch.",  # cat, couch -> none
        "Two zebras and a giraffe near a car.",  # zebra, giraffe, car -> giraffe, car halluc.
    ]
    refs = [["person", "horse"], ["cat", "couch", "remote"], ["zebra"]]
    out = compute_chair(preds, refs, return_per_sample=True)
    # mentions: 4 + 2 + 3 = 9; hallucinated: 1 + 0 + 2 = 3
    assert out["num_mentions"] == 9 and out["num_hallucinated_mentions"] == 3
    assert out["chair_i"] == pytest.approx(3 / 9)
    assert out["chair_s"] == pytest.approx(2 / 3)
    assert out["halbench_response"] == pytest.approx(2 / 3)
    # distinct objects per response: 3 + 2 + 3 = 8, hallucinated 1 + 0 + 2 = 3
    assert out["halbench_mention"] == pytest.approx(3 / 8)
    # true objects 2 + 3 + 1 = 6, found 2 + 2 + 1 = 5
    assert out["recall"] == pytest.approx(5 / 6)
    assert out["per_sample"][2] == {
        "mentioned": ["zebra", "giraffe", "car"],
        "hallucinated": ["giraffe", "car"],
        "missed": [],
    }
    assert out["per_sample"][1]["missed"] == ["remote"]
    # unique_mentions: "man" twice in response 0 counts once -> 3 + 2 + 3 mentions
    uniq = compute_chair(preds, refs, unique_mentions=True)
    assert uniq["chair_i"] == pytest.approx(3 / 8)


def test_chair_shapes_table_and_references_as_synonyms():
    preds = ["There are two red circles on the left. There is one blue box in the middle.", "A green triangle."]
    refs = [["red circle", "blue square"], ["yellow disc"]]  # a synonym is accepted as a reference
    out = compute_chair(preds, refs, synonyms="shapes")
    assert out["chair_i"] == pytest.approx(1 / 3)
    assert out["chair_s"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(2 / 3)


def test_shapes_table_covers_the_task_vocabulary():
    assert set(SHAPES_SYNONYMS) == {f"{c} {s}" for c in COLOURS for s in SHAPES}
    samples = generate_samples(30, seed=2)
    out = compute_chair([describe_scene(s.scene) for s in samples], [s.scene.categories for s in samples], "shapes")
    assert out["chair_i"] == 0.0 and out["recall"] == 1.0


def test_empty_and_bad_input():
    assert compute_chair(["nothing here"], [["dog"]])["chair_i"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        compute_chair(["a dog"], [])
    with pytest.raises(ValueError, match=r"references\[0\]: object 'unicorn'"):
        compute_chair(["a dog"], [["unicorn"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a list"):
        compute_chair(["a dog"], ["dog"])
    with pytest.raises(ValueError, match="listed under both"):
        ChairScorer({"a": ["x"], "b": ["x"]})
    with pytest.raises(ValueError, match="synonyms must be one of"):
        ChairScorer("lvis")


def test_evaluate_module_from_local_path():
    import evaluate

    metric = evaluate.load(str(CHAIR_PATH), config_name="shapes")
    preds = ["There are two red circles on the left. There is one blue box in the middle.", "A green triangle."]
    refs = [["red circle", "blue square"], ["yellow circle"]]
    assert metric.compute(predictions=preds, references=refs) == compute_chair(preds, refs, synonyms="shapes")
    coco = evaluate.load(str(CHAIR_PATH))
    coco.add_batch(predictions=["a dog and a cat"], references=[["dog"]])
    assert coco.compute()["chair_i"] == pytest.approx(0.5)
