"""CHAIR (Rohrbach et al., EMNLP 2018) and Object HalBench-style hallucination rates, plus recall of true objects.

CHAIR ("Caption Hallucination Assessment with Image Relevance") compares the objects a text mentions with the
objects an image holds:

* ``chair_i`` (instance level) = hallucinated object mentions / all object mentions, pooled over the corpus;
* ``chair_s`` (sentence level) = responses with at least one hallucinated mention / all responses.

Objects are found with a synonym table that maps surface words to categories. Two tables ship: ``"coco"`` (the 80
COCO categories with common synonyms and plurals, written for hf_ext: use it with COCO instance annotations) and
``"shapes"`` (the coloured shapes of :mod:`benchmarks.hallucination.grounded`, where a category is a colour + shape such
as ``"red circle"``). Any ``{category: [surface forms]}`` mapping works too.

Matching follows the original CHAIR code: lower-case words, longest multi-word phrase first (so "hot dog" is not
a dog and "teddy bear" not a bear), plurals reduced to the singular, every mention counted (``unique_mentions=False``;
set it to count each object once per response). References are the objects truly in each image, given as
category names or any surface form of the table.

RLHF-V reports Object HalBench as CHAIR-like rates over detailed descriptions of COCO images: the *response-level*
rate (= ``chair_s``) and the *mention-level* rate, computed here over the distinct objects of each response
(``halbench_mention``). ``recall`` (true objects mentioned / true objects) is the usual helpfulness proxy that
keeps a model from scoring well by saying nothing. All rates are fractions in [0, 1] (the papers print ×100).

This file is self-contained (standard library, ``datasets``, ``evaluate``), so it also loads as an ``evaluate``
module from its path::

    import evaluate
    chair = evaluate.load("path/to/hf_ext/metrics/chair.py", config_name="shapes")
    chair.compute(predictions=["There is one red circle on the left."], references=[["red circle"]])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import evaluate

__all__ = [
    "COCO_SYNONYMS",
    "SHAPES_SYNONYMS",
    "Chair",
    "ChairScorer",
    "ObjectMention",
    "compute_chair",
    "singularize",
]

# The 80 COCO detection categories (their official names are the keys) with synonyms, singular forms only:
# plurals are reduced by `singularize` before the lookup. Written for hf_ext from general English usage.
COCO_SYNONYMS: dict[str, list[str]] = {
    "person": [
        "person",
        "people",
        "man",
        "woman",
        "men",
        "women",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "baby",
        "adult",
        "guy",
        "lady",
        "player",
        "rider",
        "skier",
        "surfer",
        "skateboarder",
        "snowboarder",
        "pedestrian",
        "worker",
        "chef",
        "policeman",
        "officer",
        "passenger",
        "tourist",
        "spectator",
        "athlete",
        "gentleman",
        "teenager",
        "toddler",
        "mother",
        "father",
        "pitcher",
        "batter",
        "catcher",
        "umpire",
        "cyclist",
        "biker",
        "bride",
        "groom",
        "crowd",
    ],
    "bicycle": ["bicycle", "bike", "cycle"],
    "car": ["car", "automobile", "sedan", "taxi", "cab", "suv", "van", "jeep"],
    "motorcycle": ["motorcycle", "motorbike", "motor bike", "motor cycle", "scooter", "moped", "dirt bike"],
    "airplane": ["airplane", "aeroplane", "plane", "jet", "aircraft", "airliner", "air plane", "passenger jet"],
    "bus": ["bus", "minibus", "trolley"],
    "train": ["train", "locomotive", "tram", "subway", "passenger train"],
    "truck": ["truck", "lorry", "pickup", "pickup truck", "fire truck"],
    "boat": ["boat", "ship", "canoe", "kayak", "sailboat", "yacht", "ferry", "raft", "vessel"],
    "traffic light": ["traffic light", "traffic signal", "stop light", "stoplight", "street light"],
    "fire hydrant": ["fire hydrant", "hydrant"],
    "stop sign": ["stop sign"],
    "parking meter": ["parking meter", "meter"],
    "bench": ["bench"],
    "bird": [
        "bird",
        "pigeon",
        "seagull",
        "gull",
        "duck",
        "goose",
        "parrot",
        "crow",
        "sparrow",
        "swan",
        "owl",
        "eagle",
        "chicken",
        "baby bird",
    ],
    "cat": ["cat", "kitten", "kitty"],
    "dog": ["dog", "puppy", "pup", "doggy"],
    "horse": ["horse", "pony", "foal", "stallion"],
    "sheep": ["sheep", "lamb", "ram"],
    "cow": ["cow", "cattle", "bull", "calf", "ox", "oxen"],
    "elephant": ["elephant", "baby elephant"],
    "bear": ["bear", "grizzly", "polar bear", "cub"],
    "zebra": ["zebra"],
    "giraffe": ["giraffe"],
    "backpack": ["backpack", "back pack", "rucksack", "knapsack"],
    "umbrella": ["umbrella", "parasol"],
    "handbag": ["handbag", "purse", "hand bag", "bag"],
    "tie": ["tie", "necktie", "bow tie"],
    "suitcase": ["suitcase", "suit case", "luggage", "briefcase"],
    "frisbee": ["frisbee", "flying disc"],
    "skis": ["skis", "ski"],
    "snowboard": ["snowboard"],
    "sports ball": [
        "sports ball",
        "ball",
        "football",
        "soccer ball",
        "baseball",
        "basketball",
        "tennis ball",
        "volleyball",
    ],
    "kite": ["kite"],
    "baseball bat": ["baseball bat", "bat"],
    "baseball glove": ["baseball glove", "glove", "mitt"],
    "skateboard": ["skateboard", "skate board"],
    "surfboard": ["surfboard", "surf board", "board"],
    "tennis racket": ["tennis racket", "racket", "racquet"],
    "bottle": ["bottle"],
    "wine glass": ["wine glass", "wineglass", "wine glas"],
    "cup": ["cup", "mug", "coffee cup", "teacup"],
    "fork": ["fork"],
    "knife": ["knife", "knives"],
    "spoon": ["spoon"],
    "bowl": ["bowl"],
    "banana": ["banana"],
    "apple": ["apple"],
    "sandwich": ["sandwich", "burger", "hamburger", "sub", "panini"],
    "orange": ["orange", "tangerine", "mandarin"],
    "broccoli": ["broccoli"],
    "carrot": ["carrot"],
    "hot dog": ["hot dog", "hotdog"],
    "pizza": ["pizza"],
    "donut": ["donut", "doughnut"],
    "cake": ["cake", "cupcake", "cheesecake"],
    "chair": ["chair", "stool", "armchair", "seat"],
    "couch": ["couch", "sofa", "loveseat"],
    "potted plant": ["potted plant", "houseplant", "house plant", "plant", "flower pot", "flowerpot"],
    "bed": ["bed"],
    "dining table": ["dining table", "table", "desk", "counter"],
    "toilet": ["toilet", "toilet seat", "urinal"],
    "tv": ["tv", "television", "tv set", "monitor", "screen"],
    "laptop": ["laptop", "laptop computer", "notebook computer", "computer"],
    "mouse": ["mouse", "computer mouse"],
    "remote": ["remote", "remote control", "controller"],
    "keyboard": ["keyboard"],
    "cell phone": ["cell phone", "cellphone", "phone", "mobile phone", "smartphone", "telephone"],
    "microwave": ["microwave", "microwave oven"],
    "oven": ["oven", "stove", "stove top oven", "range"],
    "toaster": ["toaster"],
    "sink": ["sink", "basin"],
    "refrigerator": ["refrigerator", "fridge", "freezer"],
    "book": ["book", "novel", "textbook"],
    "clock": ["clock", "alarm clock"],
    "vase": ["vase"],
    "scissors": ["scissors", "scissor"],
    "teddy bear": ["teddy bear", "teddy", "stuffed animal"],
    "hair drier": ["hair drier", "hair dryer", "hairdryer", "blow dryer"],
    "toothbrush": ["toothbrush", "tooth brush"],
}

# Words that end in "s" but are not plurals (kept as they are by `singularize`).
_NOT_PLURAL = {
    "bus",
    "glass",
    "grass",
    "gas",
    "bias",
    "series",
    "species",
    "scissors",
    "skis",
    "this",
    "is",
    "was",
    "has",
    "its",
    "his",
    "us",
    "plus",
    "yes",
    "as",
    "class",
    "dress",
    "cross",
    "canvas",
    "lens",
    "news",
}
_IRREGULAR = {
    "people": "people",
    "men": "men",
    "women": "women",
    "children": "children",
    "oxen": "oxen",
    "mice": "mouse",
    "geese": "goose",
    "knives": "knife",
    "wolves": "wolf",
    "leaves": "leaf",
    "shelves": "shelf",
    "loaves": "loaf",
    "halves": "half",
    "feet": "foot",
    "teeth": "tooth",
    "sheep": "sheep",
    "buses": "bus",
    "glasses": "glass",
    "boxes": "box",
    "skis": "skis",
}

_SHAPE_SURFACE = {
    "circle": ["circle", "disc", "disk", "dot", "ball"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle"],
}
# The task vocabulary of benchmarks.hallucination.grounded: a category is "<colour> <shape>".
SHAPES_SYNONYMS: dict[str, list[str]] = {
    f"{colour} {shape}": [f"{colour} {s}" for s in surfaces]
    for colour in ("red", "green", "blue", "yellow")
    for shape, surfaces in _SHAPE_SURFACE.items()
}

_TABLES: dict[str, dict[str, list[str]]] = {"coco": COCO_SYNONYMS, "shapes": SHAPES_SYNONYMS}
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*|\d+")


def singularize(word: str) -> str:
    """A small rule-based English singulariser (lower-case input) good enough for object nouns."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _NOT_PLURAL or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


