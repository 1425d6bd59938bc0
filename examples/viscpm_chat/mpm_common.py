"""Shared code of the MPM examples (VisCPM-Chat / Muffin trained with TRL's SFTTrainer): data loading and the run.

Stage 1 (`mpm_stage1_pretrain.py`) and stage 2 (`mpm_stage2_sft.py`) only differ in which parameters train
(`hf_ext.models.viscpm_chat.prepare_mpm_stage`) and in their data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CAPTION_PROMPT = "Describe the image briefly."


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_name_or_path", default=None, help="hf_ext Muffin/VisCPM-Chat checkpoint (folder or Hub id)."
    )
    parser.add_argument(
        "--tiny", action="store_true", help="Use a random tiny VisCPM-Chat built offline (smoke test)."
    )
    parser.add_argument("--demo_data", action="store_true", help="Use a few synthetic rows instead of --train_files.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--warmup_ratio", type=float, default=0.03)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--assistant_only_loss", action="store_true", help="Mask human turns (Muffin's default).")
    parser.add_argument("--report_to", default="none")
    parser.add_argument("--seed", type=int, default=0)


def load_model_and_processor(args):
    if args.tiny:
        from hf_ext.testing import tiny_muffin

        return tiny_muffin(model_type="viscpm_chat", seed=args.seed)
    if args.model_name_or_path is None:
        raise ValueError("Pass --model_name_or_path (an hf_ext checkpoint, e.g. from the converters) or --tiny.")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_ext  # noqa: F401  (registers the model types)

    model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    return model, processor


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
    import tempfile

    from dataset_builders.unimm_chat import load_unimm_chat, write_unimm_chat_parquet

    if demo:
        parquet_files = [str(write_unimm_chat_parquet(Path(tempfile.mkdtemp()) / "unimm_chat_demo.parquet"))]
    if not parquet_files:
        raise ValueError("Pass --train_files (UniMM-Chat parquet files) or --demo_data.")
    ds = load_unimm_chat(parquet_files, on_bad_row="skip")
    return ds.select_columns(["messages", "images"])


def run(args, stage: int, dataset) -> None:
    from trl import SFTConfig, SFTTrainer

    from hf_ext.models.viscpm_chat import prepare_mpm_stage

    model, processor = load_model_and_processor(args)
    counts = prepare_mpm_stage(
        model,
        stage,
        freeze_patch_embed=getattr(args, "freeze_patch_embed", False),
        freeze_vision_experts=getattr(args, "freeze_vision_experts", False),
    )
    print(f"MPM stage {stage}: {counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters")
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=0.0,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        assistant_only_loss=args.assistant_only_loss,
        report_to=args.report_to,
        logging_steps=1,
        save_strategy="no",
        seed=args.seed,
        remove_unused_columns=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
