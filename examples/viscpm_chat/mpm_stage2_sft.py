"""MPM stage 2 (VisCPM): instruction tuning with all parameters, on UniMM-Chat (+ translated data of your choice).

    accelerate launch examples/viscpm_chat/mpm_stage2_sft.py \
        --model_name_or_path out/stage1 --train_files UniMM-Chat_*.parquet --output_dir out/stage2 \
        --bf16 --gradient_checkpointing --assistant_only_loss

Smoke test on the CPU (random tiny model, synthetic UniMM-Chat rows):

    accelerate launch --cpu --num_processes 1 examples/viscpm_chat/mpm_stage2_sft.py \
        --tiny --demo_data --max_steps 2 --per_device_train_batch_size 2 --output_dir /tmp/mpm2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpm_common import instruction_dataset, mpm_parser, run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    return mpm_parser(__doc__, train_files_help="UniMM-Chat parquet files (Yirany/UniMM-Chat schema).").parse_args(
        argv
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    run(args, stage=2, dataset=instruction_dataset(args.train_files, args.demo_data))


if __name__ == "__main__":
    main()
