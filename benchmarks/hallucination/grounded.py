"""A grounded image-description task where the truth is known exactly: RLHF-V's setting in miniature.

Each image is drawn with PIL and holds 1-3 *groups* of identical objects. A group has a shape (circle, square,
triangle), a colour (red, green, blue, yellow), a count (1-3) and a position (left, middle, right column); the
groups of one image occupy different columns and are different coloured shapes. Reference descriptions follow a
small controlled grammar a tiny model can learn::

    There are two red circles on the left. There is one blue square on the right.

On top of the generator this module provides what RLHF-V's annotators did by hand:

* :func:`parse_mentions` extracts the object mentions of any response (count, colour, shape, position, with the
  character span of every field), tolerant of free text around them;
* :func:`find_hallucinations` compares the mentions with the scene (object, attribute, count and position errors,
  the categories of RLHF-V's correction statistics);
* :func:`correct_response` rewrites the hallucinated segments one by one, giving a ``(rejected, chosen)`` pair and
  the corrected character spans on both sides (``rejected_segments`` / ``chosen_segments``);
* :func:`rlhf_v_row` turns a pair into a row of the Hub's ``openbmb/RLHF-V-Dataset`` schema for
  ``dataset_builders.rlhf_v.write_rlhf_v_parquet`` (the one RLHF-V writer; ``load_rlhf_v`` reads the files);
* :func:`is_grammatical` checks that a sampled response is made of the task's sentences (ungrammatical samples are
  dropped, and counted, before correction).

Correction policy (a reconstruction: the paper describes annotators who "correct the hallucinated segments" and
reports the error types, not an algorithm): a mention of a coloured shape that is in the image keeps its noun
phrase and gets its count and position fixed; a mention of a coloured shape that is not in the image is *rewritten*
into an object of the image that the response does not mention (preferring the same position, then the same shape,
then the same colour, then any), and deleted only when nothing true is left to say (every object of the image is
already mentioned).
Objects the response omits are not added (``add_missing=True`` adds them): RLHF-V corrects hallucinations, it does
not complete answers.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "COUNT_WORDS",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "Correction",
    "GroundedSample",
    "GroundedTaskConfig",
    "Hallucination",
    "Mention",
    "ObjectGroup",
    "Scene",
    "correct_response",
    "describe_scene",
    "find_hallucinations",
    "generate_samples",
    "generate_scene",
    "parse_mentions",
    "render_scene",
    "task_corpus",
    "rlhf_v_row",
    "is_grammatical",
    "layout_key",
    "layout_split",
    "conflict_partner",
    "COOCCURRENCE_PAIRS",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
POSITION_PHRASES: dict[str, str] = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
QUESTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the image?",
    "Describe the image in detail.",
    "What objects can you see?",
    "List the shapes in the picture.",
)

# Surface forms the parser accepts (the generator only writes the canonical ones).
_SHAPE_WORDS: dict[str, tuple[str, bool]] = {}
for _shape, _syns in {
    "circle": ("circle", "disc", "disk", "dot", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}.items():
    for _s in _syns:
        _SHAPE_WORDS[_s] = (_shape, False)
        _SHAPE_WORDS[_s + "es" if _s.endswith(("x", "s")) else _s + "s"] = (_shape, True)
_COLOUR_WORDS: dict[str, str] = {c: c for c in COLOURS}
_NUMBER_WORDS: dict[str, int] = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "several": 2,
}
# Co-occurrence pairs (anchor, partner) of the biased task: see `GroundedTaskConfig.cooccurrence`.
COOCCURRENCE_PAIRS: tuple[tuple[str, str], ...] = (
    ("red circle", "blue square"),
    ("green triangle", "yellow circle"),
    ("yellow square", "red triangle"),
)
_POSITION_WORDS: dict[str, str] = {"left": "left", "middle": "middle", "center": "middle", "centre": "middle"}
_POSITION_WORDS["right"] = "right"
_WORD_RE = re.compile(r"[A-Za-z]+|\d+")
_POSITION_RE = re.compile(r"\b(?:on|in|at)\s+the\s+(left|middle|center|centre|right)\b", re.IGNORECASE)
_SENTENCE_RE = re.compile(r"[^.!?\n]+[.!?]?")


@dataclass(frozen=True)
class ObjectGroup:
    """``count`` identical objects of one colour and shape in one column of the image."""

    shape: str
    colour: str
    count: int
    position: str

    @property
    def category(self) -> str:
        """The CHAIR object category: the coloured shape, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The truth of one image: its object groups, ordered left to right."""

    groups: tuple[ObjectGroup, ...]

    @property
    def categories(self) -> list[str]:
        return [g.category for g in self.groups]

    def by_category(self, category: str) -> ObjectGroup | None:
        for g in self.groups:
            if g.category == category:
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(tuple(ObjectGroup(**g) for g in d["groups"]))


@dataclass
class GroundedTaskConfig:
    """Parameters of the generator.

    Args:
        image_size (`int`, *optional*, defaults to 48): side of the square RGB image in pixels (a multiple of 3
            gives equal columns and rows).
        min_groups (`int`, *optional*, defaults to 1): fewest object groups per image.
        max_groups (`int`, *optional*, defaults to 3): most object groups per image (at most one per column).
        max_count (`int`, *optional*, defaults to 3): most objects per group (one per row of a column).
        background (`tuple[int, int, int]`, *optional*, defaults to mid grey): background colour. Grey maps to ~0
            after the usual mean = std = 0.5 normalisation, which makes the objects much easier for a tiny model
            trained from scratch to see than on white.
        jitter (`int`, *optional*, defaults to 2): random offset in pixels of each object inside its cell.
        object_scale (`float`, *optional*, defaults to 0.4): half-extent of an object as a fraction of a cell
            (at most 0.4, so that neighbours never touch; the jitter shrinks to keep them apart).
        anchor_rate (`float`, *optional*, defaults to 0.0): probability that a scene is built around the *anchor*
            of one of [`COOCCURRENCE_PAIRS`]. Anchors appear in no other scene, so ``cooccurrence`` is exactly the
            probability of the partner given the anchor.
        cooccurrence (`float`, *optional*, defaults to 0.0): probability that an anchor scene also holds the
            anchor's *partner*, in the column right of the anchor (the language prior: "after a red circle comes a
            blue square"). High in SFT data, low in the preference pool and the test set.
        layouts (`str`, *optional*): ``"train"`` or ``"test"`` keeps only scenes whose layout (the set of
            (coloured shape, column) pairs) falls in that part of a fixed hash split (see [`layout_split`]);
            ``None`` keeps every scene.
        heldout_fraction (`float`, *optional*, defaults to 0.2): share of layouts reserved for ``"test"``.
        conflict_slot (`str`, *optional*): in an anchor scene without its partner, what the partner's usual place
            (the column right of the anchor, the anchor then in the left or middle column) holds: ``"empty"``
            (nothing: the prior would fill it) or ``"near"`` (a coloured shape that shares the partner's colour or
            its shape); ``None`` places the anchor anywhere and the other groups at random.
        caption_prior_rate (`float`, *optional*, defaults to 0.0): share of the scenes holding an anchor and its
            partner whose *image* draws a near-partner (sharing the partner's colour or its shape; same count and
            column) in the partner's place while the reference still names the partner: captions written from the
            scene prior rather than the image, as over-generalising annotators write them. The sample's ``scene``
            is the image's truth, its ``reference`` the caption.
    """

    image_size: int = 48
    min_groups: int = 1
    max_groups: int = 3
    max_count: int = 3
    background: tuple[int, int, int] = (128, 128, 128)
    jitter: int = 2
    object_scale: float = 0.4
    anchor_rate: float = 0.0
    cooccurrence: float = 0.0
    layouts: str | None = None
    heldout_fraction: float = 0.2
    conflict_slot: str | None = None
    caption_prior_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("anchor_rate", "cooccurrence", "heldout_fraction", "caption_prior_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.conflict_slot not in (None, "empty", "near"):
            raise ValueError(f"conflict_slot must be None, 'empty' or 'near', got {self.conflict_slot!r}.")
        if self.layouts not in (None, "train", "test"):
            raise ValueError(f"layouts must be None, 'train' or 'test', got {self.layouts!r}.")
        if not 0.1 <= self.object_scale <= 0.4:
            raise ValueError(f"object_scale must be in [0.1, 0.4], got {self.object_scale}.")
        if self.image_size < 12:
            raise ValueError(f"image_size must be at least 12 pixels, got {self.image_size}.")
        if not 1 <= self.min_groups <= self.max_groups <= len(POSITIONS):
            raise ValueError(
                f"Need 1 <= min_groups <= max_groups <= {len(POSITIONS)}, got min_groups={self.min_groups}, "
                f"max_groups={self.max_groups}."
            )
        if not 1 <= self.max_count <= 3:
            raise ValueError(f"max_count must be in [1, 3] (one object per row of a column), got {self.max_count}.")


@dataclass
class GroundedSample:
    """One example: image, question, its truth and the reference description."""

    idx: int
    image: Image.Image
    question: str
    scene: Scene
    reference: str


def _rng(seed: int, idx: int, salt: str = "") -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so samples are reproducible across processes and do not
    # depend on how many samples are drawn.
    return random.Random(f"hf_ext.grounded:{seed}:{idx}:{salt}")


def generate_scene(rng: random.Random, config: GroundedTaskConfig | None = None) -> Scene:
    """Draw a random scene: distinct columns and distinct coloured shapes.

    With ``config.anchor_rate > 0`` a share of the scenes is built around the anchor of a co-occurrence pair (its
    partner in the next column with probability ``config.cooccurrence``); anchors appear in no other scene, and an
    anchor scene holds no other anchor and no partner except its own.
    """
    config = config or GroundedTaskConfig()
    n = rng.randint(config.min_groups, config.max_groups)
    anchors = {a for a, _ in COOCCURRENCE_PAIRS}
    partners = {b for _, b in COOCCURRENCE_PAIRS}
    everything = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    if config.anchor_rate > 0 and rng.random() < config.anchor_rate:
        anchor, partner = rng.choice(COOCCURRENCE_PAIRS)
        fillers = [c for c in everything if c not in anchors and c not in partners]
        with_partner = n >= 2 and rng.random() < config.cooccurrence
        blocked: set[int] = set()
        if with_partner:
            col = rng.randrange(len(POSITIONS) - 1)
            placed = {col: anchor, col + 1: partner}
        elif config.conflict_slot is None:
            placed = {rng.randrange(len(POSITIONS)): anchor}
        else:
            # the partner's usual place (the column right of the anchor) is empty or holds a near-partner
            col = rng.randrange(len(POSITIONS) - 1)
            placed = {col: anchor}
            if config.conflict_slot == "empty":
                blocked = {col + 1}
            else:
                p_colour, p_shape = partner.split()
                near = [c for c in fillers if (c.split()[0] == p_colour) != (c.split()[1] == p_shape)]
                placed[col + 1] = rng.choice(near)
        free_cols = [c for c in range(len(POSITIONS)) if c not in placed and c not in blocked]
        extra = rng.sample(free_cols, min(len(free_cols), max(0, n - len(placed))))
        for c, cat in zip(extra, rng.sample([f for f in fillers if f not in placed.values()], len(extra))):
            placed[c] = cat
    else:
        pool = [c for c in everything if c not in anchors]
        cols = rng.sample(range(len(POSITIONS)), n)
        placed = dict(zip(cols, rng.sample(pool, n)))
    groups = []
    for col in sorted(placed):
        colour, shape = placed[col].split()
        groups.append(
            ObjectGroup(shape=shape, colour=colour, count=rng.randint(1, config.max_count), position=POSITIONS[col])
        )
    return Scene(tuple(groups))


def layout_key(scene: Scene) -> str:
    """The layout of a scene: its (coloured shape, column) pairs, counts ignored, e.g. ``"left:red circle|..."``."""
    return "|".join(f"{g.position}:{g.category}" for g in scene.groups)


def layout_split(scene: Scene, heldout_fraction: float = 0.2) -> str:
    """``"test"`` for a fixed ``heldout_fraction`` of layouts (by a SHA-256 hash of [`layout_key`]), else
    ``"train"``: SFT and test images drawn with ``layouts="train"`` / ``"test"`` never share a layout."""
    h = int.from_bytes(hashlib.sha256(layout_key(scene).encode()).digest()[:8], "big") / 2**64
    return "test" if h < heldout_fraction else "train"


def conflict_partner(scene: Scene) -> str | None:
    """The partner a language prior would add to ``scene``: the partner of an anchor the scene holds without it
    (the image is then a *conflict image*), else ``None``."""
    cats = set(scene.categories)
    for anchor, partner in COOCCURRENCE_PAIRS:
        if anchor in cats and partner not in cats:
            return partner
    return None


def render_scene(scene: Scene, rng: random.Random, config: GroundedTaskConfig | None = None) -> Image.Image:
    """Draw ``scene``: each group in its column, its objects in randomly chosen rows of that column."""
    config = config or GroundedTaskConfig()
    size = config.image_size
    cell = size / 3
    img = Image.new("RGB", (size, size), config.background)
    draw = ImageDraw.Draw(img)
    r = cell * config.object_scale  # half-extent of an object
    # keep a gap between neighbours so that objects never merge (counts stay visible)
    jitter = max(0, min(config.jitter, int(cell * (0.5 - config.object_scale) - 1)))
    for g in scene.groups:
        col = POSITIONS.index(g.position)
        rows = sorted(rng.sample(range(3), g.count))
        for row in rows:
            cx = (col + 0.5) * cell + rng.randint(-jitter, jitter)
            cy = (row + 0.5) * cell + rng.randint(-jitter, jitter)
            fill = COLOURS[g.colour]
            if g.shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif g.shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def _clause(g: ObjectGroup) -> str:
    return (
        f"{COUNT_WORDS.get(g.count, str(g.count))} {g.colour} {_noun(g.shape, g.count)} {POSITION_PHRASES[g.position]}"
    )


def describe_scene(scene: Scene) -> str:
    """The reference description: one sentence per group, left to right."""
    return " ".join(f"There {'is' if g.count == 1 else 'are'} {_clause(g)}." for g in scene.groups)


def generate_samples(n: int, seed: int = 0, config: GroundedTaskConfig | None = None) -> list[GroundedSample]:
    """``n`` samples; sample ``i`` depends only on ``(seed, i, config)``.

    Args:
        n (`int`): number of samples.
        seed (`int`, *optional*, defaults to 0): seed of the generator.
        config ([`GroundedTaskConfig`], *optional*): generator parameters (with ``layouts`` set, scenes of the other
            part of the layout split are redrawn from the same stream).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    config = config or GroundedTaskConfig()
    out = []
    for i in range(n):
        rng = _rng(seed, i)
        for _ in range(1000):
            # `said` is what the caption describes, `scene` what the image shows (they differ only with a caption
            # prior); both must fall in the requested part of the layout split
            said = scene = generate_scene(rng, config)
            if config.caption_prior_rate > 0 and rng.random() < config.caption_prior_rate:
                scene = _without_partner(said, rng)
            if config.layouts is None or all(
                layout_split(x, config.heldout_fraction) == config.layouts for x in (said, scene)
            ):
                break
        else:
            raise ValueError(f"no {config.layouts!r} layout found in 1000 draws: raise heldout_fraction.")
        image = render_scene(scene, rng, config)
        out.append(GroundedSample(i, image, rng.choice(QUESTIONS), scene, describe_scene(said)))
    return out


