"""Pieces the benchmark scripts share (reading a text corpus, the CPU training settings of the small studies).

The scripts run as ``python benchmarks/<name>.py``; each puts the repository root on ``sys.path`` before importing
``benchmarks._common``.
"""

from __future__ import annotations

import itertools
from pathlib import Path


def read_lines(path: str | Path, limit: int) -> list[str]:
    """The first ``limit`` non-empty lines of a UTF-8 text file, stripped (one example per line, as the Yahoo files)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{str(path)!r} does not exist: pass an existing text file (one example per line).")
    with file.open(encoding="utf-8") as f:
        lines = list(itertools.islice(filter(None, map(str.strip, f)), limit))
    if not lines:
        raise ValueError(f"{str(path)!r} has no non-empty line.")
    return lines


def study_training_kwargs(
    output_dir: str | Path,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    num_logs: int = 10,
    **overrides,
) -> dict:
    """`TrainingArguments` keywords of a small study run on the CPU: ``steps`` optimizer steps, cosine decay after a
    warm-up over the first 5 %, weight decay 0.01, the same ``seed`` for the model and the data order, ``num_logs``
    loss logs, nothing saved or reported, no progress bar. ``overrides`` replace or add keywords."""
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, steps // num_logs),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return kwargs
