"""The RLHF-V study in miniature: a tiny Muffin that sees, a language prior that misleads it, and every arm of the
comparison trained from the same SFT weights on the same pairs.

Pipeline (every stage is a public function, so the study script, the demo and the tests share it):

1. :func:`build_tokenizer` / :func:`build_model`: a byte-level BPE trained on the task's text and a random tiny
   :class:`~hf_ext.models.muffin.MuffinForConditionalGeneration` (BEiT-3 bridge, 9 learned queries, Llama LLM)
   whose 16-px patches tile the 3 x 3 grid of :mod:`benchmarks.hallucination.grounded`'s images.
2. :func:`~benchmarks.hallucination.gates.pretrain_bridge`: the bridge learns an easy grounded task (each query classifies
   one grid cell) on unbiased images and is then frozen; :func:`sft` trains projector + LLM with TRL's ``SFTTrainer``
   on descriptions of *biased* images (co-occurrence pairs: the partner follows the anchor) whose captions follow the
   prior (``sft_caption_prior``: some images show a near-partner where the caption names the partner), which is
   where the misleading prior comes from; an optional text-only stage (:func:`prior_texts`,
   :func:`~benchmarks.hallucination.gates.pretrain_language_prior`) trains the LLM on captions alone.
3. the gates (:mod:`benchmarks.hallucination.gates`): the model must see (teacher-forced colour / shape accuracy) and its
   prior must mislead it on conflict images; otherwise the run stops with the reason (:class:`GateError`).
4. :func:`sample_pool` / :func:`build_preference_pairs` / :func:`build_ranking_pairs`: responses sampled at a
   moderate temperature, ungrammatical ones dropped and counted; hallucinated ones corrected as RLHF-V's annotators
   did (rewrite; delete only when nothing true is left), written with the one RLHF-V writer
   (``dataset_builders.rlhf_v.write_rlhf_v_parquet``) and read back with ``load_rlhf_v``; ranking pairs (two
   samples, fewer hallucinations preferred) for the response-level contrast.
5. :func:`train_arm`: SFT on the corrected answers (control), TRL ``DPOTrainer`` (corrected or ranking pairs) or
   hf_ext's ``DenseDPOTrainer`` (γ, normalisation), the vision side frozen (as RLHF-V); learning rate per arm from
   a grid on a validation split (:func:`select_learning_rates`).
6. :func:`evaluate_responses`: greedy answers on held-out layouts, CHAIR-i / CHAIR-s (all images and conflict
   images), recall, answer length, mentions per answer, prior-hallucination rate; :mod:`benchmarks.hallucination.stats`
   gives the paired differences from DPO within seed.

The trainers' per-step logs go to a log file (:class:`StepLogCallback`), not to the console.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from benchmarks.hallucination.gates import (
    GateReport,
    GateThresholds,
    check_gates,
    freeze_vision,
    pretrain_bridge,
    pretrain_language_prior,
    prior_hallucination_rate,
    probe_queries,
    teacher_forced_accuracy,
)
from benchmarks.hallucination.grounded import (
    COOCCURRENCE_PAIRS,
    Correction,
    GroundedSample,
    GroundedTaskConfig,
    conflict_partner,
    correct_response,
    find_hallucinations,
    generate_samples,
    is_grammatical,
    parse_mentions,
    rlhf_v_row,
    task_corpus,
)

logger = logging.get_logger(__name__)

__all__ = [
    "ARMS",
    "Arm",
    "GateError",
    "StepLogCallback",
    "StudyConfig",
    "build_model",
    "build_preference_pairs",
    "build_ranking_pairs",
    "build_tokenizer",
    "evaluate_responses",
    "format_table",
    "generate_responses",
    "load_pairs",
    "measure_gates",
    "prepare_sft_model",
    "prior_texts",
    "primary_runs",
    "run_seed",
    "run_study",
    "sample_pool",
    "select_learning_rates",
    "sft",
    "sft_steps",
    "summarize",
    "train_arm",
    "train_preference",
]


@dataclass(frozen=True)
class Arm:
    """One arm: ``kind`` ``"sft"`` (SFT on the corrected answers), ``"dpo"`` (TRL) or ``"dense"`` (γ,
    normalisation); ``data`` ``"corrected"`` (RLHF-V pairs) or ``"ranking"`` (two samples, fewer hallucinations
    preferred)."""

    name: str
    kind: str = "dpo"
    data: str = "corrected"
    gamma: float | None = None
    normalize: bool = False


ARMS: dict[str, Arm] = {
    "sft_corrected": Arm("sft_corrected", "sft"),
    "dpo": Arm("dpo"),
    "dpo_ranking": Arm("dpo_ranking", data="ranking"),
    "ddpo_g2": Arm("ddpo_g2", "dense", gamma=2.0),
    "ddpo_g5": Arm("ddpo_g5", "dense", gamma=5.0),
    "ddpo_g2_norm": Arm("ddpo_g2_norm", "dense", gamma=2.0, normalize=True),
    "ddpo_g5_norm": Arm("ddpo_g5_norm", "dense", gamma=5.0, normalize=True),
    # the current official recipe's γ, for comparison with earlier runs
    "ddpo_g1.1": Arm("ddpo_g1.1", "dense", gamma=1.1),
}


class GateError(RuntimeError):
    """A gate failed: the SFT model does not see, or its prior does not mislead it; no table is produced."""


@dataclass
class StudyConfig:
    """Sizes and hyper-parameters of the study (defaults: ``make study``, sized for 2 CPU cores and 2 hours).

    Args:
        seeds (`Sequence[int]`, *optional*, defaults to `0..23`): one run (bridge, SFT, gates, pairs, every arm) per
            seed. Seeds whose SFT model fails the gates run no arm (``gate_failure``); the primary comparison is over
            the seeds that pass, and needs at least ``min_passing_seeds`` of them.
        arms (`Sequence[str]`): arms among [`ARMS`] (``"dpo"`` must be one: it is the paired baseline).
        num_pairs (`int`): pairs per arm in the primary comparison (every seed).
        beta (`float`): β of the primary comparison (the paper: 0.5).
        sweep_seeds, sweep_num_pairs, sweep_betas: extra settings (pair counts, β) run on ``sweep_seeds`` only.
        lr_grid (`Sequence[float]`, *optional*, defaults to `(3e-5, 1e-4, 3e-4, 1e-3)`): learning rates tried per arm on
            the validation split of ``lr_seed``.
        lr_seed (`int`): the seed whose validation split picks each arm's learning rate (then fixed for all).
        min_groups, max_groups, heldout_fraction: generator settings ([`GroundedTaskConfig`]).
        sft_anchor_rate, anchor_rate: share of scenes built around a co-occurrence anchor in the SFT images and in
            the pool / validation / test images.
        sft_cooccurrence, pool_cooccurrence, test_cooccurrence: P(partner | anchor) in the SFT images, the
            preference pool and the validation / test images.
        sft_caption_prior (`float`, *optional*, defaults to `0.08`): share of the SFT images with an anchor and its
            partner whose image shows a near-partner instead while the reference still names the partner (captions
            written from the scene prior; see [`GroundedTaskConfig`]'s ``caption_prior_rate``). This is where the
            default task's misleading prior comes from (measured with an unbiased bridge on seeds 1 / 2 / 4:
            0.03 → 0.38 / - / 0.45, 0.05 → 0.57 / 0.15 / 0.75, 0.08 → - / 0.56 / -, 0.10 → 0.96 / 0.81 / -).
        conflict_slot (`str`): what the partner's usual place holds in the pool / validation / test anchor scenes
            without the partner (``"empty"``, ``"near"`` or ``None``; see [`GroundedTaskConfig`]).
        hidden_size, num_layers, num_query: tiny Muffin sizes.
        bridge_samples, bridge_epochs, bridge_lr: bridge pre-training (per-cell classification).
        bridge_data (`str`, *optional*, defaults to `"unbiased"`): the bridge's images: ``"unbiased"`` (images of
            their own with a weak prior, ``task("bridge")``: perception without the SFT prior) or ``"sft"`` (the first
            ``bridge_samples`` SFT images: the bridge then carries part of the prior and reads colours badly on many
            seeds).
        bridge_unbiased_fraction (`float`, *optional*, defaults to `0.0`): with ``bridge_data="sft"``, the share of
            the bridge's images drawn from ``task("bridge")`` instead (the rest are the first SFT images): a bridge
            between one that carries the SFT prior and one that does not.
        prior_text_samples, prior_text_epochs, prior_text_lr: text-only pre-training of the LLM on descriptions of
            ``prior_text_samples`` scenes drawn like the SFT images (same co-occurrence), before SFT
            ([`~benchmarks.hallucination.gates.pretrain_language_prior`]): the language prior of an LLM that read
            text before it saw images. ``0`` skips it (the prior then comes from SFT alone).
        prior_text_anchor_rate (`float`, *optional*, defaults to `0.67`): share of the prior texts built around an
            anchor (the SFT images' share is ``sft_anchor_rate``).
        prior_text_position (`str`, *optional*, defaults to `"before"`): the text-only stage runs ``"before"`` SFT
            (an LLM pre-trained on text, then tuned on images) or ``"after"`` it (text-only data after the image SFT,
            the prior then most recent).
        sft_samples, sft_epochs, sft_lr, sft_batch_size: SFT (bridge frozen).
        pool_size, max_pool_size, sample_temperature: the sampled responses that become pairs.
        drop_ungrammatical (`bool`): drop (and count) sampled answers outside the task grammar; ``False`` is for
            smoke tests of untrained models only.
        pref_epochs, pref_batch_size: preference training (and the SFT-on-corrected control).
        val_samples, test_samples: validation (gates, learning rates) and test images (held-out layouts).
        vision_freeze (`str`): what preference training freezes: ``"tower"`` (BEiT-3 and queries, the default) or
            ``"official"`` (what RLHF-V's trainer freezes: BEiT-3's vision experts and vision embedding; see
            [`~benchmarks.hallucination.gates.freeze_vision`]).
        gates (`GateThresholds`): gate thresholds; ``enforce_gates`` stops a failing run.
        gate_failure (`str`, *optional*, defaults to `"exclude"`): what a seed whose SFT model fails the gates does
            (with ``enforce_gates``): ``"stop"`` raises :class:`GateError`; ``"exclude"`` records the seed (its gate
            values and the reason) and runs no preference arm on it; ``"replace"`` also draws the next unused seed,
            until ``len(seeds)`` seeds pass or ``max_replacements`` seeds were drawn. The learning-rate seed always
            stops. The gates are measured before any preference run, so excluding a seed selects on the premise
            (the model sees and its prior misleads), never on the outcome the arms are compared on.
        max_replacements (`int`, *optional*, defaults to `16`): at most this many replacement seeds.
        min_passing_seeds (`int`, *optional*, defaults to `8`): the report warns when fewer seeds pass the gates.
    """

    seeds: Sequence[int] = tuple(range(24))
    arms: Sequence[str] = ("sft_corrected", "dpo", "dpo_ranking", "ddpo_g2", "ddpo_g5", "ddpo_g2_norm", "ddpo_g5_norm")
    num_pairs: int = 300
    beta: float = 0.5
    sweep_seeds: Sequence[int] = (0, 1)
    sweep_num_pairs: Sequence[int] = (100, 1000)
    sweep_betas: Sequence[float] = (0.1,)
    lr_grid: Sequence[float] = (3e-5, 1e-4, 3e-4, 1e-3)
    lr_seed: int = 0
    image_size: int = 48
    min_groups: int = 2
    max_groups: int = 3
    anchor_rate: float = 0.5
    sft_anchor_rate: float = 0.67
    heldout_fraction: float = 0.2
    sft_cooccurrence: float = 1.0
    sft_caption_prior: float = 0.08
    pool_cooccurrence: float = 0.2
    test_cooccurrence: float = 0.0
    conflict_slot: str | None = "near"
    hidden_size: int = 64
    num_layers: int = 2
    num_query: int = 9
    bridge_samples: int = 3000
    bridge_data: str = "unbiased"
    bridge_unbiased_fraction: float = 0.0
    bridge_epochs: float = 10.0
    bridge_lr: float = 3e-3
    prior_text_samples: int = 0
    prior_text_epochs: float = 2.0
    prior_text_lr: float = 1e-3
    prior_text_anchor_rate: float = 0.67
    prior_text_position: str = "before"
    sft_samples: int = 3000
    sft_epochs: float = 4.0
    sft_lr: float = 1e-3
    sft_batch_size: int = 16
    pool_size: int = 600
    max_pool_size: int = 4000
    sample_temperature: float = 0.7
    drop_ungrammatical: bool = True
    pref_epochs: float = 2.0
    pref_batch_size: int = 8
    val_samples: int = 400
    test_samples: int = 2000
    max_new_tokens: int = 48
    generation_batch_size: int = 128
    vision_freeze: str = "tower"
    gates: GateThresholds = field(default_factory=GateThresholds)
    enforce_gates: bool = True
    gate_failure: str = "exclude"
    max_replacements: int = 16
    min_passing_seeds: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.gates, dict):
            self.gates = GateThresholds(**self.gates)
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"arms: unknown {unknown}; choose among {sorted(ARMS)}.")
        if "dpo" not in self.arms:
            raise ValueError("arms must include 'dpo': the paired differences are taken against it.")
        for name in ("num_pairs", "sft_samples", "pool_size", "test_samples", "val_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")
        if self.bridge_data not in ("sft", "unbiased"):
            raise ValueError(f"bridge_data must be 'sft' or 'unbiased', got {self.bridge_data!r}.")
        if not 0.0 <= self.bridge_unbiased_fraction <= 1.0:
            raise ValueError(f"bridge_unbiased_fraction must be in [0, 1], got {self.bridge_unbiased_fraction}.")
        if self.vision_freeze not in ("tower", "official"):
            raise ValueError(f"vision_freeze must be 'tower' or 'official', got {self.vision_freeze!r}.")
        if not 0.0 <= self.sft_caption_prior <= 1.0:
            raise ValueError(f"sft_caption_prior must be in [0, 1], got {self.sft_caption_prior}.")
        if not 0.0 <= self.prior_text_anchor_rate <= 1.0:
            raise ValueError(f"prior_text_anchor_rate must be in [0, 1], got {self.prior_text_anchor_rate}.")
        if self.prior_text_position not in ("before", "after"):
            raise ValueError(f"prior_text_position must be 'before' or 'after', got {self.prior_text_position!r}.")
        if not self.lr_grid:
            raise ValueError("lr_grid must hold at least one learning rate.")
        if self.gate_failure not in ("stop", "exclude", "replace"):
            raise ValueError(f"gate_failure must be 'stop', 'exclude' or 'replace', got {self.gate_failure!r}.")
        if self.max_replacements < 0:
            raise ValueError(f"max_replacements must be >= 0, got {self.max_replacements}.")

    def task(self, part: str) -> GroundedTaskConfig:
        """Generator settings of ``part``: ``"bridge"`` (bridge pre-training images: no prior), ``"sft"``,
        ``"pool"``, ``"val"`` or ``"test"``."""
        if part not in ("bridge", "sft", "pool", "val", "test"):
            raise ValueError(f"part must be 'bridge', 'sft', 'pool', 'val' or 'test', got {part!r}.")
        if part == "bridge":
            # the vision side's own data: every coloured shape about equally often, no prior to learn
            return GroundedTaskConfig(
                image_size=self.image_size,
                min_groups=self.min_groups,
                max_groups=self.max_groups,
                anchor_rate=0.25,
                cooccurrence=0.5,
                layouts="train",
                heldout_fraction=self.heldout_fraction,
            )
        co = {"sft": self.sft_cooccurrence, "pool": self.pool_cooccurrence}.get(part, self.test_cooccurrence)
        return GroundedTaskConfig(
            image_size=self.image_size,
            min_groups=self.min_groups,
            max_groups=self.max_groups,
            anchor_rate=self.sft_anchor_rate if part == "sft" else self.anchor_rate,
            cooccurrence=co,
            conflict_slot=None if part == "sft" else self.conflict_slot,
            caption_prior_rate=self.sft_caption_prior if part == "sft" else 0.0,
            layouts="test" if part in ("val", "test") else "train",
            heldout_fraction=self.heldout_fraction,
        )

    def settings(self, seed: int) -> list[tuple[int, float]]:
        """The (pair count, β) settings run on ``seed``: the primary one first, the sweeps on ``sweep_seeds``."""
        out = [(self.num_pairs, self.beta)]
        if seed in self.sweep_seeds:
            out += [(n, self.beta) for n in self.sweep_num_pairs if n != self.num_pairs]
            out += [(self.num_pairs, b) for b in self.sweep_betas if b != self.beta]
        return out


class StepLogCallback(TrainerCallback):
    """Append the trainer's per-step log dicts to a JSON-lines file and advance an optional progress bar."""

    def __init__(self, path: str | os.PathLike | None, tag: str = "", bar=None):
        self.path = Path(path) if path is not None else None
        self.tag = tag
        self.bar = bar

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.path is not None and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"run": self.tag, "step": state.global_step, **logs}) + "\n")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)


