"""The RLHF-V study in miniature: SFT a tiny Muffin, collect corrected responses, compare DPO and dense DPO.

Pipeline (every stage is a public function, so the study script, the demo and the tests share it):

1. :func:`build_tokenizer` / :func:`build_model`: a byte-level BPE trained on the task's text and a random tiny
   :class:`~hf_ext.models.muffin.MuffinForConditionalGeneration` (BEiT-3 bridge, learned queries, Llama LLM) whose
   16-px patches tile the 3 x 3 grid of :mod:`hf_ext.benchmarks.grounded`'s images.
2. :func:`sft`: supervised fine-tuning on reference descriptions with TRL's ``SFTTrainer`` (prompt-completion data,
   loss on the completion only).
3. :func:`generate_responses`: responses of the SFT model to held-out prompts (sampled, as RLHF-V sampled Muffin).
4. :func:`build_preference_pairs`: hallucinated responses corrected segment by segment
   (:func:`~hf_ext.benchmarks.grounded.correct_response`), written in the RLHF-V parquet schema and read back with
   ``dataset_builders.rlhf_v.load_rlhf_v``; responses without hallucination give no pair (as in RLHF-V).
5. :func:`train_preference`: from the same SFT weights and the same pairs, TRL's ``DPOTrainer`` or hf_ext's
   ``DenseDPOTrainer`` (γ, normalisation) — each arm sees exactly the same pairs in the same order.
6. :func:`evaluate_responses`: greedy responses on a test set scored with CHAIR-i, CHAIR-s
   (:mod:`hf_ext.metrics.chair`, ``"shapes"`` table), recall of true objects and count / position error rates.

The sizes are tiny on purpose (2 CPU cores); the defaults of :class:`StudyConfig` are the reduced study, and
``benchmarks/hallucination_study.py`` exposes the full sizes (e.g. 1.4k pairs as in the paper) as flags.
"""

from __future__ import annotations

import copy
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from .grounded import (
    GroundedSample,
    GroundedTaskConfig,
    correct_response,
    find_hallucinations,
    generate_samples,
    parse_mentions,
    task_corpus,
    write_rlhf_v_parquet,
)

logger = logging.get_logger(__name__)

__all__ = [
    "ARMS",
    "Arm",
    "StudyConfig",
    "build_model",
    "build_preference_pairs",
    "build_tokenizer",
    "evaluate_responses",
    "format_table",
    "generate_responses",
    "load_pairs",
    "run_study",
    "sft",
    "summarize",
    "train_preference",
]


@dataclass(frozen=True)
class Arm:
    """One preference-training method: TRL DPO (``gamma=None``) or dense DPO with γ and normalisation."""

    name: str
    gamma: float | None = None
    normalize: bool = False


ARMS: dict[str, Arm] = {
    "dpo": Arm("dpo"),
    "ddpo_g1.1": Arm("ddpo_g1.1", 1.1, False),
    "ddpo_g1.1_norm": Arm("ddpo_g1.1_norm", 1.1, True),
    "ddpo_g5": Arm("ddpo_g5", 5.0, False),
    "ddpo_g5_norm": Arm("ddpo_g5_norm", 5.0, True),
}


@dataclass
class StudyConfig:
    """Sizes and hyper-parameters of the study (defaults: the reduced study, minutes on 2 CPU cores).

    Args:
        seeds (`Sequence[int]`): one full run (SFT, sampling, pairs, every arm) per seed.
        arms (`Sequence[str]`): preference methods among [`ARMS`].
        num_pairs (`int`): preference pairs given to every arm (the paper: 1.4k).
        image_size, max_groups: generator settings (see [`GroundedTaskConfig`]).
        hidden_size, num_layers, num_query: tiny Muffin sizes (BEiT-3 and LLM share width and depth).
        sft_samples, sft_epochs, sft_lr, sft_batch_size: supervised fine-tuning.
        pool_size: prompts sampled to find `num_pairs` hallucinated responses (more are drawn if needed, up to
            `max_pool_size`).
        sample_temperature: sampling temperature of the responses that become pairs.
        add_missing: also append the objects a corrected answer omits (not RLHF-V's protocol, which only corrects;
            removes the "shorter is better" signal that deletions carry).
        dpo_lr, dpo_epochs, dpo_batch_size, beta: preference training (identical for every arm).
        test_samples: held-out images for evaluation (greedy decoding).
        max_new_tokens: generation budget.
    """

    seeds: Sequence[int] = (0, 1, 2)
    arms: Sequence[str] = ("dpo", "ddpo_g1.1", "ddpo_g1.1_norm", "ddpo_g5", "ddpo_g5_norm")
    num_pairs: int = 200
    image_size: int = 48
    max_groups: int = 2
    hidden_size: int = 64
    num_layers: int = 2
    num_query: int = 9
    sft_samples: int = 4000
    sft_epochs: float = 2.0
    sft_lr: float = 1e-3
    sft_batch_size: int = 16
    pool_size: int = 400
    max_pool_size: int = 4000
    sample_temperature: float = 1.0
    add_missing: bool = False
    dpo_lr: float = 5e-4
    dpo_epochs: float = 2.0
    dpo_batch_size: int = 8
    beta: float = 0.1
    test_samples: int = 200
    max_new_tokens: int = 40
    generation_batch_size: int = 64
    progress: bool = False

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"arms: unknown {unknown}; choose among {sorted(ARMS)}.")
        for name in ("num_pairs", "sft_samples", "pool_size", "test_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")

    @property
    def task(self) -> GroundedTaskConfig:
        return GroundedTaskConfig(image_size=self.image_size, max_groups=self.max_groups)