def _without_partner(scene: Scene, rng: random.Random) -> Scene:
    """``scene`` with its co-occurrence partner (if its anchor is there too) replaced by a near-partner: a
    coloured shape of the same colour or the same shape, in no pair and not in the scene; same count, same column."""
    cats = set(scene.categories)
    for anchor, partner in COOCCURRENCE_PAIRS:
        if anchor in cats and partner in cats:
            break
    else:
        return scene
    in_pairs = {c for pair in COOCCURRENCE_PAIRS for c in pair}
    p_colour, p_shape = partner.split()
    near = [
        f"{c} {sh}"
        for c in COLOURS
        for sh in SHAPES
        if (c == p_colour) != (sh == p_shape) and f"{c} {sh}" not in in_pairs and f"{c} {sh}" not in cats
    ]
    colour, shape = rng.choice(near).split()
    groups = tuple(
        ObjectGroup(shape, colour, g.count, g.position) if g.category == partner else g for g in scene.groups
    )
    return Scene(groups)


def task_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Texts covering the task's vocabulary (questions, descriptions), e.g. to train a tiny tokenizer."""
    texts = list(QUESTIONS)
    for i in range(n):
        texts.append(describe_scene(generate_scene(_rng(seed, i, "corpus"))))
    for c in COLOURS:
        for s in SHAPES:
            for k, w in COUNT_WORDS.items():
                for p in POSITIONS:
                    texts.append(f"There {'is' if k == 1 else 'are'} {w} {c} {_noun(s, k)} {POSITION_PHRASES[p]}.")
    return texts


