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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for `_shared`
from _shared import add_sft_arguments, load_model_and_processor, sft_config, unimm_chat_dataset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sft_arguments(
        parser,
        model_help="hf_ext Muffin checkpoint (e.g. from the converter).",
        tiny_help="Random tiny Muffin built offline (smoke test).",
        gradient_accumulation_steps=16,
    )
    parser.add_argument("--train_files", nargs="*", help="UniMM-Chat parquet files (Yirany/UniMM-Chat schema).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from trl import SFTTrainer

    from hf_ext.utils.fsdp import FSDP2FusedLMHeadCallback

    model, processor = load_model_and_processor(args)
    dataset = unimm_chat_dataset(args.train_files, args.demo_data)
    # under FSDP2, TRL's fused LM head needs the LM head's unit unsharded with the backbone (no-op otherwise)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(args, assistant_only_loss=True),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[FSDP2FusedLMHeadCallback()],
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
