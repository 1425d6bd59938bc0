"""Run TRL's own DPO test file twice, with TRL's `DPOTrainer` and with hf_ext's `DenseDPOTrainer` at γ = 1.

TRL's wheel ships no tests, and they load tiny models (``trl-internal-testing/tiny-*``) and datasets
(``trl-internal-testing/zen``) from the Hub. This script needs no network: it starts a local Hub-protocol server
(:class:`hf_ext.testing.local_hub.LocalHub`), pushes **stand-ins** under the same repo ids (tiny random models built
from configs of the same architectures, one byte-level BPE tokenizer with a ChatML template trained in memory, and
small preference datasets written here in the ``zen`` schema), copies the user's TRL test file into a temporary
directory (nothing of TRL's is stored in this repository) and runs it twice with ``pytest``:

* ``trl``: as written, TRL's `DPOTrainer` / `DPOConfig`;
* ``dense``: the test module's `DPOTrainer` / `DPOConfig` replaced by :class:`~hf_ext.trainers.DenseDPOTrainer` /
  :class:`~hf_ext.trainers.DenseDPOConfig` with ``dense_gamma=1.0`` (``--dense_gamma``), where the results must
  equal TRL's.

It prints one line per test where the two differ and the pass/fail/skip counts side by side, and exits non-zero if a
test passes with TRL but not with the swap. Tests that fail in both runs are listed with their first error line
(typically: no stand-in for that repo id, e.g. the vision models).

    git clone https://github.com/huggingface/trl /tmp/trl   # the tag matching your installed trl
    python benchmarks/conformance/run_trl_dpo_suite.py --trl_tests /tmp/trl [--workers 2] [-k EXPR] [--json out.json]

Slow-marked tests are deselected (``-m "not slow"``); on a machine without an accelerator the GPU-marked tests skip
themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (message['role'] == 'system' and loop.first) -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Vision-language stand-in: Qwen-style turns, `{"type": "image"}` blocks rendered as the model's image token.
VLM_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif block['type'] == 'text' -%}{{ block['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Written for this script (the schema of TRL's `zen` preference configs, not its text).
ZEN_TRAIN = [
    ("The sky is", " blue.", " green."),
    ("Water boils at", " one hundred degrees.", " ten degrees."),
    ("The capital of France is", " Paris.", " Rome."),
    ("Two plus two equals", " four.", " five."),
    ("Cats like to", " sleep in the sun.", " swim in the sea."),
    ("The opposite of hot is", " cold.", " warm."),
    ("A week has", " seven days.", " nine days."),
    ("Snow is usually", " white.", " purple."),
    ("The sun rises in the", " east.", " west."),
    ("Bees make", " honey.", " milk."),
    ("A triangle has", " three sides.", " four sides."),
    ("Fish live in", " water.", " trees."),
]
ZEN_TEST = [
    ("Grass is", " green.", " red."),
    ("Ice is made of", " frozen water.", " hot sand."),
    ("A year has", " twelve months.", " ten months."),
]

# repo id -> (model_type, config overrides) for text stand-ins: every architecture of TRL's text DPO tests.
_MOE_LAYERS = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 64}
TEXT_MODELS = {
    "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5": ("qwen2", {}),
    "trl-internal-testing/tiny-Cohere2ForCausalLM": ("cohere2", _MOE_LAYERS),
    "trl-internal-testing/tiny-Glm4MoeForCausalLM": (
        "glm4_moe",
        {
            "moe_intermediate_size": 16,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "first_k_dense_replace": 1,
            "n_group": 1,
            "topk_group": 1,
        },
    ),
    "trl-internal-testing/tiny-GptOssForCausalLM": (
        "gpt_oss",
        {"num_local_experts": 4, "num_experts_per_tok": 2, **_MOE_LAYERS},
    ),
    "trl-internal-testing/tiny-Qwen3MoeForCausalLM": (
        "qwen3_moe",
        {"moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2},
    ),
    "trl-internal-testing/tiny-Olmo3ForCausalLM": ("olmo3", _MOE_LAYERS),
    "trl-internal-testing/tiny-Lfm2ForCausalLM": (
        "lfm2",
        {"layer_types": ["conv", "full_attention"], "block_ff_dim": 32, "block_auto_adjust_ff_dim": False},
    ),
    "trl-internal-testing/tiny-Lfm2ForCausalLM-2.5": (
        "lfm2",
        {"layer_types": ["conv", "full_attention"], "block_ff_dim": 32, "block_auto_adjust_ff_dim": False},
    ),
    "trl-internal-testing/tiny-NemotronHForCausalLM-nano": ("nemotron_h", {}),
}
TINY = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 4,
    "max_position_embeddings": 512,
}

CONFTEST = '''\
"""Written by hf_ext's benchmarks/conformance/run_trl_dpo_suite.py: Hub endpoint from the environment; optional DenseDPO swap."""
import functools
import os

