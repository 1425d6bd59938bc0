"""The RLHF-V study in miniature: does dense DPO cut the hallucinations a misleading language prior causes?

Per seed: a tiny Muffin whose bridge is pre-trained on an easy grounded task with unbiased images (then frozen) is
fine-tuned on biased images whose captions follow a co-occurrence prior; the gates check that it sees and that its prior misleads it on conflict images; its
sampled answers are corrected as RLHF-V's annotators did; then, from the same SFT weights and the same pairs, every
arm: SFT on the corrected answers (control), DPO, DPO on response-level ranking pairs, dense DPO γ ∈ {2, 5}, summed
and normalised (vision frozen, learning rate per arm from a grid on a validation split). The primary metric is
CHAIR-i on conflict images of held-out layouts, as the paired difference from DPO within seed with a 95% CI.

    python benchmarks/hallucination_study.py                  # the full study (make study), resumable
    python benchmarks/hallucination_study.py --workers 2      # seeds on two processes after the first one
    python benchmarks/hallucination_study.py --seeds 0 --sweep-seeds --lr-grid 1e-4 --output-dir /tmp/s   # a look

Outputs in ``--output-dir``: ``seeds/seed{N}.json`` (written as each seed finishes; rerunning skips them),
``learning_rates.json``, ``results.json``, ``results.md`` (tables, gates, pairs), ``hallucination_study.png`` and
``train_log.jsonl`` (the trainers' per-step logs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

# the study package lives beside this script (benchmarks/hallucination/)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_LISTS = {
    "seeds": int,
    "arms": str,
    "sweep_seeds": int,
    "sweep_num_pairs": int,
    "sweep_betas": float,
    "lr_grid": float,
}


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.hallucination.study import StudyConfig

    d = StudyConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in fields(StudyConfig):
        flag, default = "--" + f.name.replace("_", "-"), getattr(d, f.name)
        if f.name in _LISTS:
            p.add_argument(flag, type=_LISTS[f.name], nargs="*", default=list(default))
        elif f.name == "gates":
            continue
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--output-dir", default="benchmarks/results/hallucination_study")
    p.add_argument("--work-dir", default=None, help="SFT runs and pair parquet files (default: a temporary directory)")
    p.add_argument("--workers", type=int, default=1, help="processes for the seeds after the learning-rate seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1: tiny models)")
    p.add_argument("--no-report", action="store_true", help="run seeds only (used by --workers)")
    return p.parse_args(argv)


def plot(results, config, path: Path) -> None:
    """Paired differences from DPO (primary metric, 95% CI) and recall per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.hallucination.stats import paired_differences
    from benchmarks.hallucination.study import primary_runs
    from hf_ext.utils.io import atomic_write

    runs = primary_runs(results["runs"], config.num_pairs, config.beta)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, title in (
        (axes[0], "chair_i_conflict", "CHAIR-i on conflict images"),
        (axes[1], "recall", "recall of true objects"),
    ):
        d = paired_differences(runs, metric, "dpo")
        names = [x["method"] for x in d]
        means = [100 * x["mean"] for x in d]
        err = [
            [100 * (x["mean"] - x["low"]) for x in d] if all(x["n"] > 1 for x in d) else None,
            [100 * (x["high"] - x["mean"]) for x in d] if all(x["n"] > 1 for x in d) else None,
        ]
        ax.bar(names, means, yerr=None if err[0] is None else err, capsize=3, color="#4477aa")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{title}: method − DPO, same seed (points)")
        ax.tick_params(axis="x", rotation=45)
    n_seeds = len({r["seed"] for r in runs})
    fig.suptitle(
        f"Grounded shapes with a co-occurrence prior, tiny Muffin: {n_seeds} seed(s), "
        f"{config.num_pairs} pairs, β={config.beta}, mean and 95% CI"
    )
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def report(results, config, out: Path) -> str:
    """The Markdown report: gates per seed, pair statistics, the primary table and the sweep tables."""
    from benchmarks.hallucination.study import format_table, primary_runs

    lines = ["## Gates (validation split, per seed)", ""]
    lines += ["| seed | colour (shuffled) | shape (shuffled) | probe | prior rate (conflict images) | passed |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for s in results["seeds"]:
        g = s["gates"]
        lines.append(
            f"| {s['seed']} | {g['colour_true']:.3f} ({g['colour_shuffled']:.3f}) | {g['shape_true']:.3f} "
            f"({g['shape_shuffled']:.3f}) | {g['probe']:.3f} | {g['prior_rate']:.3f} (n={g['n_conflict']}) | "
            f"{g['passed']} |"
        )
    excluded = [s for s in results["seeds"] if s.get("excluded")]
    passing = len(results["seeds"]) - len(excluded)
    enough = passing >= config.min_passing_seeds
    lines += [
        "",
        f"{passing} of {len(results['seeds'])} seeds pass the gates; the tables below are over those {passing} "
        "(a seed that fails a gate runs no preference arm: the gates are measured before any preference run)."
        + ("" if enough else f" **Fewer than the {config.min_passing_seeds} the primary comparison needs.**"),
    ]
    if excluded:
        lines += ["", "Excluded: " + "; ".join(s["reason"].split(". No preference run")[0] for s in excluded) + "."]
    lines += ["", "## Pairs (per seed)", ""]
    for s in results["seeds"]:
        if s.get("excluded"):
            continue
        p = s["pairs"]["pool"]
        c = p["corrected"]
        lines.append(
            f"* seed {s['seed']}: {p['pool_size']} prompts, {c['ungrammatical']} ungrammatical first samples dropped, "
            f"{c['pairs']} corrected pairs ({c['segments_per_pair']:.2f} segments/pair, {c['deleted_segments']} "
            f"deletions, {c['correction_types']}), {p['ranking']['pairs']} ranking pairs"
        )
    lrs = next((s["learning_rates"] for s in results["seeds"] if s["seed"] == config.lr_seed), {})
    lines += ["", f"Learning rates (validation split of seed {config.lr_seed}): {lrs}", ""]
    lines += [f"## Primary: {config.num_pairs} pairs, β = {config.beta} (rates ×100)", ""]
    lines.append(format_table(primary_runs(results["runs"], config.num_pairs, config.beta)))
    sweeps = sorted({(r["pairs"], r["beta"]) for r in results["runs"] if r["method"] != "sft"})
    for n, b in sweeps:
        if (n, b) == (config.num_pairs, config.beta):
            continue
        runs = [r for r in results["runs"] if r["method"] != "sft" and (r["pairs"], r["beta"]) == (n, b)]
        lines += ["", f"## Sweep: {n} pairs, β = {b}", "", format_table(runs)]
    return "\n".join(lines) + "\n"


def _bar_factory():
    from tqdm.auto import tqdm

    def bar(total, desc):
        return tqdm(total=total, desc=f"  {desc}", leave=False, dynamic_ncols=True, file=sys.stderr)

    return bar


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    from benchmarks.hallucination.study import GateError, StudyConfig, run_study, save_results

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {f.name: getattr(args, f.name) for f in fields(StudyConfig) if hasattr(args, f.name)}
    for k in _LISTS:
        kw[k] = tuple(kw[k])
    config = StudyConfig(**kw)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "train_log.jsonl"
    t0 = time.perf_counter()

    def say(s):
        print(s, flush=True)

    say(f"hallucination study: {len(config.seeds)} seeds, arms {', '.join(config.arms)}; step logs in {log_file}")
    try:
        if args.workers > 1 and len(config.seeds) > 1:
            # the learning-rate seed first (it picks every arm's rate), then the others on `workers` processes
            run_study(
                StudyConfig(**{**kw, "seeds": (config.lr_seed,)}), out, args.work_dir, say, _bar_factory(), log_file
            )
            rest = [s for s in config.seeds if s != config.lr_seed]
            procs = []
            for w in range(args.workers):
                mine = rest[w :: args.workers]
                if not mine:
                    continue
                cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
                cmd = [c for c in cmd]
                # workers only record a failing seed; the parent draws replacements once they are done
                cmd += ["--workers", "1", "--no-report", "--gate-failure", "exclude", "--seeds", *map(str, mine)]
                procs.append(subprocess.Popen(cmd))
            codes = [p.wait() for p in procs]
            if any(codes):
                say(f"a worker failed (exit codes {codes}); rerun to resume the missing seeds")
                return 1
        results = run_study(config, out, args.work_dir, say, _bar_factory(), log_file)
    except GateError as e:
        say(f"STOPPED: {e}")
        return 2
    if args.no_report:
        return 0
    results["wall_time_s"] = time.perf_counter() - t0
    save_results(results, out / "results.json")
    md = report(results, config, out)
    (out / "results.md").write_text(md)
    plot(results, config, out / "hallucination_study.png")
    say("")
    say(md)
    say(f"wall time {results['wall_time_s']:.0f}s; table {out / 'results.md'}, plot {out / 'hallucination_study.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