def _quiet(trainer, log_file: str | os.PathLike | None, tag: str, bar=None):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepLogCallback(log_file, tag, bar))
    return trainer


# --------------------------------------------------------------------------------------------- model and data


def build_tokenizer(config: StudyConfig | None = None):
    """A byte-level BPE trained on the task text and Muffin's default system prompt, plus Muffin's image tokens."""
    from hf_ext.models.muffin import DEFAULT_SYSTEM_PROMPT
    from hf_ext.models.muffin.processing_muffin import MUFFIN_IMAGE_TOKENS
    from hf_ext.testing import tiny_bpe_tokenizer

    # The system prompt is repeated so that BPE merges it into whole words (shorter sequences, faster training).
    chat = [DEFAULT_SYSTEM_PROMPT + "\n\n### Human: <image>\n", "\n### Assistant:", "\n###"] * 60
    return tiny_bpe_tokenizer(task_corpus(300) + chat, vocab_size=600, additional_special_tokens=MUFFIN_IMAGE_TOKENS)


def build_model(config: StudyConfig, tokenizer, seed: int = 0):
    """A random tiny Muffin and its processor: 16-px BEiT-3 patches (one per grid cell), `num_query` queries."""
    from hf_ext.models.muffin import MuffinForConditionalGeneration, MuffinImageProcessor, MuffinProcessor
    from hf_ext.testing import tiny_muffin_config

    nq = config.num_query
    model_config = tiny_muffin_config(
        tokenizer,
        num_query=nq,
        image_size=config.image_size,
        patch_size=config.image_size // 3,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        vision_max_position_embeddings=nq + 4,
    )
    torch.manual_seed(seed)
    model = MuffinForConditionalGeneration(model_config)
    size = config.image_size
    # "hf_ext_v1": a prompt that is a prefix of prompt + completion, as TRL's prompt-completion and preference datasets
    # need (the model is trained here, no released evaluation prompt applies); the format the study's published
    # numbers were made with (Muffin's v0 training format ending with "###" instead of "### ")
    processor = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        num_query=nq,
        chat_template="hf_ext_v1",
    )
    return model, processor


