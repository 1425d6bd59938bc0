"""DenseDPOTrainer vs TRL's DPOTrainer: step time, MFU and peak memory, same model, data and batch, one run.

Comparisons, each printed as a ratio (DenseDPO / TRL) next to its physical bound and its target:

* **text**: GPT-2, both with a live reference model; Dense DPO adds the token diff (collator) and the log-prob
  scaling hook. Targets: step time ≤ 1.05, peak memory ≤ 1.05 (bound 1.0: same work).
* **vision**: Llava (CLIP + Llama) on RLHF-V-format data; Dense DPO with precomputed per-token reference log-probs
  (no reference model in memory, no reference forward) vs TRL with a live reference model (TRL cannot precompute for
  vision data). With fp32 AdamW full fine-tuning the policy costs 16 bytes per parameter (weights, gradients, two
  moments) and a live reference 4 more, so the memory bound is 16/20 = **0.8**; the reference forward is about a
  third of the policy's forward + backward, so the time bound is 3/4 = **0.75** (the optimizer step and the
  collator are extra work on both sides, so a real ratio sits a little above). Targets: time ≤ 0.78, memory ≤ 0.85.
* **vision-lora**: the same with a LoRA adapter: TRL's reference is then the base model with the adapter disabled
  (no copy), so precomputation saves the reference forward (time bound 0.75) but almost no memory (bound ≈ 1.0;
  what is left is the reference forward's transient activations).

`--size small` (default): tiny models (hidden 128), batch 8, a minute or two on 2 CPU cores.
`--size base`: GPT-2 of ≈ 100M parameters and a Llava of ≈ 120M (CLIP 4 layers at 224 px + Llama 12 layers,
hidden 768), batch 1 (the released RLHF-V recipe's per-device batch), a few steps; several minutes on a CPU.

A "step" is collate + forward + backward + optimizer step on one batch. Times: the two trainers alternate step by step
in one process and the median over the measured steps is compared. MFU = the step's FLOPs (counted once per variant
with `torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions, attention) / step time / the machine's fp32
matmul peak, measured in the same process (a large `torch.mm`). Memory: each variant runs in its own subprocess; on
CUDA the peak allocated memory, on CPU the growth of the peak RSS over the RSS before the models are built (models,
optimizer states and activations of the training steps, measured after warm-up with the peak reset through
`/proc/self/clear_refs`; the Python/torch baseline is left out of both).

    python benchmarks/dense_dpo_vs_trl.py [--size small|base] [--steps N] [--batch N] [--only text|vision|vision-lora]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {
    "small": {
        "hidden": 128,
        "text_layers": 4,
        "vision_layers": 1,
        "llm_layers": 2,
        "image_size": 64,
        "patch_size": 16,
        "batch": 8,
        "steps": 20,
        "warmup": 3,
    },
    "base": {
        "hidden": 768,
        "text_layers": 12,
        "vision_layers": 4,
        "llm_layers": 12,
        "image_size": 224,
        "patch_size": 32,
        "batch": 1,
        "steps": 4,
        "warmup": 1,
    },
}

# task -> (dense variant, TRL variant, time bound, time target, memory bound, memory target)
COMPARISONS = {
    "text": ("dense", "trl", 1.0, 1.05, 1.0, 1.05),
    "vision": ("dense_precomputed", "trl", 0.75, 0.78, 0.8, 0.85),
    "vision-lora": ("dense_precomputed_lora", "trl_lora", 0.75, None, 1.0, None),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(task: str, args):
    """Model, processing class and dataset for `task` ("text", "vision" or "vision-lora")."""
    import torch

    from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet

    data_dir = tempfile.mkdtemp(prefix="bench_")
    n_rows = max(4 * args.batch, 8)
    parquet = write_rlhf_v_parquet(
        make_rlhf_v_rows(n=n_rows, image_size=args.image_size), os.path.join(data_dir, "d.parquet")
    )
    vision = load_rlhf_v(parquet)
    h = args.hidden
    if task == "text":
        from datasets import Dataset
        from transformers import GPT2Config, GPT2LMHeadModel

        from hf_ext.testing import tiny_bpe_tokenizer

        tok = tiny_bpe_tokenizer()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_positions=256,
                n_embd=h,
                n_layer=args.text_layers,
                n_head=max(4, h // 64),
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
        rows = {
            "prompt": [r["prompt"][0]["content"] + " " for r in vision],
            "chosen": [r["chosen"][0]["content"] for r in vision],
            "rejected": [r["rejected"][0]["content"] for r in vision],
        }
        return model, tok, Dataset.from_dict(rows)

    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from hf_ext.testing import tiny_llava

    tiny, processor = tiny_llava(image_size=args.image_size, patch_size=args.patch_size, hidden_size=h)
    heads = max(2, h // 64)
    vision_config = CLIPVisionConfig(
        **{
            **tiny.config.vision_config.to_dict(),
            "hidden_size": h,
            "intermediate_size": 4 * h,
            "num_hidden_layers": args.vision_layers,
            "num_attention_heads": heads,
            "projection_dim": h,
        }
    )
    text_config = LlamaConfig(
        **{
            **tiny.config.text_config.to_dict(),
            "hidden_size": h,
            "intermediate_size": (8 * h) // 3 // 64 * 64 if h >= 256 else 2 * h,
            "num_hidden_layers": args.llm_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": h // heads,
        }
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tiny.config.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config), processor, vision


def make_trainer(variant: str, model, processing_class, dataset, args):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from hf_ext import DenseDPOConfig, DenseDPOTrainer

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench_{variant}_"),
        per_device_train_batch_size=args.batch,
        max_length=None,
        bf16=False,
        use_cpu=not args.cuda,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        learning_rate=1e-5,
    )
    lora = variant.endswith("_lora")
    peft = {"peft_config": LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])} if lora else {}
    if variant.startswith("trl"):
        return DPOTrainer(
            model=copy.deepcopy(model),
            ref_model=None if lora else copy.deepcopy(model),
            args=DPOConfig(**common),
            train_dataset=dataset,
            processing_class=processing_class,
            **peft,
        )
    if variant == "dense":
        return DenseDPOTrainer(
            model=copy.deepcopy(model),
            ref_model=copy.deepcopy(model),
            args=DenseDPOConfig(**common, dense_gamma=1.1),
            train_dataset=dataset,
            processing_class=processing_class,
        )
    if variant.startswith("dense_precomputed"):
        return DenseDPOTrainer(
            model=copy.deepcopy(model),
            args=DenseDPOConfig(
                **common,
                dense_gamma=1.1,
                precompute_ref_log_probs=True,
                ref_logps_cache_dir=tempfile.mkdtemp(prefix="bench_cache_"),
            ),
            train_dataset=dataset,
            processing_class=processing_class,
            **peft,
        )
    raise ValueError(variant)


class Stepper:
    def __init__(self, trainer, batch_size: int):
        self.trainer = trainer
        self.rows = [trainer.train_dataset[i] for i in range(batch_size)]
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # normally set by the training loop
        trainer.model.train()

    def __call__(self) -> float:
        import torch

        start = time.perf_counter()
        batch = self.trainer.data_collator(copy.deepcopy(self.rows))
        self.trainer.training_step(self.trainer.model, batch)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self()
        return float(counter.get_total_flops())


def matmul_peak_flops(cuda: bool) -> float:
    """The machine's measured fp32 matmul throughput (FLOP/s): the best of a few large `torch.mm`."""
    import torch

    n = 4096 if cuda else 1024
    device = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(5 if cuda else 8):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def time_pair(task: str, variants: tuple[str, str], args) -> dict:
    model, proc, dataset = build(task, args)
    n_params = sum(p.numel() for p in model.parameters())
    steppers = {v: Stepper(make_trainer(v, model, proc, dataset, args), args.batch) for v in variants}
    del model
    for _ in range(args.warmup):
        for v in variants:
            steppers[v]()
    flops = {v: steppers[v].flops() for v in variants}
    times = {v: [] for v in variants}
    for i in range(args.steps):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate who goes first
        for v in order:
            times[v].append(steppers[v]())
    return {"time": {v: statistics.median(t) for v, t in times.items()}, "flops": flops, "params": n_params}


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_worker(task: str, variant: str, args) -> None:
    import gc

    import torch

    # A first (small) build imports every module and fills every cache, so the baseline excludes them.
    warm_args = copy.copy(args)
    for key, value in SIZES["small"].items():
        setattr(warm_args, key, value)
    warm_args.batch = 1
    make_trainer(variant, *build(task, warm_args), warm_args)
    gc.collect()
    base = _rss_mb()
    model, proc, dataset = build(task, args)
    stepper = Stepper(make_trainer(variant, model, proc, dataset, args), args.batch)
    del model
    gc.collect()
    for _ in range(args.warmup):
        stepper()
    if args.cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM): measure training steps only
            f.write("5")
    for _ in range(3):
        stepper()
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.cuda else _vm_hwm_mb() - base
    print("RESULT " + json.dumps({"peak_mb": peak}))