# ----------------------------------------------------------------------------------------------------- parsing


Span = tuple[int, int]


@dataclass
class Mention:
    """An object mention in a response, with the character span of each field that is present."""

    shape: str
    colour: str | None
    count: int | None
    position: str | None
    plural: bool
    spans: dict[str, Span] = field(default_factory=dict)
    sentence: Span = (0, 0)

    @property
    def category(self) -> str | None:
        return None if self.colour is None else f"{self.colour} {self.shape}"

    @property
    def start(self) -> int:
        return min(s for s, _ in self.spans.values())

    @property
    def end(self) -> int:
        return max(e for _, e in self.spans.values())


def parse_mentions(text: str) -> list[Mention]:
    """Extract the object mentions of ``text``.

    A mention is anchored on a shape noun; the colour and count are the nearest colour / number word before it
    (after the previous mention of the same sentence), the verb the ``is``/``are`` before those, and the position
    the first ``on/in/at the left/middle/right`` after it (before the next mention of the sentence).
    """
    mentions: list[Mention] = []
    for sm in _SENTENCE_RE.finditer(text):
        body = sm.group(0)
        s0, s1 = sm.start() + len(body) - len(body.lstrip()), sm.end()
        if s0 >= s1:
            continue
        words = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD_RE.finditer(text, s0, s1)]
        anchors = [i for i, (w, _, _) in enumerate(words) if w in _SHAPE_WORDS]
        sentence_mentions = []
        for k, i in enumerate(anchors):
            shape, plural = _SHAPE_WORDS[words[i][0]]
            spans: dict[str, Span] = {"noun": (words[i][1], words[i][2])}
            lo = anchors[k - 1] + 1 if k > 0 else 0
            colour = count = None
            j = i - 1
            # walk back over adjectives: colour, then count, then the verb
            while j >= lo:
                w = words[j][0]
                if colour is None and count is None and w in _COLOUR_WORDS:
                    colour = _COLOUR_WORDS[w]
                    spans["colour"] = (words[j][1], words[j][2])
                elif count is None and (w in _NUMBER_WORDS or w.isdigit()):
                    count = int(w) if w.isdigit() else _NUMBER_WORDS[w]
                    spans["count"] = (words[j][1], words[j][2])
                elif w in ("is", "are"):
                    spans["verb"] = (words[j][1], words[j][2])
                    break
                elif count is not None or colour is not None:
                    if w not in ("small", "big", "large", "little"):
                        break
                j -= 1
            hi = words[anchors[k + 1]][1] if k + 1 < len(anchors) else s1
            position = None
            pm = _POSITION_RE.search(text, words[i][2], hi)
            if pm is not None:
                position = _POSITION_WORDS[pm.group(1).lower()]
                spans["position"] = (pm.start(), pm.end())
            if count is None:
                count = 2 if plural else 1
            sentence_mentions.append(Mention(shape, colour, count, position, plural, spans, (s0, s1)))
        mentions.extend(sentence_mentions)
    return mentions


