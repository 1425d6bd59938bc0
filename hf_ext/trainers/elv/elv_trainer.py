"""``ELVTrainer``: variational EM over explanations (and explanation-based self-training) for an [`ELVModel`]."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq, get_scheduler, set_seed
from transformers.utils import logging

from ...utils.citations import CITATIONS
from ...utils.io import atomic_write
from .elv_config import ELVConfig
from .elv_model import ELVModel
from .retrieval import ExplanationBank, e_step_posterior, official_code_e_step_distribution

__all__ = ["ELVTrainer"]

logger = logging.get_logger(__name__)

TRAINER_STATE_NAME = "elv_trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _default_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes that occur in `labels` or `predictions`."""
    acc = float((predictions == labels).mean()) if len(labels) else 0.0
    f1s = []
    for c in np.union1d(predictions, labels):
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


class ELVTrainer:
    r"""
    Trainer for ELV ("Towards Interpretable Natural Language Understanding with Explanations as Latent Variables",
    Zhou, Hu et al., NeurIPS 2020, arXiv:2011.05268): an explanation generator and an explanation-augmented predictor
    trained by variational EM from a few human explanations, optionally followed by explanation-based self-training.

    Schedule (each item is a *phase*; checkpoints are taken between phases)::

        init_generator                       generator on the human (x, y) -> e pairs
        [init_predictor]                     only with self_training_init_predictor_epochs > 0
        num_em_rounds x (
            predictor_m_step                 generate e for every labelled x from its (pseudo) label, refresh the bank,
                                             train the predictor on x + (K-1 retrieved + 1 generated) explanations
            e_step                           sample one of the K retrieved explanations per example with
                                             q ∝ prior(e|x) · p_θ(y|x,e), each candidate scored on its own
            generator_m_step                 train the generator on (x, y) -> sampled e (+ the human pairs)
        )
        self_training_rounds x (
            pseudo_label                     move the most confident unlabelled predictions into the labelled set
            [init_generator]                 only with self_training_from_scratch
            num_em_rounds x (...)
        )

    Args:
        model (`ELVModel`): generator, predictor, retriever and (empty) bank.
        args (`ELVConfig`, *optional*): training arguments; defaults to ``ELVConfig("elv-output")``.
        train_dataset (`datasets.Dataset` or sequence of dicts): labelled examples in the ELV format: ``text``,
            ``label`` (int), optional ``explanation`` (str or None; at least one example must have one), optional
            ``subj_start``/``subj_end``/``obj_start``/``obj_end`` character spans (relation extraction) or ``aspect``
            (aspect sentiment). See ``dataset_builders.elv``.
        unlabeled_dataset (`datasets.Dataset` or sequence of dicts, *optional*): examples for self-training (their
            ``label``, if any, is never used for training; it is only reported as pseudo-label accuracy).
        eval_dataset (`datasets.Dataset` or sequence of dicts, *optional*): evaluated after every EM round.
        compute_metrics (`Callable[[np.ndarray, np.ndarray], dict]`, *optional*): ``(predictions, labels) ->
            metrics``; defaults to accuracy and macro-F1.

    Example:

    ```python
    >>> trainer = ELVTrainer(model=elv_model, args=ELVConfig("out", num_em_rounds=2), train_dataset=train)
    >>> trainer.train()
    >>> trainer.model.predict(["the cat sat on the mat"])
    ```
    """

    _name = "ELV"
    _tag_names = ["hf_ext", "elv"]
    _paper = {
        "title": CITATIONS["elv"].title,
        "id": CITATIONS["elv"].arxiv,
        "citation": CITATIONS["elv"].bibtex,
    }

    def __init__(
        self,
        model: ELVModel,
        args: ELVConfig | None = None,
        train_dataset: Iterable[Mapping[str, Any]] | None = None,
        unlabeled_dataset: Iterable[Mapping[str, Any]] | None = None,
        eval_dataset: Iterable[Mapping[str, Any]] | None = None,
        compute_metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
    ):
        if not isinstance(model, ELVModel):
            raise ValueError(f"model must be an ELVModel, got {type(model).__name__}.")
        self.model = model
        self.args = args if args is not None else ELVConfig("elv-output")
        self.compute_metrics = compute_metrics or _default_metrics

        # Accelerator
        mixed = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "no"
        report_to = [r for r in (self.args.report_to or []) if r != "none"]
        # Encoders such as BERT carry a pooler the predictor does not use: DDP must tolerate unused parameters.
        find_unused = self.args.ddp_find_unused_parameters
        self.accelerator = Accelerator(
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            mixed_precision=mixed,
            cpu=self.args.use_cpu,
            log_with=report_to or None,
            project_dir=self.args.output_dir,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=True if find_unused is None else find_unused)
            ],
        )
        if report_to:
            self.accelerator.init_trackers(self.args.run_name or "elv", config=self.args.to_sanitized_dict())
        self.model.to(self.accelerator.device)

        # Dataset
        if train_dataset is None:
            raise ValueError("train_dataset is required: labelled examples, a few of them with an `explanation`.")
        self._uses_spans = False
        self._train = self._prepare_examples(train_dataset, "train_dataset", id_offset=0, labelled=True)
        self._unlabeled = (
            self._prepare_examples(unlabeled_dataset, "unlabeled_dataset", id_offset=len(self._train), labelled=False)
            if unlabeled_dataset is not None
            else []
        )
        self._eval = (
            self._prepare_examples(eval_dataset, "eval_dataset", id_offset=-1, labelled=True)
            if eval_dataset is not None
            else []
        )
        self._human = [ex for ex in self._train if ex["explanation"]]
        if not self._human:
            raise ValueError(
                "train_dataset has no human explanation: ELV needs a few examples with a non-empty `explanation` "
                "to initialise the generator and the explanation bank."
            )
        if self.args.self_training_rounds > 0 and not self._unlabeled:
            raise ValueError("self_training_rounds > 0 needs an unlabeled_dataset.")
        if self._uses_spans:
            self.model.add_entity_markers()

        # State
        self._schedule = self._build_schedule()
        self._pseudo: list[dict[str, Any]] = []
        self._e_step_samples: dict[int, str] = {}
        self.state: dict[str, Any] = {"completed_phases": 0, "global_step": 0, "log_history": []}
        # Only self_training_from_scratch needs the initial weights (kept on the CPU).
        self._initial_states = (
            {
                "generator": {k: v.detach().cpu().clone() for k, v in self.model.generator.state_dict().items()},
                "predictor": {k: v.detach().cpu().clone() for k, v in self.model.predictor.state_dict().items()},
            }
            if self.args.self_training_from_scratch
            else None
        )

    # ------------------------------------------------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------------------------------------------------
    def _prepare_examples(
        self, dataset: Iterable[Mapping[str, Any]], name: str, id_offset: int, labelled: bool
    ) -> list[dict[str, Any]]:
        num_labels = self.model.config.num_labels
        out = []
        for row, ex in enumerate(dataset):
            text = ex.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name}[{row}]: `text` must be a non-empty string, got {text!r}.")
            label = ex.get("label", -1)
            label = -1 if label is None else int(label)
            if labelled and not 0 <= label < num_labels:
                raise ValueError(
                    f"{name}[{row}]: label {label} is outside [0, {num_labels}) (label_names: "
                    f"{self.model.config.label_names}). Put unlabelled examples in unlabeled_dataset."
                )
            expl = ex.get("explanation")
            if expl is not None and not isinstance(expl, str):
                raise ValueError(f"{name}[{row}]: `explanation` must be a string or None, got {type(expl).__name__}.")
            if ex.get("subj_start", -1) not in (None, -1):
                self._uses_spans = True
            try:
                formatted = self.model.format_example(ex)
            except ValueError as e:
                raise ValueError(f"{name}[{row}]: {e}") from e
            out.append(
                {
                    "id": id_offset + row if id_offset >= 0 else -1,
                    "text": formatted,
                    "label": label,
                    "explanation": expl.strip() if expl and expl.strip() else None,
                }
            )
        if not out:
            raise ValueError(f"{name} is empty.")
        return out

    def _labelled(self) -> list[dict[str, Any]]:
        return self._train + self._pseudo

    def _build_schedule(self) -> list[tuple[int, int, str]]:
        a = self.args
        em = ["predictor_m_step", "e_step", "generator_m_step"]
        sched: list[tuple[int, int, str]] = [(0, 0, "init_generator")]
        if a.self_training_init_predictor_epochs > 0:
            sched.append((0, 0, "init_predictor"))
        sched += [(0, r, p) for r in range(1, a.num_em_rounds + 1) for p in em]
        for s in range(1, a.self_training_rounds + 1):
            sched.append((s, 0, "pseudo_label"))
            if a.self_training_from_scratch:
                sched.append((s, 0, "init_generator"))
            sched += [(s, r, p) for r in range(1, a.num_em_rounds + 1) for p in em]
        return sched

    # ------------------------------------------------------------------------------------------------------------
    # Training loop of one phase
    # ------------------------------------------------------------------------------------------------------------
    def _optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        # No weight decay on biases and norm weights (official: bias, LayerNorm.weight).
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )

    def _fit(
        self,
        model: torch.nn.Module,
        items: Sequence[Any],
        collate_fn: Callable,
        epochs: int,
        lr: float,
        seed: int,
        progress: tqdm | None,
    ) -> float:
        """Train `model` on `items` for `epochs` epochs; returns the mean training loss."""
        if epochs == 0 or not items:
            return float("nan")
        acc = self.accelerator
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            list(items),
            batch_size=self.args.per_device_train_batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_fn,
        )
        optimizer = self._optimizer(model, lr)
        updates = math.ceil(len(loader) / self.args.gradient_accumulation_steps) * epochs
        scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=self.args.get_warmup_steps(updates),
            num_training_steps=updates,
        )
        p_model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
        p_model.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            for batch in loader:
                with acc.accumulate(p_model):
                    loss = p_model(**batch).loss
                    acc.backward(loss)
                    if acc.sync_gradients and self.args.max_grad_norm:
                        acc.clip_grad_norm_(p_model.parameters(), self.args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                total += float(acc.reduce(loss.detach(), reduction="mean"))
                count += 1
                if acc.sync_gradients:
                    self.state["global_step"] += 1
                if progress is not None:
                    progress.update(1)
        acc.free_memory()
        model.eval()
        return total / max(count, 1)

    def _generator_collate(self, pairs: Sequence[tuple[str, int, str]]) -> dict[str, torch.Tensor]:
        m = self.model
        tok = m.generator_tokenizer
        features = []
        for text, label, expl in pairs:
            src = tok(m.generator_source(text, label), truncation=True, max_length=m.config.max_source_length)
            target = tok(text_target=expl, truncation=True, max_length=m.config.max_target_length)["input_ids"]
            # Targets must end with EOS so the generator learns to stop (T5/BART tokenizers add it, others may not).
            eos = tok.eos_token_id
            if eos is not None and (not target or target[-1] != eos):
                target = target[: m.config.max_target_length - 1] + [eos]
            features.append({"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": target})
        collator = DataCollatorForSeq2Seq(tok, model=None, label_pad_token_id=-100, return_tensors="pt")
        return collator(features)

    def _predictor_collate(self, items: Sequence[tuple[str, list[str], int]]) -> dict[str, torch.Tensor]:
        batch = self.model.encode_predictor_inputs([t for t, _, _ in items], [e for _, e, _ in items])
        batch["labels"] = torch.tensor([y for _, _, y in items], dtype=torch.long)
        return batch

    # ------------------------------------------------------------------------------------------------------------
    # Phases
    # ------------------------------------------------------------------------------------------------------------
    def _human_pairs(self) -> list[tuple[str, int, str]]:
        return [(ex["text"], ex["label"], ex["explanation"]) for ex in self._human]

    def _ensure_human_bank(self) -> None:
        if any(o == "human" for o in self.model.bank.origins):
            return
        texts = [ex["text"] for ex in self._human]
        self.model.bank.add(
            [ex["explanation"] for ex in self._human],
            texts,
            self.model.embed(texts, self.args.per_device_eval_batch_size),
            source_ids=[ex["id"] for ex in self._human],
            origin="human",
            labels=[ex["label"] for ex in self._human],
        )

    def _phase_init_generator(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        self._ensure_human_bank()
        loss = self._fit(
            self.model.generator,
            self._human_pairs(),
            self._generator_collate,
            self.args.generator_init_epochs,
            self.args.generator_learning_rate,
            seed,
            progress,
        )
        return {"generator/loss": loss, "bank/size": len(self.model.bank)}

    def _phase_init_predictor(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        self._ensure_human_bank()
        labelled = self._labelled()
        texts = [ex["text"] for ex in labelled]
        retrieved, *_ = self.model.retrieve(
            texts,
            self.model.config.num_explanations,
            [ex["id"] for ex in labelled],
            self.args.per_device_eval_batch_size,
        )
        items = [(t, r, ex["label"]) for t, r, ex in zip(texts, retrieved, labelled)]
        loss = self._fit(
            self.model.predictor,
            items,
            self._predictor_collate,
            self.args.self_training_init_predictor_epochs,
            self.args.predictor_learning_rate,
            seed,
            progress,
        )
        return {"predictor/loss": loss}

    def _phase_predictor_m_step(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        m, k = self.model, self.model.config.num_explanations
        labelled = self._labelled()
        texts, labels, ids = (
            [ex["text"] for ex in labelled],
            [ex["label"] for ex in labelled],
            [ex["id"] for ex in labelled],
        )
        bs = self.args.per_device_eval_batch_size
        generated = m.generate_explanations(texts, labels, bs)
        if progress is not None:
            progress.update(math.ceil(len(texts) / bs))
        # The bank = the human explanations + one generated explanation per labelled example (refreshed every round).
        m.bank.keep("human")
        m.bank.add(generated, texts, m.embed(texts, bs), source_ids=ids, origin="generated", labels=labels)
        if k > 1:
            retrieved, _, sims, mask = m.retrieve(texts, k - 1, ids, bs)
            mean_sim = float(sims[mask].mean()) if bool(mask.any()) else float("nan")
        else:
            retrieved, mean_sim = [[] for _ in texts], float("nan")
        items = [(t, r + [g], y) for t, r, g, y in zip(texts, retrieved, generated, labels)]
        loss = self._fit(
            m.predictor,
            items,
            self._predictor_collate,
            self.args.predictor_epochs,
            self.args.predictor_learning_rate,
            seed,
            progress,
        )
        return {"predictor/loss": loss, "bank/size": len(m.bank), "retrieval/mean_similarity": mean_sim}

    @torch.no_grad()
    def gold_likelihoods(self, texts: Sequence[str], labels: Sequence[int], candidates: Sequence[Sequence[str]]):
        """p_θ(y | x, e_i) for every candidate e_i of every example, each (x, e_i) pair scored on its own.

        Returns a `(len(texts), K)` tensor (K = the longest candidate list; missing slots are 0).
        """
        pred = self.model.predictor
        pred.eval()
        device = next(pred.parameters()).device
        k = max(len(c) for c in candidates)
        out = torch.zeros(len(texts), k)
        bs = self.args.per_device_eval_batch_size
        flat = [(i, j, t, e) for i, (t, cands) in enumerate(zip(texts, candidates)) for j, e in enumerate(cands)]
        for start in range(0, len(flat), bs):
            chunk = flat[start : start + bs]
            batch = self.model.encode_predictor_inputs([c[2] for c in chunk], [[c[3]] for c in chunk])
            logits = pred(**{key: v.to(device) for key, v in batch.items()}).logits
            probs = torch.softmax(logits.float(), -1).cpu()
            for row, (i, j, _, _) in enumerate(chunk):
                out[i, j] = probs[row, labels[i]]
        return out

    def e_step_distribution(
        self, texts: Sequence[str], labels: Sequence[int], ids: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The E-step distribution over the K explanations retrieved for each (text, gold label).

        With ``e_step_scoring="posterior"``: q(e_i) ∝ prior(e_i | x) · p_θ(y | x, e_i) (see
        :func:`~hf_ext.trainers.elv.e_step_posterior`); with ``"official_code"`` the published code's rule.

        Returns:
            `(q, bank_indices, mask, gold_likelihoods)`, the first three of shape `(len(texts), K)`; the likelihoods
            are `None` under ``"official_code"``.
        """
        m, a = self.model, self.args
        bs = a.per_device_eval_batch_size
        candidates, idx, sims, mask = m.retrieve(texts, m.config.num_explanations, ids, bs)
        if a.e_step_scoring == "posterior":
            lik = self.gold_likelihoods(texts, labels, candidates)
            lik = torch.nn.functional.pad(lik, (0, mask.shape[1] - lik.shape[1]))
            return e_step_posterior(sims, lik, mask, a.prior, a.prior_temperature), idx, mask, lik
        agg = m.predict_proba_with(texts, candidates, bs)[torch.arange(len(texts)), torch.tensor(list(labels))]
        return official_code_e_step_distribution(sims, agg, mask), idx, mask, None

    def _phase_e_step(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        m, a = self.model, self.args
        labelled = self._labelled()
        ids = [ex["id"] for ex in labelled]
        q, idx, _, lik = self.e_step_distribution(
            [ex["text"] for ex in labelled], [ex["label"] for ex in labelled], ids
        )
        if progress is not None:
            progress.update(math.ceil(len(labelled) / a.per_device_eval_batch_size))
        if a.e_step_selection == "sample":
            choice = torch.multinomial(q, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
        else:
            choice = q.argmax(-1)
        self._e_step_samples = {i: m.bank.explanations[int(idx[r, c])] for r, (i, c) in enumerate(zip(ids, choice))}
        entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
        chosen_origin = [m.bank.origins[int(idx[r, c])] for r, c in enumerate(choice)]
        metrics = {
            "e_step/entropy": float(entropy),
            "e_step/human_fraction": sum(o == "human" for o in chosen_origin) / len(chosen_origin),
        }
        if lik is not None:
            metrics["e_step/selected_gold_likelihood"] = float(lik[torch.arange(len(labelled)), choice].mean())
        return metrics

    def _phase_generator_m_step(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        labelled = self._labelled()
        missing = [ex["id"] for ex in labelled if ex["id"] not in self._e_step_samples]
        if missing:
            raise RuntimeError(f"generator M-step without E-step samples for example ids {missing[:10]}.")
        pairs = [(ex["text"], ex["label"], self._e_step_samples[ex["id"]]) for ex in labelled]
        if self.args.generator_m_step_include_human:
            pairs += self._human_pairs()
        loss = self._fit(
            self.model.generator,
            pairs,
            self._generator_collate,
            self.args.generator_epochs,
            self.args.generator_learning_rate,
            seed,
            progress,
        )
        return {"generator/loss": loss}

    def _phase_pseudo_label(self, seed: int, progress: tqdm | None) -> dict[str, float]:
        chosen, stats = self.select_pseudo_labels()
        self._pseudo += chosen
        if self.args.self_training_from_scratch:
            self.model.generator.load_state_dict(self._initial_states["generator"])
            self.model.predictor.load_state_dict(self._initial_states["predictor"])
        return stats

    def select_pseudo_labels(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The `self_training_samples_per_round` most confident predictions on the unlabelled examples that are not
        pseudo-labelled yet (confidence = the predictor's top class probability with retrieved explanations; ties go
        to the earlier example). Returns the chosen examples (with their pseudo label) and statistics."""
        taken = {ex["id"] for ex in self._pseudo}
        pool = [ex for ex in self._unlabeled if ex["id"] not in taken]
        if not pool:
            logger.warning("Self-training: the unlabelled pool is exhausted; nothing added.")
            return [], {"self_training/added": 0}
        probs = self.model.predict_proba([ex["text"] for ex in pool], self.args.per_device_eval_batch_size)
        conf, pred = probs.max(-1)
        order = sorted(range(len(pool)), key=lambda i: (-float(conf[i]), i))[
            : self.args.self_training_samples_per_round
        ]
        chosen = [
            {
                **pool[i],
                "label": int(pred[i]),
                "explanation": None,
                "confidence": float(conf[i]),
                "gold": pool[i]["label"],
            }
            for i in order
        ]
        stats = {
            "self_training/added": len(chosen),
            "self_training/mean_confidence": float(np.mean([c["confidence"] for c in chosen])),
            "self_training/labelled_size": len(self._labelled()) + len(chosen),
        }
        with_gold = [c for c in chosen if c["gold"] >= 0]
        if with_gold:
            stats["self_training/pseudo_label_accuracy"] = float(np.mean([c["label"] == c["gold"] for c in with_gold]))
        return chosen, stats

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------
    def evaluate(
        self, eval_dataset: Iterable[Mapping[str, Any]] | None = None, prefix: str = "eval"
    ) -> dict[str, float]:
        """Predict with K retrieved explanations (the test-time rule) and compute the metrics."""
        examples = (
            self._prepare_examples(eval_dataset, "eval_dataset", id_offset=-1, labelled=True)
            if eval_dataset is not None
            else self._eval
        )
        if not examples:
            raise ValueError("No eval_dataset given.")
        probs = self.model.predict_proba([ex["text"] for ex in examples], self.args.per_device_eval_batch_size)
        preds = probs.argmax(-1).numpy()
        labels = np.array([ex["label"] for ex in examples])
        return {f"{prefix}/{k}": v for k, v in self.compute_metrics(preds, labels).items()}

    # ------------------------------------------------------------------------------------------------------------
    # Logging, checkpoints
    # ------------------------------------------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any]) -> None:
        """Record `metrics` in ``state["log_history"]``, the trackers of ``report_to`` and the logger."""
        entry = {**metrics, "global_step": self.state["global_step"]}
        self.state["log_history"].append(entry)
        if self.accelerator.trackers:
            numeric = {k: v for k, v in entry.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            self.accelerator.log(numeric, step=self.state["global_step"])
        logger.info("%s", json.dumps(entry))

    def _trainer_state(self) -> dict[str, Any]:
        return {
            **self.state,
            "schedule": [list(s) for s in self._schedule],
            "pseudo_labelled": self._pseudo,
            "e_step_samples": {str(k): v for k, v in self._e_step_samples.items()},
        }

    def _save_checkpoint(self) -> str | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        final = os.path.join(self.args.output_dir, f"checkpoint-{self.state['completed_phases']}")
        if acc.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            tmp = os.path.join(self.args.output_dir, f".tmp-checkpoint-{self.state['completed_phases']}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            with atomic_write(os.path.join(tmp, TRAINER_STATE_NAME), "w") as f:
                json.dump(self._trainer_state(), f, indent=1)
            # A checkpoint appears under its final name only once complete (rename is atomic).
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate_checkpoints()
        acc.wait_for_everyone()
        return final

    def _checkpoints(self) -> list[tuple[int, str]]:
        if not os.path.isdir(self.args.output_dir):
            return []
        found = []
        for name in os.listdir(self.args.output_dir):
            match = _CHECKPOINT_RE.match(name)
            if match and os.path.isfile(os.path.join(self.args.output_dir, name, TRAINER_STATE_NAME)):
                found.append((int(match.group(1)), os.path.join(self.args.output_dir, name)))
        return sorted(found)

    def _rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        for _, path in self._checkpoints()[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def _load_checkpoint(self, path: str) -> None:
        state_file = os.path.join(path, TRAINER_STATE_NAME)
        if not os.path.isfile(state_file):
            raise ValueError(f"{path!r} is not an ELV checkpoint: {TRAINER_STATE_NAME} is missing.")
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
        schedule = [tuple(s) for s in state.pop("schedule")]
        if schedule[: state["completed_phases"]] != self._schedule[: state["completed_phases"]]:
            raise ValueError(
                f"Checkpoint {path!r} was written with a different schedule (num_em_rounds, self-training settings); "
                "resume with the same ELVConfig."
            )
        m = self.model
        device = self.accelerator.device
        m.generator = (
            type(m.generator).from_pretrained(os.path.join(path, "generator"), dtype=torch.float32).to(device)
        )
        m.predictor = (
            type(m.predictor).from_pretrained(os.path.join(path, "predictor"), dtype=torch.float32).to(device)
        )
        m.bank = ExplanationBank.load(path)
        self._pseudo = state.pop("pseudo_labelled")
        self._e_step_samples = {int(k): v for k, v in state.pop("e_step_samples").items()}
        self.state = state
        logger.info("Resumed from %s after %d phase(s).", path, state["completed_phases"])

    # ------------------------------------------------------------------------------------------------------------
    # Main loop
    # ------------------------------------------------------------------------------------------------------------
    def _round_size(self, position: int) -> int:
        """Progress-bar units of the EM round starting at schedule `position`: training steps + inference batches."""
        a, n = self.args, len(self._labelled())
        steps = lambda count, epochs: math.ceil(count / a.per_device_train_batch_size) * epochs  # noqa: E731
        infer = math.ceil(n / a.per_device_eval_batch_size)
        gen_items = n + (len(self._human) if a.generator_m_step_include_human else 0)
        return 2 * infer + steps(n, a.predictor_epochs) + steps(gen_items, a.generator_epochs)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> dict[str, Any]:
        """Run the schedule (see the class docstring); returns the last logged metrics.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*): a checkpoint folder, or `True` for the latest one in
                ``args.output_dir``. The resumed run reproduces the uninterrupted one: every phase reseeds from
                ``(args.seed, phase index)`` and checkpoints hold both models, the bank, the pseudo-labels and the
                E-step samples.
        """
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                found = self._checkpoints()
                if not found:
                    raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir!r} has no checkpoint.")
                resume_from_checkpoint = found[-1][1]
            self._load_checkpoint(str(resume_from_checkpoint))

        phases = {
            "init_generator": self._phase_init_generator,
            "init_predictor": self._phase_init_predictor,
            "predictor_m_step": self._phase_predictor_m_step,
            "e_step": self._phase_e_step,
            "generator_m_step": self._phase_generator_m_step,
            "pseudo_label": self._phase_pseudo_label,
        }
        show = not self.args.disable_tqdm and self.accelerator.is_local_main_process
        progress: tqdm | None = None
        bar_key: tuple[int, int] | None = None
        last: dict[str, Any] = {}
        for position in range(self.state["completed_phases"], len(self._schedule)):
            stage, em_round, phase = self._schedule[position]
            if (stage, em_round) != bar_key:  # one progress bar per EM round (and one for each setup step)
                if progress is not None:
                    progress.close()
                bar_key = (stage, em_round)
                prefix = f"ELV self-training {stage}, " if stage else "ELV "
                desc = f"{prefix}round {em_round}/{self.args.num_em_rounds}" if em_round else f"{prefix}setup"
                total = self._round_size(position) if em_round else None
                progress = tqdm(total=total, desc=desc, disable=not show, leave=True)
            progress.set_postfix_str(phase)
            seed = self.args.seed + 1000 * position
            set_seed(seed)
            metrics = phases[phase](seed, progress)
            if phase == "generator_m_step" and self._eval:
                metrics.update(self.evaluate())
            last = {"stage": stage, "round": em_round, "phase": phase, **metrics}
            self.state["completed_phases"] = position + 1
            self.log(last)
            strategy = self.args.em_save_strategy
            if strategy == "phase" or (strategy == "round" and phase in ("generator_m_step", "pseudo_label")):
                self._save_checkpoint()
        if progress is not None:
            progress.close()
        if self.accelerator.trackers:
            self.accelerator.end_training()
        return last

    def save_model(self, output_dir: str | None = None) -> None:
        """Save the [`ELVModel`] (generator, predictor, retriever, bank) to `output_dir` (default ``args.output_dir``)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.model.save_pretrained(output_dir or self.args.output_dir)

    def push_to_hub(self, repo_id: str, **kwargs) -> Any:
        """Push the [`ELVModel`] as one Hub repository (see [`ELVModel.push_to_hub`])."""
        return self.model.push_to_hub(repo_id, **kwargs)
