"""The diffusers-suite runner's own logic (no diffusers checkout needed): input checks and the SD/Paint triage."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runner():
    path = ROOT / "benchmarks" / "conformance" / "run_diffusers_pipeline_suite.py"
    spec = importlib.util.spec_from_file_location("run_diffusers_pipeline_suite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rejects_a_folder_without_diffusers_tests(runner, tmp_path):
    with pytest.raises(ValueError, match="holds no diffusers test tree"):
        runner.find_tests_dir(tmp_path)


def test_accepts_checkout_root_or_its_tests_folder(runner, tmp_path):
    (tmp_path / "tests" / "pipelines" / "testing_utils").mkdir(parents=True)
    (tmp_path / "tests" / "pipelines" / "stable_diffusion").mkdir()
    (tmp_path / "tests" / "pipelines" / "stable_diffusion" / "test_stable_diffusion.py").write_text("")
    assert runner.find_tests_dir(tmp_path) == tmp_path / "tests"
    assert runner.find_tests_dir(tmp_path / "tests") == tmp_path / "tests"


def write_report(path, cases):
    rows = []
    for cls, name, outcome in cases:
        child = {"passed": "", "failed": '<failure message="boom"/>', "skipped": '<skipped message="no gpu"/>'}[
            outcome
        ]
        rows.append(f'<testcase classname="tests.x.{cls}" name="{name}">{child}</testcase>')
    path.write_text(f"<testsuites><testsuite>{''.join(rows)}</testsuite></testsuites>")


def test_triage_flags_only_unexplained_paint_failures(runner, tmp_path, capsys):
    features = [("TestVisCPMPaintPipelineFeatures", name, "passed") for name in runner.FEATURE_PAIRS]
    base = [
        ("TestStableDiffusionPipeline", "test_cfg", "passed"),
        ("TestVisCPMPaintPipeline", "test_cfg", "passed"),
        ("TestStableDiffusionPipeline", "test_inference_batch_single_identical", "passed"),
        ("TestVisCPMPaintPipelineUnmasked", "test_inference_batch_single_identical", "failed"),  # listed as known
        ("TestStableDiffusionPipeline", "test_to_device", "skipped"),
        ("TestVisCPMPaintPipeline", "test_to_device", "failed"),  # SD skipped: not a regression against SD
    ]
    report = tmp_path / "ok.xml"
    write_report(report, base + features)
    results = runner.read_report(report)
    assert results["TestVisCPMPaintPipelineUnmasked"]["test_inference_batch_single_identical"] == ("failed", "boom")
    assert runner.summarize(results) == 0
    assert "Known differences (cannot apply, run and reported): 1" in capsys.readouterr().out

    write_report(report, base + features + [("TestVisCPMPaintPipeline", "test_cfg_extra", "failed")])
    results = runner.read_report(report)
    results["TestStableDiffusionPipeline"]["test_cfg_extra"] = ("passed", "")
    assert runner.summarize(results) == 1
    assert "TestVisCPMPaintPipeline::test_cfg_extra: boom" in capsys.readouterr().out
