"""The RLHF-V study in miniature: does dense DPO cut hallucinations more than DPO at equal data?

For each seed: SFT a tiny Muffin on the grounded shapes task (TRL ``SFTTrainer``), sample its responses to fresh
prompts, correct the hallucinated segments (RLHF-V's protocol, written in the RLHF-V parquet schema), then train
from the same SFT weights on the same pairs with TRL's DPO and with hf_ext's dense DPO (γ = 1.1 and 5, normalised
and not). Every model answers the same held-out images greedily; the table reports CHAIR-i, CHAIR-s, recall of the
true objects and count / position error rates (mean ± std over seeds, ×100), and a PNG plot is written.

    python benchmarks/hallucination_study.py                       # reduced study (make study)
    python benchmarks/hallucination_study.py --num-pairs 1400      # the paper's number of pairs (slow on CPU)
    python benchmarks/hallucination_study.py --seeds 0 --arms dpo ddpo_g5 --sft-samples 500   # a quick look

Outputs in ``--output-dir``: ``results.json`` (every run and the pair statistics), ``results.md`` (the table) and
``hallucination_study.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None) -> argparse.Namespace:
    from hf_ext.benchmarks.hallucination import ARMS, StudyConfig

    d = StudyConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--arms", nargs="+", default=list(d.arms), choices=sorted(ARMS))
    p.add_argument("--num-pairs", type=int, default=d.num_pairs, help="pairs per arm (the paper: 1400)")
    for f in fields(StudyConfig):
        if f.name in ("seeds", "arms", "num_pairs", "progress"):
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(d, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--output-dir", default="benchmarks/results/hallucination_study")
    p.add_argument("--work-dir", default=None, help="SFT runs and pair parquet files (default: a temporary directory)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the models are tiny; 0 = torch's choice)"
    )
    p.add_argument("--progress", action="store_true", help="show the trainers' progress bars")
    return p.parse_args(argv)


def plot(runs, path: Path) -> None:
    """Bar plot of CHAIR-i, CHAIR-s and recall per method (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_ext.benchmarks.hallucination import summarize
    from hf_ext.utils.io import atomic_write

    rows = summarize(runs)
    metrics = ("chair_i", "chair_s", "recall")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    for ax, m in zip(axes, metrics):
        names = [r["method"] for r in rows]
        ax.bar(
            names,
            [100 * r[m] for r in rows],
            yerr=[100 * r[m + "_std"] for r in rows],
            capsize=3,
            color=["#888888"] + ["#4477aa"] + ["#cc6677"] * (len(rows) - 2),
        )
        ax.set_title(m.replace("_", "-").upper() if m != "recall" else "recall of true objects")
        ax.set_ylabel("%")
        ax.tick_params(axis="x", rotation=45)
    n_seeds = max(r["n_seeds"] for r in rows)
    fig.suptitle(f"Grounded shapes task, tiny Muffin: SFT vs DPO vs dense DPO ({n_seeds} seed(s), mean ± std)")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    import datasets
    import torch

    from hf_ext.benchmarks.hallucination import StudyConfig, format_table, run_study, save_results

    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {f.name: getattr(args, f.name) for f in fields(StudyConfig) if hasattr(args, f.name)}
    kw["seeds"], kw["arms"] = tuple(args.seeds), tuple(args.arms)
    config = StudyConfig(**kw)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hallucination_study_") as tmp:
        results = run_study(config, args.work_dir or tmp, log=lambda s: print(s, flush=True))
    results["wall_time_s"] = time.perf_counter() - t0
    results["torch_threads"] = torch.get_num_threads()
    table = format_table(results["runs"])
    save_results(results, out / "results.json")
    (out / "results.md").write_text(table + "\n")
    plot(results["runs"], out / "hallucination_study.png")
    print()
    print(table)
    print()
    print("pairs per seed:", json.dumps(results["pairs"]))
    print(f"wall time {results['wall_time_s']:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
