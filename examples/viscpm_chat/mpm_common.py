"""Shared code of the MPM examples (VisCPM-Chat / Muffin trained with TRL's SFTTrainer): data loading and the run.

Stage 1 (`mpm_stage1_pretrain.py`) and stage 2 (`mpm_stage2_sft.py`) only differ in which parameters train
(`hf_ext.models.viscpm_chat.prepare_mpm_stage`) and in their data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for `_shared`
from _shared import add_sft_arguments, load_model_and_processor, sft_config, unimm_chat_dataset  # noqa: E402

CAPTION_PROMPT = "Describe the image briefly."


def mpm_parser(description: str, train_files_help: str) -> argparse.ArgumentParser:
    """The arguments both stages take; a stage adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sft_arguments(
        parser,
        model_help="hf_ext Muffin/VisCPM-Chat checkpoint (folder or Hub id).",
        tiny_help="Use a random tiny VisCPM-Chat built offline (smoke test).",
    )
    parser.add_argument("--train_files", nargs="*", help=train_files_help)
    parser.add_argument("--warmup_ratio", type=float, default=0.03)
    parser.add_argument("--assistant_only_loss", action="store_true", help="Mask human turns (Muffin's default).")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def caption_dataset(jsonl_files: list[str] | None, demo: bool):
    """Stage-1 data: JSON lines `{"image": path, "caption": str}` (English image-text pairs) → conversational rows."""
    from datasets import Dataset
    from PIL import Image

    if demo:
        from dataset_builders.unimm_chat import make_unimm_chat_rows

        rows = []
        for r in make_unimm_chat_rows(8):
            import io

            caption = json.loads(r["conversation"])[1]["value"]
            rows.append({"images": [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")], "caption": caption})
    else:
        if not jsonl_files:
            raise ValueError("Pass --train_files (JSON lines with `image` and `caption`) or --demo_data.")
        rows = []
        for f in jsonl_files:
            for i, line in enumerate(Path(f).read_text().splitlines()):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "image" not in rec or not str(rec.get("caption", "")).strip():
                    raise ValueError(f"{f}: line {i + 1} needs `image` and a non-empty `caption`.")
                path = Path(rec["image"])
                path = path if path.is_absolute() else Path(f).parent / path
                rows.append({"images": [Image.open(path).convert("RGB")], "caption": rec["caption"]})
    msgs = [
        {
            "images": r["images"],
            "messages": [
                {"role": "user", "content": CAPTION_PROMPT},
                {"role": "assistant", "content": r["caption"]},
            ],
        }
        for r in rows
    ]
    return Dataset.from_list(msgs)


def instruction_dataset(parquet_files: list[str] | None, demo: bool):
    """Stage-2 data: UniMM-Chat parquet files (Hub schema) → TRL conversational rows with images."""
    return unimm_chat_dataset(parquet_files, demo)


def run(args, stage: int, dataset) -> None:
    from trl import SFTTrainer

    from hf_ext.models.viscpm_chat import prepare_mpm_stage

    model, processor = load_model_and_processor(args, model_type="viscpm_chat", seed=args.seed)
    counts = prepare_mpm_stage(
        model,
        stage,
        freeze_patch_embed=getattr(args, "freeze_patch_embed", False),
        freeze_vision_experts=getattr(args, "freeze_vision_experts", False),
    )
    print(f"MPM stage {stage}: {counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters")
    config = sft_config(
        args,
        warmup_steps=args.warmup_ratio,
        assistant_only_loss=args.assistant_only_loss,
        seed=args.seed,
        remove_unused_columns=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
