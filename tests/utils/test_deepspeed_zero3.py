"""DeepSpeed ZeRO-3 on 2 CPU processes (gloo): dense DPO with the precomputed reference gives the loss of one process,
and the reference log-prob cache is computed once across ranks, equal to (and keyed like) the one-process cache.

Launched with the environment `accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml` gives
each rank (built by accelerate's own launcher code), under `ACCELERATE_USE_CPU=1 torchrun`; see
tests/_dense_dpo_zero3.py for the two switches DeepSpeed needs on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
CONFIG = ROOT / "examples" / "accelerate_configs" / "deepspeed_zero3.yaml"


def _deepspeed_launch_env(config_file: Path, num_processes: int) -> dict[str, str]:
    """The `ACCELERATE_*` variables `accelerate launch --config_file config_file` gives each rank (fp32 here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    argv = ["--config_file", str(config_file), "--num_processes", str(num_processes), "--mixed_precision", "no"]
    args, defaults, mixed_precision_from_config = _validate_launch_command(
        launch_command_parser().parse_args([*argv, "unused.py"])
    )
    # as `accelerate.commands.launch.launch_command` does before calling the DeepSpeed launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def test_deepspeed_zero3_config_launch_environment():
    env = _deepspeed_launch_env(CONFIG, 2)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "none"


def _run(out: Path, world: int) -> list[dict]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
    }
    # every parameter partitioned, as a real-size model's weights are (the tiny model is below DeepSpeed's default
    # persistence threshold, which would keep it whole on each rank after the first all-gather)
    script = [str(TESTS / "_dense_dpo_zero3.py"), str(out), "--rows", "9", "--persistence_threshold", "0"]
    if world == 1:
        cmd = [sys.executable, *script]
    else:
        env.update(_deepspeed_launch_env(CONFIG, world), ACCELERATE_USE_CPU="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *script]
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / f"result-{rank}.json").read_text()) for rank in range(world)]
    assert sorted(r["rank"] for r in results) == list(range(world))
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_two_process_dense_dpo_matches_one_process(tmp_path):
    """9 rows on 2 ZeRO-3 ranks, 2 rows per forward: rank 0 scores 5 reference rows in 3 forwards, rank 1 four rows in
    2 forwards plus one discarded padding forward, so both join the partitioned reference's all-gathers of 3 forwards
    (without the padding forward the ranks' collectives fall out of step: see docs/scale.md)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (`pip install 'hf_ext[deepspeed]'`)")
    sys.path.insert(0, str(TESTS))
    from _muffin_fsdp import assert_same_ref_cache

    two = _run(tmp_path / "two", 2)
    one = _run(tmp_path / "one", 1)[0]

    assert (
        one["distributed_type"] == "NO" and not one["reference"]["sharded"] and one["reference"]["forwards"] == 3
    )  # 9 rows, 4 a forward
    for r in two:
        assert r["world"] == 2 and r["distributed_type"] == "DEEPSPEED" and r["zero_stage"] == 3
        # the policy and the reference (TRL's `prepare_deepspeed`) are DeepSpeed engines with partitioned parameters
        assert r["engine"] == "DeepSpeedEngine" and r["policy_sharded"] and r["zero3_params"] > 0
        n = r["zero3_params"]
        assert r["reference"] == {
            "forwards": 3,
            "engine": "DeepSpeedEngine",
            "sharded": True,
            "params": n,
            "partitioned": n,
        }
        assert r["reference_freed"] and r["partitioned_params"] == n
        # each rank holds its half of every parameter (ZeRO-3 pads each partition by < world size elements)
        assert 0 <= r["local_param_numel"] - one["num_params"] / 2 <= n
        # same loss as one process at both steps (step 2 checks step 1's gradients, their reduction, the optimizer)
        assert len(r["losses"]) == 2
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(one["losses"]), rtol=2e-6, atol=0)
    assert all(r["num_params"] == one["num_params"] for r in two)
    for step, rows in enumerate(one["rows_seen"]):  # together the ranks saw the single process's rows, step by step
        assert sorted(two[0]["rows_seen"][step] + two[1]["rows_seen"][step]) == rows

    # the same key: the reference hash of the ZeRO-3-partitioned model (gathered) equals the plain model's
    two_cache = assert_same_ref_cache(tmp_path / "one" / "cache", tmp_path / "two" / "cache")

    # restart on 2 ranks with the cache in place: reused, not rewritten, no reference forward
    mtime = two_cache.stat().st_mtime_ns
    again = _run(tmp_path / "two", 2)
    assert two_cache.stat().st_mtime_ns == mtime
    assert all(r["reference"] == {"forwards": 0} for r in again)
    assert again[0]["losses"] == two[0]["losses"]