@dataclass(frozen=True)
class ObjectMention:
    """A surface form found in a text, its category and its character span (end exclusive)."""

    surface: str
    category: str
    start: int
    end: int


class ChairScorer:
    """Finds object mentions with a synonym table and scores responses against the true objects.

    Args:
        synonyms (`str` or `Mapping[str, Sequence[str]]`, *optional*, defaults to `"coco"`): ``"coco"``,
            ``"shapes"`` or a ``{category: [surface forms]}`` table (forms may have several words; the category
            name itself is always a form).
    """

    def __init__(self, synonyms: str | Mapping[str, Sequence[str]] = "coco"):
        if isinstance(synonyms, str):
            if synonyms not in _TABLES:
                raise ValueError(f"synonyms must be one of {sorted(_TABLES)} or a mapping, got {synonyms!r}.")
            synonyms = _TABLES[synonyms]
        self.categories = list(synonyms)
        self._lookup: dict[tuple[str, ...], str] = {}
        for category, forms in synonyms.items():
            for form in [category, *forms]:
                key = tuple(form.lower().split())
                if not key:
                    raise ValueError(f"Synonym table: category {category!r} has an empty surface form.")
                other = self._lookup.get(key)
                if other is not None and other != category:
                    raise ValueError(f"Synonym table: {form!r} is listed under both {other!r} and {category!r}.")
                self._lookup[key] = category
        self._max_len = max(len(k) for k in self._lookup)

    def category_of(self, word: str) -> str | None:
        """The category of a surface form (any number of words), or ``None``."""
        words = tuple(word.lower().split())
        return self._lookup.get(words) or self._lookup.get((*words[:-1], singularize(words[-1])) if words else ())

    def extract(self, text: str) -> list[ObjectMention]:
        """The object mentions of ``text``, left to right, longest phrase first."""
        toks = [(m.group(0), m.start(), m.end()) for m in _WORD_RE.finditer(text.lower())]
        out, i = [], 0
        while i < len(toks):
            for n in range(min(self._max_len, len(toks) - i), 0, -1):
                words = tuple(t[0] for t in toks[i : i + n])
                cat = self._lookup.get(words) or self._lookup.get((*words[:-1], singularize(words[-1])))
                if cat is not None:
                    s, e = toks[i][1], toks[i + n - 1][2]
                    out.append(ObjectMention(text[s:e], cat, s, e))
                    i += n
                    break
            else:
                i += 1
        return out

    def _truth(self, refs: Sequence[str], row: int) -> set[str]:
        truth = set()
        for r in refs:
            cat = r if r in self._lookup.values() else self.category_of(r)
            if cat is None:
                raise ValueError(
                    f"references[{row}]: object {r!r} is not in the synonym table; give category names "
                    f"(e.g. {self.categories[:3]}) or add it to the table."
                )
            truth.add(cat)
        return truth

    def score(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        unique_mentions: bool = False,
        return_per_sample: bool = False,
    ) -> dict[str, Any]:
        """CHAIR-i, CHAIR-s, Object HalBench-style rates and recall. See the module docstring for definitions.

        Args:
            predictions (`Sequence[str]`): one response per image.
            references (`Sequence[Sequence[str]]`): the objects truly in each image.
            unique_mentions (`bool`, *optional*, defaults to `False`): count each object once per response in
                ``chair_i`` (the original CHAIR counts every mention).
            return_per_sample (`bool`, *optional*, defaults to `False`): add ``per_sample`` (mentioned and
                hallucinated objects of each response).
        """
        if isinstance(predictions, str) or isinstance(references, str):
            raise ValueError("predictions must be a list of strings and references a list of lists of objects.")
        if len(predictions) != len(references):
            raise ValueError(
                f"predictions and references differ in length ({len(predictions)} vs {len(references)}): give one "
                "list of true objects per response."
            )
        n_mentions = n_hall = n_hall_resp = 0
        n_uniq = n_uniq_hall = n_true = n_true_found = 0
        per_sample = []
        for row, (pred, refs) in enumerate(zip(predictions, references)):
            if not isinstance(pred, str):
                raise ValueError(f"predictions[{row}] must be a string, got {type(pred).__name__}.")
            if isinstance(refs, str):
                raise ValueError(f"references[{row}] must be a list of objects, got the string {refs!r}.")
            truth = self._truth(refs, row)
            cats = [m.category for m in self.extract(pred)]
            counted = list(dict.fromkeys(cats)) if unique_mentions else cats
            hall = [c for c in counted if c not in truth]
            n_mentions += len(counted)
            n_hall += len(hall)
            n_hall_resp += bool(hall)
            uniq = set(cats)
            n_uniq += len(uniq)
            n_uniq_hall += len(uniq - truth)
            n_true += len(truth)
            n_true_found += len(truth & uniq)
            if return_per_sample:
                per_sample.append({"mentioned": cats, "hallucinated": hall, "missed": sorted(truth - uniq)})
        n = len(predictions)
        out: dict[str, Any] = {
            "chair_i": n_hall / n_mentions if n_mentions else 0.0,
            "chair_s": n_hall_resp / n if n else 0.0,
            "halbench_response": n_hall_resp / n if n else 0.0,
            "halbench_mention": n_uniq_hall / n_uniq if n_uniq else 0.0,
            "recall": n_true_found / n_true if n_true else 0.0,
            "num_responses": n,
            "num_mentions": n_mentions,
            "num_hallucinated_mentions": n_hall,
        }
        if return_per_sample:
            out["per_sample"] = per_sample
        return out


