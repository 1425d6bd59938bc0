"""Pieces the example scripts share. A script imports them with ``examples/`` on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for `_shared`
    from _shared import ...

* the vision-language SFT recipe of Muffin and VisCPM-Chat with TRL's ``SFTTrainer`` (``examples/muffin/``,
  ``examples/viscpm_chat/``): arguments, model loading, UniMM-Chat data, ``SFTConfig``;
* ``--scale_lr`` of the diffusers-style training scripts (``examples/iap/``, ``examples/viscpm_paint/``), whose other
  pieces are in :mod:`hf_ext.pipelines.training_utils`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_sft_arguments(
    parser: argparse.ArgumentParser, model_help: str, tiny_help: str, gradient_accumulation_steps: int = 1
) -> None:
    """The model, data switch, output, batch, schedule-length and precision flags of the SFT scripts (the recipe's
    defaults: lr 2e-5, max length 2048). ``--train_files`` is left to the script (its format differs)."""
    parser.add_argument("--model_name_or_path", default=None, help=model_help)
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--demo_data", action="store_true", help="Use a few synthetic rows instead of --train_files.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=gradient_accumulation_steps)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--report_to", default="none")


def load_model_and_processor(args: argparse.Namespace, **tiny_kwargs):
    """``--tiny``: a random tiny model from :func:`hf_ext.testing.tiny_muffin` (``tiny_kwargs``, e.g. ``model_type``);
    otherwise the hf_ext checkpoint at ``--model_name_or_path`` and its processor."""
    if args.tiny:
        from hf_ext.testing import tiny_muffin

        return tiny_muffin(**tiny_kwargs)
    if args.model_name_or_path is None:
        raise ValueError("Pass --model_name_or_path (an hf_ext checkpoint, e.g. from the converters) or --tiny.")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_ext  # noqa: F401  (registers the model types)

    model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    return model, processor


def unimm_chat_dataset(parquet_files: list[str] | None, demo: bool):
    """UniMM-Chat parquet files (Hub schema; ``demo``: synthetic rows) → TRL conversational rows with images."""
    from dataset_builders.unimm_chat import load_unimm_chat, write_unimm_chat_parquet

    if demo:
        parquet_files = [str(write_unimm_chat_parquet(Path(tempfile.mkdtemp()) / "unimm_chat_demo.parquet"))]
    if not parquet_files:
        raise ValueError("Pass --train_files (UniMM-Chat parquet files) or --demo_data.")
    return load_unimm_chat(parquet_files, on_bad_row="skip").select_columns(["messages", "images"])


def sft_config(args: argparse.Namespace, **overrides):
    """TRL ``SFTConfig`` of the Muffin / VisCPM-Chat SFT recipe from the :func:`add_sft_arguments` flags: cosine
    schedule, warm-up over 3 % of the steps, no weight decay, a log every step, no intermediate checkpoints.
    ``overrides`` replace or add keywords."""
    from trl import SFTConfig

    kwargs = dict(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=0.0,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        report_to=args.report_to,
        logging_steps=1,
        save_strategy="no",
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def scale_learning_rate(args: argparse.Namespace, accelerator) -> None:
    """``--scale_lr`` (:func:`hf_ext.pipelines.training_utils.add_optimization_arguments`): multiply
    ``args.learning_rate`` by the total batch size, batch x accumulation x processes (diffusers' scripts' rule)."""
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
