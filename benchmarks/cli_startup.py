"""Start-up time of hf_ext next to its peers, in one run: ``import hf_ext``, the first model class, ``hf-ext --help``.

Each row runs in a fresh interpreter, ``--repeats`` times, round-robin over the rows (so a busy machine slows all rows
alike); the table shows the median wall time, the ratio to ``python -c pass``, the ratio to the row's peer, and how
many lines the command wrote to stderr (e.g. torchao's "Failed to load ... .so" lines, which transformers prints when
it imports its quantizers, i.e. on the first ``PreTrainedModel`` import, with ``hf_ext[scale]`` installed).

* ``import hf_ext`` imports neither torch nor transformers (the top-level names are lazy; models are registered when
  transformers is imported), like ``import transformers`` / ``import diffusers``, which are lazy too;
* ``from hf_ext import MuffinForConditionalGeneration`` imports torch, transformers and every hf_ext model family (they
  register with the Auto classes), next to ``from transformers import LlavaForConditionalGeneration``;
* ``hf-ext --help`` imports no subcommand, next to ``trl --help`` and ``accelerate --help``.

    python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# name -> (command, peer row name or None)
ROWS: dict[str, tuple[list[str], str | None]] = {
    "python -c pass": (_py("pass"), None),
    "import transformers": (_py("import transformers"), None),
    "import diffusers": (_py("import diffusers"), None),
    "import hf_ext": (_py("import hf_ext"), "import transformers"),
    "from transformers import Llava...": (_py("from transformers import LlavaForConditionalGeneration"), None),
    "from hf_ext import Muffin...": (
        _py("from hf_ext import MuffinForConditionalGeneration"),
        "from transformers import Llava...",
    ),
    "trl --help": ([str(BIN / "trl"), "--help"], None),
    "accelerate --help": ([str(BIN / "accelerate"), "--help"], None),
    "hf-ext --help": ([sys.executable, "-m", "hf_ext.cli", "--help"], "trl --help"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Runs per row (the median is reported).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    stderr_lines: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, (cmd, _peer) in ROWS.items():
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr.decode()[-2000:]}")
            stderr_lines[name] = len(proc.stderr.decode().splitlines())
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["python -c pass"]
    print(f"{'command':<36} {'median s':>9} {'x python':>9} {'x peer':>7}  {'stderr lines':>12}  peer")
    for name, (_cmd, peer) in ROWS.items():
        ratio = f"{medians[name] / medians[peer]:7.2f}" if peer else f"{'':>7}"
        print(
            f"{name:<36} {medians[name]:9.3f} {medians[name] / base:9.1f} {ratio}  {stderr_lines[name]:>12}  "
            f"{peer or ''}"
        )


if __name__ == "__main__":
    main()
