"""Checks that must pass before a preference run means anything: the model sees, and a language prior misleads it.

RLHF-V's premise is a model that perceives the image but still hallucinates where its language prior disagrees
with the image. A study whose SFT model cannot see (guesses shapes at chance) measures perception failure, not the
hallucination dense DPO targets. This module measures, on validation images:

* :func:`teacher_forced_accuracy`: with the correct description teacher-forced, how often the model's next-token
  prediction names the right colour and the right shape, on the true images and on shuffled ones (the gap is what
  the model reads from the image), on images without any co-occurrence anchor (no prior conflicts);
* :func:`probe_queries`: what a linear probe reads from the bridge's query outputs (the class of every grid cell);
* :func:`prior_hallucination_rate`: how often the greedy answer names the absent co-occurrence partner on conflict
  images (:func:`~benchmarks.hallucination.grounded.conflict_partner`);

and :func:`check_gates` turns them into a pass / fail verdict with the reasons. :func:`pretrain_bridge` is the
easy grounded task that makes the vision side perceive before SFT: every query classifies one grid cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from benchmarks.hallucination.grounded import (
    COLOURS,
    POSITIONS,
    SHAPES,
    GroundedSample,
    conflict_partner,
    parse_mentions,
)
from hf_ext.utils.spans import span_token_mask

logger = logging.get_logger(__name__)

__all__ = [
    "CELL_CLASSES",
    "GateReport",
    "GateThresholds",
    "cell_labels",
    "check_gates",
    "freeze_vision",
    "pretrain_bridge",
    "pretrain_language_prior",
    "prior_hallucination_rate",
    "probe_queries",
    "query_features",
    "teacher_forced_accuracy",
]

# class 0: empty cell; then every coloured shape
CELL_CLASSES: tuple[str, ...] = ("empty", *(f"{c} {s}" for c in COLOURS for s in SHAPES))


def cell_labels(sample: GroundedSample, background: tuple[int, int, int] = (128, 128, 128)) -> list[int]:
    """The class ([`CELL_CLASSES`]) of each of the 3 x 3 grid cells, column by column (left column top to bottom,
    then the middle, then the right: the order in which descriptions mention them): the group of the cell's column
    when the pixel at the cell's centre is not background (objects cover their cell's centre), else ``empty``."""
    img = sample.image
    size = img.size[0]
    cell = size / 3
    by_col = {POSITIONS.index(g.position): CELL_CLASSES.index(g.category) for g in sample.scene.groups}
    out = []
    for col in range(3):
        for row in range(3):
            px = img.getpixel((int((col + 0.5) * cell), int((row + 0.5) * cell)))
            out.append(by_col.get(col, 0) if tuple(px[:3]) != tuple(background) else 0)
    return out


_OFFICIAL_FROZEN = (
    "embeddings.patch_embed.",
    "embeddings.cls_token",
    "embeddings.mask_token",
    "embeddings.vision_position_embeddings.",
    "vision_expert.",
)


def freeze_vision(model, scope: str = "tower") -> int:
    """Freeze Muffin's vision side for preference training. Returns the number of frozen parameters.

    Args:
        model ([`MuffinForConditionalGeneration`]): the model (changed in place).
        scope (`str`, *optional*, defaults to `"tower"`): ``"tower"`` freezes the whole BEiT-3 bridge and its
            queries (the LLM side trains: projector, LLM); ``"official"`` freezes what RLHF-V's official trainer
            gives learning rate 0 (``MuffinTrainer.create_optimizer_and_scheduler``: BEiT-3's vision experts, the
            ``.A`` branches, and ``vision_embed``: patch embedding, CLS / mask tokens, vision positions), so the
            queries and BEiT-3's language experts still train.
    """
    if scope not in ("tower", "official"):
        raise ValueError(f"freeze_vision: scope must be 'tower' or 'official', got {scope!r}.")
    inner = model.model
    n = 0
    if scope == "tower":
        params = [*inner.vision_tower.parameters(), inner.query]
    else:
        params = [p for name, p in inner.vision_tower.named_parameters() if any(k in name for k in _OFFICIAL_FROZEN)]
    for p in params:
        p.requires_grad_(False)
        n += p.numel()
    return n


def query_features(model, processor, images: Sequence, batch_size: int = 128) -> torch.Tensor:
    """BEiT-3's outputs at the query positions, ``(n, num_query, vision_hidden)`` (before the projector)."""
    inner = model.model
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pix = processor.image_processor(list(images[i : i + batch_size]), return_tensors="pt")["pixel_values"]
            feats.append(_query_states(inner, pix))
    return torch.cat(feats)


