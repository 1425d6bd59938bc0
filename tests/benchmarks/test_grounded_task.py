"""The grounded shapes task: determinism, rendering against the truth, parsing, detection and correction."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from benchmarks.hallucination.grounded import (
    COLOURS,
    POSITIONS,
    GroundedTaskConfig,
    ObjectGroup,
    Scene,
    correct_response,
    describe_scene,
    find_hallucinations,
    generate_samples,
    is_grammatical,
    layout_key,
    layout_split,
    parse_mentions,
    rlhf_v_row,
    task_corpus,
)
from dataset_builders.rlhf_v import write_rlhf_v_parquet

SCENE = Scene((ObjectGroup("circle", "red", 2, "left"), ObjectGroup("square", "blue", 1, "right")))


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_generator_is_deterministic_and_prefix_stable():
    a = generate_samples(6, seed=3)
    b = generate_samples(6, seed=3)
    assert [_png(x.image) for x in a] == [_png(x.image) for x in b]
    assert [(x.question, x.reference, x.scene) for x in a] == [(x.question, x.reference, x.scene) for x in b]
    # sample i depends only on (seed, i): a shorter run is a prefix
    c = generate_samples(3, seed=3)
    assert [_png(x.image) for x in c] == [_png(x.image) for x in a[:3]]
    d = generate_samples(6, seed=4)
    assert [x.scene for x in d] != [x.scene for x in a]


def test_scene_constraints():
    for s in generate_samples(50, seed=0):
        g = s.scene.groups
        assert 1 <= len(g) <= 3
        assert len({x.position for x in g}) == len(g)  # one group per column
        assert len({x.category for x in g}) == len(g)  # distinct coloured shapes
        assert all(1 <= x.count <= 3 for x in g)
        assert [POSITIONS.index(x.position) for x in g] == sorted(POSITIONS.index(x.position) for x in g)


@pytest.mark.parametrize("size", [48, 60])
def test_rendering_matches_the_truth(size):
    """Count the blobs of each colour in each column of the image: they must equal the scene's groups."""
    cfg = GroundedTaskConfig(image_size=size)
    for s in generate_samples(20, seed=1, config=cfg):
        arr = np.asarray(s.image).astype(int)
        assert arr.shape == (size, size, 3)
        found = {}
        for name, rgb in COLOURS.items():
            mask = np.abs(arr - np.array(rgb)).sum(-1) < 60
            for col, pos in enumerate(POSITIONS):
                sub = mask[:, col * size // 3 : (col + 1) * size // 3]
                _, n = ndimage.label(sub)
                if n:
                    found[(name, pos)] = n
        expected = {(g.colour, g.position): g.count for g in s.scene.groups}
        assert found == expected


def test_reference_grammar():
    assert describe_scene(SCENE) == "There are two red circles on the left. There is one blue square on the right."
    assert "There are three yellow triangles in the middle." in task_corpus(5)


def test_parse_mentions_fields_and_spans():
    text = "There are two red circles on the left. I also see a blue box in the middle."
    ms = parse_mentions(text)
    assert [(m.count, m.colour, m.shape, m.position, m.plural) for m in ms] == [
        (2, "red", "circle", "left", True),
        (1, "blue", "square", "middle", False),
    ]
    sp = ms[0].spans
    assert {k: text[a:b] for k, (a, b) in sp.items()} == {
        "verb": "are",
        "count": "two",
        "colour": "red",
        "noun": "circles",
        "position": "on the left",
    }
    assert {k: text[a:b] for k, (a, b) in ms[1].spans.items()} == {
        "count": "a",
        "colour": "blue",
        "noun": "box",
        "position": "in the middle",
    }


def test_find_hallucinations_kinds():
    text = (
        "There is one red circle on the left. There are three green triangles in the middle. "
        "There is one yellow square on the right. There is one blue square on the left."
    )
    kinds = [(h.kind, h.said, h.truth) for h in find_hallucinations(text, SCENE)]
    assert kinds == [
        ("count", 1, 2),
        ("object", "green triangle", None),
        ("attribute", "yellow", "blue"),
        ("position", "left", "right"),
    ]
    assert find_hallucinations(describe_scene(SCENE), SCENE) == []


@pytest.mark.parametrize(
    "rejected,chosen,rej_segs,cho_segs",
    [
        # count error: noun phrase rewritten (verb, count, noun number), one segment
        (
            "There is one red circle on the left. There is one blue square on the right.",
            "There are two red circles on the left. There is one blue square on the right.",
            ["is one red circle"],
            ["are two red circles"],
        ),
        # position error
        (
            "There are two red circles on the left. There is one blue square in the middle.",
            "There are two red circles on the left. There is one blue square on the right.",
            ["in the middle"],
            ["on the right"],
        ),
        # attribute (colour) error
        (
            "There are two yellow circles on the left. There is one blue square on the right.",
            "There are two red circles on the left. There is one blue square on the right.",
            ["yellow"],
            ["red"],
        ),
        # a hallucinated object and nothing left to replace it with: the sentence is deleted
        (
            "There are two red circles on the left. There is one green triangle in the middle. "
            "There is one blue square on the right.",
            "There are two red circles on the left. There is one blue square on the right.",
            ["There is one green triangle in the middle. "],
            [],
        ),
        # a hallucinated object replaced by the unmentioned object of the same column
        (
            "There are two red circles on the left. There is one green triangle on the right.",
            "There are two red circles on the left. There is one blue square on the right.",
            ["green triangle"],
            ["blue square"],
        ),
    ],
)
def test_correction_of_known_hallucinated_responses(rejected, chosen, rej_segs, cho_segs):
    c = correct_response(rejected, SCENE)
    assert c.rejected == rejected
    assert c.chosen == chosen
    assert [rejected[a:b] for a, b in c.rejected_segments] == rej_segs
    assert [chosen[a:b] for a, b in c.chosen_segments] == cho_segs
    assert find_hallucinations(c.chosen, SCENE) == []


def test_correction_of_faithful_response_is_identity():
    c = correct_response(describe_scene(SCENE), SCENE)
    assert not c.changed and c.rejected_segments == [] and c.chosen_segments == []


def test_add_missing_appends_omitted_objects():
    c = correct_response("There are two red circles on the left.", SCENE, add_missing=True)
    assert c.chosen == describe_scene(SCENE)
    assert [c.chosen[a:b] for a, b in c.chosen_segments] == ["There is one blue square on the right."]


def test_corrections_remove_every_hallucination_of_random_corruptions():
    """Corrupt references of random scenes (swap colours, counts, positions, add objects): the correction must
    leave no hallucination, and text outside the rejected segments must be unchanged."""
    import random

    rng = random.Random(0)
    words = {"colour": list(COLOURS), "count": ["one", "two", "three"], "pos": ["left", "middle", "right"]}
    n_changed = 0
    for s in generate_samples(60, seed=5):
        text = describe_scene(s.scene)
        for _ in range(2):
            kind = rng.choice(list(words) + ["extra"])
            if kind == "extra":
                text += " There is one green triangle on the left."
            else:
                old = [w for w in words[kind] if f" {w} " in f" {text} "]
                if old:
                    text = text.replace(rng.choice(old), rng.choice(words[kind]), 1)
        c = correct_response(text, s.scene)
        assert find_hallucinations(c.chosen, s.scene) == []
        n_changed += c.changed
        # outside the segments the two texts agree
        kept_r, cur = [], 0
        for a, b in c.rejected_segments:
            kept_r.append(c.rejected[cur:a])
            cur = b
        kept_r.append(c.rejected[cur:])
        kept_c, cur = [], 0
        for a, b in c.chosen_segments:
            kept_c.append(c.chosen[cur:a])
            cur = b
        kept_c.append(c.chosen[cur:])
        assert "".join(kept_r) == "".join(kept_c)
    assert n_changed > 20


def test_write_rlhf_v_parquet_schema(tmp_path):
    s = generate_samples(2, seed=0)
    recs = []
    for x in s:
        bad = x.reference.replace("one", "two", 1) if "one" in x.reference else x.reference + " There is one red dot."
        recs.append(
            {
                "idx": x.idx,
                "image": x.image,
                "question": x.question,
                "scene": x.scene,
                "correction": correct_response(bad, x.scene),
            }
        )
    rows = [rlhf_v_row(r["idx"], r["image"], r["question"], r["correction"], r["scene"]) for r in recs]
    path = write_rlhf_v_parquet(rows, tmp_path / "pairs.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["ds_name", "image", "text", "origin_dataset", "origin_split", "idx", "image_path"]
    rows = table.to_pylist()
    for rec, row in zip(recs, rows):
        text = json.loads(row["text"])
        c = rec["correction"]
        assert (text["question"], text["chosen"], text["rejected"]) == (rec["question"], c.chosen, c.rejected)
        assert text["chosen_segments"] == [list(t) for t in c.chosen_segments]
        assert row["idx"] == rec["idx"]
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert np.array_equal(np.asarray(img), np.asarray(rec["image"]))
        assert Scene.from_dict(json.loads(row["origin_split"])["scene"]) == rec["scene"]


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="max_groups"):
        GroundedTaskConfig(max_groups=4)
    with pytest.raises(ValueError, match="n must be"):
        generate_samples(-1)
    with pytest.raises(ValueError, match=r"row 0 lacks column\(s\) \['ds_name'"):
        write_rlhf_v_parquet([{"idx": 0, "image": Image.new("RGB", (4, 4))}], tmp_path / "x.parquet")
    row = rlhf_v_row(0, Image.new("RGB", (4, 4)), "q", correct_response("There is one red dot.", SCENE))
    with pytest.raises(TypeError, match="row 0: `image` must be a PIL image"):
        write_rlhf_v_parquet([{**row, "image": b"png"}], tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="cooccurrence must be in"):
        GroundedTaskConfig(cooccurrence=1.5)
    with pytest.raises(ValueError, match="layouts must be"):
        GroundedTaskConfig(layouts="val")


def test_correction_rewrites_while_a_true_object_is_unmentioned():
    """A hallucinated object becomes the unmentioned true object (here in another column, so its position is fixed
    too); deletion is only for when every true object is already mentioned (see the parametrised case above)."""
    rejected = "There are two red circles on the left. There is one green triangle in the middle."
    c = correct_response(rejected, SCENE)
    assert c.chosen == "There are two red circles on the left. There is one blue square on the right."
    assert [rejected[a:b] for a, b in c.rejected_segments] == ["green triangle", "in the middle"]
    assert [c.chosen[a:b] for a, b in c.chosen_segments] == ["blue square", "on the right"]
    assert len(c.rejected_segments) == len(c.chosen_segments)  # nothing deleted


def test_hallucination_kinds_wrong_shape_is_an_attribute_of_a_real_object():
    # a red square on the left where a red circle is: the shape of a real object is wrong (attribute), not an object
    h = find_hallucinations("There are two red squares on the left.", SCENE)
    assert [(x.kind, x.said, x.truth) for x in h] == [("attribute", "square", "circle")]
    # a wrong colour of a real object
    h = find_hallucinations("There is one green square on the right.", SCENE)
    assert [(x.kind, x.said, x.truth) for x in h] == [("attribute", "green", "blue")]
    # nothing in the middle column shares colour or shape: an object hallucination
    h = find_hallucinations("There is one yellow triangle in the middle.", SCENE)
    assert [x.kind for x in h] == ["object"]


@pytest.mark.parametrize(
    "text,ok",
    [
        ("There is one red circle on the left.", True),
        ("There are two red circles on the left. There is one blue square on the right.", True),
        ("There is two red circles on the left.", False),  # agreement
        ("There are two red circle on the left.", False),  # number of the noun
        ("There is one red circle on the left", False),  # no full stop
        ("There is one red on the left.", False),  # no shape
        ("There is one red circle on the left. There", False),  # cut off
        ("", False),
        ("There is one red circle on the left.  There is one blue square on the right.", False),
    ],
)
def test_is_grammatical(text, ok):
    assert is_grammatical(text) is ok


def test_cooccurrence_sampler_statistics():
    """P(partner | anchor) is `cooccurrence` (binomial tolerance), the partner sits right of its anchor, anchors
    appear only in anchor scenes, and the test layouts never occur in the train part."""
    from benchmarks.hallucination.grounded import COOCCURRENCE_PAIRS, conflict_partner

    pairs = dict(COOCCURRENCE_PAIRS)
    cfg = GroundedTaskConfig(min_groups=2, max_groups=3, anchor_rate=0.5, cooccurrence=0.9, layouts="train")
    samples = generate_samples(1500, seed=7, config=cfg)
    n_anchor = n_partner = 0
    for s in samples:
        cats = s.scene.categories
        anchors = [a for a in pairs if a in cats]
        assert len(anchors) <= 1
        assert 2 <= len(s.scene.groups) <= 3
        for a in anchors:
            n_anchor += 1
            if pairs[a] in cats:
                n_partner += 1
                pa = POSITIONS.index(s.scene.by_category(a).position)
                assert POSITIONS.index(s.scene.by_category(pairs[a]).position) == pa + 1
            else:
                assert conflict_partner(s.scene) == pairs[a]
        assert layout_split(s.scene) == "train"
    # anchor_rate 0.5 of scenes; partner with probability 0.9 (3 sd of a binomial)
    assert abs(n_anchor / len(samples) - 0.5) < 3 * (0.25 / len(samples)) ** 0.5
    p = n_partner / n_anchor
    assert abs(p - 0.9) < 3 * (0.09 / n_anchor) ** 0.5
    test = generate_samples(300, seed=8, config=GroundedTaskConfig(min_groups=2, anchor_rate=0.5, layouts="test"))
    assert all(layout_split(s.scene) == "test" for s in test)
    assert not {layout_key(s.scene) for s in test} & {layout_key(s.scene) for s in samples}
    assert all(conflict_partner(s.scene) is not None for s in test if set(s.scene.categories) & set(pairs))


@pytest.mark.parametrize("slot", ["empty", "near"])
def test_conflict_slot(slot):
    """Conflict scenes put the anchor in the left or middle column; the column right of it is empty or holds a
    coloured shape sharing exactly one of colour / shape with the absent partner."""
    from benchmarks.hallucination.grounded import conflict_partner

    cfg = GroundedTaskConfig(min_groups=2, anchor_rate=1.0, cooccurrence=0.0, conflict_slot=slot)
    for s in generate_samples(200, seed=9, config=cfg):
        partner = conflict_partner(s.scene)
        assert partner is not None
        anchor = next(g for g in s.scene.groups if g.category not in {partner} and g.category in _ANCHORS)
        col = POSITIONS.index(anchor.position)
        assert col < 2
        nxt = next((g for g in s.scene.groups if g.position == POSITIONS[col + 1]), None)
        if slot == "empty":
            assert nxt is None
        else:
            p_colour, p_shape = partner.split()
            assert nxt is not None and (nxt.colour == p_colour) != (nxt.shape == p_shape)
    with pytest.raises(ValueError, match="conflict_slot must be"):
        GroundedTaskConfig(conflict_slot="full")


_ANCHORS = {"red circle", "green triangle", "yellow square"}


def test_caption_prior_draws_a_near_partner_under_the_partners_name():
    """With ``caption_prior_rate=1`` every scene with an anchor and its partner is drawn with a near-partner (same
    colour xor same shape, same column and count, in no pair) while the reference still names the partner; other
    scenes, and every scene at rate 0, are drawn as described."""
    from benchmarks.hallucination.gates import CELL_CLASSES, cell_labels
    from benchmarks.hallucination.grounded import (
        COOCCURRENCE_PAIRS,
        GroundedTaskConfig,
        describe_scene,
        parse_mentions,
    )

    partner_of = dict(COOCCURRENCE_PAIRS)
    in_pairs = {c for pair in COOCCURRENCE_PAIRS for c in pair}
    base = dict(min_groups=2, max_groups=3, anchor_rate=0.8, cooccurrence=1.0)
    swapped = generate_samples(120, seed=5, config=GroundedTaskConfig(**base, caption_prior_rate=1.0))
    plain = generate_samples(120, seed=5, config=GroundedTaskConfig(**base))
    n_swapped = 0
    for s, p in zip(swapped, plain):
        assert p.reference == describe_scene(p.scene)
        said = [m.category for m in parse_mentions(s.reference)]
        anchor = next((c for c in said if c in partner_of), None)
        if anchor is None or partner_of[anchor] not in said:
            assert s.reference == describe_scene(s.scene)
            continue
        n_swapped += 1
        partner = partner_of[anchor]
        assert partner not in s.scene.categories and anchor in s.scene.categories
        truth = describe_scene(s.scene)
        (old,) = [g for g in parse_mentions(s.reference) if g.category == partner]
        (new,) = [g for g in s.scene.groups if g.position == old.position and g.category not in said]
        assert new.count == old.count and new.category not in in_pairs
        assert (new.colour == partner.split()[0]) != (new.shape == partner.split()[1])
        assert truth != s.reference
        # the image shows the near-partner: its cells hold that class, not the partner's
        labels = {CELL_CLASSES[k] for k in cell_labels(s)}
        assert new.category in labels and partner not in labels
    assert n_swapped > 40
    # with a layout split, what the image shows and what the caption says both stay on the requested side
    split = generate_samples(150, seed=6, config=GroundedTaskConfig(**base, caption_prior_rate=1.0, layouts="train"))
    captions = [parse_mentions(x.reference) for x in split]
    assert any(x.reference != describe_scene(x.scene) for x in split)
    for x, said in zip(split, captions):
        assert layout_split(x.scene) == "train"
        said_scene = Scene(tuple(ObjectGroup(m.shape, m.colour, m.count, m.position) for m in said))
        assert layout_split(said_scene) == "train"
    with pytest.raises(ValueError, match="caption_prior_rate"):
        GroundedTaskConfig(caption_prior_rate=1.5)