# --------------------------------------------------------------------------------------------- model and data


def build_tokenizer(config: StudyConfig | None = None):
    """A byte-level BPE trained on the task text and Muffin's default system prompt, plus Muffin's image tokens."""
    from ..models.muffin import DEFAULT_SYSTEM_PROMPT
    from ..models.muffin.processing_muffin import MUFFIN_IMAGE_TOKENS
    from ..testing_utils import tiny_bpe_tokenizer

    # The system prompt is repeated so that BPE merges it into whole words (shorter sequences, faster training).
    chat = [DEFAULT_SYSTEM_PROMPT + "\n\n### Human: <image>\n", "\n### Assistant:", "\n###"] * 60
    return tiny_bpe_tokenizer(task_corpus(300) + chat, vocab_size=600, additional_special_tokens=MUFFIN_IMAGE_TOKENS)


def build_model(config: StudyConfig, tokenizer, seed: int = 0):
    """A random tiny Muffin and its processor: 16-px BEiT-3 patches (one per grid cell), `num_query` queries."""
    from ..models.muffin import (
        MuffinForConditionalGeneration,
        MuffinImageProcessor,
        MuffinProcessor,
        tiny_muffin_config,
    )

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
    # "muffin_v0": Muffin's training format with a prompt that is a prefix of prompt + completion, as TRL's
    # prompt-completion and preference datasets need (the model is trained here, so no released eval prompt applies)
    processor = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        num_query=nq,
        chat_template="muffin_v0",
    )
    return model, processor


