"""The ``hf-ext`` console command: one subcommand per method, TRL-CLI style.

Each subcommand owns a parser (usually a :class:`trl.TrlParser` over its dataclasses, so it takes ``--flags`` and/or
``--config x.yaml`` with command-line flags overriding the file) and a ``main``. Other areas add theirs with
:func:`register_subcommand`; nothing is imported until a subcommand runs, so ``hf-ext --help`` stays fast.

    hf-ext dense-dpo --model_name_or_path ./my-vlm --data_files rlhf_v.parquet --dataset_format rlhf_v \\
        --output_dir out --dense_gamma 1.1 --beta 0.1 --precompute_ref_log_probs
    accelerate launch -m hf_ext.cli dense-dpo --config dense_dpo.yaml
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["DenseDPOScriptArguments", "Subcommand", "dense_dpo_main", "main", "register_subcommand", "run"]


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: ``run(argv)`` parses its own arguments (lazily importing what it needs) and runs."""

    name: str
    help: str
    run: Callable[[list[str]], object] | str  # a callable or "module:function"

    def __call__(self, argv: list[str]):
        run = self.run
        if isinstance(run, str):
            module, _, attr = run.partition(":")
            run = getattr(importlib.import_module(module), attr)
        return run(argv)


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, help: str, run: Callable[[list[str]], object] | str) -> None:
    """Add ``hf-ext <name>``. ``run`` receives the remaining argv; give it as ``"module:function"`` to import lazily."""
    if name in SUBCOMMANDS:
        raise ValueError(f"hf-ext subcommand {name!r} is already registered.")
    SUBCOMMANDS[name] = Subcommand(name, help, run)


# ----------------------------------------------------------------------------- dense-dpo


@dataclass
class DenseDPOScriptArguments:
    """Data arguments of ``hf-ext dense-dpo``."""

    data_files: list[str] = field(
        default_factory=list, metadata={"help": "Local data file(s): parquet, json or jsonl.", "nargs": "+"}
    )
    dataset_format: str = field(
        default="rlhf_v",
        metadata={
            "help": "`rlhf_v`: parquet in the openbmb/RLHF-V-Dataset schema (loaded with load_rlhf_v); `preference`: "
            "TRL preference rows (prompt/chosen/rejected, optional images and chosen_segments/rejected_segments).",
            "choices": ["rlhf_v", "preference"],
        },
    )
    on_bad_row: str = field(
        default="raise",
        metadata={"help": "rlhf_v format: raise on a bad row or skip it.", "choices": ["raise", "skip"]},
    )
    eval_fraction: float = field(default=0.0, metadata={"help": "Fraction of rows held out for evaluation."})


def _load_dense_dpo_dataset(script_args: DenseDPOScriptArguments):
    if not script_args.data_files:
        raise ValueError("--data_files is required (local parquet/json/jsonl files).")
    if script_args.dataset_format == "rlhf_v":
        from dataset_builders.rlhf_v import load_rlhf_v

        return load_rlhf_v(script_args.data_files, on_bad_row=script_args.on_bad_row)
    from datasets import load_dataset

    suffix = script_args.data_files[0].rsplit(".", 1)[-1].lower()
    builder = {"jsonl": "json", "json": "json", "parquet": "parquet"}.get(suffix)
    if builder is None:
        raise ValueError(f"--data_files: unsupported extension .{suffix}; use parquet, json or jsonl.")
    return load_dataset(builder, data_files=script_args.data_files, split="train")


def make_dense_dpo_parser(parser=None):
    from trl import ModelConfig, TrlParser

    from .trainers.dense_dpo import DenseDPOConfig

    dataclass_types = (DenseDPOScriptArguments, DenseDPOConfig, ModelConfig)
    if parser is None:
        return TrlParser(dataclass_types, prog="hf-ext dense-dpo", description="RLHF-V dense DPO (DenseDPOTrainer).")
    return parser.add_parser("dense-dpo", help="RLHF-V dense DPO", dataclass_types=dataclass_types)


