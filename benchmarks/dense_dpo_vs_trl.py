"""DenseDPOTrainer vs TRL's DPOTrainer: step time and peak memory, same model, data and batch, one run.

Two comparisons, each printed as a ratio (DenseDPO / TRL):

* **text**: tiny GPT-2, both with a live reference model; Dense DPO adds the token diff (collator) and the log-prob
  scaling hook. Targets: step time ≤ 1.05, peak memory ≤ 1.05.
* **vision**: tiny Llava on RLHF-V-format data; Dense DPO with precomputed per-token reference log-probs (no reference
  model in memory, no reference forward) vs TRL with a live reference model (TRL cannot precompute for vision data).
  Target: step time ≤ 0.75.

A "step" is collate + forward + backward + optimizer step on one batch. Times: the two trainers alternate step by step
in one process and the median over the measured steps is compared. Memory: each variant runs in its own subprocess;
on CUDA the peak allocated memory, on CPU the growth of the peak RSS over the RSS before the models are built (models,
optimizer states and activations of the training steps, measured after warm-up with the peak reset through
`/proc/self/clear_refs`; the Python/torch baseline is left out of both).

    python benchmarks/dense_dpo_vs_trl.py [--steps 20] [--batch 8]
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(task: str, args):
    """Model, reference, processing class and dataset for `task` ("text" or "vision")."""
    import torch

    from dataset_builders.rlhf_v import load_rlhf_v, write_rlhf_v_parquet

    data_dir = tempfile.mkdtemp(prefix="bench_")
    vision = load_rlhf_v(write_rlhf_v_parquet(os.path.join(data_dir, "d.parquet"), n=4 * args.batch, image_size=64))
    if task == "text":
        from datasets import Dataset
        from transformers import GPT2Config, GPT2LMHeadModel

        from hf_ext.testing_utils import tiny_bpe_tokenizer

        tok = tiny_bpe_tokenizer()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_positions=256,
                n_embd=args.hidden,
                n_layer=4,
                n_head=4,
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
    from hf_ext.demo import build_tiny_llava

    model, processor = build_tiny_llava(image_size=64, patch_size=16, hidden_size=args.hidden)
    return model, processor, vision


def make_trainer(variant: str, model, processing_class, dataset, args):
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
    if variant == "trl":
        return DPOTrainer(
            model=copy.deepcopy(model),
            ref_model=copy.deepcopy(model),
            args=DPOConfig(**common),
            train_dataset=dataset,
            processing_class=processing_class,
        )
    if variant == "dense":
        return DenseDPOTrainer(
            model=copy.deepcopy(model),
            ref_model=copy.deepcopy(model),
            args=DenseDPOConfig(**common, dense_gamma=1.1),
            train_dataset=dataset,
            processing_class=processing_class,
        )
    if variant == "dense_precomputed":
        return DenseDPOTrainer(
            model=copy.deepcopy(model),
            args=DenseDPOConfig(**common, dense_gamma=1.1, precompute_ref_log_probs=True),
            train_dataset=dataset,
            processing_class=processing_class,
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


def time_pair(task: str, variants: tuple[str, str], args) -> dict:
    model, proc, dataset = build(task, args)
    steppers = {v: Stepper(make_trainer(v, model, proc, dataset, args), args.batch) for v in variants}
    for _ in range(args.warmup):
        for v in variants:
            steppers[v]()
    times = {v: [] for v in variants}
    for i in range(args.steps):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate who goes first
        for v in order:
            times[v].append(steppers[v]())
    return {v: statistics.median(t) for v, t in times.items()}


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_worker(task: str, variant: str, args) -> None:
    import gc

    import torch

    # A first build imports every module and fills every cache, so the baseline excludes them.
    make_trainer("dense", *build(task, args), args)
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
    cmd = [sys.executable, __file__, "--worker", task, variant]
    cmd += ["--batch", str(args.batch), "--hidden", str(args.hidden), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads)]
    # glibc: serve every allocation >= 64 KiB with mmap so freed tensors leave the RSS (no dynamic threshold)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["text", "vision"], default=None)
    args = parser.parse_args()
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
    print(f"device: {device}; batch {args.batch} pairs; hidden {args.hidden}; {args.steps} timed steps")
    rows = []
    for task, variants, target in (
        ("text", ("dense", "trl"), "≤ 1.05"),
        ("vision", ("dense_precomputed", "trl"), "≤ 0.75"),
    ):
        if args.only and task != args.only:
            continue
        times = time_pair(task, variants, args)
        mem = {v: measure_memory(task, v, args) for v in variants}
        rows.append(
            {
                "task": task,
                "dense": variants[0],
                "time_dense_ms": 1000 * times[variants[0]],
                "time_trl_ms": 1000 * times["trl"],
                "time_ratio": times[variants[0]] / times["trl"],
                "mem_dense_mb": mem[variants[0]],
                "mem_trl_mb": mem["trl"],
                "mem_ratio": mem[variants[0]] / mem["trl"],
                "target": target,
            }
        )
    print(f"{'comparison':<38}{'median step (ms)':>20}{'ratio':>8}{'peak mem (MB)':>18}{'ratio':>8}")
    for r in rows:
        name = f"{r['task']}: {r['dense']} / trl"
        print(
            f"{name:<38}{r['time_dense_ms']:>9.1f} /{r['time_trl_ms']:>8.1f}{r['time_ratio']:>8.3f}"
            f"{r['mem_dense_mb']:>8.1f} /{r['mem_trl_mb']:>7.1f}{r['mem_ratio']:>8.3f}   (time target {r['target']})"
        )
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
