"""Muffin instruction tuning on UniMM-Chat with TRL's SFTTrainer (all parameters, as Muffin's `fully_tune`).

    accelerate launch examples/muffin/sft_unimm_chat.py --model_name_or_path muffin-13b-hf \
        --train_files UniMM-Chat_*.parquet --output_dir out/muffin-sft --bf16 --gradient_checkpointing

On 8 GPUs, with a config from examples/accelerate_configs/ (FSDP2 wraps every BEiT-3 and LLM layer; see docs/scale.md):

    accelerate launch --config_file examples/accelerate_configs/fsdp2.yaml examples/muffin/sft_unimm_chat.py \
        --model_name_or_path muffin-13b-hf --train_files UniMM-Chat_*.parquet --output_dir out/muffin-sft --bf16

Muffin's SFT recipe: lr 2e-5, cosine, warmup 3 %, weight decay 0, max length 2048, loss on assistant turns only.
Smoke test on the CPU:

    accelerate launch --cpu --num_processes 1 examples/muffin/sft_unimm_chat.py --tiny --demo_data \
        --max_steps 2 --output_dir /tmp/muffin-sft
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_name_or_path", default=None, help="hf_ext Muffin checkpoint (e.g. from the converter)."
    )
    parser.add_argument("--tiny", action="store_true", help="Random tiny Muffin built offline (smoke test).")
    parser.add_argument("--train_files", nargs="*", help="UniMM-Chat parquet files (Yirany/UniMM-Chat schema).")
    parser.add_argument("--demo_data", action="store_true", help="Synthetic UniMM-Chat rows instead of --train_files.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--report_to", default="none")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from trl import SFTConfig, SFTTrainer

    from dataset_builders.unimm_chat import load_unimm_chat, write_unimm_chat_parquet

    if args.tiny:
        from hf_ext.testing import tiny_muffin

        model, processor = tiny_muffin()
        model.train()
    elif args.model_name_or_path:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import hf_ext  # noqa: F401  (registers the model types)

        model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path)
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    else:
        raise ValueError("Pass --model_name_or_path or --tiny.")
    files = args.train_files
    if args.demo_data:
        files = [str(write_unimm_chat_parquet(Path(tempfile.mkdtemp()) / "unimm_chat_demo.parquet"))]
    if not files:
        raise ValueError("Pass --train_files or --demo_data.")
    dataset = load_unimm_chat(files, on_bad_row="skip").select_columns(["messages", "images"])
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        max_length=args.max_length,
        assistant_only_loss=True,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        report_to=args.report_to,
        logging_steps=1,
        save_strategy="no",
    )
    from hf_ext.utils.fsdp import FSDP2FusedLMHeadCallback

    # under FSDP2, TRL's fused LM head needs the LM head's unit unsharded with the backbone (no-op otherwise)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[FSDP2FusedLMHeadCallback()],
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