def _prompt(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _quiet_args() -> dict[str, Any]:
    return dict(
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        max_length=None,
    )


def sft(
    model,
    processor,
    samples: Sequence[GroundedSample],
    config: StudyConfig,
    output_dir: str,
    seed: int = 0,
    *,
    learning_rate: float | None = None,
    epochs: float | None = None,
    log_file: str | os.PathLike | None = None,
    bar=None,
):
    """Supervised fine-tuning on the samples' references with TRL's ``SFTTrainer`` (completion-only loss).

    Parameters without ``requires_grad`` (the frozen bridge) stay fixed. ``learning_rate`` / ``epochs`` default to
    ``config.sft_lr`` / ``config.sft_epochs``; step logs go to ``log_file``, steps advance ``bar``."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict(
        {
            "images": [[s.image] for s in samples],
            "prompt": [_prompt(s.question) for s in samples],
            "completion": [
                [{"role": "assistant", "content": [{"type": "text", "text": s.reference}]}] for s in samples
            ],
        }
    )
    args = SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=config.sft_batch_size,
        num_train_epochs=config.sft_epochs if epochs is None else epochs,
        learning_rate=config.sft_lr if learning_rate is None else learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        seed=seed,
        **_quiet_args(),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    _quiet(trainer, log_file, f"sft:{output_dir}", bar).train()
    return model.eval()


def sft_steps(n_samples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of a run over ``n_samples`` (the Trainer's count: ceil(batches per epoch x epochs))."""
    import math

    return math.ceil(math.ceil(n_samples / batch_size) * epochs)


@torch.no_grad()
def generate_responses(
    model,
    processor,
    samples: Sequence[GroundedSample],
    do_sample: bool = False,
    temperature: float = 0.7,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Responses of ``model`` to each sample's image and question (text before Muffin's ``###`` stop marker).

    Sampling uses ``temperature`` over the full distribution (``top_k=0``, ``top_p=1``)."""
    from hf_ext.models.muffin.processing_muffin import extract_muffin_answer

    model.eval()
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[str] = []
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            texts = [processor.apply_chat_template(_prompt(s.question), add_generation_prompt=True) for s in chunk]
            enc = processor(images=[[s.image] for s in chunk], text=texts, return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_k=0 if do_sample else None,
                top_p=1.0 if do_sample else None,
                pad_token_id=tokenizer.pad_token_id,
            )
            decoded = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(extract_muffin_answer(t) for t in decoded)
    finally:
        tokenizer.padding_side = side
    return out


def evaluate_responses(responses: Sequence[str], samples: Sequence[GroundedSample]) -> dict[str, float]:
    """CHAIR-i / CHAIR-s / recall (``"shapes"`` table) on all images and on conflict images (``*_conflict``), the
    prior-hallucination rate (conflict images whose answer names the absent partner), count and position error
    rates per mention, answer length in words and mentions per answer."""
    from hf_ext.metrics.chair import compute_chair

    def _chair(idx):
        if not idx:
            return {"chair_i": float("nan"), "chair_s": float("nan"), "recall": float("nan")}
        return compute_chair(
            [responses[i] for i in idx], [samples[i].scene.categories for i in idx], synonyms="shapes"
        )

    all_idx = list(range(len(samples)))
    conflict = [i for i in all_idx if conflict_partner(samples[i].scene) is not None]
    scores, cscores = _chair(all_idx), _chair(conflict)
    kinds: Counter = Counter()
    n_mentions = n_words = 0
    for r, s in zip(responses, samples):
        n_mentions += len(parse_mentions(r))
        n_words += len(r.split())
        kinds.update(h.kind for h in find_hallucinations(r, s.scene))
    n = max(1, len(samples))
    return {
        "chair_i": scores["chair_i"],
        "chair_s": scores["chair_s"],
        "recall": scores["recall"],
        "chair_i_conflict": cscores["chair_i"],
        "chair_s_conflict": cscores["chair_s"],
        "recall_conflict": cscores["recall"],
        "prior_rate": prior_hallucination_rate(responses, samples)["rate"],
        "count_err": kinds["count"] / n_mentions if n_mentions else 0.0,
        "position_err": kinds["position"] / n_mentions if n_mentions else 0.0,
        "words_per_response": n_words / n,
        "mentions_per_response": n_mentions / n,
        "n_test": len(samples),
        "n_conflict": len(conflict),
    }


def sample_pool(
    model, processor, pool: Sequence[GroundedSample], config: StudyConfig, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Two sampled responses per pool prompt (``config.sample_temperature``): the first makes the corrected pairs,
    both make the ranking pairs."""
    kw = dict(
        do_sample=True,
        temperature=config.sample_temperature,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.generation_batch_size,
    )
    first = generate_responses(model, processor, pool, seed=seed, **kw)
    second = generate_responses(model, processor, pool, seed=seed + 7919, **kw)
    return first, second


def _write_pairs(records: list[dict[str, Any]], parquet_path, with_segments: bool = True):
    from dataset_builders.rlhf_v import write_rlhf_v_parquet

    write_rlhf_v_parquet(records, parquet_path)
    return load_pairs(parquet_path, with_segments=with_segments)


def build_preference_pairs(
    responses: Sequence[str],
    samples: Sequence[GroundedSample],
    parquet_path: str | os.PathLike,
    max_pairs: int | None = None,
    add_missing: bool = False,
    require_grammatical: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Correct every hallucinated response, write the pairs in the RLHF-V schema and read them back.

    Ungrammatical responses ([`is_grammatical`]) are dropped before correction and counted (``ungrammatical``).
    Returns the TRL preference dataset (``prompt``/``chosen``/``rejected``/``images`` from
    ``dataset_builders.rlhf_v.load_rlhf_v`` plus ``chosen_segments``/``rejected_segments``) and statistics
    (pairs, corrected segments per pair, correction types, deletions, words per answer). With ``max_pairs`` only
    the first ``max_pairs`` pairs are kept (and written).
    """
    records, kinds, n_segments, n_words, n_rej_words, extra = [], Counter(), 0, 0, 0, 0
    ungrammatical = deletions = 0
    for r, s in zip(responses, samples):
        if require_grammatical and not is_grammatical(r):
            ungrammatical += 1
            continue
        corr = correct_response(r, s.scene, add_missing=add_missing)
        if not corr.hallucinations or not corr.changed:  # RLHF-V: only answers with a hallucination become pairs
            continue
        if max_pairs is not None and len(records) >= max_pairs:
            extra += 1
            continue
        records.append(rlhf_v_row(s.idx, s.image, s.question, corr, s.scene))
        kinds.update(h.kind for h in corr.hallucinations)
        n_segments += max(len(corr.rejected_segments), len(corr.chosen_segments))
        deletions += len(corr.rejected_segments) - len(corr.chosen_segments)
        n_words += len(corr.chosen.split())
        n_rej_words += len(corr.rejected.split())
    stats = {
        "responses": len(responses),
        "ungrammatical": ungrammatical,
        "pairs": len(records) + extra,
        "pairs_used": len(records),
        "segments_per_pair": n_segments / max(1, len(records)),
        "deleted_segments": deletions,
        "words_per_chosen": n_words / max(1, len(records)),
        "words_per_rejected": n_rej_words / max(1, len(records)),
        "correction_types": dict(kinds),
    }
    if not records:
        return None, stats
    return _write_pairs(records, parquet_path), stats


def build_ranking_pairs(
    first: Sequence[str],
    second: Sequence[str],
    samples: Sequence[GroundedSample],
    parquet_path: str | os.PathLike,
    max_pairs: int | None = None,
    require_grammatical: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Response-level pairs: two grammatical samples of one prompt whose hallucination counts differ, the one with
    fewer preferred (no segments: the paper's response-level contrast). Returns ``(dataset, stats)``."""
    records, ungrammatical, extra = [], 0, 0
    for a, b, s in zip(first, second, samples):
        if require_grammatical and not (is_grammatical(a) and is_grammatical(b)):
            ungrammatical += 1
            continue
        na, nb = len(find_hallucinations(a, s.scene)), len(find_hallucinations(b, s.scene))
        if na == nb:
            continue
        if max_pairs is not None and len(records) >= max_pairs:
            extra += 1
            continue
        chosen, rejected = (a, b) if na < nb else (b, a)
        corr = Correction(rejected, chosen, [], [], find_hallucinations(rejected, s.scene))
        records.append(rlhf_v_row(s.idx, s.image, s.question, corr, s.scene))
    stats = {"prompts": len(samples), "ungrammatical": ungrammatical, "pairs": len(records) + extra}
    stats["pairs_used"] = len(records)
    if not records:
        return None, stats
    return _write_pairs(records, parquet_path, with_segments=False), stats


def load_pairs(parquet_path: str | os.PathLike, with_segments: bool = True):
    """Read RLHF-V-schema pairs with ``dataset_builders.rlhf_v.load_rlhf_v``, with (``with_segments``) the
    ``chosen_segments`` / ``rejected_segments`` columns stored in the ``text`` JSON (every row must have them).
    Without them ``DenseDPOTrainer`` falls back to the official token diff."""
    from dataset_builders.rlhf_v import load_rlhf_v

    data = load_rlhf_v(parquet_path, with_segments=with_segments)
    if with_segments:
        for idx, chosen, rejected in zip(data["idx"], data["chosen_segments"], data["rejected_segments"]):
            if chosen is None or rejected is None:
                raise ValueError(
                    f"{parquet_path}: row idx={idx} has no chosen_segments/rejected_segments in its `text` JSON; "
                    "load it with with_segments=False to use the token diff."
                )
    return data


def _pairs_as_samples(data) -> list[GroundedSample]:
    """The chosen answers of a preference dataset as SFT samples (the SFT-on-corrected control)."""
    return [
        GroundedSample(int(r["idx"]), r["images"][0], r["prompt"][0]["content"], None, r["chosen"][0]["content"])
        for r in data
    ]


def train_arm(
    sft_model,
    processor,
    data,
    arm: Arm,
    config: StudyConfig,
    output_dir: str,
    seed: int = 0,
    *,
    learning_rate: float,
    beta: float | None = None,
    log_file: str | os.PathLike | None = None,
    bar=None,
):
    """Train a copy of ``sft_model`` on ``data`` as ``arm`` says, the vision side frozen; the SFT model is left
    untouched. ``beta`` defaults to ``config.beta``."""
    from trl import DPOConfig, DPOTrainer

    from hf_ext.trainers.dense_dpo import DenseDPOConfig, DenseDPOTrainer
    from hf_ext.utils.copying import clone_model

    # clone_model, not copy.deepcopy: the SFT model's forward was patched by TRL, and a deep copy's plain forward
    # (generation) would still run the SFT model's weights (measured: every arm then answered like SFT)
    policy = clone_model(sft_model).train()
    for p in policy.parameters():
        p.requires_grad_(True)
    freeze_vision(policy, config.vision_freeze)
    if arm.kind == "sft":
        return sft(
            policy,
            processor,
            _pairs_as_samples(data),
            config,
            output_dir,
            seed,
            learning_rate=learning_rate,
            epochs=config.pref_epochs,
            log_file=log_file,
            bar=bar,
        )
    ref = clone_model(sft_model).eval()
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=config.pref_batch_size,
        num_train_epochs=config.pref_epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # the paper: "longer warm-up (10% of steps) makes training more stable"
        beta=config.beta if beta is None else beta,
        seed=seed,
        **_quiet_args(),
    )
    if arm.kind == "dpo":
        # TRL's vision DPO ignores the segment columns; drop them so the collator sees only its own fields.
        data = data.remove_columns([c for c in ("chosen_segments", "rejected_segments") if c in data.column_names])
        trainer = DPOTrainer(
            model=policy, ref_model=ref, args=DPOConfig(**common), train_dataset=data, processing_class=processor
        )
    elif arm.kind == "dense":
        args = DenseDPOConfig(dense_gamma=arm.gamma, dense_normalize=arm.normalize, **common)
        trainer = DenseDPOTrainer(
            model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=processor
        )
    else:
        raise ValueError(f"arm {arm.name!r}: unknown kind {arm.kind!r} (sft, dpo or dense).")
    _quiet(trainer, log_file, f"{arm.name}:{output_dir}", bar).train()
    return policy.eval()


def train_preference(sft_model, processor, data, arm: Arm, config: StudyConfig, output_dir: str, seed: int = 0):
    """:func:`train_arm` at the first learning rate of ``config.lr_grid`` (kept for scripts of the earlier API)."""
    return train_arm(sft_model, processor, data, arm, config, output_dir, seed, learning_rate=config.lr_grid[0])


# ------------------------------------------------------------------------------------------------------ study


def _noop_bar(total: int, desc: str):
    class _Bar:
        def update(self, n=1):
            pass

        def close(self):
            pass

    return _Bar()


BarFactory = Callable[[int, str], Any]


def _base(seed: int) -> int:
    return 1_000_003 * (seed + 1)


def bridge_images(config: StudyConfig, seed: int, train: Sequence[GroundedSample]) -> list[GroundedSample]:
    """The bridge's pre-training images: the first SFT images, the unbiased generator's, or (with
    ``bridge_unbiased_fraction``) the first ``round(fraction * bridge_samples)`` unbiased ones and then SFT images."""
    n = config.bridge_samples
    k = n if config.bridge_data == "unbiased" else round(config.bridge_unbiased_fraction * n)
    unbiased = generate_samples(k, seed=_base(seed) + 6, config=config.task("bridge")) if k else []
    return list(unbiased) + list(train[: n - k])


def prepare_sft_model(
    config: StudyConfig,
    tokenizer,
    seed: int,
    work: Path,
    log_file: str | os.PathLike | None = None,
    bar: BarFactory = _noop_bar,
    log: Callable[[str], None] = logger.info,
):
    """Bridge pre-training (per-cell classification), freeze the bridge, SFT on biased images. Returns
    ``(model, processor, info)``."""
    t0 = time.perf_counter()
    train = generate_samples(config.sft_samples, seed=_base(seed) + 1, config=config.task("sft"))
    model, processor = build_model(config, copy.deepcopy(tokenizer), seed=seed)
    bridge = bridge_images(config, seed, train)
    steps = max(1, int(config.bridge_epochs * len(bridge) / 64))
    b = bar(steps, "bridge pre-training")
    acc = pretrain_bridge(
        model, processor, bridge, config.bridge_epochs, config.bridge_lr, seed=seed, progress=lambda _: b.update(1)
    )
    b.close()
    t1 = time.perf_counter()
    log(f"bridge pre-training: per-cell accuracy {acc:.3f} (last epoch), {t1 - t0:.0f}s")
    info = {"bridge_accuracy": acc, "sft_images": len(train)}
    if config.prior_text_samples > 0 and config.prior_text_position == "before":
        _language_prior(model, processor, config, seed, info, bar, log)
        t1 = time.perf_counter()
    freeze_vision(model)
    b = bar(sft_steps(len(train), config.sft_batch_size, config.sft_epochs), "SFT")
    model = sft(model, processor, train, config, str(work / "sft"), seed=seed, log_file=log_file, bar=b)
    b.close()
    log(f"SFT on {len(train)} biased images (bridge frozen): {time.perf_counter() - t1:.0f}s")
    if config.prior_text_samples > 0 and config.prior_text_position == "after":
        _language_prior(model, processor, config, seed, info, bar, log)
    return model, processor, info


def _language_prior(model, processor, config: StudyConfig, seed: int, info: dict, bar: BarFactory, log) -> None:
    t0 = time.perf_counter()
    texts = prior_texts(config, seed)
    b = bar(max(1, int(config.prior_text_epochs * len(texts) / 32)), "language prior (text only)")
    loss = pretrain_language_prior(
        model,
        processor.tokenizer,
        texts,
        config.prior_text_epochs,
        config.prior_text_lr,
        seed=seed,
        progress=lambda _: b.update(1),
    )
    b.close()
    info["prior_text_loss"] = loss
    log(
        f"language prior ({config.prior_text_position} SFT): {len(texts)} descriptions, text only, loss {loss:.3f}, "
        f"{time.perf_counter() - t0:.0f}s"
    )


def prior_texts(config: StudyConfig, seed: int) -> list[str]:
    """Descriptions of ``config.prior_text_samples`` scenes drawn like the SFT images (same anchors, same
    co-occurrence, training layouts), no images: the text the LLM's language prior is learned from."""
    from benchmarks.hallucination.grounded import _rng, describe_scene, generate_scene, layout_split

    task = replace(config.task("sft"), anchor_rate=config.prior_text_anchor_rate)
    out = []
    for i in range(config.prior_text_samples):
        rng = _rng(_base(seed) + 7, i, "prior_text")
        scene = generate_scene(rng, task)
        while layout_split(scene, task.heldout_fraction) != "train":
            scene = generate_scene(rng, task)
        out.append(describe_scene(scene))
    return out


def measure_gates(model, processor, config: StudyConfig, seed: int) -> GateReport:
    """The gates on ``seed``'s validation split: perception on images without anchors (true vs shuffled images),
    a probe on the queries, and the prior-hallucination rate on conflict images."""
    val = generate_samples(config.val_samples, seed=_base(seed) + 4, config=config.task("val"))
    anchors = {a for a, _ in COOCCURRENCE_PAIRS}
    clean = [s for s in val if not anchors & set(s.scene.categories)]
    tf_true = teacher_forced_accuracy(model, processor, clean)
    tf_shuf = teacher_forced_accuracy(model, processor, clean, shuffle=True)
    probe_train = generate_samples(600, seed=_base(seed) + 5, config=config.task("bridge"))
    probe = probe_queries(model, processor, probe_train, val)
    responses = generate_responses(
        model, processor, val, max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size
    )
    prior = prior_hallucination_rate(responses, val)
    return check_gates(tf_true, tf_shuf, probe, prior, config.gates)


def _pairs_for(config: StudyConfig, model, processor, seed: int, work: Path, max_pairs: int):
    """Sample the pool (grown until both pair kinds reach ``max_pairs`` or ``max_pool_size``), write both parquet
    files; returns ``(pool, first, second, stats)``."""
    pool_size, g = config.pool_size, config.drop_ungrammatical
    while True:
        pool = generate_samples(pool_size, seed=_base(seed) + 2, config=config.task("pool"))
        first, second = sample_pool(model, processor, pool, config, seed)
        _, c_stats = build_preference_pairs(
            first, pool, work / "probe_corrected.parquet", max_pairs=max_pairs, require_grammatical=g
        )
        _, r_stats = build_ranking_pairs(
            first, second, pool, work / "probe_ranking.parquet", max_pairs=max_pairs, require_grammatical=g
        )
        short = min(c_stats["pairs"], r_stats["pairs"])
        if short >= max_pairs or pool_size >= config.max_pool_size:
            return pool, first, second, {"corrected": c_stats, "ranking": r_stats, "pool_size": pool_size}
        rate = max(short, 1) / pool_size
        pool_size = min(config.max_pool_size, int(1.15 * max_pairs / rate) + 1)


def _datasets(pool, first, second, n: int, work: Path, grammatical: bool = True):
    corrected, c_stats = build_preference_pairs(
        first, pool, work / f"corrected_{n}.parquet", max_pairs=n, require_grammatical=grammatical
    )
    ranking, r_stats = build_ranking_pairs(
        first, second, pool, work / f"ranking_{n}.parquet", max_pairs=n, require_grammatical=grammatical
    )
    if corrected is None or ranking is None:
        raise RuntimeError(f"no preference pairs at n={n}: the SFT model produced no usable hallucinated response.")
    return {"corrected": corrected, "ranking": ranking}, {"corrected": c_stats, "ranking": r_stats}


def select_learning_rates(
    model,
    processor,
    data: dict[str, Any],
    config: StudyConfig,
    seed: int,
    work: Path,
    log_file=None,
    bar: BarFactory = _noop_bar,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each arm's learning rate from ``config.lr_grid`` on the validation split of ``seed``: the lowest CHAIR-i on
    conflict images among the rates whose answers keep ≥ 80% of the SFT model's mentions per answer (a rate that
    empties the answers does not win by saying nothing); if none qualifies, the rate keeping the most mentions."""
    val = generate_samples(config.val_samples, seed=_base(seed) + 4, config=config.task("val"))
    gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    base = evaluate_responses(generate_responses(model, processor, val, **gen), val)
    trials = []
    b = bar(len(config.arms) * len(config.lr_grid), "learning-rate grid (validation)")
    chosen = {}
    for name in config.arms:
        arm = ARMS[name]
        rows = []
        for lr in config.lr_grid:
            policy = train_arm(
                model,
                processor,
                data[arm.data],
                arm,
                config,
                str(work / "lr" / f"{name}_{lr:g}"),
                seed,
                learning_rate=lr,
                log_file=log_file,
            )
            m = evaluate_responses(generate_responses(policy, processor, val, **gen), val)
            rows.append({"arm": name, "lr": lr, **m})
            b.update(1)
        ok = [r for r in rows if r["mentions_per_response"] >= 0.8 * base["mentions_per_response"]]
        best = (
            min(ok, key=lambda r: r["chair_i_conflict"]) if ok else max(rows, key=lambda r: r["mentions_per_response"])
        )
        chosen[name] = best["lr"]
        trials += rows
    b.close()
    return chosen, trials


def run_seed(
    config: StudyConfig,
    seed: int,
    work_dir: str | os.PathLike,
    learning_rates: dict[str, float] | None = None,
    tokenizer=None,
    log: Callable[[str], None] = logger.info,
    bar: BarFactory = _noop_bar,
    log_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One seed: bridge + SFT, the gates (a failure raises :class:`GateError` when ``config.enforce_gates``), pairs,
    learning rates (picked here on the validation split when ``learning_rates`` is ``None``), every arm at every
    setting of ``config.settings(seed)``, evaluated on the test images.

    Returns ``{"seed", "gates", "pairs", "learning_rates", "lr_trials", "runs", "info", "seconds"}``; ``runs`` has one
    row per (method, pairs, beta) with the metrics of :func:`evaluate_responses`."""
    t0 = time.perf_counter()
    work = Path(work_dir) / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config)
    model, processor, info = prepare_sft_model(config, tokenizer, seed, work, log_file, bar, log)
    gates = measure_gates(model, processor, config, seed)
    for line in gates.lines():
        log(line)
    if not gates.passed and config.enforce_gates:
        reason = f"seed {seed}: " + "; ".join(gates.failures) + ". No preference run on a model that fails the gates."
        if config.gate_failure == "stop" or seed == config.lr_seed:  # the learning-rate seed picks every arm's rate
            raise GateError(reason)
        log(f"seed {seed}: EXCLUDED ({'; '.join(gates.failures)}); no preference run on it")
        return {
            "seed": seed,
            "gates": gates.to_dict(),
            "excluded": True,
            "reason": reason,
            "runs": [],
            "info": info,
            "seconds": time.perf_counter() - t0,
        }
    settings = config.settings(seed)
    n_max = max(n for n, _ in settings)
    t1 = time.perf_counter()
    pool, first, second, pool_stats = _pairs_for(config, model, processor, seed, work, n_max)
    c, r = pool_stats["corrected"], pool_stats["ranking"]
    log(
        f"pairs: {pool_stats['pool_size']} prompts x 2 samples (T={config.sample_temperature}); dropped "
        f"{c['ungrammatical']} ungrammatical first samples; {c['pairs']} corrected pairs "
        f"({c['segments_per_pair']:.2f} segments/pair, {c['deleted_segments']} deletions, types "
        f"{c['correction_types']}), {r['pairs']} ranking pairs; {time.perf_counter() - t1:.0f}s"
    )
    test = generate_samples(config.test_samples, seed=_base(seed) + 3, config=config.task("test"))
    gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    runs = [
        {
            "seed": seed,
            "method": "sft",
            "pairs": 0,
            "beta": None,
            "lr": None,
            **evaluate_responses(generate_responses(model, processor, test, **gen), test),
        }
    ]
    pair_stats, lr_trials = {}, []
    if learning_rates is None:
        data, _ = _datasets(pool, first, second, config.num_pairs, work, config.drop_ungrammatical)
        learning_rates, lr_trials = select_learning_rates(model, processor, data, config, seed, work, log_file, bar)
        log(
            "learning rates picked on the validation split: "
            + ", ".join(f"{k} {v:g}" for k, v in learning_rates.items())
        )
    b = bar(len(settings) * len(config.arms), "preference arms")
    for n, beta in settings:
        data, st = _datasets(pool, first, second, n, work, config.drop_ungrammatical)
        pair_stats[f"{n}"] = st
        for name in config.arms:
            arm = ARMS[name]
            if arm.kind == "sft" and beta != config.beta:
                b.update(1)
                continue  # β does not enter SFT
            t_arm = time.perf_counter()
            policy = train_arm(
                model,
                processor,
                data[arm.data],
                arm,
                config,
                str(work / f"{name}_n{n}_b{beta:g}"),
                seed,
                learning_rate=learning_rates[name],
                beta=beta,
                log_file=log_file,
            )
            t_eval = time.perf_counter()
            m = evaluate_responses(generate_responses(policy, processor, test, **gen), test)
            runs.append({"seed": seed, "method": name, "pairs": n, "beta": beta, "lr": learning_rates[name], **m})
            runs[-1]["train_s"] = t_eval - t_arm
            runs[-1]["eval_s"] = time.perf_counter() - t_eval
            b.update(1)
            del policy
    b.close()
    seconds = time.perf_counter() - t0
    return {
        "seed": seed,
        "gates": gates.to_dict(),
        "pairs": {"pool": {k: v for k, v in pool_stats.items()}, "per_count": pair_stats},
        "learning_rates": learning_rates,
        "lr_trials": lr_trials,
        "runs": runs,
        "info": info,
        "seconds": seconds,
    }


def run_study(
    config: StudyConfig,
    output_dir: str | os.PathLike,
    work_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    bar: BarFactory = _noop_bar,
    log_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Every seed (``lr_seed`` first: it picks the learning rates), each saved as ``seeds/seed{N}.json`` the moment
    it finishes; seeds whose file exists are loaded, not rerun (an interruption loses one seed at most).

    Returns ``{"config", "seeds": [per-seed results], "runs": [every run]}``."""
    import tempfile

    log = log or logger.info
    out = Path(output_dir)
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="hallucination_study_"))
    order = [config.lr_seed] + [s for s in config.seeds if s != config.lr_seed]
    tokenizer = build_tokenizer(config)
    lrs_path = out / "learning_rates.json"
    lrs = json.loads(lrs_path.read_text()) if lrs_path.exists() else None
    results = []

    def run_or_load(seed: int, note: str = "") -> None:
        nonlocal lrs
        path = out / "seeds" / f"seed{seed}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            log(f"seed {seed}{note}: loaded {path} (already done)")
            return
        log(f"seed {seed}: start{note}")
        res = run_seed(config, seed, work, lrs, tokenizer, log, bar, log_file)
        if lrs is None:
            lrs = res["learning_rates"]
            save_results({k: lrs[k] for k in config.arms}, lrs_path)
        save_results(res, path)
        log(f"seed {seed}: done in {res['seconds']:.0f}s -> {path}")
        results.append(res)

    for seed in order:
        run_or_load(seed)
    if config.gate_failure == "replace":
        # a seed whose SFT model fails the gates is replaced by the next unused seed until len(seeds) seeds pass;
        # the gates are measured before any preference run, so this selects on the premise, not on the outcome
        next_seed, replaced = max(config.seeds) + 1, 0
        while sum(not r.get("excluded") for r in results) < len(config.seeds) and replaced < config.max_replacements:
            run_or_load(next_seed, " (replaces an excluded seed)")
            next_seed, replaced = next_seed + 1, replaced + 1
        passing = sum(not r.get("excluded") for r in results)
        if passing < len(config.seeds):
            log(f"only {passing} of {len(config.seeds)} seeds pass the gates after {replaced} replacements")
    results.sort(key=lambda r: r["seed"])
    return {"config": _config_dict(config), "seeds": results, "runs": [r for res in results for r in res["runs"]]}


def _config_dict(config: StudyConfig) -> dict[str, Any]:
    d = asdict(config)
    d["seeds"], d["arms"] = list(config.seeds), list(config.arms)
    return d


METRICS = (
    "chair_i_conflict",
    "chair_s_conflict",
    "chair_i",
    "chair_s",
    "recall",
    "count_err",
    "position_err",
    "words_per_response",
    "mentions_per_response",
)
_PERCENT = {
    "chair_i_conflict",
    "chair_s_conflict",
    "chair_i",
    "chair_s",
    "recall",
    "recall_conflict",
    "prior_rate",
    "count_err",
    "position_err",
}


def primary_runs(runs: Sequence[dict[str, Any]], num_pairs: int, beta: float) -> list[dict[str, Any]]:
    """The runs of the primary setting (and SFT, which has no setting)."""
    return [r for r in runs if r["method"] == "sft" or (r["pairs"] == num_pairs and r["beta"] == beta)]


def summarize(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of each metric, per method (in first-seen order)."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    rows = []
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        row: dict[str, Any] = {"method": m, "n_seeds": len(rs)}
        for k in metrics:
            vals = [float(r[k]) for r in rs]
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            row[k] = mean
            row[k + "_std"] = var**0.5
        rows.append(row)
    return rows


def _fmt_value(k: str, v: float) -> str:
    return f"{100 * v:.1f}" if k in _PERCENT else f"{v:.2f}"


def format_table(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, baseline: str = "dpo", confidence: float = 0.95
) -> str:
    """A Markdown table per method: the paired difference from ``baseline`` within seed of the first metric (mean and
    95% t-interval, ×100), then every metric's mean over seeds (rates ×100)."""
    from benchmarks.hallucination.stats import paired_differences

    rows = summarize(runs, metrics)
    diffs = {d["method"]: d for d in paired_differences(runs, metrics[0], baseline, confidence)}
    head = (
        f"| method | seeds | Δ {metrics[0]} vs {baseline} [{int(100 * confidence)}% CI] | "
        + " | ".join(metrics)
        + " |"
    )
    lines = [head, "|" + " --- |" * (len(metrics) + 3)]
    for r in rows:
        d = diffs.get(r["method"])
        if d is None:
            cell = "(baseline)" if r["method"] == baseline else ""
        elif d["n"] < 2:
            cell = f"{100 * d['mean']:+.1f} (one seed: no CI)"
        else:
            cell = f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        cells = [_fmt_value(k, r[k]) for k in metrics]
        lines.append(f"| {r['method']} | {r['n_seeds']} | {cell} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(results: Any, path: str | os.PathLike) -> None:
    """Write ``results`` as JSON, atomically."""
    from hf_ext.utils.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=2)
