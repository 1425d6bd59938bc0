"""Training arguments of the tests' tiny CPU runs (not collected by pytest)."""

from __future__ import annotations

import os

# fp32 on the CPU, no gradient checkpointing, no checkpoints, no reporting integrations, a log line every step
CPU_TRAINING_ARGS = dict(
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    logging_steps=1,
    save_strategy="no",
)


def cpu_training_args(output_dir: str | os.PathLike, **overrides) -> dict:
    """Keyword arguments for a `TrainingArguments` (or a TRL / hf_ext config) of a tiny CPU run into `output_dir`:
    :data:`CPU_TRAINING_ARGS`, then `overrides`."""
    return {"output_dir": str(output_dir), **CPU_TRAINING_ARGS, **overrides}
