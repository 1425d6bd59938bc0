"""ELV's explanation bank, its cosine retriever and the E-step scoring rules."""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ...utils.io import atomic_save_file, atomic_write

__all__ = [
    "ExplanationBank",
    "encode_sentences",
    "e_step_posterior",
    "official_code_e_step_distribution",
    "similarity_prior",
]

logger = logging.get_logger(__name__)

BANK_FILE = "explanation_bank.json"
BANK_EMBEDDINGS_FILE = "explanation_bank.safetensors"


@torch.no_grad()
def encode_sentences(
    sentences: Sequence[str],
    encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 32,
    max_length: int = 128,
) -> torch.Tensor:
    """Sentence embeddings as in Sentence-BERT ``*-mean-tokens``: masked mean of the last hidden states, L2-normalised.

    Args:
        sentences (`Sequence[str]`): the sentences.
        encoder (`PreTrainedModel`): any encoder returning ``last_hidden_state``.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        batch_size (`int`, *optional*, defaults to 32): sentences per forward pass.
        max_length (`int`, *optional*, defaults to 128): truncation length.

    Returns:
        `torch.FloatTensor` of shape `(len(sentences), hidden_size)`, rows of unit norm, on the CPU.
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(
            list(sentences[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        if "token_type_ids" in batch and "token_type_ids" not in _forward_args(encoder):
            batch.pop("token_type_ids")
        hidden = encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        chunks.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    encoder.train(was_training)
    if not chunks:
        return torch.zeros(0, encoder.config.hidden_size)
    return torch.cat(chunks)


def _forward_args(model: PreTrainedModel) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


@dataclass
class ExplanationBank:
    """The explanations ELV retrieves from, keyed by the sentence each was written (or generated) for.

    Retrieval follows the official code: the query sentence is compared with the bank's *source sentences* by cosine
    similarity of their sentence embeddings, and the explanations of the nearest sentences are returned.

    Args:
        explanations (`list[str]`): explanation texts.
        sources (`list[str]`): the sentence each explanation belongs to.
        source_ids (`list[int]`): id of the training example each explanation belongs to (-1 if none); retrieval
            for a query with the same id skips these entries, so an example never retrieves its own explanation.
        origins (`list[str]`): ``"human"`` or ``"generated"``.
        labels (`list[int]`): the label the explanation was written or generated for (-1 if unknown).
        embeddings (`torch.FloatTensor` of shape `(len(explanations), dim)`): unit-norm embeddings of `sources`.
    """

    explanations: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    source_ids: list[int] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    embeddings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.explanations)
        for name in ("sources", "source_ids", "origins", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ExplanationBank.{name} has {len(getattr(self, name))} entries, expected {n}.")
        if self.embeddings is not None and self.embeddings.shape[0] != n:
            raise ValueError(f"ExplanationBank.embeddings has {self.embeddings.shape[0]} rows, expected {n}.")

    def __len__(self) -> int:
        return len(self.explanations)

    def add(
        self,
        explanations: Sequence[str],
        sources: Sequence[str],
        embeddings: torch.Tensor,
        source_ids: Sequence[int] | None = None,
        origin: str = "generated",
        labels: Sequence[int] | None = None,
    ) -> None:
        """Append entries (with the embeddings of their source sentences)."""
        n = len(explanations)
        if len(sources) != n or embeddings.shape[0] != n:
            raise ValueError(
                f"add() got {n} explanations, {len(sources)} sources and {embeddings.shape[0]} embeddings; "
                "they must match."
            )
        self.explanations += list(explanations)
        self.sources += list(sources)
        self.source_ids += list(source_ids) if source_ids is not None else [-1] * n
        self.origins += [origin] * n
        self.labels += list(labels) if labels is not None else [-1] * n
        emb = embeddings.detach().float().cpu()
        self.embeddings = emb if self.embeddings is None else torch.cat([self.embeddings, emb])

    def keep(self, origin: str) -> None:
        """Drop every entry whose origin is not `origin` (used to refresh the generated part each EM round)."""
        idx = [i for i, o in enumerate(self.origins) if o == origin]
        for name in ("explanations", "sources", "source_ids", "origins", "labels"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in idx])
        if self.embeddings is not None:
            self.embeddings = self.embeddings[idx]

    def retrieve(
        self, query_embeddings: torch.Tensor, k: int, query_ids: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `k` nearest entries of each query by cosine similarity of the (unit-norm) embeddings.

        Args:
            query_embeddings (`torch.FloatTensor` of shape `(num_queries, dim)`): unit-norm query embeddings.
            k (`int`): neighbours per query.
            query_ids (`Sequence[int]`, *optional*): example id of each query; entries with the same
                `source_ids` are skipped. Ids < 0 exclude nothing.

        Returns:
            `(indices, similarities, mask)`, each of shape `(num_queries, k)`, most similar first. When fewer than `k`
            entries are eligible, the trailing slots have `mask == False` (and index 0, similarity 0).
        """
        if self.embeddings is None or len(self) == 0:
            raise ValueError("The explanation bank is empty: add the human-annotated explanations first.")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        sims = query_embeddings.float().cpu() @ self.embeddings.T
        if query_ids is not None:
            bank_ids = torch.tensor(self.source_ids)
            q = torch.as_tensor(list(query_ids))
            same = (q.unsqueeze(1) == bank_ids.unsqueeze(0)) & (q.unsqueeze(1) >= 0)
            sims = sims.masked_fill(same, -math.inf)
        kk = min(k, len(self))
        top_sims, top_idx = sims.topk(kk, dim=1)
        mask = torch.isfinite(top_sims)
        top_sims = torch.where(mask, top_sims, torch.zeros_like(top_sims))
        top_idx = torch.where(mask, top_idx, torch.zeros_like(top_idx))
        if kk < k:
            pad = k - kk
            top_idx = torch.cat([top_idx, top_idx.new_zeros(top_idx.shape[0], pad)], 1)
            top_sims = torch.cat([top_sims, top_sims.new_zeros(top_sims.shape[0], pad)], 1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], 1)
        return top_idx, top_sims, mask

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``explanation_bank.json`` and ``explanation_bank.safetensors`` (atomically) into `directory`."""
        os.makedirs(directory, exist_ok=True)
        payload = {
            "explanations": self.explanations,
            "sources": self.sources,
            "source_ids": self.source_ids,
            "origins": self.origins,
            "labels": self.labels,
        }
        with atomic_write(os.path.join(directory, BANK_FILE), "w") as f:
            json.dump(payload, f, ensure_ascii=False)
        emb = self.embeddings if self.embeddings is not None else torch.zeros(0, 0)
        atomic_save_file({"embeddings": emb.contiguous()}, os.path.join(directory, BANK_EMBEDDINGS_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExplanationBank:
        """Read a bank written by :meth:`save`."""
        from safetensors.torch import load_file

        path = os.path.join(directory, BANK_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"No explanation bank in {directory!r}: {BANK_FILE} is missing.")
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        emb = load_file(os.path.join(directory, BANK_EMBEDDINGS_FILE))["embeddings"]
        return cls(**payload, embeddings=emb if emb.numel() else None)


def similarity_prior(
    similarities: torch.Tensor, mask: torch.Tensor | None = None, prior: str = "softmax", temperature: float = 1.0
) -> torch.Tensor:
    """Turn the retrieval similarities of the K candidates into a prior p(e | x) over them.

    ``prior="softmax"``: ``softmax(cos / temperature)`` over the valid candidates; ``prior="uniform"``: 1 / K_valid.
    """
    if mask is None:
        mask = torch.ones_like(similarities, dtype=torch.bool)
    mask = mask.bool()
    if prior == "softmax":
        if temperature <= 0:
            raise ValueError(f"prior_temperature must be > 0, got {temperature}.")
        logits = (similarities.float() / temperature).masked_fill(~mask, -math.inf)
        return torch.softmax(logits, dim=-1)
    if prior == "uniform":
        w = mask.float()
        return w / w.sum(-1, keepdim=True).clamp_min(1.0)
    raise ValueError(f"prior must be 'softmax' or 'uniform', got {prior!r}.")


def e_step_posterior(
    similarities: torch.Tensor,
    gold_likelihoods: torch.Tensor,
    mask: torch.Tensor | None = None,
    prior: str = "softmax",
    temperature: float = 1.0,
) -> torch.Tensor:
    """ELV's E-step distribution over the K retrieved candidates of each example.

    q(e_i | x, y) ∝ p(e_i | x) · p_θ(y | x, e_i), where p(e_i | x) is :func:`similarity_prior` and
    ``gold_likelihoods[b, i]`` = p_θ(y_b | x_b, e_i) is the predictor's probability of the gold label given
    *that single candidate* (each candidate scored on its own).

    Args:
        similarities (`torch.FloatTensor` of shape `(batch, K)`): cosine similarities from the retriever.
        gold_likelihoods (`torch.FloatTensor` of shape `(batch, K)`): p_θ(y | x, e_i).
        mask (`torch.BoolTensor` of shape `(batch, K)`, *optional*): valid candidates.
        prior (`str`, *optional*, defaults to `"softmax"`): see :func:`similarity_prior`.
        temperature (`float`, *optional*, defaults to 1.0): softmax temperature of the prior.

    Returns:
        `torch.FloatTensor` of shape `(batch, K)`, rows summing to 1 (0 on invalid slots).
    """
    p = similarity_prior(similarities, mask, prior, temperature) * gold_likelihoods.float()
    if mask is not None:
        p = p.masked_fill(~mask.bool(), 0.0)
    total = p.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("E-step: some example has no candidate with positive prior × likelihood.")
    return p / total


def official_code_e_step_distribution(
    similarities: torch.Tensor, aggregated_gold_likelihood: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The distribution the official code samples from, kept for comparison (``e_step_scoring="official_code"``).

    The official code scores ``softmax(d_i · p)`` where d_i is Annoy's *angular distance* sqrt(2 - 2 cos_i) (larger
    means less similar) and p is one scalar, p_θ(y | x, all K candidates together), shared by every candidate. It
    therefore prefers dissimilar explanations and ignores which candidate supports the gold label.

    Args:
        similarities (`torch.FloatTensor` of shape `(batch, K)`): cosine similarities.
        aggregated_gold_likelihood (`torch.FloatTensor` of shape `(batch,)`): p_θ(y | x, E) with all K candidates.
        mask (`torch.BoolTensor` of shape `(batch, K)`, *optional*): valid candidates.
    """
    distance = torch.sqrt((2.0 - 2.0 * similarities.float()).clamp_min(0.0))
    scores = distance * aggregated_gold_likelihood.float().unsqueeze(-1)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), -math.inf)
    return torch.softmax(scores, dim=-1)
