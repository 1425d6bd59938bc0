"""Text-VAE study on Yahoo: GPT-2 LM vs a plain GPT-2 VAE vs DELLA vs TRACE (small models, CPU).

Trains each model from scratch (GPT-2 weights cannot be downloaded here) on the first lines of a plain-text file,
evaluates on another, and prints one table: IW-PPL, KL, MI, AU, Dist-2 and Self-BLEU (samples from the prior, the same
top-k sampling for every model), plus two speed ratios measured in the same run:

* TRACE training step, parallel (idempotent prefix sum) vs exact sequential recurrence;
* DELLA training step vs the plain GPT-2 language model's.

Reduced configuration by default (fits a shared 2-core CPU); ``--full`` selects the larger one::

    python benchmarks/text_vae_study.py --train-file ../shared/data/yahoo/yahoo.valid.txt \
        --test-file ../shared/data/yahoo/yahoo.test.txt [--full] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_ext.metrics.diversity import distinct_n, self_bleu
from hf_ext.metrics.text_vae import evaluate_text_vae
from hf_ext.models.della import DellaConfig, DellaForCausalLM
from hf_ext.models.trace import TraceConfig, TraceForCausalLM
from hf_ext.testing import tiny_bpe_tokenizer
from hf_ext.trainers.text_vae import DataCollatorForTextVAE, TextVAEConfig, TextVAETrainer
from hf_ext.utils.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks._common`
from benchmarks._common import read_lines, study_training_kwargs  # noqa: E402

REDUCED = dict(
    train_lines=2000,
    test_lines=200,
    vocab_size=2000,
    max_length=40,
    n_layer=4,
    n_embd=64,
    n_head=2,
    latent_size=16,
    steps=250,
    batch_size=16,
    iw_samples=5,
    gen_samples=100,
    gen_length=30,
    timing_steps=6,
)
FULL = dict(
    train_lines=10000,
    test_lines=1000,
    vocab_size=8000,
    max_length=64,
    n_layer=6,
    n_embd=256,
    n_head=4,
    latent_size=32,
    steps=3000,
    batch_size=32,
    iw_samples=30,
    gen_samples=1000,
    gen_length=50,
    timing_steps=20,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-file", required=True, help="plain text, one example per line (Yahoo: yahoo.valid.txt)")
    p.add_argument("--test-file", required=True, help="plain text, one example per line (Yahoo: yahoo.test.txt)")
    p.add_argument("--full", action="store_true", help="the full configuration (hours on a CPU)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--num-cycles", type=int, default=2, help="cyclical-beta cycles over training (VAEs)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (all models)")
    p.add_argument("--della-official", action="store_true", help="also train DELLA with the official code's flags")
    for key, value in REDUCED.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"override (reduced: {value})")
    return p.parse_args()


def build_models(cfg: dict, vocab: int, seps: list[int], bos: int, pad: int, della_official: bool = False) -> dict:
    common = dict(
        vocab_size=vocab,
        n_positions=cfg["max_length"] + cfg["gen_length"] + 2,
        n_embd=cfg["n_embd"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        bos_token_id=bos,
        eos_token_id=bos,
        pad_token_id=pad,
    )
    p, nl = cfg["latent_size"], cfg["n_layer"]
    torch.manual_seed(0)
    models = {
        "GPT-2 LM": GPT2LMHeadModel(GPT2Config(**common)),
        # one latent (same total size as DELLA's stack), from the top layer, added to the embeddings (Optimus "Embed")
        "GPT-2 VAE": DellaForCausalLM(
            DellaConfig(**common, latent_size=p * nl, latent_layers=[nl - 1], latent_injection="embedding")
        ),
        "DELLA": DellaForCausalLM(DellaConfig(**common, latent_size=p)),
        "TRACE": TraceForCausalLM(
            TraceConfig(
                **common,
                latent_size=p,
                separator_token_ids=seps or None,
                segmentation="separator" if seps else "fixed",
                segment_length=8,
                max_segments=cfg["max_length"] + cfg["gen_length"],
            )
        ),
    }
    if della_official:
        # the official code's behaviour, every flag (DellaConfig.from_original_defaults): V replaced by the summed-factor
        # fusion, KL averaged over layers, pads pooled, learned p(z_1), ...; trained with the original's beta rule
        models["DELLA (official mode)"] = DellaForCausalLM(DellaConfig.from_original_defaults(**common, latent_size=p))
    return models


def time_steps(models_and_modes, batch, steps: int) -> dict[str, float]:
    """Median seconds per training step (forward + backward + AdamW), runs interleaved to share the CPU's noise."""
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in models_and_modes.items()}
    times = {name: [] for name in models_and_modes}
    for i in range(steps + 1):
        for name, (model, kwargs) in models_and_modes.items():
            model.train()
            t0 = time.perf_counter()
            loss = model(**batch, **kwargs).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad()
            if i > 0:  # the first step warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _fmt(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.2f}" if key in metrics else "–"


