"""FSDP2 on CPU for the 2-process tests (gloo): the launch environment of an accelerate config file, and a switch
that lets accelerate run FSDP on the MULTI_CPU backend (not collected by pytest).

accelerate only turns FSDP on for GPU-like backends; `torch.distributed.fsdp.fully_shard` itself runs on CPU with
gloo. The tests therefore launch exactly what `accelerate launch --config_file <yaml>` would set up (same
environment variables, built by accelerate's own launcher code), run under `ACCELERATE_USE_CPU=1 torchrun`, and call
[`allow_fsdp_on_cpu`] in each rank before the trainer creates its `Accelerator`.
"""

from __future__ import annotations

import os


def launch_env(config_file: str, num_processes: int = 2, mixed_precision: str = "no") -> dict[str, str]:
    """The environment variables `accelerate launch --config_file config_file` gives each rank (FSDP keys only)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        [
            "--config_file",
            str(config_file),
            "--num_processes",
            str(num_processes),
            "--mixed_precision",
            mixed_precision,
            "unused.py",
        ]
    )
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_USE_FSDP", "FSDP_", "ACCELERATE_MIXED"))}


def allow_fsdp_on_cpu() -> None:
    """Make `AcceleratorState` honour `ACCELERATE_USE_FSDP` on the MULTI_CPU backend (gloo), as it does on GPUs."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if getattr(AcceleratorState.__init__, "_hf_ext_fsdp_cpu", False):
        return
    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if (
            self.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        ):
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin if fsdp_plugin is not None else FullyShardedDataParallelPlugin()

    __init__._hf_ext_fsdp_cpu = True
    AcceleratorState.__init__ = __init__
