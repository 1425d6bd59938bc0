"""MPM stage 1 (VisCPM): multimodal pre-training on English image-text pairs with the multilingual LLM frozen.

BEiT-3, the learned queries and the projector train; the LLM and its head do not. Driven by TRL's SFTTrainer:

    accelerate launch examples/viscpm_chat/mpm_stage1_pretrain.py \
        --model_name_or_path viscpm-chat-hf --train_files captions.jsonl --output_dir out/stage1 --bf16

Smoke test on the CPU (random tiny model, synthetic data, ~10 s):

    accelerate launch --cpu --num_processes 1 examples/viscpm_chat/mpm_stage1_pretrain.py \
        --tiny --demo_data --max_steps 2 --per_device_train_batch_size 2 --output_dir /tmp/mpm1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpm_common import caption_dataset, mpm_parser, run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = mpm_parser(__doc__, train_files_help="JSON lines files with `image` (path) and `caption`.")
    parser.add_argument(
        "--freeze_patch_embed", action="store_true", help="Official code: keep patch embedding frozen."
    )
    parser.add_argument(
        "--freeze_vision_experts", action="store_true", help="Muffin DeepSpeed code: train only language experts."
    )
    parser.set_defaults(learning_rate=1e-4)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    run(args, stage=1, dataset=caption_dataset(args.train_files, args.demo_data))


if __name__ == "__main__":
    main()
