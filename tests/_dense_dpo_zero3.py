"""Run by tests/utils/test_deepspeed_zero3.py under `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2` with the
environment of `examples/accelerate_configs/deepspeed_zero3.yaml` (DeepSpeed ZeRO-3 on gloo), and once without
torchrun as the 1-process baseline (no DeepSpeed).

    python _dense_dpo_zero3.py OUT_DIR [--rows N] [--persistence_threshold 0]

Dense DPO (`DenseDPOTrainer`, precomputed reference, γ = 2) on a tiny Muffin. Writes `OUT_DIR/result-{rank}.json`:
distributed type, world size, per-step losses, rows seen per step, how the reference and the policy were sharded, and
this rank's share of the parameters.
"""

from __future__ import annotations

import argparse
import os

from _muffin_fsdp import common_args, dpo_rows, record_rows_seen, write_result

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.testing import tiny_muffin
from hf_ext.trainers.dense_dpo.sharding import is_sharded_module


def allow_deepspeed_on_cpu() -> None:
    """Let accelerate run DeepSpeed on the MULTI_CPU backend (gloo), as it does on GPUs.

    * accelerate only turns DeepSpeed on for GPU-like backends (`AcceleratorState` ignores the DeepSpeed plugin when
      `cpu=True`); `deepspeed.initialize` itself runs on CPU with DeepSpeed's CPU accelerator.
    * DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce kernel (`deepspeed_shm_comm`, a
      C++ torch extension) in `init_distributed`: minutes on a loaded 2-core machine, and a build that is killed leaves
      `~/.cache/torch_extensions/<py>_cpu/deepspeed_shm_comm/lock` behind, on which every later run waits forever.
      Marking the kernel unavailable makes DeepSpeed use gloo's collectives (as on a platform without it). The
      optimizer is the Trainer's torch AdamW (no `optimizer` in the DeepSpeed config), so DeepSpeed's `fused_adam`
      extension is not built either.
    """
    import deepspeed.ops
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if getattr(AcceleratorState.__init__, "_hf_ext_deepspeed_cpu", False):
        return
    original = AcceleratorState.__init__

    def __init__(self, *args, deepspeed_plugin=None, **kwargs):
        original(self, *args, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and deepspeed_plugin is not None:
            # what `PartialState` and `AcceleratorState` do for DeepSpeed on a GPU backend (every later
            # `AcceleratorState()` copies `PartialState`'s distributed type)
            PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"  # DeepSpeed handles mixed precision through its config

    __init__._hf_ext_deepspeed_cpu = True
    AcceleratorState.__init__ = __init__


def _partitioned(params) -> int:
    # ZeRO-3 parameters this rank holds only a slice of, all-gathered in each forward (parameters below
    # `stage3_param_persistence_threshold` stay whole on every rank once fetched)
    return sum(hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel and not p.ds_persist for p in params)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=9)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument(
        "--persistence_threshold",
        type=int,
        default=None,
        help="ZeRO-3 `stage3_param_persistence_threshold`: parameters with at most this many elements are kept whole "
        "on every rank once fetched (DeepSpeed's default 1e5 covers every parameter of the tiny model; 0 partitions "
        "them all, as the weights of a real-size model are)",
    )
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        allow_deepspeed_on_cpu()
    per_device = args.global_batch // world
    model, processor = tiny_muffin(chat_template="muffin_v0")
    model.train()
    # the reference exists only while the cache is written: record how it was sharded and how often it ran
    reference = {"forwards": 0}
    write_ref_cache, reference_forward = DenseDPOTrainer._write_ref_cache, DenseDPOTrainer._reference_per_token_logps

    def recording_write_ref_cache(self, *a, **k):
        reference.update(engine=type(self.ref_model).__name__, sharded=is_sharded_module(self.ref_model))
        ref_params = list(getattr(self.ref_model, "module", self.ref_model).parameters())
        reference.update(params=len(ref_params), partitioned=_partitioned(ref_params))
        return write_ref_cache(self, *a, **k)

    def counting_reference_forward(self, *a, **k):
        reference["forwards"] += 1
        return reference_forward(self, *a, **k)

    DenseDPOTrainer._write_ref_cache = recording_write_ref_cache
    DenseDPOTrainer._reference_per_token_logps = counting_reference_forward
    config = DenseDPOConfig(
        **common_args(f"{args.out}/run", per_device),
        max_length=256,
        precompute_ref_log_probs=True,
        ref_logps_cache_dir=f"{args.out}/cache",
        dense_gamma=2.0,
    )
    if args.persistence_threshold is not None and config.deepspeed_plugin is not None:
        zero = config.deepspeed_plugin.deepspeed_config["zero_optimization"]
        zero["stage3_param_persistence_threshold"] = args.persistence_threshold
    trainer = DenseDPOTrainer(model=model, args=config, train_dataset=dpo_rows(args.rows), processing_class=processor)
    seen = record_rows_seen(trainer)
    trainer.train()
    state = trainer.accelerator.state
    engine = trainer.model_wrapped
    params = list(getattr(engine, "module", engine).parameters())
    zero3 = [p for p in params if hasattr(p, "ds_id")]
    result = {
        "rank": state.process_index,
        "world": state.num_processes,
        "distributed_type": state.distributed_type.value,
        "zero_stage": trainer.accelerator.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "engine": type(engine).__name__,
        "reference": reference,
        "reference_freed": trainer.ref_model is None,
        "policy_sharded": is_sharded_module(engine),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "rows_seen": seen,
        "num_params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params),
        "zero3_params": len(zero3),
        "partitioned_params": _partitioned(params),
        # ZeRO-3 keeps this rank's partition in `ds_tensor` (padded to a multiple of the world size)
        "local_param_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