_GRAMMAR_RE = re.compile(
    r"There (?:is one (?P<c1>red|green|blue|yellow) (?P<s1>circle|square|triangle)"
    r"|are (?:two|three) (?P<c2>red|green|blue|yellow) (?P<s2>circles|squares|triangles))"
    r" (?:on the left|in the middle|on the right)\."
)


def is_grammatical(text: str) -> bool:
    """Whether ``text`` is one or more sentences of the task's grammar (``There is one red circle on the left.``,
    ``There are two ... circles ...``: number agreement, one space between sentences, no other words)."""
    sentences = text.strip().split(" There ")
    if not sentences[0]:
        return False
    sentences = [sentences[0]] + ["There " + x for x in sentences[1:]]
    return all(_GRAMMAR_RE.fullmatch(x) is not None for x in sentences)


# ------------------------------------------------------------------------------------- detection and correction


@dataclass
class Hallucination:
    """One hallucinated field of a mention: ``kind`` is ``object``, ``attribute``, ``count`` or ``position``."""

    kind: str
    mention: Mention
    said: Any
    truth: Any


def _match(mentions: Sequence[Mention], scene: Scene) -> list[ObjectGroup | None]:
    """The truth group each mention refers to, ``None`` for a mention of a coloured shape absent from the image."""
    return [scene.by_category(m.category) if m.category is not None else None for m in mentions]


