"""`make demo`: the RLHF-V study in miniature, end to end on the CPU, offline, in a few minutes.

Stages (one function each, so the model or the study can be swapped without touching the rest):

1. :func:`write_sample_data`: the grounded shapes task (:mod:`hf_ext.benchmarks.grounded`): images drawn with PIL
   whose objects are known exactly, questions and reference descriptions;
2. :func:`build_tiny_vlm` + SFT: a tiny hf_ext Muffin built from a config, fine-tuned on the references with TRL's
   ``SFTTrainer``, saved as the initial checkpoint;
3. preference data in RLHF-V's form: the SFT model's sampled responses, hallucinated segments corrected from the
   truth, written as RLHF-V-schema parquet and read back with ``dataset_builders.rlhf_v.load_rlhf_v``;
4. :func:`run_training`: dense DPO through ``accelerate launch`` (a subprocess running :func:`train_main`), with the
   Trainer's progress bar, saving a checkpoint and its model card; TRL's DPO on the same pairs for comparison;
5. :func:`evaluate_checkpoint`: reload the checkpoint with the Auto classes and measure the DPO loss and reward
   margins of the initial and the trained model on the pairs;
6. :func:`summarize`: CHAIR-i / CHAIR-s / recall of SFT, DPO and dense DPO on held-out images.

Run ``python -m hf_ext.demo [--output_dir DIR]``; ``benchmarks/hallucination_study.py`` (``make study``) is the
same pipeline at larger size, over several seeds and every γ / normalisation arm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "DEMO_CONFIG",
    "TINY_CHAT_TEMPLATE",
    "build_tiny_llava",
    "build_tiny_vlm",
    "evaluate_checkpoint",
    "main",
    "run_training",
    "summarize",
    "train_main",
    "write_sample_data",
]

# A minimal chat template that renders TRL's structured messages (image blocks → "<image>").
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}<image>\n{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(image_size: int = 32, patch_size: int = 16, hidden_size: int = 32, seed: int = 0):
    """A random tiny ``LlavaForConditionalGeneration`` and a matching ``LlavaProcessor``, built offline.

    Tokenizer: :func:`hf_ext.testing_utils.tiny_bpe_tokenizer` with an ``<image>`` token; image processor:
    ``CLIPImageProcessorPil`` (no torchvision). The image becomes ``(image_size / patch_size) ** 2`` tokens.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from dataset_builders.rlhf_v.fixtures import COLORS, NUMBERS, POSITIONS, QUESTIONS, SHAPES
    from hf_ext.testing_utils import DEFAULT_CORPUS, tiny_bpe_tokenizer

    words = " ".join([*COLORS, *SHAPES, *(s + "s" for s in SHAPES), *POSITIONS, *NUMBERS.values(), *QUESTIONS])
    tokenizer = tiny_bpe_tokenizer(
        texts=[DEFAULT_CORPUS, words, "USER: ASSISTANT: there is are on the of the image background white"] * 4,
        vocab_size=320,
        additional_special_tokens=["<image>"],
        chat_template=TINY_CHAT_TEMPLATE,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=TINY_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return model, processor


def _demo_config(**overrides):
    from hf_ext.benchmarks.hallucination import StudyConfig

    kw = dict(DEMO_CONFIG)
    kw.update(overrides)
    return StudyConfig(**kw)


# The reduced study: one seed, TRL DPO vs dense DPO (the paper's γ = 5); ~55 s of CPU time in all (measured).
DEMO_CONFIG: dict = dict(
    seeds=(0,),
    arms=("dpo", "ddpo_g5"),
    num_pairs=150,
    sft_samples=3000,
    sft_epochs=2.0,
    pool_size=300,
    test_samples=100,
    dpo_epochs=2.0,
    max_new_tokens=36,
)


def build_tiny_vlm(seed: int = 0):
    """The demo's model and processor: a random tiny hf_ext Muffin (BEiT-3 bridge, 9 queries, Llama LLM) whose
    processor and tokenizer fit the grounded shapes task (swap this function to demo another VLM)."""
    from hf_ext.benchmarks.hallucination import build_model, build_tokenizer

    config = _demo_config()
    return build_model(config, build_tokenizer(config), seed=seed)


def write_sample_data(output_dir: str | Path, seed: int = 0) -> dict:
    """The grounded shapes task in memory: SFT images, a prompt pool for preference data and held-out test images.

    ``output_dir`` is where stage 3 writes the preference pairs (``data/rlhf_v_pairs.parquet``, RLHF-V schema).
    """
    from hf_ext.benchmarks.grounded import generate_samples

    config = _demo_config()
    base = 1_000_003 * (seed + 1)
    return {
        "train": generate_samples(config.sft_samples, seed=base + 1, config=config.task),
        "pool": generate_samples(config.pool_size, seed=base + 2, config=config.task),
        "test": generate_samples(config.test_samples, seed=base + 3, config=config.task),
    }


def train_main(argv: list[str] | None = None) -> None:
    """Training entry point run by ``accelerate launch`` (see :func:`run_training`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--init_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--steps", type=int, default=-1, help="max steps (-1: --epochs epochs)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--gamma", type=float, default=5.0)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hf_ext import DenseDPOConfig, DenseDPOTrainer
    from hf_ext.benchmarks.hallucination import load_pairs

    model = AutoModelForImageTextToText.from_pretrained(args.init_dir)
    processor = AutoProcessor.from_pretrained(args.init_dir)
    # RLHF-V-schema parquet read by `load_rlhf_v`, plus the corrected character spans kept in the `text` JSON
    dataset = load_pairs(args.data)
    config = DenseDPOConfig(
        output_dir=args.output_dir,
        dense_gamma=args.gamma,  # 5.0: the paper's γ (the current official recipe is 1.1)
        beta=0.1,
        learning_rate=args.learning_rate,  # a tiny model trained from scratch needs a large rate
        max_steps=args.steps,
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        per_device_train_batch_size=args.batch_size,
        max_length=None,  # never cut image tokens
        precompute_ref_log_probs=True,  # reference log-probs computed once (per token), reference model freed
        ref_logps_cache_dir=str(Path(args.output_dir).parent / "ref_logps_cache"),
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = DenseDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    trainer.create_model_card(model_name=Path(args.output_dir).name)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    Path(args.output_dir, "train_log.json").write_text(json.dumps(logs, indent=1))


def run_training(data: Path, init_dir: Path, output_dir: Path, steps: int = -1, extra_args: list[str] = ()) -> None:
    """Run :func:`train_main` under ``accelerate launch`` (one CPU process) and stream its output."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",  # tiny model: see the note in `main`
        "-m",
        "hf_ext.demo",
        "train",
        "--data",
        str(data),
        "--init_dir",
        str(init_dir),
        "--output_dir",
        str(output_dir),
        "--steps",
        str(steps),
        *extra_args,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    subprocess.run(cmd, check=True, env=env)


def evaluate_checkpoint(
    model_dir: str | Path, ref_dir: str | Path, data: Path, gamma: float = 5.0
) -> dict[str, float]:
    """Dense-DPO loss, reward margin and accuracy of ``model_dir`` against ``ref_dir`` on ``data`` (no training)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dataset_builders.rlhf_v import load_rlhf_v
    from hf_ext import DenseDPOConfig, DenseDPOTrainer

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    ref_model = AutoModelForImageTextToText.from_pretrained(ref_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = load_rlhf_v(data)
    with tempfile.TemporaryDirectory() as tmp:
        config = DenseDPOConfig(
            output_dir=tmp,
            dense_gamma=gamma,
            beta=0.1,
            per_device_eval_batch_size=8,
            max_length=None,
            bf16=False,
            use_cpu=True,
            report_to="none",
            gradient_checkpointing=False,
        )
        trainer = DenseDPOTrainer(
            model=model, ref_model=ref_model, args=config, train_dataset=dataset, processing_class=processor
        )
        with torch.no_grad():
            metrics = trainer.evaluate(eval_dataset=dataset)
    return {
        "loss": metrics["eval_loss"],
        "reward_margin": metrics["eval_rewards/margins"],
        "reward_accuracy": metrics["eval_rewards/accuracies"],
        "weighted_token_fraction": metrics["eval_dense/weighted_token_fraction"],
    }


def summarize(
    rows: dict[str, dict[str, float]],
    pair_stats: dict,
    before: dict[str, float],
    after: dict[str, float],
    output_dir: Path,
    seconds: float,
) -> str:
    """The before/after table: hallucination of SFT, DPO and dense DPO on held-out images, and the reward margins."""
    metrics = ("chair_i", "chair_s", "recall", "count_err", "position_err")
    width = max(len(k) for k in rows) + 2
    sft_ci = rows["SFT (before)"]["chair_i"]
    lines = [
        "",
        "RLHF-V in miniature (tiny Muffin, grounded shapes task, CPU): hallucination on held-out images, ×100",
        f"{'model':<{width}}" + "".join(f"{m:>14}" for m in metrics) + f"{'Δ chair_i':>12}",
    ]
    for name, r in rows.items():
        delta = "" if name.startswith("SFT") or not sft_ci else f"{100 * (r['chair_i'] - sft_ci) / sft_ci:+.1f}%"
        lines.append(f"{name:<{width}}" + "".join(f"{100 * r[m]:>14.1f}" for m in metrics) + f"{delta:>12}")
    lines += [
        f"preference pairs: {pair_stats['pairs_used']} corrected responses (of {pair_stats['responses']} sampled), "
        f"{pair_stats['segments_per_pair']:.2f} corrected segments per pair, types {pair_stats['correction_types']}",
        f"dense-DPO checkpoint vs SFT on the pairs: reward margin {before['reward_margin']:.4f} -> "
        f"{after['reward_margin']:.4f}, accuracy {before['reward_accuracy']:.2f} -> {after['reward_accuracy']:.2f}",
        f"checkpoint: {output_dir / 'checkpoint'} (model card: README.md)",
        f"total time: {seconds:.1f} s. One seed at demo size: `make study` runs every arm over 3 seeds.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=None, help="where to write data and checkpoints (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=-1, help="preference-training steps (-1: the configured epochs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hf_ext.benchmarks.hallucination import (
        ARMS,
        build_preference_pairs,
        evaluate_responses,
        generate_responses,
        sft,
        train_preference,
    )

    datasets.disable_progress_bars()
    # The models are tiny: one thread is as fast as two on an idle machine and much faster on a busy one (idle
    # OpenMP threads spin-wait and steal the cores other processes need).
    torch.set_num_threads(1)
    start = time.time()
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="hf_ext_demo_"))
    config = _demo_config(progress=True)
    gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)

    print("[1/6] grounded shapes task: images with known objects, questions, reference descriptions", flush=True)
    data = write_sample_data(output_dir, seed=args.seed)
    print(f"[2/6] tiny Muffin from a config, SFT on {len(data['train'])} references (TRL SFTTrainer)", flush=True)
    model, processor = build_tiny_vlm(seed=args.seed)
    model = sft(model, processor, data["train"], config, str(output_dir / "sft_run"), seed=args.seed)
    init_dir = output_dir / "init"
    model.save_pretrained(init_dir)
    processor.save_pretrained(init_dir)

    print("[3/6] preference data in RLHF-V's form: sampled responses, hallucinated segments corrected", flush=True)
    responses = generate_responses(
        model, processor, data["pool"], do_sample=True, temperature=config.sample_temperature, seed=args.seed, **gen
    )
    parquet = output_dir / "data" / "rlhf_v_pairs.parquet"
    pairs, stats = build_preference_pairs(responses, data["pool"], parquet, max_pairs=config.num_pairs)
    if pairs is None:
        raise RuntimeError("The SFT model produced no hallucinated response: nothing to correct.")
    print(f"      {stats['pairs_used']} pairs written to {parquet} (RLHF-V schema)", flush=True)

    print("[4/6] dense DPO (γ = 5) through `accelerate launch`; TRL DPO on the same pairs", flush=True)
    checkpoint = output_dir / "checkpoint"
    extra = ["--gamma", "5.0", "--learning_rate", str(config.dpo_lr), "--epochs", str(config.dpo_epochs)]
    extra += ["--batch_size", str(config.dpo_batch_size), "--seed", str(args.seed)]
    run_training(parquet, init_dir, checkpoint, args.steps, extra)
    dpo_config = config
    if args.steps > 0:
        import dataclasses

        dpo_config = dataclasses.replace(config, dpo_epochs=args.steps * config.dpo_batch_size / len(pairs))
    dpo_model = train_preference(model, processor, pairs, ARMS["dpo"], dpo_config, str(output_dir / "dpo_run"))

    print("[5/6] reloading the checkpoint with AutoModelForImageTextToText / AutoProcessor", flush=True)
    ddpo_model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    ddpo_processor = AutoProcessor.from_pretrained(checkpoint)
    before = evaluate_checkpoint(init_dir, init_dir, parquet)
    after = evaluate_checkpoint(checkpoint, init_dir, parquet)
    card = (checkpoint / "README.md").read_text()
    if "2312.00849" not in card:
        raise RuntimeError("the model card does not cite RLHF-V")

    print(f"[6/6] hallucination on {len(data['test'])} held-out images (greedy decoding)", flush=True)
    rows = {}
    for name, (m, p) in {
        "SFT (before)": (model, processor),
        "DPO (TRL)": (dpo_model, processor),
        "dense DPO γ=5": (ddpo_model, ddpo_processor),
    }.items():
        rows[name] = evaluate_responses(generate_responses(m, p, data["test"], **gen), data["test"])
    print(summarize(rows, stats, before, after, output_dir, time.time() - start))


if __name__ == "__main__":
    main()
