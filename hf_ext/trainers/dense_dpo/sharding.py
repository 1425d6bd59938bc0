"""Reference log-probs under sharded training (FSDP2, DeepSpeed ZeRO-3): helpers of the precompute cache.

With a sharded reference model every forward is a collective (each rank all-gathers the parameters it lacks), so:

* the model hash that keys the cache must be computed from the full tensors, the same on every rank and for every
  world size (a cache written by 8 ranks is reused by 1 and vice versa): [`reference_hash`];
* each rank scores its own rows (row `i` on rank `i % world`), and a rank with fewer batches than the others runs
  extra forwards on a padding batch whose outputs it discards, so that every rank joins every collective:
  [`num_padding_batches`]. The rows are then gathered to the main process, which writes the cache atomically.
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = ["is_sharded_module", "num_padding_batches", "reference_hash"]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    # FSDP2 (`fully_shard`) stores parameters as DTensors: gather the full tensor (a collective, every rank calls it).
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def is_sharded_module(module: torch.nn.Module | None) -> bool:
    """Whether `module` holds sharded parameters (FSDP2 DTensors or DeepSpeed ZeRO-3), i.e. its forward is a
    collective that every rank must call the same number of times."""
    if module is None:
        return False
    # a DeepSpeed engine wraps the model in `.module`
    inner = getattr(module, "module", module)
    for p in inner.parameters():
        if callable(getattr(p, "full_tensor", None)) or hasattr(p, "ds_id"):
            return True
    return False


def reference_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names sorted, dtype and bytes of every tensor), equal for the plain module,
    the same module sharded by FSDP2 on any number of ranks, and under DeepSpeed ZeRO-3.

    Matches `trl.trainer.utils.hash_module` on an unsharded module (bf16/fp8 tensors are hashed as fp32), so caches
    written before this helper existed keep their keys. Sharded tensors are gathered one at a time (a ZeRO-3
    parameter with `deepspeed.zero.GatheredParameters`, an FSDP2 DTensor with `full_tensor()`), so no rank ever holds
    more than one full tensor beyond its shards: on a sharded module, every rank must call this (it is a collective).
    """
    inner = getattr(module, "module", module)  # a DeepSpeed engine wraps the model in `.module`
    params = dict(inner.named_parameters(remove_duplicate=False))
    h = hashlib.sha256()
    for name, tensor in sorted(inner.state_dict().items()):
        param = params.get(name)
        if param is not None and hasattr(param, "ds_id"):  # ZeRO-3: this rank holds a partition only
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                _update(h, param.detach())
        else:
            _update(h, _full(tensor).detach())
    return h.hexdigest()


def _update(h, tensor: torch.Tensor) -> None:
    tensor = tensor.cpu()
    h.update(str(tensor.dtype).encode())
    if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        tensor = tensor.to(torch.float32)
    h.update(tensor.contiguous().numpy().tobytes())


def num_padding_batches(num_rows: int, rank: int, world_size: int, batch_size: int) -> int:
    """Extra (discarded) forwards rank `rank` runs so that every rank runs as many as the busiest one, when rows are
    dealt round-robin (row `i` to rank `i % world_size`) and scored `batch_size` at a time.

    Args:
        num_rows (`int`): rows of the dataset.
        rank (`int`): this process's index.
        world_size (`int`): number of processes.
        batch_size (`int`): rows per forward.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"num_padding_batches: need batch_size >= 1 and 0 <= rank < world_size, got {locals()}.")
    most = math.ceil(math.ceil(num_rows / world_size) / batch_size)
    mine = math.ceil(len(range(rank, num_rows, world_size)) / batch_size)
    return most - mine