def _shape_only_match(m: Mention, scene: Scene) -> ObjectGroup | None:
    # A colourless mention ("two circles on the left") is true if some group of that shape fits.
    cands = [g for g in scene.groups if g.shape == m.shape]
    if m.position is not None:
        cands = [g for g in cands if g.position == m.position] or cands
    return cands[0] if cands else None


def _misdescribed(m: Mention, scene: Scene) -> ObjectGroup | None:
    """The real object a mention of an absent coloured shape misdescribes: one that differs from it in colour only
    or in shape only, in the mentioned column when the mention has one (else anywhere)."""
    if m.colour is None:
        return None
    cands = [g for g in scene.groups if (g.shape == m.shape) != (g.colour == m.colour)]
    if m.position is not None:
        cands = [g for g in cands if g.position == m.position]
    # a wrong colour before a wrong shape
    cands.sort(key=lambda g: g.shape != m.shape)
    return cands[0] if cands else None


def find_hallucinations(text_or_mentions: str | Sequence[Mention], scene: Scene) -> list[Hallucination]:
    """Every hallucinated field of every mention of a response, compared with ``scene``.

    A mention of a coloured shape absent from the image is an ``attribute`` hallucination when it misdescribes a real
    object (same shape and another colour, or same colour and another shape, in the mentioned column when one is
    named; ``said`` / ``truth`` are the wrong and right colour or shape) and an ``object`` hallucination otherwise; a
    present coloured shape with a wrong count or column gives ``count`` / ``position`` hallucinations.
    """
    mentions = parse_mentions(text_or_mentions) if isinstance(text_or_mentions, str) else list(text_or_mentions)
    out = []
    for m in mentions:
        g = scene.by_category(m.category) if m.category is not None else _shape_only_match(m, scene)
        if g is None:
            referent = _misdescribed(m, scene)
            if referent is not None:
                wrong = "colour" if referent.shape == m.shape else "shape"
                said = m.colour if wrong == "colour" else m.shape
                truth = referent.colour if wrong == "colour" else referent.shape
                out.append(Hallucination("attribute", m, said, truth))
            else:
                out.append(Hallucination("object", m, m.category or m.shape, None))
            continue
        if m.count is not None and m.count != g.count:
            out.append(Hallucination("count", m, m.count, g.count))
        if m.position is not None and m.position != g.position:
            out.append(Hallucination("position", m, m.position, g.position))
    return out


