"""The harness that runs TRL's own DPO test file with `DenseDPOTrainer` (`benchmarks/conformance/run_trl_dpo_suite.py`).

The suite itself needs a TRL checkout and ~10 minutes, so it is run by hand (see docs/dense_dpo.md); here: the stand-in
datasets it pushes have the schema of each `zen` config, and a wrong `--trl_tests` path is refused clearly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "benchmarks" / "conformance" / "run_trl_dpo_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("run_trl_dpo_suite", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~20-40 s: 12 pushes and loads through the local Hub
def test_stand_in_datasets_have_the_zen_schema(local_hub, suite):
    from datasets import load_dataset
    from trl.data_utils import is_conversational

    suite.push_datasets()
    expected_columns = {
        "standard_preference": {"prompt", "chosen", "rejected"},
        "conversational_preference": {"prompt", "chosen", "rejected"},
        "standard_implicit_prompt_preference": {"chosen", "rejected"},
        "conversational_implicit_prompt_preference": {"chosen", "rejected"},
        "standard_unpaired_preference": {"prompt", "completion", "label"},
    }
    for config, columns in expected_columns.items():
        for split, rows in (("train", suite.ZEN_TRAIN), ("test", suite.ZEN_TEST)):
            ds = load_dataset("trl-internal-testing/zen", config, split=split)
            assert set(ds.column_names) == columns, (config, split)
            expected_rows = 2 * len(rows) if config == "standard_unpaired_preference" else len(rows)
            assert len(ds) == expected_rows
            assert is_conversational(ds[0]) == config.startswith("conversational"), config
    first = load_dataset("trl-internal-testing/zen", "standard_preference", split="train")[0]
    assert (first["prompt"], first["chosen"], first["rejected"]) == suite.ZEN_TRAIN[0]
    image_rows = load_dataset("trl-internal-testing/zen-image", "conversational_preference", split="train")
    assert len(image_rows) == len(suite.ZEN_TRAIN) and len(image_rows[0]["images"]) == 1
    assert image_rows[0]["prompt"][0]["content"][0]["type"] == "image"


def test_bad_trl_tests_path(tmp_path, suite):
    with pytest.raises(ValueError, match="no test_dpo_trainer.py"):
        suite.main(["--trl_tests", str(tmp_path)])