import importlib
import importlib.util

import pytest

trl_import_utils = importlib.import_module("trl.import_utils")


def _missing_availability_check(name):
    # The test file's `testing_utils.py` may import an `is_<pkg>_available` this trl version does not define (the
    # checkout is newer or older than the installed wheel): answer it from the installed packages.
    if name.startswith("is_") and name.endswith("_available"):
        package = name[len("is_") : -len("_available")]
        return lambda: importlib.util.find_spec(package) is not None
    raise AttributeError(name)


if "__getattr__" not in vars(trl_import_utils):
    trl_import_utils.__getattr__ = _missing_availability_check

@pytest.fixture(autouse=True)
def _use_cpu_without_accelerator(monkeypatch):
    # As in TRL's own test setup: TRL configs default to bf16, which TrainingArguments refuses on a machine without
    # an accelerator unless `use_cpu=True`; set it on every TRL config (DenseDPOConfig included) there.
    from transformers.testing_utils import torch_device

    if torch_device not in (None, "cpu"):
        return
    from trl.trainer.base_config import _BaseConfig

    post_init = _BaseConfig.__post_init__

    def post_init_on_cpu(self):
        self.use_cpu = True
        post_init(self)

    monkeypatch.setattr(_BaseConfig, "__post_init__", post_init_on_cpu)


if os.environ.get("TRL_SUITE_MODE") == "dense":
    from hf_ext.trainers.dense_dpo import DenseDPOConfig, DenseDPOTrainer

    DenseDPOConfigGamma = functools.partial(DenseDPOConfig, dense_gamma=float(os.environ["TRL_SUITE_GAMMA"]))

    @pytest.fixture(autouse=True)
    def _swap_in_dense_dpo(request, monkeypatch):
        module = request.module
        if hasattr(module, "DPOTrainer"):
            monkeypatch.setattr(module, "DPOTrainer", DenseDPOTrainer)
        if hasattr(module, "DPOConfig"):
            monkeypatch.setattr(module, "DPOConfig", DenseDPOConfigGamma)
        yield