@dataclass
class Correction:
    """A corrected response: the RLHF-V pair and its corrected segments (character spans, end exclusive)."""

    rejected: str
    chosen: str
    rejected_segments: list[Span]
    chosen_segments: list[Span]
    hallucinations: list[Hallucination]

    @property
    def changed(self) -> bool:
        return self.chosen != self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            "rejected": self.rejected,
            "chosen": self.chosen,
            "rejected_segments": [list(s) for s in self.rejected_segments],
            "chosen_segments": [list(s) for s in self.chosen_segments],
            "hallucination_types": [h.kind for h in self.hallucinations],
        }


def _pick_replacement(m: Mention, free: list[ObjectGroup]) -> ObjectGroup | None:
    prefs = (
        lambda g: g.position == m.position and g.shape == m.shape,
        lambda g: g.position == m.position and g.colour == m.colour,
        lambda g: g.position == m.position,
        lambda g: g.shape == m.shape,
        lambda g: g.colour == m.colour,
    )
    for pref in prefs:
        for g in free:
            if pref(g):
                return g
    # rewrite into any unmentioned object rather than delete (annotators rewrite while something true is left)
    return free[0] if free else None


def correct_response(text: str, scene: Scene, add_missing: bool = False) -> Correction:
    """Correct the hallucinated segments of ``text`` one by one, as RLHF-V's annotators did.

    Args:
        text (`str`): the model's response (becomes ``rejected``).
        scene ([`Scene`]): the truth of the image.
        add_missing (`bool`, *optional*, defaults to `False`): also append a sentence for every object of the
            image the corrected response does not mention (not RLHF-V's protocol; off by default).

    Returns:
        [`Correction`]: ``rejected`` (= ``text``), ``chosen`` and the corrected spans of both. Noun-phrase edits of
        one mention (verb, count, colour, noun) form one segment, a position edit another, a deleted mention a
        rejected-side segment with no chosen-side counterpart.
    """
    mentions = parse_mentions(text)
    hallucinations = find_hallucinations(mentions, scene)
    matched = _match(mentions, scene)
    # colourless mentions that fit a group count as that group
    for i, m in enumerate(mentions):
        if m.colour is None:
            matched[i] = _shape_only_match(m, scene)
    used = {g for g in matched if g is not None}
    free = [g for g in scene.groups if g not in used]

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in `text`, one per segment
    for m, g in zip(mentions, matched):
        noun_edits: dict[str, str] = {}
        if g is None:
            g = _pick_replacement(m, free)
            if g is None:
                # nothing true left to say: only then is the hallucinated mention deleted
                edits.append(_deletion_span(text, m, mentions))
                continue
            free.remove(g)
            if m.colour != g.colour:
                noun_edits["colour"] = g.colour
            if m.shape != g.shape or m.plural != (g.count != 1):
                noun_edits["noun"] = _noun(g.shape, g.count)
        elif m.plural != (g.count != 1):
            noun_edits["noun"] = _noun(g.shape, g.count)
        if m.count != g.count:
            noun_edits["count"] = COUNT_WORDS[g.count]
            if "verb" in m.spans and (m.count == 1) != (g.count == 1):
                noun_edits["verb"] = "is" if g.count == 1 else "are"
            if "count" not in m.spans:
                noun_edits["noun"] = f"{COUNT_WORDS[g.count]} {_noun(g.shape, g.count)}"
                del noun_edits["count"]
        if "colour" in noun_edits and "colour" not in m.spans:
            base = noun_edits.get("noun", text[slice(*m.spans["noun"])])
            noun_edits["noun"] = f"{g.colour} {base}"
            del noun_edits["colour"]
        if noun_edits:
            fields = [f for f in ("verb", "count", "colour", "noun") if f in m.spans]
            lo = min(m.spans[f][0] for f in noun_edits)
            hi = max(m.spans[f][1] for f in noun_edits)
            pieces, cursor = [], lo
            for f in fields:
                s, e = m.spans[f]
                if e <= lo or s >= hi:
                    continue
                pieces.append(text[cursor:s])
                pieces.append(noun_edits.get(f, text[s:e]))
                cursor = e
            pieces.append(text[cursor:hi])
            edits.append((lo, hi, "".join(pieces)))
        if m.position is not None and m.position != g.position:
            s, e = m.spans["position"]
            edits.append((s, e, POSITION_PHRASES[g.position]))
        elif m.position is None and g.position is not None and "noun" in noun_edits and m.colour != g.colour:
            # a replaced object without a position keeps no position; nothing to fix
            pass

    edits.sort()
    chosen_parts, rejected_segments, chosen_segments, cursor, offset = [], [], [], 0, 0
    for s, e, rep in edits:
        if s < cursor:
            # two deletions may share the whitespace between them; other overlaps cannot happen (distinct fields)
            if rep or e <= cursor:
                continue
            s = cursor
        chosen_parts.append(text[cursor:s])
        new_start = s + offset
        chosen_parts.append(rep)
        rejected_segments.append((s, e))
        if rep:
            chosen_segments.append((new_start, new_start + len(rep)))
        offset += len(rep) - (e - s)
        cursor = e
    chosen_parts.append(text[cursor:])
    chosen = "".join(chosen_parts)
    if add_missing:
        remaining = [g for g in scene.groups if g.category not in {x.category for x in parse_mentions(chosen)}]
        for g in remaining:
            sentence = f"There {'is' if g.count == 1 else 'are'} {_clause(g)}."
            sep = "" if not chosen or chosen.endswith(" ") else " "
            start = len(chosen) + len(sep)
            chosen = chosen + sep + sentence
            chosen_segments.append((start, start + len(sentence)))
    return Correction(text, chosen, rejected_segments, chosen_segments, hallucinations)