def measure_memory(task: str, variant: str, args) -> float:
    cmd = [sys.executable, __file__, "--worker", task, variant, "--size", args.size]
    cmd += ["--batch", str(args.batch), "--hidden", str(args.hidden), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads)]
    # glibc: serve every allocation >= 64 KiB with mmap so freed tensors leave the RSS (no dynamic threshold)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])["peak_mb"]


def _fmt_target(ratio: float, target: float | None) -> str:
    if target is None:
        return "   (no target)"
    return f"   ≤ {target:.2f} {'ok' if ratio <= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: the size's)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="preference pairs per step (default: the size's)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=sorted(COMPARISONS), action="append", default=None)
    args = parser.parse_args()
    for key, value in SIZES[args.size].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    import torch

    args.cuda = torch.cuda.is_available()
    if not args.cuda:
        # One intra-op thread: on a shared, oversubscribed CPU, OpenMP's 2-thread matmuls are 5-8x slower and erratic.
        torch.set_num_threads(args.threads)
    if args.worker:
        return memory_worker(*args.worker, args)

    device = (
        torch.cuda.get_device_name()
        if args.cuda
        else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )
    peak = matmul_peak_flops(args.cuda)
    print(
        f"device: {device}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; size {args.size}; batch {args.batch} "
        f"pairs; {args.steps} timed steps"
    )
    rows = []
    for task, (dense, trl, t_bound, t_target, m_bound, m_target) in COMPARISONS.items():
        if args.only and task not in args.only:
            continue
        result = time_pair(task, (dense, trl), args)
        times, flops = result["time"], result["flops"]
        mem = {v: measure_memory(task, v, args) for v in (dense, trl)}
        row = {
            "task": task,
            "params_m": result["params"] / 1e6,
            "time_dense_ms": 1000 * times[dense],
            "time_trl_ms": 1000 * times[trl],
            "time_ratio": times[dense] / times[trl],
            "time_bound": t_bound,
            "time_target": t_target,
            "mfu_dense": flops[dense] / times[dense] / peak,
            "mfu_trl": flops[trl] / times[trl] / peak,
            "gflop_dense": flops[dense] / 1e9,
            "gflop_trl": flops[trl] / 1e9,
            "mem_dense_mb": mem[dense],
            "mem_trl_mb": mem[trl],
            "mem_ratio": mem[dense] / mem[trl],
            "mem_bound": m_bound,
            "mem_target": m_target,
        }
        rows.append(row)
        print(
            f"{task} ({row['params_m']:.1f}M params): {dense} / {trl}\n"
            f"  step   {row['time_dense_ms']:9.1f} / {row['time_trl_ms']:9.1f} ms   ratio {row['time_ratio']:.3f}"
            f"   bound {t_bound:.2f}{_fmt_target(row['time_ratio'], t_target)}\n"
            f"  MFU    {100 * row['mfu_dense']:8.1f}% / {100 * row['mfu_trl']:8.1f}%      "
            f"({row['gflop_dense']:.1f} / {row['gflop_trl']:.1f} GFLOP per step)\n"
            f"  memory {row['mem_dense_mb']:9.1f} / {row['mem_trl_mb']:9.1f} MB   ratio {row['mem_ratio']:.3f}"
            f"   bound {m_bound:.2f}{_fmt_target(row['mem_ratio'], m_target)}",
            flush=True,
        )
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