'''

PYTEST_INI = """\
[pytest]
markers =
    slow: slow test
    low_priority: low priority
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tokenizer(chat_template: str = CHATML_TEMPLATE, extra_special_tokens: tuple[str, ...] = ()):
    """The stand-ins' byte-level BPE, trained on the zen texts and ``chat_template``, with ChatML's special tokens."""
    from hf_ext.testing import tiny_bpe_tokenizer

    return tiny_bpe_tokenizer(
        texts=[" ".join(p + c + r for p, c, r in ZEN_TRAIN + ZEN_TEST)] * 4 + [chat_template],
        vocab_size=512,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_special_tokens),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
    )


def push_models(tokenizer) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    for i, (repo_id, (model_type, overrides)) in enumerate(TEXT_MODELS.items()):
        torch.manual_seed(i)
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **{**TINY, **overrides},
        )
        model = AutoModelForCausalLM.from_config(config)
        model.push_to_hub(repo_id)
        tokenizer.push_to_hub(repo_id)


REMOTE_CODE = """\
from transformers import Qwen2Config, Qwen2ForCausalLM


class RemoteConfig(Qwen2Config):
    model_type = "remote"


class RemoteForCausalLM(Qwen2ForCausalLM):
    config_class = RemoteConfig
"""


def push_remote_code_model(tokenizer) -> None:
    """A model whose class lives in the repo (`auto_map`), loadable only with `trust_remote_code=True`."""
    import torch
    from huggingface_hub import HfApi
    from transformers import Qwen2Config, Qwen2ForCausalLM

    repo_id = "trl-internal-testing/tiny-RemoteForCausalLM"
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY,
    )
    with tempfile.TemporaryDirectory() as folder:
        Qwen2ForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        config_file = Path(folder) / "config.json"
        saved = json.loads(config_file.read_text())
        saved.update(
            model_type="remote",
            architectures=["RemoteForCausalLM"],
            auto_map={
                "AutoConfig": "modeling_remote.RemoteConfig",
                "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
            },
        )
        config_file.write_text(json.dumps(saved, indent=2))
        (Path(folder) / "modeling_remote.py").write_text(REMOTE_CODE)
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo_id)


def push_vision_models() -> None:
    """Llava and LLaVA-NeXT (CLIP + Qwen2) with PIL image processors (Qwen2-VL-family processors need torchvision)."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    tok = build_tokenizer(VLM_TEMPLATE, extra_special_tokens=("<image>",))
    image_size, patch = 28, 14
    # LLaVA-1.5's conventions, for both processors and both models
    processor_kwargs = dict(
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
        chat_template=VLM_TEMPLATE,
    )
    text = {"model_type": "qwen2", "vocab_size": len(tok), **TINY}
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config_kwargs = dict(
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch) ** 2,
    )
    square = {"height": image_size, "width": image_size}
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    vision = CLIPVisionConfig(**tower, image_size=image_size, patch_size=patch)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size=square, crop_size=square), **processor_kwargs
    )
    torch.manual_seed(0)
    repo_id = "trl-internal-testing/tiny-LlavaForConditionalGeneration"
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, **config_kwargs)).push_to_hub(repo_id)
    processor.push_to_hub(repo_id)

    # LLaVA-NeXT: the same towers, any-resolution tiling over a few grid pinpoints.
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size=square, image_grid_pinpoints=pinpoints
    )
    config = LlavaNextConfig(vision_config=vision, image_grid_pinpoints=pinpoints, **config_kwargs)
    torch.manual_seed(0)
    repo_id = "trl-internal-testing/tiny-LlavaNextForConditionalGeneration"
    LlavaNextForConditionalGeneration(config).push_to_hub(repo_id)
    LlavaNextProcessor(image_processor=image_processor, **processor_kwargs).push_to_hub(repo_id)


def push_datasets() -> None:
    from datasets import Dataset

    def conv(text: str, role: str) -> list[dict]:
        return [{"role": role, "content": text.strip()}]

    def configs(rows):
        prompts, chosen, rejected = zip(*rows)
        return {
            "standard_preference": {"prompt": list(prompts), "chosen": list(chosen), "rejected": list(rejected)},
            "conversational_preference": {
                "prompt": [conv(p, "user") for p in prompts],
                "chosen": [conv(c, "assistant") for c in chosen],
                "rejected": [conv(r, "assistant") for r in rejected],
            },
            "standard_implicit_prompt_preference": {
                "chosen": [p + c for p, c in zip(prompts, chosen)],
                "rejected": [p + r for p, r in zip(prompts, rejected)],
            },
            "conversational_implicit_prompt_preference": {
                "chosen": [conv(p, "user") + conv(c, "assistant") for p, c in zip(prompts, chosen)],
                "rejected": [conv(p, "user") + conv(r, "assistant") for p, r in zip(prompts, rejected)],
            },
            "standard_unpaired_preference": {
                "prompt": [p for p in prompts for _ in (0, 1)],
                "completion": [x for c, r in zip(chosen, rejected) for x in (c, r)],
                "label": [x for _ in prompts for x in (True, False)],
            },
        }

    def image_rows(rows, seed):
        from PIL import Image

        return {
            "images": [
                [Image.new("RGB", (24 + 8 * (i % 3), 32), (37 * (i + seed) % 256, 90, 160))] for i in range(len(rows))
            ],
            "prompt": [
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p, _, _ in rows
            ],
            "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": c.strip()}]}] for _, c, _ in rows],
            "rejected": [
                [{"role": "assistant", "content": [{"type": "text", "text": r.strip()}]}] for _, _, r in rows
            ],
        }

    for split, rows in (("train", ZEN_TRAIN), ("test", ZEN_TEST)):
        Dataset.from_dict(image_rows(rows, len(split))).push_to_hub(
            "trl-internal-testing/zen-image", config_name="conversational_preference", split=split
        )

    train, test = configs(ZEN_TRAIN), configs(ZEN_TEST)
    for name in train:
        for split, data in (("train", train[name]), ("test", test[name])):
            Dataset.from_dict(data).push_to_hub("trl-internal-testing/zen", config_name=name, split=split)


def _find_tests(trl_tests: Path) -> Path:
    for candidate in (trl_tests, trl_tests / "tests"):
        if (candidate / "test_dpo_trainer.py").is_file() and (candidate / "testing_utils.py").is_file():
            return candidate
    raise ValueError(
        f"--trl_tests {trl_tests}: no test_dpo_trainer.py + testing_utils.py there or in its tests/ folder; pass a "
        "checkout of https://github.com/huggingface/trl (at the tag of your installed trl) or its tests/ folder."
    )


def run_pytest(mode: str, workdir: Path, hub_env: dict, args) -> dict[str, tuple[str, str]]:
    """One pytest run; returns ``{test id: (outcome, first message line)}`` read from its JUnit XML."""
    report = workdir / f"report-{mode}.xml"
    env = {
        **os.environ,
        **hub_env,
        "HF_HOME": tempfile.mkdtemp(prefix=f"trl_suite_{mode}_home_"),
        "TRL_SUITE_MODE": mode,
        "TRL_SUITE_GAMMA": str(args.dense_gamma),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    cmd = [sys.executable, "-m", "pytest", "tests/test_dpo_trainer.py", "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", "not slow", f"--junitxml={report}", "-o", "junit_family=xunit1"]
    if args.workers > 0:
        cmd += ["-n", str(args.workers)]
    if args.k:
        cmd += ["-k", args.k]
    print(f"[{mode}] {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=workdir, env=env, check=False, stdout=sys.stderr if args.verbose else subprocess.DEVNULL)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report for the {mode!r} run; rerun with --verbose to see why.")
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or (child.text or "")).strip().splitlines()[:1]
                message = message[0][:160] if message else ""
                break
        results[name] = (outcome, message)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl_tests", type=Path, required=True, help="a TRL checkout (or its tests/ folder)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (0: in process)")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument(
        "--dense_gamma", type=float, default=1.0, help="γ of the swapped-in DenseDPOConfig (1: must equal TRL)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write both runs' outcomes here")
    parser.add_argument("--verbose", action="store_true", help="show pytest's own output")
    args = parser.parse_args(argv)
    tests_dir = _find_tests(args.trl_tests)
    from importlib.metadata import version

    checkout_version = tests_dir.parent / "VERSION"
    if checkout_version.is_file() and checkout_version.read_text().strip() != version("trl"):
        print(
            f"note: the checkout is trl {checkout_version.read_text().strip()}, the installed trl is {version('trl')}: "
            "tests that fail with TRL's own trainer too may come from that mismatch.",
            flush=True,
        )

    port = _free_port()
    hub_env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_local_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    os.environ.update(hub_env)  # before huggingface_hub / transformers / datasets are imported
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="trl_suite_build_home_")
    from hf_ext.testing import LocalHub

    workdir = Path(tempfile.mkdtemp(prefix="trl_dpo_suite_"))
    with LocalHub(port=port) as hub:
        assert hub.env()["HF_ENDPOINT"] == hub_env["HF_ENDPOINT"]
        tokenizer = build_tokenizer()
        push_models(tokenizer)
        push_remote_code_model(tokenizer)
        push_vision_models()
        push_datasets()
        (workdir / "tests").mkdir()
        for name in ("test_dpo_trainer.py", "testing_utils.py", "testing_constants.py"):
            if (tests_dir / name).is_file():
                shutil.copy(tests_dir / name, workdir / "tests" / name)
        (workdir / "tests" / "__init__.py").write_text("")
        (workdir / "tests" / "conftest.py").write_text(CONFTEST)
        (workdir / "pytest.ini").write_text(PYTEST_INI)
        runs = {mode: run_pytest(mode, workdir, hub_env, args) for mode in ("trl", "dense")}
    shutil.rmtree(workdir, ignore_errors=True)

    trl, dense = runs["trl"], runs["dense"]
    names = sorted(set(trl) | set(dense))
    regressions = []
    print(f"\n{'test':90s} {'TRL':8s} dense γ={args.dense_gamma:g}")
    for name in names:
        a, b = trl.get(name, ("absent", "")), dense.get(name, ("absent", ""))
        if a[0] != b[0] or a[0] in ("failed", "error"):
            note = b[1] if b[0] in ("failed", "error") else a[1]
            print(f"{name:90s} {a[0]:8s} {b[0]:9s} {note}")
        if a[0] == "passed" and b[0] != "passed":
            regressions.append(name)
    print()
    for mode, res in runs.items():
        counts = {k: sum(1 for o, _ in res.values() if o == k) for k in ("passed", "failed", "error", "skipped")}
        print(f"{mode:6s} " + "  ".join(f"{k} {v}" for k, v in counts.items()) + f"  (of {len(res)})")
    print(f"passed with TRL, not with the swap: {len(regressions)}")
    if args.json:
        args.json.write_text(json.dumps({m: {n: list(v) for n, v in r.items()} for m, r in runs.items()}, indent=1))
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
