"""Fault regressions (issue #16): the ``hf-ext`` console command and CPU-safe quick-start defaults."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_ext import cli

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_console_script_exits_0_and_prints_no_object():
    # A subcommand returning an object (the trainer) made `sys.exit(main())` print it and exit with status 1.
    proc = _python(
        """
        import sys
        from hf_ext import cli
        cli.register_subcommand("returns-object", "test", lambda argv: object())
        sys.exit(cli.main(["returns-object"]))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "object at" not in proc.stderr


def test_help_imports_neither_torch_nor_transformers():
    # `hf-ext --help` took 12 s: `import hf_ext` registered every model (torch + transformers) before printing.
    proc = _python(
        """
        import sys
        from hf_ext import cli
        cli.main(["--help"])
        print(sorted(m for m in ("torch", "transformers", "trl", "datasets") if m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "dense-dpo" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "hf_ext.cli", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "dense-dpo" in proc.stdout


def test_models_register_when_transformers_is_imported_after_hf_ext():
    proc = _python(
        """
        import sys
        import hf_ext
        assert "transformers" not in sys.modules
        from transformers import AutoConfig
        print(AutoConfig.for_model("della").model_type, AutoConfig.for_model("elv_predictor").model_type)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["della", "elv_predictor"]


@pytest.mark.parametrize(
    "first_import", ["from peft import LoraConfig", "import trl", "import diffusers", "import accelerate"]
)
def test_libraries_that_import_transformers_import_after_hf_ext(first_import):
    """Registration runs when transformers finishes importing, while the library importing it (peft, trl, ...) is
    still half-initialised: it must import nothing that imports that library back (it once imported the ELV trainer,
    whose `transformers.Trainer` import needs `peft.PeftMixedModel`: a circular ImportError)."""
    proc = _python(
        f"""
        import hf_ext
        {first_import}
        from transformers import AutoConfig
        print(AutoConfig.for_model("muffin").model_type, AutoConfig.for_model("elv_predictor").model_type)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["muffin", "elv_predictor"]


def test_dense_dpo_config_defaults_to_fp32_without_a_bf16_accelerator(tmp_path):
    import torch

    from hf_ext import DenseDPOConfig

    # TRL's default bf16=True raised "Your setup doesn't support bf16/gpu" on a CPU (README tour, docs quick start).
    args = DenseDPOConfig(str(tmp_path))
    expected = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert args.bf16 is expected
    assert DenseDPOConfig(str(tmp_path), use_cpu=True).bf16 is False
    assert DenseDPOConfig(str(tmp_path), bf16=False).bf16 is False  # an explicit value is kept


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model_name_or_path", "m", "--data_files", "d.jsonl", "--dense_gama", "2"],
            "unrecognized arguments: --dense_gama",
        ),
        (["--data_files", "d.jsonl"], "--model_name_or_path is required"),
    ],
)
def test_cli_usage_errors_are_not_hidden_by_config_errors(tmp_path, capsys, extra, message):
    # `--bf16 true` on a CPU makes TrainingArguments raise; that error used to hide the usage error.
    argv = ["dense-dpo", "--output_dir", str(tmp_path), "--bf16", "true", *extra]
    with pytest.raises(SystemExit) as exc:
        cli.run(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_unknown_key_in_config_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\ndata_files: [d.jsonl]\nlerning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        cli.run(["dense-dpo", "--config", str(config), "--output_dir", str(tmp_path)])
    assert f"lerning_rate (in {config})" in capsys.readouterr().err


def test_cli_quick_start_runs_on_a_cpu_as_written(tmp_path, monkeypatch):
    """The `hf-ext dense-dpo` command of docs/dense_dpo.md, verbatim (no --use_cpu / --bf16 false), on stand-ins for
    its model folder and parquet file."""
    import re
    import shlex

    from test_docs import _rlhf_v_parquet

    from hf_ext.testing import save_tiny_muffin

    text = (ROOT / "docs" / "dense_dpo.md").read_text(encoding="utf-8")
    command = re.search(r"^hf-ext dense-dpo .*?(?<!\\)\n", text, re.S | re.M).group(0).replace("\\\n", " ")
    argv = shlex.split(command)
    assert "--use_cpu" not in argv and "--bf16" not in argv
    monkeypatch.chdir(tmp_path)
    save_tiny_muffin(tmp_path / "my-vlm")
    _rlhf_v_parquet(tmp_path / "RLHF-V-Dataset.parquet")
    trainer = cli.run(argv[1:])
    import torch

    assert trainer.state.global_step > 0
    assert trainer.args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
