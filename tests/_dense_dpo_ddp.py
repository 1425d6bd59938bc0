"""Run by tests/trainers/dense_dpo/test_dense_dpo.py::test_two_process_run under `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2`."""

import sys

from _dense_dpo_helpers import base_args, text_dataset

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2


def main(out: str) -> None:
    tok = tiny_bpe_tokenizer()
    trainer = DenseDPOTrainer(
        model=tiny_gpt2(tok),
        args=DenseDPOConfig(
            **base_args(f"{out}/run", per_device_train_batch_size=2, max_steps=2),
            precompute_ref_log_probs=True,
            ref_logps_cache_dir=f"{out}/cache",
            dense_gamma=2.0,
        ),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    trainer.train()
    state = trainer.accelerator.state
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(f"RANK {state.process_index} world {state.num_processes} {state.distributed_type.value} losses {losses}")


if __name__ == "__main__":
    main(sys.argv[1])
