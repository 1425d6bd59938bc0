"""Smoke test of hf_ext installed from its wheel, run by ``make wheel-smoke`` (and CI) in a fresh virtualenv.

Not a pytest module (pytest collects only ``test_*.py``): it needs hf_ext installed as a wheel, and it fails when the
``hf_ext`` it imports is the checkout's. ``make wheel-smoke`` builds the wheel, installs torch and the wheel into a
virtualenv outside the checkout and runs ``python tests/wheel/smoke.py`` from a temporary working directory, so the
only way to import ``hf_ext`` and ``dataset_builders`` is the installed wheel. What it checks is what a user does right
after ``pip install hf_ext`` (the README's quick tour): the Auto classes load tiny hf_ext checkpoints, the RLHF-V builder
reads a parquet file, ``DenseDPOTrainer`` takes a step and writes its model card from the template shipped in the wheel,
and the ``hf-ext`` console script runs. Offline, CPU, fp32, tiny: well under a minute.

    python tests/wheel/smoke.py            # in a virtualenv where the hf_ext wheel is installed
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
START, START_CPU = time.perf_counter(), time.process_time()
# offline (nothing here may need the Hub) and quiet (no progress bars in the CI log)
os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")


def step(message: str) -> None:
    wall, cpu = time.perf_counter() - START, time.process_time() - START_CPU
    print(f"[wheel-smoke {wall:5.1f} s wall, {cpu:5.1f} s CPU] {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"wheel smoke test FAILED: {message}")


def check_installed(module) -> Path:
    """``module`` comes from this interpreter's site-packages, not from the checkout."""
    location = Path(module.__file__).resolve()
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(not location.is_relative_to(CHECKOUT), f"{module.__name__} was imported from the checkout: {location}")
    check(location.is_relative_to(site_packages), f"{module.__name__} is not in {site_packages}: {location}")
    return location.parent


def main() -> None:
    check(not Path.cwd().resolve().is_relative_to(CHECKOUT), f"run me from outside the checkout, not {Path.cwd()}")
    import hf_ext

    package = check_installed(hf_ext)
    step(f"import hf_ext {hf_ext.__version__} from {package}")

    # the wheel holds the two packages, every module of them and the card templates; no tests, benchmarks or examples
    from importlib.metadata import distribution

    files = [f for f in distribution("hf_ext").files if f.parts[0] != ".." and "__pycache__" not in f.parts]
    top_level = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info")}
    check(top_level == {"hf_ext", "dataset_builders"}, f"the wheel installs {sorted(top_level)} at the top level")
    shipped = {f.as_posix() for f in files if not f.parts[0].endswith(".dist-info")}
    expected = {
        p.relative_to(CHECKOUT).as_posix()
        for name in ("hf_ext", "dataset_builders")
        for p in (CHECKOUT / name).rglob("*.py")
        if "__pycache__" not in p.parts
    } | {f"hf_ext/model_cards/{p.name}" for p in (CHECKOUT / "model_cards").glob("*.md")}
    check(
        shipped == expected,
        f"the wheel lacks {sorted(expected - shipped)} and has extra {sorted(shipped - expected)}",
    )
    step(f"the wheel holds {len(shipped)} files: hf_ext (with model_cards/) and dataset_builders")

    # the card templates ship in the wheel, identical to the repository's model_cards/
    from hf_ext.hub.cards import FAMILIES, create_model_card, template_path

    for family in FAMILIES:
        path = template_path(family)
        check(path == package / "model_cards" / f"{family}.md", f"template of {family!r} found at {path}")
        check(
            path.read_bytes() == (CHECKOUT / "model_cards" / f"{family}.md").read_bytes(),
            f"{path} differs from the repository's model_cards/{family}.md",
        )
        card = create_model_card(family, model_id=f"smoke/{family}")
        check(f"arxiv.org/abs/{FAMILIES[family].arxiv}" in card.text, f"the {family!r} card does not cite its paper")
    step(f"{len(FAMILIES)} card templates in the wheel render")

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    from hf_ext.testing import save_tiny_muffin, save_tiny_text_vae

    work = Path(tempfile.mkdtemp(prefix="hf_ext_wheel_smoke_"))
    # Auto classes load hf_ext checkpoints without trust_remote_code: `import hf_ext` registered the model types
    muffin_dir = save_tiny_muffin(work / "tiny-muffin")
    model = AutoModelForImageTextToText.from_pretrained(muffin_dir)
    processor = AutoProcessor.from_pretrained(muffin_dir)
    check(type(model).__name__ == "MuffinForConditionalGeneration", f"AutoModelForImageTextToText -> {type(model)}")
    check(type(model).__module__.startswith("hf_ext."), f"{type(model)} is not hf_ext's (remote code?)")
    della = AutoModelForCausalLM.from_pretrained(save_tiny_text_vae(work / "tiny-della"))
    check(type(della).__name__ == "DellaForCausalLM", f"AutoModelForCausalLM -> {type(della)}")
    step("AutoModelForImageTextToText / AutoProcessor / AutoModelForCausalLM load tiny hf_ext checkpoints")

    # the RLHF-V builder (dataset_builders ships in the same wheel) reads a parquet file in the Hub dataset's schema
    import dataset_builders
    from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet

    check_installed(dataset_builders)
    rows = make_rlhf_v_rows(n=2)
    dataset = load_rlhf_v(write_rlhf_v_parquet(rows, work / "rlhf_v.parquet"), cache_dir=work / "cache")
    check(dataset["idx"] == [row["idx"] for row in rows], f"the builder read idx {dataset['idx']}")
    check({"prompt", "chosen", "rejected", "images"} <= set(dataset.column_names), f"columns {dataset.column_names}")
    step(f"dataset_builders.rlhf_v loads {len(dataset)} rows")

    # one DenseDPOTrainer step on them, then its model card (the path that failed outside a checkout)
    from huggingface_hub import ModelCard

    from hf_ext import DenseDPOConfig, DenseDPOTrainer

    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    output_dir = work / "dense-dpo"
    args = DenseDPOConfig(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = DenseDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=dataset,
        processing_class=processor,
    )
    result = trainer.train()
    check(trainer.state.global_step == 1 and math.isfinite(result.training_loss), f"train() returned {result}")
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    check(changed, "the optimizer step changed no weight")
    trainer.save_model()
    trainer.create_model_card()
    card = ModelCard.load(output_dir / "README.md")
    rlhf_v = FAMILIES["rlhf_v"]
    check(f"arxiv.org/abs/{rlhf_v.arxiv}" in card.text, "the trainer's card does not cite RLHF-V")
    check(card.data.license == rlhf_v.license, f"the trainer's card has license {card.data.license!r}")
    reloaded = AutoModelForImageTextToText.from_pretrained(output_dir)
    name = changed[0]
    check(torch.equal(reloaded.state_dict()[name], model.state_dict()[name]), f"{name} did not survive save/load")
    step(f"DenseDPOTrainer: 1 step (loss {result.training_loss:.4f}), model card and checkpoint reload")

    # the console script of the wheel's entry point
    script = Path(sys.executable).parent / ("hf-ext.exe" if os.name == "nt" else "hf-ext")
    run = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    check(run.returncode == 0 and "dense-dpo" in run.stdout, f"hf-ext --help: rc {run.returncode}\n{run.stderr}")
    step("hf-ext --help")
    step("OK")


if __name__ == "__main__":
    main()
