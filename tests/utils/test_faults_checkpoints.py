"""Fault regressions (issue #16): checkpoints killed mid-write, pushes of pickles and stale folders, model cards with
local paths, weights corrupted inside the tensor data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import HfApi
from safetensors.torch import load_file

from hf_ext.hub.integrity import MANIFEST_NAME, WeightsIntegrityError, sha256_file, verify_weights
from hf_ext.models.della import DellaConfig, DellaForCausalLM
from hf_ext.trainers.text_vae import TextVAEConfig, TextVAETrainer

ROOT = Path(__file__).resolve().parents[2]

TINY = dict(vocab_size=40, n_embd=32, n_layer=2, n_head=2, n_positions=48, latent_size=6, latent_lmf_rank=2)
TINY.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _model(seed=0):
    torch.manual_seed(seed)
    return DellaForCausalLM(DellaConfig(**TINY))


def _data():
    g = torch.Generator().manual_seed(0)
    return Dataset.from_list([{"input_ids": torch.randint(2, 40, (8,), generator=g).tolist()} for _ in range(8)])


def _args(output_dir, **kwargs):
    defaults = dict(per_device_train_batch_size=4, save_steps=1, report_to=[], use_cpu=True, max_steps=3)
    return TextVAEConfig(output_dir=str(output_dir), **{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------ kill -9
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_faults_checkpoints import _args, _data, _model
from hf_ext.trainers.text_vae import TextVAETrainer

trainer = TextVAETrainer(model=_model(), args=_args({out!r}), train_dataset=_data())
original = trainer._save_rng_state

def save_rng_state(output_dir):  # die half-way through the second checkpoint: weights and optimizer are written
    if trainer.state.global_step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    original(output_dir)

trainer._save_rng_state = save_rng_state
trainer.train()
"""


