"""Beyond one process: accelerate configs, `_no_split_modules` (tested by FSDP2 wrapping), 2-process FSDP2 training
(Muffin SFT and dense DPO, same losses as one process), quantised loading (torchao), the GPU benchmark's dry run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_ext  # noqa: F401  (registers the Auto classes)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate_configs"


# ------------------------------------------------------------------------------------------ accelerate configs
@pytest.mark.parametrize(
    "name, distributed_type",
    [
        ("multi_gpu", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero3", "DEEPSPEED"),
    ],
)
def test_accelerate_configs_load(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == 8 and str(config.mixed_precision) == "bf16"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_fsdp2_config_launch_environment():
    """What `accelerate launch --config_file fsdp2.yaml` hands each rank: FSDP2, one unit per transformer layer read
    from the model's `_no_split_modules` (no class list in the file)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _fsdp_cpu import launch_env

    env = launch_env(CONFIGS / "fsdp2.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


# ------------------------------------------------------------------------------------------ _no_split_modules
def _tiny_models():
    """(name, model, inputs, layer classes that repeat in the architecture, written out by hand)."""
    from hf_ext.models.beit3 import Beit3Model
    from hf_ext.models.della import DellaConfig, DellaForCausalLM
    from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM
    from hf_ext.models.muffin import tiny_muffin
    from hf_ext.models.trace import TraceConfig, TraceForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(4, 40, (2, 10))
    gpt2 = dict(
        vocab_size=40,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    latent = dict(latent_size=6, latent_lmf_rank=2)
    out = []
    for model_type in ("muffin", "viscpm_chat"):
        model, _ = tiny_muffin(model_type=model_type)
        pixels = torch.randn(2, 3, 32, 32)
        image_ids = torch.full((2, model.config.num_query), model.config.image_token_id)
        inputs = {"input_ids": torch.cat([image_ids, ids], 1), "pixel_values": pixels}
        out.append((model_type, model, inputs, {"Beit3Layer", "LlamaDecoderLayer"}))
    muffin, _ = tiny_muffin()
    beit3 = Beit3Model._from_config(muffin.config.vision_config).eval()
    out.append(("beit3", beit3, {"pixel_values": torch.randn(2, 3, 32, 32)}, {"Beit3Layer"}))
    out.append(("della", DellaForCausalLM(DellaConfig(**gpt2, **latent)).eval(), {"input_ids": ids}, {"DellaBlock"}))
    trace = TraceForCausalLM(TraceConfig(**gpt2, **latent, separator_token_ids=[3], max_segments=8)).eval()
    out.append(("trace", trace, {"input_ids": ids}, {"DellaBlock"}))
    out.append(("jiuge", JiugeForCausalLM(JiugeConfig(**gpt2)).eval(), {"input_ids": ids}, {"GPT2Block"}))
    return out


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    import torch.distributed as dist

    if not dist.is_initialized():
        store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        yield
        dist.destroy_process_group()
    else:
        yield


def _first_tensor(output):
    for key in ("logits", "last_hidden_state"):
        if getattr(output, key, None) is not None:
            return getattr(output, key)
    raise AssertionError(f"no logits/last_hidden_state in {type(output).__name__}")


@pytest.mark.parametrize("index", range(6), ids=["muffin", "viscpm_chat", "beit3", "della", "trace", "jiuge"])
def test_no_split_modules_wrap_every_layer(index, gloo_group):
    """`_no_split_modules` (gathered by transformers from every sub-model) names exactly the repeated layer classes;
    wrapping each of them with FSDP2's `fully_shard` (accelerate's TRANSFORMER_BASED_WRAP) leaves no layer in the
    root unit and gives the unwrapped model's outputs."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    name, model, inputs, expected = _tiny_models()[index]
    assert set(model._no_split_modules) == expected, name
    layers = [m for m in model.modules() if type(m).__name__ in expected]
    assert {type(m).__name__ for m in layers} == expected
    plain = copy.deepcopy(model)
    for module in layers:
        fully_shard(module)
    fully_shard(model)
    assert all(isinstance(m, FSDPModule) for m in layers)
    # every parameter lives in exactly one unit: the layers' own or the root's leftovers (embeddings, heads, bridge)
    in_layers = {id(p) for m in layers for p in m.parameters()}
    assert len(in_layers) == sum(p.numel() > 0 for m in layers for p in m.parameters())
    torch.manual_seed(0)
    with torch.no_grad():
        expected_out = _first_tensor(plain(**inputs))
    torch.manual_seed(0)
    with torch.no_grad():
        got = _first_tensor(model(**inputs))
    torch.testing.assert_close(got, expected_out, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ 2-process FSDP2
def _run_script(mode: str, out: Path, world: int, *extra: str) -> list[dict]:
    """Run tests/_muffin_fsdp.py on `world` CPU processes (FSDP2 from examples/accelerate_configs/fsdp2.yaml when
    world > 1) and return each rank's result."""
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    from _fsdp_cpu import launch_env

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here), str(ROOT)])}
    script = [str(here / "_muffin_fsdp.py"), mode, str(out), *extra]
    if world == 1:
        cmd = [sys.executable, *script]
    else:
        env.update(launch_env(CONFIGS / "fsdp2.yaml", num_processes=world), ACCELERATE_USE_CPU="1")
        # --standalone: a free rendezvous port, so concurrent multi-process tests (xdist) do not collide on 29500
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((out / f"result-{rank}.json").read_text()) for rank in range(world)]
    assert sorted(r["rank"] for r in results) == list(range(world))
    return results