def _prompt(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _quiet_args(config: StudyConfig) -> dict[str, Any]:
    return dict(
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        max_length=None,
    )


def sft(model, processor, samples: Sequence[GroundedSample], config: StudyConfig, output_dir: str, seed: int = 0):
    """Supervised fine-tuning on the reference descriptions with TRL's ``SFTTrainer`` (completion-only loss)."""
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
        num_train_epochs=config.sft_epochs,
        learning_rate=config.sft_lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        seed=seed,
        **_quiet_args(config),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer.train()
    return model.eval()


@torch.no_grad()
def generate_responses(
    model,
    processor,
    samples: Sequence[GroundedSample],
    do_sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Responses of ``model`` to each sample's image and question (text before Muffin's ``###`` stop marker).

    The prompt is the processor's default template with ``add_generation_prompt=True``: for a checkpoint converted
    from the original (RLHF-V, Muffin) that is the original evaluation prompt (``muffin_vqa``)."""
    from ..models.muffin.processing_muffin import extract_muffin_answer

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
            # as RLHF-V / Muffin's eval: cut at "###", drop a leading "Assistant:" (written after the original
            # evaluation prompt, which ends with "###")
            out.extend(extract_muffin_answer(t) for t in decoded)
    finally:
        tokenizer.padding_side = side
    return out


def evaluate_responses(responses: Sequence[str], samples: Sequence[GroundedSample]) -> dict[str, float]:
    """CHAIR-i / CHAIR-s / recall (``"shapes"`` table) plus count and position error rates per matched mention."""
    from ..metrics.chair import compute_chair

    scores = compute_chair(responses, [s.scene.categories for s in samples], synonyms="shapes")
    kinds: Counter = Counter()
    n_mentions = 0
    for r, s in zip(responses, samples):
        n_mentions += len(parse_mentions(r))
        kinds.update(h.kind for h in find_hallucinations(r, s.scene))
    return {
        "chair_i": scores["chair_i"],
        "chair_s": scores["chair_s"],
        "recall": scores["recall"],
        "count_err": kinds["count"] / n_mentions if n_mentions else 0.0,
        "position_err": kinds["position"] / n_mentions if n_mentions else 0.0,
        "any_err_rate": sum(bool(find_hallucinations(r, s.scene)) for r, s in zip(responses, samples))
        / max(1, len(samples)),
        "mentions_per_response": n_mentions / max(1, len(samples)),
    }


def build_preference_pairs(
    responses: Sequence[str],
    samples: Sequence[GroundedSample],
    parquet_path: str | os.PathLike,
    max_pairs: int | None = None,
    add_missing: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Correct every hallucinated response, write the pairs in the RLHF-V schema and read them back.

    Returns the TRL preference dataset (``prompt``/``chosen``/``rejected``/``images`` from
    ``dataset_builders.rlhf_v.load_rlhf_v`` plus ``chosen_segments``/``rejected_segments`` from the ``text`` JSON)
    and statistics (pairs, corrected segments per pair, correction types, words per response). With ``max_pairs``
    only the first ``max_pairs`` pairs are kept (and written).
    """
    records, kinds, n_segments, n_words, stats_extra = [], Counter(), 0, 0, 0
    for r, s in zip(responses, samples):
        corr = correct_response(r, s.scene, add_missing=add_missing)
        if not corr.hallucinations or not corr.changed:  # RLHF-V: only answers with a hallucination become pairs
            continue
        if max_pairs is not None and len(records) >= max_pairs:
            stats_extra += 1
            continue
        records.append({"idx": s.idx, "image": s.image, "question": s.question, "scene": s.scene, "correction": corr})
        kinds.update(h.kind for h in corr.hallucinations)
        n_segments += max(len(corr.rejected_segments), len(corr.chosen_segments))
        n_words += len(corr.chosen.split())
    stats = {
        "responses": len(responses),
        "pairs": len(records) + stats_extra,
        "pairs_used": len(records),
        "segments_per_pair": n_segments / max(1, len(records)),
        "words_per_chosen": n_words / max(1, len(records)),
        "correction_types": dict(kinds),
    }
    if not records:
        return None, stats
    write_rlhf_v_parquet(records, parquet_path)
    return load_pairs(parquet_path), stats


def load_pairs(parquet_path: str | os.PathLike, with_segments: bool = True):
    """Read RLHF-V-schema pairs with ``dataset_builders.rlhf_v.load_rlhf_v``, with (``with_segments``) the
    ``chosen_segments`` / ``rejected_segments`` columns that :func:`~hf_ext.benchmarks.grounded.write_rlhf_v_parquet`
    stores in the ``text`` JSON (``load_rlhf_v(..., with_segments=True)``; every row must have them). Without them
    ``DenseDPOTrainer`` falls back to the official token diff."""
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


def train_preference(sft_model, processor, data, arm: Arm, config: StudyConfig, output_dir: str, seed: int = 0):
    """Train a copy of ``sft_model`` on ``data`` with TRL's DPO (``arm.gamma is None``) or dense DPO."""
    from trl import DPOConfig, DPOTrainer

    from ..trainers.dense_dpo import DenseDPOConfig, DenseDPOTrainer

    policy = copy.deepcopy(sft_model).train()
    ref = copy.deepcopy(sft_model).eval()
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=config.dpo_batch_size,
        num_train_epochs=config.dpo_epochs,
        learning_rate=config.dpo_lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # the paper: "longer warm-up (10% of steps) makes training more stable"
        beta=config.beta,
        seed=seed,
        **_quiet_args(config),
    )
    if arm.gamma is None:
        # TRL's vision DPO ignores the segment columns; drop them so the collator sees only its own fields.
        data = data.remove_columns([c for c in ("chosen_segments", "rejected_segments") if c in data.column_names])
        trainer = DPOTrainer(
            model=policy, ref_model=ref, args=DPOConfig(**common), train_dataset=data, processing_class=processor
        )
    else:
        args = DenseDPOConfig(dense_gamma=arm.gamma, dense_normalize=arm.normalize, **common)
        trainer = DenseDPOTrainer(
            model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=processor
        )
    trainer.train()
    return policy.eval()


# ------------------------------------------------------------------------------------------------------ study


def run_study(
    config: StudyConfig, work_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every seed: SFT, sample, correct, then each arm from the same SFT weights and pairs; evaluate all.

    Returns ``{"config": ..., "runs": [{"seed", "method", metrics...}], "pairs": [per-seed pair statistics]}``.
    """
    log = log or logger.info
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="hallucination_study_"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config)
    runs, pair_stats = [], []
    for seed in config.seeds:
        t0 = time.perf_counter()
        random.seed(seed)
        base = 1_000_003 * (seed + 1)
        # disjoint generator seeds: SFT images, the prompt pool for pairs, the test images
        train = generate_samples(config.sft_samples, seed=base + 1, config=config.task)
        test = generate_samples(config.test_samples, seed=base + 3, config=config.task)
        model, processor = build_model(config, copy.deepcopy(tokenizer), seed=seed)
        model = sft(model, processor, train, config, str(work / f"seed{seed}" / "sft"), seed=seed)
        log(f"[seed {seed}] SFT done in {time.perf_counter() - t0:.0f}s")
        sft_resp = generate_responses(
            model, processor, test, max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size
        )
        runs.append({"seed": seed, "method": "sft", **evaluate_responses(sft_resp, test)})
        log(f"[seed {seed}] SFT: {_fmt(runs[-1])}")

        # sample responses on fresh prompts until there are enough hallucinated ones
        pool_size, data, stats = config.pool_size, None, {}
        while True:
            pool = generate_samples(pool_size, seed=base + 2, config=config.task)
            resp = generate_responses(
                model,
                processor,
                pool,
                do_sample=True,
                temperature=config.sample_temperature,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.generation_batch_size,
                seed=seed,
            )
            data, stats = build_preference_pairs(
                resp,
                pool,
                work / f"seed{seed}" / "pairs.parquet",
                max_pairs=config.num_pairs,
                add_missing=config.add_missing,
            )
            if stats["pairs"] >= config.num_pairs or pool_size >= config.max_pool_size:
                break
            rate = max(stats["pairs"], 1) / pool_size
            pool_size = min(config.max_pool_size, int(1.2 * config.num_pairs / rate) + 1)
        if data is None or stats["pairs"] < config.num_pairs:
            log(f"[seed {seed}] only {stats['pairs']} hallucinated responses in {pool_size} samples; using them all")
        if data is None:
            raise RuntimeError(f"seed {seed}: the SFT model produced no hallucinated response; nothing to train on.")
        pair_stats.append({"seed": seed, **stats})
        log(
            f"[seed {seed}] {len(data)} pairs, {stats['segments_per_pair']:.2f} segments/pair, {stats['correction_types']}"
        )

        for name in config.arms:
            t1 = time.perf_counter()
            policy = train_preference(
                model, processor, data, ARMS[name], config, str(work / f"seed{seed}" / name), seed
            )
            resp = generate_responses(
                policy, processor, test, max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size
            )
            runs.append({"seed": seed, "method": name, **evaluate_responses(resp, test)})
            log(f"[seed {seed}] {name} ({time.perf_counter() - t1:.0f}s): {_fmt(runs[-1])}")
            del policy
    return {"config": asdict(config), "runs": runs, "pairs": pair_stats}


def _fmt(run: dict[str, Any]) -> str:
    return ", ".join(f"{k}={run[k]:.3f}" for k in ("chair_i", "chair_s", "recall"))


METRICS = ("chair_i", "chair_s", "recall", "count_err", "position_err")


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


def format_table(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> str:
    """A Markdown table: mean ± std over seeds (×100), plus the relative change of CHAIR-i vs SFT."""
    rows = summarize(runs, metrics)
    base = next((r for r in rows if r["method"] == "sft"), None)
    head = "| method | seeds | " + " | ".join(metrics) + " | Δ chair_i vs SFT |"
    lines = [head, "|" + " --- |" * (len(metrics) + 3)]
    for r in rows:
        cells = [f"{100 * r[k]:.1f} ± {100 * r[k + '_std']:.1f}" for k in metrics]
        delta = ""
        if base is not None and r is not base and base["chair_i"] > 0:
            delta = f"{100 * (r['chair_i'] - base['chair_i']) / base['chair_i']:+.1f}%"
        lines.append(f"| {r['method']} | {r['n_seeds']} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``results`` as JSON, atomically."""
    from ..utils.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=2)
