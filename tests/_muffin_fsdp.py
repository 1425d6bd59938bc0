"""Run by tests/utils/test_scale.py under `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2` with the environment of
`examples/accelerate_configs/fsdp2.yaml` (FSDP2 on gloo), and once without torchrun as the 1-process baseline.

    python _muffin_fsdp.py {sft,dpo} OUT_DIR [--rows N]

Writes `OUT_DIR/result-{rank}.json`: distributed type, world size, per-step losses, the FSDP-wrapped module
classes and, for `dpo`, the reference cache file.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from _fsdp_cpu import allow_fsdp_on_cpu
from datasets import Dataset
from PIL import Image

from hf_ext.testing import tiny_muffin
from hf_ext.utils.fsdp import FSDP2FusedLMHeadCallback

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "black": (0, 0, 0)}


def image(color: str) -> Image.Image:
    arr = np.full((32, 32, 3), 255, dtype=np.uint8)
    arr[4:28, 4:28] = COLORS[color]
    return Image.fromarray(arr)


def sft_rows(n: int) -> Dataset:
    names = sorted(COLORS)
    rows = []
    for i in range(n):
        c = names[i % len(names)]
        answer = f"a {c} square ." + " it is big ." * (i % 3)  # different lengths: padding differs across ranks
        rows.append(
            {
                "images": [image(c)],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "what is in the image ?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
            }
        )
    return Dataset.from_list(rows)


def dpo_rows(n: int) -> Dataset:
    names = sorted(COLORS)
    rows = []
    for i in range(n):
        c, w = names[i % len(names)], names[(i + 1) % len(names)]
        chosen = f"a {c} square ." + " it is big ." * (i % 3)
        rows.append(
            {
                "images": [image(c)],
                "prompt": [{"role": "user", "content": "what is in the image ?"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": f"a {w} circle ."}],
                "chosen_segments": [[2, 2 + len(c)]],
                "rejected_segments": [[2, 2 + len(w)]],
            }
        )
    return Dataset.from_list(rows)


def record_rows_seen(trainer) -> list[list[int]]:
    """A list that fills, at each `compute_loss` call of `trainer`, with a fingerprint of each row of the batch."""
    seen = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(model, inputs, *a, **k):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        seen.append(sorted(int(i[m.bool()].sum()) for i, m in zip(ids, mask)))
        return compute_loss(model, inputs, *a, **k)

    trainer.compute_loss = recording_compute_loss
    return seen


def assert_same_ref_cache(one_dir: Path, two_dir: Path) -> Path:
    """The reference cache written by several ranks in `two_dir` has the name (hence the key, the reference hash among
    it) and the values (to 1e-5) of the one-process cache in `one_dir`; returns its path."""
    from safetensors.torch import load_file

    (two_cache,) = list(two_dir.glob("train-*.safetensors"))
    (one_cache,) = list(one_dir.glob("train-*.safetensors"))
    assert one_cache.name == two_cache.name
    a, b = load_file(two_cache), load_file(one_cache)
    assert a.keys() == b.keys() and a["chosen_offsets"][-1] > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    return two_cache


def write_result(out: str, result: dict) -> None:
    """`out/result-{rank}.json`, then wait for every rank (the launching test reads all files once torchrun exits)."""
    with open(f"{out}/result-{result['rank']}.json", "w") as f:
        json.dump(result, f)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def common_args(out: str, per_device: int) -> dict:
    return dict(
        output_dir=out,
        per_device_train_batch_size=per_device,
        max_steps=2,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_drop_last=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sft", "dpo"])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--no_lm_head_fix", action="store_true", help="SFT without hf_ext's FSDP2 LM-head callback")
    args = parser.parse_args()
    allow_fsdp_on_cpu()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = args.global_batch // world
    model, processor = tiny_muffin(chat_template="muffin_v0")  # TRL needs prompt-prefix-consistent rendering
    model.train()
    if args.mode == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common_args(f"{args.out}/run", per_device), max_length=256, assistant_only_loss=False)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=sft_rows(args.rows),
            processing_class=processor,
            callbacks=[] if args.no_lm_head_fix else [FSDP2FusedLMHeadCallback()],
        )
    else:
        from hf_ext import DenseDPOConfig, DenseDPOTrainer

        config = DenseDPOConfig(
            **common_args(f"{args.out}/run", per_device),
            max_length=256,
            precompute_ref_log_probs=True,
            ref_logps_cache_dir=f"{args.out}/cache",
            dense_gamma=2.0,
        )
        trainer = DenseDPOTrainer(
            model=model, args=config, train_dataset=dpo_rows(args.rows), processing_class=processor
        )
    seen = record_rows_seen(trainer)
    trainer.train()
    from torch.distributed.fsdp import FSDPModule

    wrapped = sorted({type(m).__name__ for m in trainer.model_wrapped.modules() if isinstance(m, FSDPModule)})
    state = trainer.accelerator.state

    def local_bytes(t):  # this rank's share of a (possibly sharded) tensor
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(trainer.model_wrapped.parameters())
    optim_state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    result = {
        "rank": state.process_index,
        "world": state.num_processes,
        "distributed_type": state.distributed_type.value,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "fsdp_wrapped": wrapped,
        "rows_seen": seen,
        "grad_norms": [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e],
        "lm_head_hooked": getattr(trainer.model_wrapped.lm_head, "_hf_ext_unshard_hook", None) is not None,
        "num_params": sum(p.numel() for p in params),  # global sizes (DTensor.numel is the full tensor's)
        "num_trainable": sum(p.numel() for p in params if p.requires_grad),
        # AdamW creates its moments on a parameter's first gradient (BEiT-3's unused text embeddings get none)
        "num_with_optimizer_state": sum(p.numel() for p in trainer.optimizer.state),
        "local_param_bytes": sum(local_bytes(p) for p in params),
        "local_optimizer_bytes": sum(local_bytes(v) for v in optim_state),
        "sharded_params": sum(type(p).__name__ == "DTensor" for p in trainer.model_wrapped.parameters()),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
