"""Start-up time of ``hf-ext --help`` next to the peer CLIs (``trl --help``, ``accelerate --help``) in one run.

``hf-ext --help`` imports neither torch nor transformers (hf_ext registers its models when transformers is imported),
so it should cost about a bare interpreter start. Each command runs ``--repeats`` times in a fresh interpreter; the
table shows the median wall time and the ratio to ``python -c pass``.

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

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "hf-ext --help": [sys.executable, "-m", "hf_ext.cli", "--help"],
    "trl --help": [str(Path(sys.executable).with_name("trl")), "--help"],
    "accelerate --help": [str(Path(sys.executable).with_name("accelerate")), "--help"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    medians = {}
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr.decode()[-2000:]}")
        medians[name] = statistics.median(times)
    base = medians["python -c pass"]
    print(f"{'command':<20} {'median s':>9} {'x python':>9} {'x hf-ext':>9}")
    for name, t in medians.items():
        print(f"{name:<20} {t:9.3f} {t / base:9.1f} {t / medians['hf-ext --help']:9.1f}")


if __name__ == "__main__":
    main()