def _query_states(inner, pixel_values: torch.Tensor) -> torch.Tensor:
    queries = inner.query.unsqueeze(0).expand(pixel_values.shape[0], -1, -1)
    out = inner.vision_tower(pixel_values=pixel_values, inputs_embeds=queries, return_dict=True)
    return out.last_hidden_state[:, out.split_position :]


def pretrain_bridge(
    model,
    processor,
    samples: Sequence[GroundedSample],
    epochs: float = 2.0,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> float:
    """Bridge pre-training on an easy grounded task: query ``i`` classifies grid cell ``i`` ([`cell_labels`], column
    by column) and, with two more linear heads, names its column and the number of objects in that column.

    Trains BEiT-3 and the queries (the linear heads on top are discarded afterwards) with AdamW and the sum of the
    three cross-entropies; the model must have one query per cell (``num_query == 9``). The column and count
    targets put where and how many into the query outputs in a form the LLM reads easily (without them the SFT
    model mixed up columns: 41% of its position words were wrong, measured). Returns the cell accuracy on the last
    epoch's batches. ``progress(n)`` is called after each step with the number of steps done.
    """
    inner = model.model
    if inner.query.shape[0] != 9:
        raise ValueError(
            f"pretrain_bridge needs num_query == 9 (one query per grid cell), got {inner.query.shape[0]}."
        )
    g = torch.Generator().manual_seed(seed)
    width = inner.query.shape[1]
    head = nn.Linear(width, len(CELL_CLASSES))
    column_head = nn.Linear(width, 3)
    count_head = nn.Linear(width, 4)
    params = [*inner.vision_tower.parameters(), inner.query]
    params += [*head.parameters(), *column_head.parameters(), *count_head.parameters()]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    pix_all = processor.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
    labels_all = torch.tensor([cell_labels(s) for s in samples])
    # objects per column (0-3), repeated for the 3 cells of the column; the column of each query (column by column)
    counts_all = (labels_all.view(-1, 3, 3) > 0).sum(-1, keepdim=True).expand(-1, 3, 3).reshape(-1, 9)
    columns = torch.arange(9) // 3
    n = len(samples)
    steps = max(1, int(epochs * n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    inner.vision_tower.train()
    correct = total = 0
    order = torch.randperm(n, generator=g)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        states = _query_states(inner, pix_all[idx])
        logits = head(states)
        ce = nn.functional.cross_entropy
        loss = ce(logits.reshape(-1, logits.shape[-1]), labels_all[idx].reshape(-1))
        loss = loss + ce(column_head(states).reshape(-1, 3), columns.repeat(len(idx)))
        loss = loss + ce(count_head(states).reshape(-1, 4), counts_all[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, n // batch_size):
            correct += int((logits.argmax(-1) == labels_all[idx]).sum())
            total += labels_all[idx].numel()
        if progress is not None:
            progress(step + 1)
    inner.vision_tower.eval()
    return correct / max(1, total)


def pretrain_language_prior(
    model,
    tokenizer,
    texts: Sequence[str],
    epochs: float = 2.0,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> float:
    """Text-only language-model pre-training of Muffin's LLM on ``texts``: where the language prior comes from.

    A real MLLM's LLM learns co-occurrences from text long before it sees an image; here the LLM (embeddings,
    decoder, head; the vision side is not used) learns them from descriptions of biased scenes, so the prior lives
    in the LLM and perception in the bridge, each set by its own knob. Causal-LM loss on ``" " + text`` (the way a
    description follows the prompt in SFT) with AdamW and a one-cycle schedule. Returns the mean loss of the last
    epoch's steps; ``progress(n)`` is called after each step with the number of steps done.
    """
    if not texts:
        raise ValueError("pretrain_language_prior: texts is empty.")
    g = torch.Generator().manual_seed(seed)
    lm = model.model.language_model
    params = [p for p in [*lm.parameters(), *model.lm_head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    enc = [tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in texts]
    bos = tokenizer.bos_token_id
    if bos is not None:
        enc = [[bos, *ids] for ids in enc]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(enc)
    steps = max(1, int(epochs * n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    model.train()
    order, pos, losses = torch.randperm(n, generator=g), 0, []
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        rows = [enc[int(i)] for i in order[pos : pos + batch_size]]
        pos += batch_size
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, n // batch_size):
            losses.append(loss.item())
        if progress is not None:
            progress(step + 1)
    model.eval()
    return sum(losses) / len(losses)


def probe_queries(
    model, processor, train: Sequence[GroundedSample], test: Sequence[GroundedSample], steps: int = 300
) -> float:
    """Accuracy on ``test`` of a linear probe (one per query, shared weights) trained on ``train`` to read each grid
    cell's class from the query outputs: what the LLM *could* read from the image."""
    xtr = query_features(model, processor, [s.image for s in train])
    xte = query_features(model, processor, [s.image for s in test])
    ytr = torch.tensor([cell_labels(s) for s in train])
    yte = torch.tensor([cell_labels(s) for s in test])
    mean, std = xtr.mean((0, 1), keepdim=True), xtr.std((0, 1), keepdim=True) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    # a separate linear map per query position: query i may encode cell i in its own basis
    w = torch.zeros(xtr.shape[1], xtr.shape[2], len(CELL_CLASSES), requires_grad=True)
    b = torch.zeros(xtr.shape[1], len(CELL_CLASSES), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        logits = torch.einsum("nqd,qdc->nqc", xtr, w) + b
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ytr.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (torch.einsum("nqd,qdc->nqc", xte, w) + b).argmax(-1)
    return float((pred == yte).float().mean())


def _word_ok(pred: str, word: str) -> bool:
    pred = pred.strip().lower()
    return len(pred) >= min(3, len(word)) and word.lower().startswith(pred)


@torch.no_grad()
def teacher_forced_accuracy(
    model, processor, samples: Sequence[GroundedSample], shuffle: bool = False, batch_size: int = 64
) -> dict[str, float]:
    """Next-token accuracy on the colour and the shape words of the reference description, teacher-forced.

    Each reference is appended to the generation prompt of its sample; at the first token of every colour word and
    every shape noun the model's argmax is correct when it is a prefix (≥ 3 characters) of the true word. With
    ``shuffle`` every text is paired with the next sample's image: what remains is what the text alone predicts.

    Returns:
        `dict`: ``colour`` and ``shape`` accuracies and the number of words scored (``n_colour``, ``n_shape``).
    """
    from benchmarks.hallucination.study import _prompt

    tokenizer = processor.tokenizer
    model.eval()
    hits = {"colour": 0, "shape": 0}
    counts = {"colour": 0, "shape": 0}
    n = len(samples)
    for i in range(0, n, batch_size):
        chunk = list(range(i, min(n, i + batch_size)))
        rows, targets = [], []
        images = [samples[(j + 1) % n].image if shuffle else samples[j].image for j in chunk]
        pix = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        for j in chunk:
            s = samples[j]
            prompt = processor.apply_chat_template(_prompt(s.question), add_generation_prompt=True)
            p_ids = processor(images=[s.image], text=prompt, return_tensors="pt")["input_ids"][0].tolist()
            comp = " " + s.reference
            enc = tokenizer(comp, add_special_tokens=False, return_offsets_mapping=True)
            ids = p_ids + enc["input_ids"]
            tgt = []
            for m in parse_mentions(comp):
                for kind, key in (("colour", "colour"), ("shape", "noun")):
                    a, b = m.spans[key]
                    covered = span_token_mask(enc["offset_mapping"], [(a, b)])
                    if any(covered):  # the word's first token
                        tgt.append((kind, len(p_ids) + covered.index(True), comp[a:b]))
            rows.append(ids)
            targets.append(tgt)
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pix).logits
        pred = logits.argmax(-1)
        for k, tgt in enumerate(targets):
            for kind, pos, word in tgt:
                counts[kind] += 1
                hits[kind] += _word_ok(tokenizer.decode([int(pred[k, pos - 1])]), word)
    return {
        "colour": hits["colour"] / max(1, counts["colour"]),
        "shape": hits["shape"] / max(1, counts["shape"]),
        "n_colour": counts["colour"],
        "n_shape": counts["shape"],
    }


def prior_hallucination_rate(responses: Sequence[str], samples: Sequence[GroundedSample]) -> dict[str, float]:
    """On conflict images (an anchor without its partner), the share of responses that name the absent partner."""
    n = hit = 0
    for r, s in zip(responses, samples):
        partner = conflict_partner(s.scene)
        if partner is None:
            continue
        n += 1
        hit += any(m.category == partner for m in parse_mentions(r))
    return {"rate": hit / max(1, n), "n_conflict": n}


@dataclass
class GateThresholds:
    """Gate thresholds (issue #14): perception where no prior conflicts, and a prior that misleads.

    Args:
        min_colour_accuracy (`float`, *optional*, defaults to 0.9): teacher-forced colour accuracy, true images.
        min_shape_accuracy (`float`, *optional*, defaults to 0.9): teacher-forced shape accuracy, true images.
        min_prior_rate (`float`, *optional*, defaults to 0.3): share of conflict images whose greedy answer names
            the absent partner.
    """

    min_colour_accuracy: float = 0.9
    min_shape_accuracy: float = 0.9
    min_prior_rate: float = 0.3


@dataclass
class GateReport:
    """The measured gate values and the verdict."""

    colour_true: float
    shape_true: float
    colour_shuffled: float
    shape_shuffled: float
    probe: float
    prior_rate: float
    n_conflict: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def lines(self) -> list[str]:
        verdict = "PASS" if self.passed else "FAIL"
        return [
            f"gates {verdict}: teacher-forced colour {self.colour_true:.3f} (shuffled images {self.colour_shuffled:.3f}), "
            f"shape {self.shape_true:.3f} (shuffled {self.shape_shuffled:.3f}); probe on the queries {self.probe:.3f}; "
            f"prior hallucination on {self.n_conflict} conflict images {self.prior_rate:.3f}",
            *(f"  gate failed: {f}" for f in self.failures),
        ]


def check_gates(
    tf_true: dict[str, float],
    tf_shuffled: dict[str, float],
    probe: float,
    prior: dict[str, float],
    thresholds: GateThresholds | None = None,
) -> GateReport:
    """Compare the measurements with ``thresholds``; every failed gate gets a sentence saying what it means."""
    t = thresholds or GateThresholds()
    failures = []
    if tf_true["colour"] < t.min_colour_accuracy:
        failures.append(
            f"colour accuracy {tf_true['colour']:.3f} < {t.min_colour_accuracy}: the model does not see colours"
        )
    if tf_true["shape"] < t.min_shape_accuracy:
        failures.append(
            f"shape accuracy {tf_true['shape']:.3f} < {t.min_shape_accuracy}: the model does not see shapes"
        )
    if prior["rate"] < t.min_prior_rate:
        failures.append(
            f"prior hallucination rate {prior['rate']:.3f} < {t.min_prior_rate}: the language prior does not mislead "
            "the model, so there is no hallucination of the kind RLHF-V corrects"
        )
    return GateReport(
        colour_true=tf_true["colour"],
        shape_true=tf_true["shape"],
        colour_shuffled=tf_shuffled["colour"],
        shape_shuffled=tf_shuffled["shape"],
        probe=probe,
        prior_rate=prior["rate"],
        n_conflict=int(prior["n_conflict"]),
        failures=failures,
    )
