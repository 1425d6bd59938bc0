"""Train DELLA or TRACE on a plain text file (one example per line) with transformers' Trainer.

Examples::

    # tiny DELLA from scratch, BPE tokenizer trained on the file itself
    accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/text_vae/train_text_vae.py --model della --train_file ../shared/data/yahoo/yahoo.valid.txt \
        --max_lines 2000 --n_layer 4 --n_embd 64 --output_dir out/della --max_steps 200

    # DELLA as the official code computes it (every official flag) with the original beta rule
    python examples/text_vae/train_text_vae.py --model della --official --beta_schedule della_original \
        --train_file ../shared/data/yahoo/yahoo.valid.txt --max_lines 2000 --output_dir out/della_official

    # TRACE from a local GPT-2 checkpoint (its tokenizer must be saved next to it), sentence segments
    accelerate launch examples/text_vae/train_text_vae.py --model trace --backbone path/to/gpt2 \
        --train_file train.txt --eval_file valid.txt --output_dir out/trace --num_cycles 4 --free_bits 0.1

Every ``TextVAEConfig`` (``TrainingArguments``) flag works (``--learning_rate``, ``--per_device_train_batch_size``,
``--beta_schedule constant``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, HfArgumentParser

from hf_ext.models.della import ORIGINAL_DELLA_FLAGS, DellaConfig, DellaForCausalLM
from hf_ext.models.trace import TraceConfig, TraceForCausalLM
from hf_ext.testing import tiny_bpe_tokenizer
from hf_ext.trainers.text_vae import TextVAEConfig, TextVAETrainer


@dataclass
class ScriptArguments:
    model: str = field(default="della", metadata={"help": "della or trace", "choices": ["della", "trace"]})
    train_file: str = field(default=None, metadata={"help": "plain text, one example per line"})
    eval_file: str | None = field(default=None, metadata={"help": "optional evaluation text file"})
    max_lines: int | None = field(default=None, metadata={"help": "read at most this many lines per file"})
    max_length: int = field(default=64, metadata={"help": "tokens per example (longer lines are truncated)"})
    backbone: str | None = field(default=None, metadata={"help": "local GPT-2 checkpoint to initialise from"})
    vocab_size: int = field(default=4000, metadata={"help": "BPE vocabulary when training a tokenizer"})
    n_layer: int = field(default=4)
    n_embd: int = field(default=128)
    n_head: int = field(default=4)
    latent_size: int = field(default=32)
    kl_reduction: str = field(default="sum", metadata={"choices": ["sum", "mean"]})
    official: bool = field(
        default=False,
        metadata={"help": "DELLA: every flag of the official code (DellaConfig.from_original_defaults)"},
    )
    segmentation: str = field(default="separator", metadata={"help": "TRACE: separator or fixed"})
    segment_length: int = field(default=16, metadata={"help": "TRACE: tokens per fixed segment"})
    training_mode: str = field(default="parallel", metadata={"help": "TRACE: parallel or sequential"})


def parse_args():
    parser = HfArgumentParser((ScriptArguments, TextVAEConfig))
    return parser.parse_args_into_dataclasses()


def read_lines(path: str, limit: int | None) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--train_file/--eval_file {path!r} does not exist.")
    lines = []
    with file.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(lines) >= limit:
                break
            line = line.strip()
            if not line:
                continue  # an empty line has no text to model
            lines.append(line)
    if not lines:
        raise ValueError(f"{path!r} has no non-empty line.")
    return lines


def main() -> None:
    script, args = parse_args()
    if script.train_file is None:
        raise ValueError("--train_file is required.")
    train_text = read_lines(script.train_file, script.max_lines)
    if script.backbone:
        tok = AutoTokenizer.from_pretrained(script.backbone)
    else:
        tok = tiny_bpe_tokenizer(train_text, vocab_size=script.vocab_size)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode(lines):
        return Dataset.from_list(
            [{"input_ids": [bos, *tok(x)["input_ids"][: script.max_length - 2], tok.eos_token_id]} for x in lines]
        )

    train_ds = encode(train_text)
    eval_ds = encode(read_lines(script.eval_file, script.max_lines)) if script.eval_file else None

    latent = dict(latent_size=script.latent_size, kl_reduction=script.kl_reduction)
    if script.official:
        if script.model != "della":
            raise ValueError("--official applies to DELLA only (TRACE has no official code).")
        latent = dict(ORIGINAL_DELLA_FLAGS, latent_size=script.latent_size)
    if script.model == "trace":
        seps = [tok.convert_tokens_to_ids(t) for t in ("Ġ.", "Ġ?", "Ġ!", ".", "?", "!")]
        seps = sorted({s for s in seps if s is not None and s != tok.unk_token_id})
        latent.update(
            segmentation=script.segmentation if seps else "fixed",
            separator_token_ids=seps or None,
            segment_length=script.segment_length,
            training_mode=script.training_mode,
            max_segments=script.max_length,
        )
    size = dict(
        vocab_size=len(tok),
        n_positions=max(2 * script.max_length, 128),
        n_layer=script.n_layer,
        n_embd=script.n_embd,
        n_head=script.n_head,
        bos_token_id=bos,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_cls, config_cls = (
        (TraceForCausalLM, TraceConfig) if script.model == "trace" else (DellaForCausalLM, DellaConfig)
    )
    if script.backbone:
        # the official code leaves its untied lm_head randomly initialised
        extra = dict(init_lm_head=False) if script.official else {}
        model = model_cls.from_backbone(script.backbone, pad_token_id=tok.pad_token_id, **latent, **extra)
    else:
        model = model_cls(config_cls(**size, **latent))

    trainer = TextVAETrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds)
    trainer.train()
    if eval_ds is not None:
        trainer.evaluate()
    trainer.save_model(args.output_dir)
    tok.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
