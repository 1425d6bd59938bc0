"""CARE study: a small GPT-2 trained with and without the CARE attention regulariser, same data and budget.

Reports, side by side: Dist-n and Self-BLEU of generated continuations (greedy and nucleus sampling), held-out
perplexity, the mean attention entropy, and the step-time overhead of the regulariser against plain training with
SDPA (forward + backward + optimizer step, interleaved timing blocks on identical model copies). The naive way of
getting the probabilities (eager attention with ``output_attentions=True``) is timed as well, for reference.

Data: the Yahoo Answers files of He et al. (2019) as shipped with DELLA (one text per line). The directory is read in
place, never copied. Only ``yahoo.valid.txt`` / ``yahoo.test.txt`` exist here, so by default the model trains on the
validation file and is evaluated on the test file.

    .venv/bin/python benchmarks/care_study.py --data-dir /work/shared/data/yahoo            # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/care_study.py --data-dir /work/shared/data/yahoo --max-steps 50 --num-samples 20
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_ext.metrics.diversity import distinct_n, self_bleu
from hf_ext.testing import tiny_bpe_tokenizer
from hf_ext.trainers.care import CAREConfig, CARERegularizer, CARETrainer, enable_care_attention
from hf_ext.utils.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks._common`
from benchmarks._common import read_lines, study_training_kwargs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="Directory with the Yahoo text files (read only).")
    p.add_argument("--train-file", default="yahoo.valid.txt", help="Training file inside --data-dir.")
    p.add_argument("--eval-file", default="yahoo.test.txt", help="Held-out file inside --data-dir.")
    p.add_argument("--train-lines", type=int, default=4000, help="Number of training lines used.")
    p.add_argument("--eval-lines", type=int, default=500, help="Number of held-out lines for perplexity.")
    p.add_argument("--max-length", type=int, default=64, help="Tokens per training example (truncation).")
    p.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary trained on the training lines.")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=500, help="Optimizer steps per run (same for every run).")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--care-coef", type=float, default=0.1, help="λ of the CARE runs.")
    p.add_argument("--care-alpha", type=float, default=2.0, help="Rényi order of the Rényi CARE run.")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["baseline", "care-entropy", "care-renyi"],
        choices=["baseline", "care-entropy", "care-renyi"],
        help="Runs to compare.",
    )
    p.add_argument("--num-samples", type=int, default=200, help="Generated texts per decoding mode.")
    p.add_argument("--prompt-words", type=int, default=3, help="Prompt = first words of a held-out line.")
    p.add_argument("--gen-length", type=int, default=32, help="New tokens per generated text.")
    p.add_argument("--top-p", type=float, default=0.9, help="Nucleus sampling threshold.")
    p.add_argument("--timing-steps", type=int, default=30, help="Timed steps per method (after warm-up).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="Optional JSON file for the results.")
    args = p.parse_args(argv)
    for name in ("train_file", "eval_file"):
        path = args.data_dir / getattr(args, name)
        if not path.is_file():
            p.error(f"--{name.replace('_', '-')}: {path} does not exist (check --data-dir).")
    return args


def build_model(args, tokenizer) -> GPT2LMHeadModel:
    torch.manual_seed(args.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.max_length + args.gen_length + 16,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def training_arguments(cls, args, output_dir: Path, **extra):
    return cls(
        **study_training_kwargs(
            output_dir, args.max_steps, args.batch_size, args.learning_rate, args.seed, num_logs=10, **extra
        )
    )


@torch.no_grad()
def perplexity_and_entropy(model, tokenizer, texts: list[str], max_length: int) -> tuple[float, float]:
    model.eval()
    nll, tokens = 0.0, 0
    reg = CARERegularizer()
    entropies = []
    for i in range(0, len(texts), 32):
        batch = tokenizer(texts[i : i + 32], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        kwargs = {}
        if model.config._attn_implementation == "care":
            collector = reg.new_collector(model, attention_mask=batch["attention_mask"])
            kwargs["care_collector"] = collector
        out = model(**batch, **kwargs)
        shift_logits, shift_labels = out.logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="sum"
        )
        nll += loss.item()
        tokens += int((shift_labels != -100).sum())
        if kwargs:
            entropies.append(collector.finalize().attention_entropy.item())
    return math.exp(nll / tokens), statistics.fmean(entropies) if entropies else float("nan")


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], args, sample: bool) -> list[str]:
    model.eval()
    tokenizer.padding_side = "left"
    texts = []
    torch.manual_seed(args.seed)
    for i in range(0, len(prompts), 50):
        batch = tokenizer(prompts[i : i + 50], return_tensors="pt", padding=True)
        gen = model.generate(
            **batch,
            max_new_tokens=args.gen_length,
            do_sample=sample,
            top_p=args.top_p if sample else None,
            top_k=0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,  # fixed-length continuations: Dist/Self-BLEU compare like with like
        )
        texts.extend(tokenizer.decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return texts


def diversity(texts: list[str]) -> dict[str, float]:
    out = distinct_n(texts, n=(1, 2, 3))
    out["self-bleu-4"] = self_bleu(texts, max_order=4)
    return out


def time_steps(args, model, batch, steps: int) -> dict[str, float]:
    """Median seconds per training step (forward + backward + AdamW step), three methods, interleaved blocks."""
    plain = copy.deepcopy(model)
    plain.set_attn_implementation("sdpa")
    care = enable_care_attention(copy.deepcopy(model))
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    reg = CARERegularizer()

    def step_plain(m):
        return m(**batch).loss

    def step_care(m):
        collector = reg.new_collector(m, attention_mask=batch["attention_mask"])
        loss = m(**batch, care_collector=collector).loss
        return loss + args.care_coef * collector.finalize().penalty

    def step_eager(m):  # the naive route: eager attention + output_attentions, entropy from the returned tensors
        out = m(**batch, output_attentions=True)
        valid = batch["attention_mask"].bool()[:, None, :].float()
        ent = [
            (-(a * torch.log(a.clamp_min(1e-30))).sum(-1) * valid).sum() / (valid.sum() * a.shape[1])
            for a in out.attentions
        ]
        return out.loss + args.care_coef * torch.stack(ent).mean()

    methods = {"sdpa": (plain, step_plain), "care": (care, step_care), "eager+output_attentions": (eager, step_eager)}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in methods.items()}
    times: dict[str, list[float]] = {k: [] for k in methods}
    block = 5
    for rnd in range(1 + math.ceil(steps / block)):
        for name, (m, fn) in methods.items():
            m.train()
            for _ in range(block):
                t0 = time.perf_counter()
                loss = fn(m)
                loss.backward()
                optims[name].step()
                optims[name].zero_grad(set_to_none=True)
                if rnd > 0:  # the first round is warm-up
                    times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_texts = read_lines(args.data_dir / args.train_file, args.train_lines)
    eval_texts = read_lines(args.data_dir / args.eval_file, args.eval_lines + args.num_samples)
    ppl_texts, prompt_source = eval_texts[: args.eval_lines], eval_texts[args.eval_lines :]
    prompts = [" ".join(t.split()[: args.prompt_words]) for t in prompt_source][: args.num_samples]

    tokenizer = tiny_bpe_tokenizer(train_texts, vocab_size=args.vocab_size)
    train_ds = Dataset.from_dict({"text": train_texts}).map(
        lambda ex: tokenizer(ex["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    work = Path("/tmp/care_study")

    results: dict[str, dict] = {}
    for variant in args.variants:
        model = build_model(args, tokenizer)
        t0 = time.perf_counter()
        if variant == "baseline":
            trainer = Trainer(
                model=model,
                args=training_arguments(TrainingArguments, args, work / variant),
                train_dataset=train_ds,
                data_collator=collator,
            )
        else:
            care = {"care_coef": args.care_coef}
            if variant == "care-renyi":
                care.update(care_penalty="renyi", care_alpha=args.care_alpha)
            trainer = CARETrainer(
                model,
                training_arguments(CAREConfig, args, work / variant, **care),
                train_dataset=train_ds,
                data_collator=collator,
            )
        trainer.train()
        train_seconds = time.perf_counter() - t0
        enable_care_attention(model)  # inference stays SDPA; lets the evaluation read the attention entropy
        ppl, entropy = perplexity_and_entropy(model, tokenizer, ppl_texts, args.max_length)
        row = {"perplexity": ppl, "attention_entropy": entropy, "train_seconds": train_seconds}
        for mode, sample in (("greedy", False), ("nucleus", True)):
            texts = generate_texts(model, tokenizer, prompts, args, sample)
            row.update({f"{mode}/{k}": v for k, v in diversity(texts).items()})
            row[f"{mode}/example"] = f"{prompts[0]} | {texts[0]}"
        results[variant] = row
        print(f"[{variant}] done in {train_seconds:.0f}s: ppl {ppl:.2f}, attention entropy {entropy:.3f}", flush=True)

    # step-time overhead, on a fresh model and one fixed batch
    batch = collator([train_ds[i] for i in range(args.batch_size)])
    timing = time_steps(args, build_model(args, tokenizer), batch, args.timing_steps)

    cols = list(results)
    keys = ["perplexity", "attention_entropy"] + [
        f"{mode}/{k}" for mode in ("greedy", "nucleus") for k in ("dist-1", "dist-2", "dist-3", "self-bleu-4")
    ]
    print(
        f"\nCARE study: GPT-2 {args.n_layer}L/{args.n_embd}d/{args.n_head}h, {args.max_steps} steps x "
        f"{args.batch_size}, {len(train_texts)} train lines ({args.train_file}), max_length {args.max_length}, "
        f"λ={args.care_coef}, Rényi α={args.care_alpha}; ppl on {len(ppl_texts)} lines of {args.eval_file}; "
        f"{len(prompts)} prompts x {args.gen_length} new tokens"
    )
    print(f"| metric | {' | '.join(cols)} |")
    print(f"|---|{'---|' * len(cols)}")
    for k in keys:
        print(f"| {k} | {' | '.join(f'{results[c][k]:.4f}' for c in cols)} |")
    base = timing["sdpa"]
    print(f"\nstep time (median of {args.timing_steps}, batch {args.batch_size}x{batch['input_ids'].shape[1]}):")
    for k, v in timing.items():
        print(f"  {k:<24} {v * 1000:8.1f} ms   {v / base:5.2f}x sdpa")
    for c in cols:
        print(f"  example [{c}] {results[c]['greedy/example']!r}")

    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "step_seconds": timing}
    if args.output is not None:
        with atomic_write(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