def main() -> None:
    args = parse_args()
    cfg = dict(FULL if args.full else REDUCED)
    for key in REDUCED:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    train_text = read_lines(args.train_file, cfg["train_lines"])
    test_text = read_lines(args.test_file, cfg["test_lines"])
    tok = tiny_bpe_tokenizer(train_text, vocab_size=cfg["vocab_size"])
    bos, pad = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<pad>")
    seps = [
        i
        for i in (tok.convert_tokens_to_ids(t) for t in ("Ġ.", "Ġ?", "Ġ!"))
        if i is not None and i != tok.unk_token_id
    ]

    def encode(lines):
        return [{"input_ids": [bos, *tok(line)["input_ids"][: cfg["max_length"] - 2], bos]} for line in lines]

    train_ds, test_ds = encode(train_text), encode(test_text)
    collator = DataCollatorForTextVAE(pad_token_id=pad)
    models = build_models(cfg, len(tok), seps, bos, pad, della_official=args.della_official)
    results: dict[str, dict] = {}
    for name, model in models.items():
        t0 = time.time()
        # TrainingArguments' own schedule (linear decay, no weight decay) for every model
        common = study_training_kwargs(
            f"/tmp/text_vae_study/{name.replace(' ', '_')}",
            cfg["steps"],
            cfg["batch_size"],
            args.lr,
            args.seed,
            num_logs=5,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            data_seed=None,
        )
        if isinstance(model, GPT2LMHeadModel):
            trainer = Trainer(
                model=model, args=TrainingArguments(**common), train_dataset=train_ds, data_collator=collator
            )
        else:
            official = getattr(model.config, "lmf_form", "") == "summed_factors"
            schedule = dict(beta_schedule="della_original") if official else dict(num_cycles=args.num_cycles)
            trainer = TextVAETrainer(
                model=model,
                args=TextVAEConfig(**common, **schedule),
                train_dataset=train_ds,
                data_collator=collator,
            )
        trainer.train()
        train_s = time.time() - t0
        model.eval()
        loader = DataLoader(test_ds, batch_size=cfg["batch_size"], collate_fn=collator)
        # DELLA models: both metric conventions (textbook, and the official code's = the DELLA paper's tables)
        convention = "both" if getattr(model.config, "model_type", "") == "della" else "textbook"
        metrics = evaluate_text_vae(model, loader, num_importance_samples=cfg["iw_samples"], convention=convention)
        prompt = torch.full((cfg["gen_samples"], 1), bos)
        gen_kw = dict(max_new_tokens=cfg["gen_length"], do_sample=True, top_k=50, pad_token_id=pad, eos_token_id=bos)
        torch.manual_seed(args.seed)
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **gen_kw)
        texts = [t.strip() for t in tok.batch_decode(out[:, 1:], skip_special_tokens=True)]
        texts = [t for t in texts if t] or ["<empty>", "<empty>"]
        metrics["dist-2"] = distinct_n(texts, n=2)["dist-2"]
        metrics["self-bleu"] = self_bleu(texts)
        metrics["train_seconds"] = train_s
        metrics["sample"] = texts[0][:200]
        results[name] = metrics
        print(
            f"[{time.time() - t_start:7.1f}s] {name}: "
            + json.dumps({k: v for k, v in metrics.items() if k != "sample"})
        )

    # speed ratios on one fixed batch, interleaved
    batch = collator(train_ds[: cfg["batch_size"]])
    trace_t = time_steps(
        {
            "parallel": (models["TRACE"], {"training_mode": "parallel"}),
            "sequential": (models["TRACE"], {"training_mode": "sequential"}),
        },
        batch,
        cfg["timing_steps"],
    )
    della_t = time_steps(
        {"DELLA": (models["DELLA"], {}), "GPT-2 LM": (models["GPT-2 LM"], {})}, batch, cfg["timing_steps"]
    )
    n_seg = int(
        models["TRACE"].transformer.segment_features(batch["input_ids"], batch["attention_mask"])[1].sum(1).max()
    )
    speed = {
        "trace_parallel_s": trace_t["parallel"],
        "trace_sequential_s": trace_t["sequential"],
        "trace_sequential_over_parallel": trace_t["sequential"] / trace_t["parallel"],
        "trace_max_segments_in_batch": n_seg,
        "della_step_s": della_t["DELLA"],
        "lm_step_s": della_t["GPT-2 LM"],
        "della_over_lm": della_t["DELLA"] / della_t["GPT-2 LM"],
    }

    print("\n| model | PPL | KL | MI | AU | Dist-2 | Self-BLEU | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in results.items():
        au = f"{m['au']}/{m['latent_dims']}" if "au" in m else "–"
        print(
            f"| {name} | {m['ppl']:.2f} | {_fmt(m, 'kl')} | {_fmt(m, 'mi')} | {au} | {m['dist-2']:.3f} | "
            f"{m['self-bleu']:.3f} | {m['train_seconds']:.0f} |"
        )
    print("\nThe same DELLA models under the official code's estimators (what the DELLA paper's tables report):")
    print("| model | PPL (official) | NLL | KL | ELBO | AU (>=, unclamped) |")
    print("|---|---|---|---|---|---|")
    for name, m in results.items():
        if "della_official_ppl" in m:
            o = {k[len("della_official_") :]: v for k, v in m.items() if k.startswith("della_official_")}
            print(
                f"| {name} | {o['ppl']:.2f} | {o['nll']:.2f} | {o['kl']:.2f} | {o['elbo']:.2f} | "
                f"{o['au']}/{o['latent_dims']} |"
            )
    print(
        f"\nTRACE step: sequential {speed['trace_sequential_s'] * 1e3:.1f} ms, parallel "
        f"{speed['trace_parallel_s'] * 1e3:.1f} ms -> sequential/parallel = {speed['trace_sequential_over_parallel']:.2f}x "
        f"(up to {n_seg} segments per text)"
    )
    print(
        f"DELLA step {speed['della_step_s'] * 1e3:.1f} ms vs GPT-2 LM {speed['lm_step_s'] * 1e3:.1f} ms -> "
        f"DELLA/LM = {speed['della_over_lm']:.2f}x"
    )
    print(
        f"num_cycles {args.num_cycles}, lr {args.lr}; config: {json.dumps(cfg)}; total {time.time() - t_start:.0f}s; torch threads {torch.get_num_threads()}"
    )
    if args.output:
        with atomic_write(args.output, "w") as f:
            json.dump({"config": cfg, "results": results, "speed": speed}, f, indent=2)


if __name__ == "__main__":
    main()
