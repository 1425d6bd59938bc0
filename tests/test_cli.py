"""`hf-ext dense-dpo`: flags, YAML config, errors; the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _dense_dpo_helpers import TEXT_ROWS
from safetensors.torch import load_file

from hf_ext import cli
from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2


@pytest.fixture
def model_and_data(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p + " ", "chosen": c, "rejected": r}) for p, c, r in TEXT_ROWS))
    return model_dir, data


COMMON = ["--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none"]


def test_dense_dpo_flags(tmp_path, model_and_data):
    model_dir, data = model_and_data
    out = tmp_path / "out"
    argv = ["dense-dpo", "--model_name_or_path", str(model_dir), "--data_files", str(data)]
    argv += ["--dataset_format", "preference", "--output_dir", str(out), "--max_steps", "2", "--dense_gamma", "3.0"]
    argv += ["--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--precompute_ref_log_probs", *COMMON]
    trainer = cli.run(argv)
    assert trainer.args.dense_gamma == 3.0 and trainer.state.global_step == 2
    trained = load_file(out / "model.safetensors")
    initial = load_file(model_dir / "model.safetensors")
    assert any(not (trained[k] == initial[k]).all() for k in initial)
    assert "2312.00849" in (out / "README.md").read_text()
    assert (out / "tokenizer.json").exists()


def test_dense_dpo_yaml_config_and_override(tmp_path, model_and_data):
    model_dir, data = model_and_data
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model_dir),
                "data_files": [str(data)],
                "dataset_format": "preference",
                "output_dir": str(tmp_path / "out"),
                "max_steps": 1,
                "dense_gamma": 5.0,
                "dense_normalize": True,
                "use_cpu": True,
                "bf16": False,
                "gradient_checkpointing": False,
                "report_to": "none",
                "use_peft": True,
                "lora_target_modules": ["c_attn"],
                "lora_r": 4,
            }
        )
    )
    trainer = cli.run(["dense-dpo", "--config", str(config), "--dense_gamma", "2.0"])
    assert trainer.args.dense_gamma == 2.0  # the flag overrides the file
    assert trainer.args.dense_normalize is True
    assert (tmp_path / "out" / "adapter_config.json").exists()


def test_errors_and_registry(tmp_path, model_and_data):
    model_dir, _ = model_and_data
    with pytest.raises(ValueError, match="--data_files is required"):
        cli.run(["dense-dpo", "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path), *COMMON])
    with pytest.raises(SystemExit):
        cli.run(["no-such-command"])
    with pytest.raises(ValueError, match="already registered"):
        cli.register_subcommand("dense-dpo", "again", lambda argv: None)
    calls = []
    cli.register_subcommand("echo-test", "test", lambda argv: calls.append(argv))
    try:
        assert cli.main(["echo-test", "a", "b"]) == 0
    finally:
        cli.SUBCOMMANDS.pop("echo-test")
    assert calls == [["a", "b"]]


@pytest.mark.slow  # a fresh interpreter importing trl/transformers: 15-60 s on the shared CPUs
def test_console_script_help(capsys):
    cli.main(["--help"])
    assert "dense-dpo" in capsys.readouterr().out
    exe = Path(sys.executable).with_name("hf-ext")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hf_ext.cli"]
    proc = subprocess.run([*cmd, "dense-dpo", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--dense_gamma" in proc.stdout and "--precompute_ref_log_probs" in proc.stdout