def test_kill_during_checkpoint_write_then_resume(tmp_path):
    out = tmp_path / "run"
    code = KILLED_RUN.format(tests=str(Path(__file__).resolve().parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    # the interrupted checkpoint never appears under its final name; the complete one does
    assert "checkpoint-1" in names and "checkpoint-2" not in names and ".tmp-checkpoint-2" in names
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    trainer = TextVAETrainer(model=_model(), args=_args(out), train_dataset=_data())
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 3
    assert {"checkpoint-1", "checkpoint-2", "checkpoint-3"} <= {p.name for p in out.iterdir()}
    assert not (out / ".tmp-checkpoint-2").exists()  # the leftover was replaced by the complete step-2 save
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_resume_skips_incomplete_checkpoints(tmp_path, caplog):
    out = tmp_path / "run"
    trainer = TextVAETrainer(model=_model(), args=_args(out, max_steps=1), train_dataset=_data())
    trainer.train()
    # a folder as another tool (or a crash of a plain Trainer) leaves it: weights but no trainer_state.json
    partial = out / "checkpoint-7"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((out / "checkpoint-1" / "model.safetensors").read_bytes())
    resumed = TextVAETrainer(model=_model(), args=_args(out, max_steps=2), train_dataset=_data())
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2  # resumed from checkpoint-1, not from the broken checkpoint-7
    with pytest.raises(ValueError, match="incomplete checkpoint .*trainer_state.json"):
        TextVAETrainer(model=_model(), args=_args(out), train_dataset=_data()).train(str(partial))


# ------------------------------------------------------------------------------------------------ pushes
def test_push_uploads_no_pickles_or_stale_checkpoints_and_a_clean_card(local_hub, tmp_path):
    out = tmp_path / "reused-output"
    stale = out / "old-run" / "checkpoint-9"  # left by an earlier run in the same output_dir
    stale.mkdir(parents=True)
    for name in ("optimizer.pt", "rng_state.pth", "scheduler.pt"):
        (stale / name).write_bytes(b"pickle")
    (out / "pytorch_model.bin").write_bytes(b"pickle")
    repo = f"tester/push-{uuid.uuid4().hex[:8]}"
    args = _args(out, max_steps=1, push_to_hub=True, hub_model_id=repo, hub_strategy="every_save")
    trainer = TextVAETrainer(model=_model(), args=args, train_dataset=_data())
    trainer.train()
    trainer.push_to_hub()
    files = set(HfApi().list_repo_files(repo))
    assert {"model.safetensors", "config.json", "training_args.json", MANIFEST_NAME, "README.md"} <= files
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert pickles == [] and not any("checkpoint-" in f for f in files), sorted(files)
    assert not (out / "training_args.bin").exists() and not (out / "checkpoint-1" / "training_args.bin").exists()
    pushed_args = json.loads(local_hub.repo_files(repo)["training_args.json"])
    assert pushed_args["max_steps"] == 1 and pushed_args["output_dir"] == "<local path>"
    card = local_hub.repo_files(repo)["README.md"].decode()
    assert f'AutoModelForCausalLM.from_pretrained("{repo}")' in card
    assert "AutoModel.from_pretrained" not in card
    assert str(tmp_path) not in card and "/tmp" not in card


# ------------------------------------------------------------------------------------------------ integrity
def _flip_tensor_bytes(path: Path, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header size, JSON header, then tensor data
    start = header + (len(data) - header) // 2
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_tensor_bytes_are_caught_when_verifying(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    manifest = json.loads((tmp_path / "m" / MANIFEST_NAME).read_text())
    assert manifest["files"]["model.safetensors"] == {"sha256": sha256_file(weights), "size": weights.stat().st_size}
    assert verify_weights(tmp_path / "m") == {"model.safetensors": sha256_file(weights)}
    _flip_tensor_bytes(weights)
    # what the issue reproduced: without verification the damaged weights load silently (and differ)
    silent = DellaForCausalLM.from_pretrained(tmp_path / "m")
    before = model.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in silent.state_dict().items() if k in before)
    with pytest.raises(WeightsIntegrityError, match=r"model\.safetensors has sha256 .* expected"):
        DellaForCausalLM.from_pretrained(tmp_path / "m", verify_weights=True)
    os.environ["HF_EXT_VERIFY_WEIGHTS"] = "1"
    try:
        with pytest.raises(WeightsIntegrityError):
            DellaForCausalLM.from_pretrained(tmp_path / "m")
    finally:
        del os.environ["HF_EXT_VERIFY_WEIGHTS"]


def test_truncated_and_unlisted_weights(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(WeightsIntegrityError, match="truncated or replaced"):
        verify_weights(tmp_path / "m")
    (tmp_path / "m" / MANIFEST_NAME).unlink()
    with pytest.raises(WeightsIntegrityError, match=f"has no {MANIFEST_NAME}"):
        verify_weights(tmp_path / "m")


def test_trainer_saves_write_a_manifest_for_any_model(tmp_path):
    trainer = TextVAETrainer(model=_model(), args=_args(tmp_path / "run", max_steps=1), train_dataset=_data())
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-1"):
        digests = verify_weights(folder)
        assert digests == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    saved, live = load_file(tmp_path / "run" / "model.safetensors"), trainer.model.state_dict()
    assert saved and all(torch.equal(t, live[k]) for k, t in saved.items())


def test_hub_download_verified_against_the_lfs_sha256(local_hub, tmp_path):
    repo = f"tester/verify-{uuid.uuid4().hex[:8]}"
    model = _model()
    model.push_to_hub(repo)
    assert set(verify_weights(repo)) == {"model.safetensors"}
    good = local_hub.repo_files(repo)["model.safetensors"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    local_hub.corrupt_file(repo, "model.safetensors", bytes(bad))
    with pytest.raises(WeightsIntegrityError, match="force_download=True"):
        DellaForCausalLM.from_pretrained(repo, verify_weights=True, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------ config errors
def test_missing_config_json_is_named(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_ext.hub.safe_loading import CheckpointConfigError

    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    for load in (AutoModelForCausalLM.from_pretrained, DellaForCausalLM.from_pretrained):
        # was "Should have a `model_type` key" (Auto) or a default-size model and a size-mismatch report (class)
        with pytest.raises(CheckpointConfigError, match="has no config.json"):
            load(tmp_path / "m")


def test_unknown_model_type_is_an_error_not_a_remote_code_prompt(tmp_path, monkeypatch):
    import builtins

    from transformers import AutoConfig, AutoModelForCausalLM

    _model().save_pretrained(tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    assert "auto_map" in config  # hf_ext ships its code, which is what made transformers prompt
    config_file.write_text(json.dumps({**config, "model_type": "dellla"}))

    def no_prompt(*args, **kwargs):
        raise AssertionError("interactive prompt")

    monkeypatch.setattr(builtins, "input", no_prompt)
    for load in (AutoModelForCausalLM.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=r"model_type 'dellla' is registered neither.*Did you mean 'della'\?"):
            load(tmp_path / "m")


DDP_RUN = """
import json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_faults_checkpoints import _args, _data, _model
from hf_ext.trainers.text_vae import TextVAETrainer

out = sys.argv[1]
trainer = TextVAETrainer(model=_model(), args=_args(out, max_steps=2, per_device_train_batch_size=2), train_dataset=_data())
trainer.train(resume_from_checkpoint=sys.argv[2] == "resume")
print(json.dumps({{"rank": trainer.accelerator.process_index, "step": trainer.state.global_step}}))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_atomic_checkpoints_with_two_processes(tmp_path):
    """Two CPU ranks (torchrun): every rank reaches the barriers, rank 0 renames, and a resume works."""
    script = tmp_path / "ddp_ckpt.py"
    script.write_text(DDP_RUN.format(tests=str(Path(__file__).resolve().parent)))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    out = tmp_path / "run"
    for mode in ("fresh", "resume"):
        proc = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(out), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-12000:]
        assert {p.name for p in out.iterdir() if "checkpoint" in p.name} == {"checkpoint-1", "checkpoint-2"}
        assert all((out / c / "trainer_state.json").is_file() for c in ("checkpoint-1", "checkpoint-2"))