def _deletion_span(text: str, m: Mention, mentions: Sequence[Mention]) -> tuple[int, int, str]:
    same = [x for x in mentions if x.sentence == m.sentence]
    s0, s1 = m.sentence
    if len(same) == 1:
        # delete the sentence and the whitespace that separates it from the next one (or the previous one)
        end = s1
        while end < len(text) and text[end].isspace():
            end += 1
        start = s0
        if end == len(text):
            while start > 0 and text[start - 1].isspace():
                start -= 1
        return (start, end, "")
    k = same.index(m)
    if k == 0:
        return (m.start, same[1].start, "")
    return (same[k - 1].end, m.end, "")


# ---------------------------------------------------------------------------------------------------- storage


def rlhf_v_row(
    idx: int,
    image: Image.Image,
    question: str,
    correction: Correction,
    scene: Scene | None = None,
    ds_name: str = "hf_ext_grounded_shapes",
) -> dict[str, Any]:
    """One preference pair as a row of the Hub's ``openbmb/RLHF-V-Dataset`` schema, for
    ``dataset_builders.rlhf_v.write_rlhf_v_parquet`` (the one RLHF-V writer).

    ``text`` carries ``question`` / ``chosen`` / ``rejected`` and, unlike the Hub dataset, the corrected character
    spans ``chosen_segments`` / ``rejected_segments``; ``origin_split`` the scene and the hallucination types.
    """
    pair = correction.to_dict()
    text = {"question": question, "chosen": pair["chosen"], "rejected": pair["rejected"]}
    text["chosen_segments"] = pair["chosen_segments"]
    text["rejected_segments"] = pair["rejected_segments"]
    meta: dict[str, Any] = {"split": "train", "hallucination_types": pair["hallucination_types"]}
    if scene is not None:
        meta["scene"] = scene.to_dict()
    image_path = f"{ds_name}/{int(idx):06d}.png"
    return {
        "ds_name": ds_name,
        "image": image,
        "text": text,
        "origin_dataset": "benchmarks.hallucination.grounded",
        "origin_split": meta,
        "idx": int(idx),
        "image_path": image_path,
    }