def _check_same_run(one: dict, two: list[dict]) -> None:
    for r in two:
        assert r["world"] == 2 and r["distributed_type"] == "FSDP"
        # one FSDP unit per BEiT-3 and LLM layer (from `_no_split_modules`), parameters sharded as DTensors
        assert {"FSDPBeit3Layer", "FSDPLlamaDecoderLayer"} <= set(r["fsdp_wrapped"]) and r["sharded_params"] > 0
        # same loss as one process at every step (step 2 checks the gradients and optimizer state of step 1)
        assert len(r["losses"]) == 2
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(one["losses"]), rtol=2e-6, atol=0)
    # the two ranks together saw exactly the single process's rows, step by step
    for step, rows in enumerate(one["rows_seen"]):
        assert sorted(two[0]["rows_seen"][step] + two[1]["rows_seen"][step]) == rows


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_two_process_muffin_sft_matches_one_process(tmp_path):
    one = _run_script("sft", tmp_path / "one", 1)[0]
    two = _run_script("sft", tmp_path / "two", 2)
    assert all(r["lm_head_hooked"] for r in two) and not one["lm_head_hooked"]
    _check_same_run(one, two)
    # Without hf_ext's FSDP2FusedLMHeadCallback, TRL's fused LM head leaves the LM head's gradient unreduced across
    # ranks (accelerate gives the head its own unit; see hf_ext/utils/fsdp.py): step 1 agrees, step 2 does not. When
    # this assertion fails, the libraries fixed it upstream and the callback can go.
    unfixed = _run_script("sft", tmp_path / "unfixed", 2, "--no_lm_head_fix")
    assert unfixed[0]["losses"][0] == pytest.approx(one["losses"][0], rel=2e-6)
    assert abs(unfixed[0]["losses"][1] - one["losses"][1]) > 1e-4


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_two_process_dense_dpo_matches_one_process(tmp_path):
    """9 rows on 2 ranks: rank 0 scores 5 reference rows, rank 1 four, so rank 1 joins the sharded reference's
    collectives with a discarded padding batch; the gathered cache equals a single-process one and is reused."""
    from safetensors.torch import load_file

    two = _run_script("dpo", tmp_path / "two", 2, "--rows", "9")
    (two_cache,) = list((tmp_path / "two" / "cache").glob("train-*.safetensors"))
    one = _run_script("dpo", tmp_path / "one", 1, "--rows", "9")[0]
    (one_cache,) = list((tmp_path / "one" / "cache").glob("train-*.safetensors"))
    _check_same_run(one, two)
    # same key: the reference hash of the FSDP2-sharded model equals the plain model's
    assert one_cache.name == two_cache.name
    a, b = load_file(two_cache), load_file(one_cache)
    assert a.keys() == b.keys() and a["chosen_offsets"][-1] > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    # restart on 2 ranks with the cache in place: reused, not rewritten
    mtime = two_cache.stat().st_mtime_ns
    again = _run_script("dpo", tmp_path / "two", 2, "--rows", "9")
    assert two_cache.stat().st_mtime_ns == mtime
    assert again[0]["losses"] == two[0]["losses"]