def check_arguments(parser, argv: Sequence[str], required: Sequence[str] = ()) -> None:
    """Report mistyped flags (on the command line or as keys of the ``--config`` file) and missing ``required``
    arguments as usage errors (exit status 2) *before* the dataclasses are built, so the error of a dataclass's
    ``__post_init__`` cannot hide them. ``parser`` is a :class:`trl.TrlParser`; only argparse runs here."""
    args = list(argv)
    unknown: list[str] = []
    if "--config" in args:
        import yaml

        i = args.index("--config")
        if i + 1 >= len(args):
            parser.error("--config needs a YAML file path.")
        config_path = args[i + 1]
        del args[i : i + 2]
        try:
            with open(config_path) as f:
                config = yaml.safe_load(f)
        except OSError as e:
            parser.error(f"--config {config_path}: {e.strerror}.")
        if not isinstance(config, dict):
            parser.error(f"--config {config_path} must contain a YAML mapping.")
        known = {action.dest for action in parser._actions}
        unknown += [f"{key} (in {config_path})" for key in config if key not in known and key != "env"]
        parser.set_defaults(**{k: v for k, v in config.items() if k in known})
    namespace, rest = parser.parse_known_args(args)
    unknown += rest
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (see `{parser.prog} --help`).")
    for name in required:
        if not getattr(namespace, name, None):
            parser.error(f"--{name} is required.")


def dense_dpo_main(argv: Sequence[str] | None = None):
    """``hf-ext dense-dpo``: parse arguments (flags and/or ``--config``), train, save the model and its card.

    Returns the trainer."""
    parser = make_dense_dpo_parser()
    argv = list(argv or [])
    check_arguments(parser, argv, required=("model_name_or_path",))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)

    from trl import get_peft_config

    from .trainers.dense_dpo import DenseDPOTrainer

    dataset = _load_dense_dpo_dataset(script_args)
    eval_dataset = None
    if script_args.eval_fraction > 0:
        split = dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        dataset, eval_dataset = split["train"], split["test"]
    targets = model_args.lora_target_modules
    if isinstance(targets, str) and targets != "all-linear":
        # HfArgumentParser parses `list[str] | None` as one string; PEFT would treat it as a full-match regex.
        model_args.lora_target_modules = [t for t in targets.replace(",", " ").split() if t]
    init_kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.dtype is not None:
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    init_kwargs.setdefault("revision", model_args.model_revision)
    training_args.model_init_kwargs = init_kwargs
    trainer = DenseDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.processing_class.save_pretrained(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.create_model_card(model_name=training_args.output_dir.rstrip("/").split("/")[-1])
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer


register_subcommand("dense-dpo", "RLHF-V dense (token-weighted) DPO with DenseDPOTrainer", dense_dpo_main)
# Gradio apps (the `apps` extra), imported only when run
register_subcommand(
    "annotate", "Correct a VLM's answers segment by segment into RLHF-V data", "hf_ext.apps.annotate:annotate_main"
)
register_subcommand("app", "Demo apps: chat | paint | poetry | vae (and --export_space)", "hf_ext.apps.demos:app_main")


# ----------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-ext", description="hf_ext command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS.values():
        sub.add_parser(command.name, help=command.help, add_help=False)
    return parser


def run(argv: Sequence[str] | None = None):
    """Run ``hf-ext <argv>`` in this process and return what the subcommand returns (e.g. the trainer), ``None`` for
    ``--help``. Unknown commands exit with status 2 (argparse)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return None
    if argv[0] not in SUBCOMMANDS:
        parser.error(f"unknown command {argv[0]!r}; choose from {sorted(SUBCOMMANDS)}")
    return SUBCOMMANDS[argv[0]](argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`run`, then exit status 0 (errors raise and exit non-zero)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