def compute_chair(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    synonyms: str | Mapping[str, Sequence[str]] = "coco",
    unique_mentions: bool = False,
    return_per_sample: bool = False,
) -> dict[str, Any]:
    """Functional form of [`ChairScorer.score`]."""
    return ChairScorer(synonyms).score(predictions, references, unique_mentions, return_per_sample)


_DESCRIPTION = "CHAIR-i / CHAIR-s object hallucination (Rohrbach et al. 2018), Object HalBench-style rates, recall."
_CITATION = """@inproceedings{rohrbach2018object,
  title={Object Hallucination in Image Captioning},
  author={Rohrbach, Anna and Hendricks, Lisa Anne and Burns, Kaylee and Darrell, Trevor and Saenko, Kate},
  booktitle={EMNLP}, year={2018}}"""
_KWARGS = """predictions: list of responses; references: list of lists of objects truly in each image (category names
or synonyms). Config name: "coco" (default) or "shapes". Keyword: unique_mentions (bool). Returns chair_i, chair_s,
halbench_response, halbench_mention, recall and counts."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Chair(evaluate.Metric):
    """``evaluate`` wrapper: ``config_name`` picks the synonym table (``"coco"`` or ``"shapes"``)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, unique_mentions: bool = False) -> dict[str, Any]:
        table = self.config_name if self.config_name in _TABLES else "coco"
        return compute_chair(predictions, references, synonyms=table, unique_mentions=unique_mentions)
