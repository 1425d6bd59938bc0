"""Every hf_ext artefact through the local Hub server with the real client: push, then load, same outputs.

Model types are covered by the builders below; ``test_every_registered_model_type_is_covered`` fails when a new
model type is registered without one.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image

import hf_ext  # noqa: F401  (registers the Auto classes)
from hf_ext.models._registry import registered_models


def _repo(prefix: str) -> str:
    return f"tester/{prefix}-{uuid.uuid4().hex[:8]}"


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- builders
# Each returns (model, processing_class or None, inputs, auto_class_name, output_attr).


def _build_muffin(model_type: str):
    from hf_ext.testing import tiny_muffin

    model, processor = tiny_muffin(model_type=model_type)
    return model, processor, _muffin_inputs(processor), "AutoModelForImageTextToText", "logits"


def _muffin_inputs(processor) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return dict(processor(images=[_image()], text=prompt, return_tensors="pt"))


def _build_beit3():
    from hf_ext.models.beit3 import Beit3Model
    from hf_ext.testing import tiny_beit3_config

    model = Beit3Model(tiny_beit3_config()).eval()
    inputs = {"pixel_values": torch.randn(1, 3, 32, 32)}
    return model, None, inputs, "AutoModel", "last_hidden_state"


def _build_jiuge():
    from hf_ext.testing import tiny_jiuge, tiny_jiuge_tokenizer

    tokenizer = tiny_jiuge_tokenizer()
    inputs = {"input_ids": tokenizer("白日依山尽", return_tensors="pt")["input_ids"]}
    return tiny_jiuge(tokenizer), tokenizer, inputs, "AutoModelForCausalLM", "logits"


def _build_text_vae(model_type: str):
    from hf_ext.testing import tiny_bpe_tokenizer, tiny_text_vae

    tokenizer = tiny_bpe_tokenizer()
    model = tiny_text_vae(model_type, tokenizer)
    ids = torch.randint(3, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    if model_type == "trace":
        ids[:, 4] = model.config.separator_token_ids[0]  # two segments
    return model, None, {"input_ids": ids, "labels": ids.clone()}, "AutoModelForCausalLM", "logits"


def _build_elv_predictor():
    from transformers import BertConfig

    from hf_ext.trainers.elv import ELVPredictorConfig, ELVPredictorModel

    enc = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = ELVPredictorModel(ELVPredictorConfig(encoder=enc, num_labels=3)).eval()
    ids = torch.randint(1, 50, (2, 3, 10), generator=torch.Generator().manual_seed(0))
    return model, None, {"input_ids": ids}, "AutoModel", "logits"


def _build_cpmbee():
    from pathlib import Path

    from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeForCausalLM, CpmBeeTokenizer

    tokenizer = CpmBeeTokenizer(str(Path(__file__).resolve().parents[1] / "fixtures" / "cpmbee" / "vocab.txt"))
    config = CpmBeeConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, dim_ff=64, num_hidden_layers=2, num_attention_heads=2,
        dim_head=16, position_bias_num_buckets=32, position_bias_max_distance=128, position_bias_num_segment_buckets=80,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CpmBeeForCausalLM(config).eval()
    enc = tokenizer({"input": "今天天气不错 🍎", "<ans>": "好的"})
    inputs = {k: v for k, v in enc.items() if k != "labels"}
    return model, tokenizer, inputs, "AutoModelForCausalLM", "logits"


BUILDERS = {
    "cpmbee": _build_cpmbee,
    "elv_predictor": _build_elv_predictor,
    "della": lambda: _build_text_vae("della"),
    "trace": lambda: _build_text_vae("trace"),
    "jiuge": _build_jiuge,
    "muffin": lambda: _build_muffin("muffin"),
    "viscpm_chat": lambda: _build_muffin("viscpm_chat"),
    "beit3": _build_beit3,
}


def test_every_registered_model_type_is_covered():
    missing = set(registered_models()) - set(BUILDERS)
    assert not missing, f"add a Hub round-trip builder for {sorted(missing)}"


@pytest.mark.parametrize("model_type", sorted(BUILDERS))
def test_model_round_trip(model_type, local_hub):
    import transformers

    model, processing, inputs, auto_name, attr = BUILDERS[model_type]()
    assert model.config.model_type == model_type
    repo = _repo(model_type)
    model.push_to_hub(repo)
    if processing is not None:
        processing.push_to_hub(repo)
    files = set(HfApi().list_repo_files(repo))
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    auto_map = json.loads(local_hub.repo_files(repo)["config.json"])["auto_map"]
    assert auto_map["AutoConfig"].startswith("configuration_") and auto_name in auto_map
    assert {name.split(".")[0] + ".py" for name in auto_map.values()} <= files  # the code travels with the weights

    loaded = getattr(transformers, auto_name).from_pretrained(repo).eval()  # no trust_remote_code needed
    assert type(loaded) is type(model)
    if processing is not None:
        loaded_processing = transformers.AutoProcessor.from_pretrained(repo)
        assert type(loaded_processing) is type(processing)
        if model_type == "jiuge":
            assert loaded_processing("白日依山尽")["input_ids"] == processing("白日依山尽")["input_ids"]
        if model_type in ("muffin", "viscpm_chat"):
            again = _muffin_inputs(loaded_processing)
            assert again.keys() == inputs.keys()
            assert all(torch.equal(again[k], inputs[k]) for k in inputs)
    with torch.no_grad():  # VAEs sample latents in forward: same seed, same draw
        torch.manual_seed(1)
        expected = getattr(model(**inputs), attr)
        torch.manual_seed(1)
        assert torch.equal(getattr(loaded(**inputs), attr), expected)


def test_remote_code_loads_every_model_type_without_hf_ext(local_hub, tmp_path):
    """Push every model type, then load each with trust_remote_code=True in a process that cannot import hf_ext."""
    import subprocess
    import sys
    import textwrap

    from safetensors.torch import save_file

    cases, tensors = [], {}
    for i, (model_type, build) in enumerate(sorted(BUILDERS.items())):
        model, processing, inputs, auto_name, attr = build()
        repo = _repo(f"remote-{model_type}")
        model.push_to_hub(repo)
        if processing is not None:
            processing.push_to_hub(repo)
        with torch.no_grad():
            torch.manual_seed(1)
            tensors[f"{i}.out"] = getattr(model(**inputs), attr).contiguous()
        for k, v in inputs.items():
            tensors[f"{i}.in.{k}"] = v.contiguous()
        cases.append((i, model_type, repo, auto_name, attr, sorted(inputs)))
    save_file(tensors, tmp_path / "io.safetensors")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("hf_ext", "dataset_builders"):
                    raise ImportError(f"{{name}} is blocked in this process")

        sys.meta_path.insert(0, _Block())
        try:
            import hf_ext
            raise SystemExit("hf_ext must not be importable here")
        except ImportError:
            pass
        import torch, transformers
        from safetensors.torch import load_file

        torch.set_num_threads({torch.get_num_threads()})  # same reduction order as the parent: bit-equal outputs

        io = load_file({str(tmp_path / "io.safetensors")!r})
        for i, model_type, repo, auto_name, attr, keys in {cases!r}:
            model = getattr(transformers, auto_name).from_pretrained(repo, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                torch.manual_seed(1)
                out = getattr(model(**{{k: io[f"{{i}}.in.{{k}}"] for k in keys}}), attr)
            assert torch.equal(out, io[f"{{i}}.out"]), model_type
            if model_type in ("muffin", "viscpm_chat"):  # the processor travels as remote code too
                import numpy as np
                from PIL import Image

                proc = transformers.AutoProcessor.from_pretrained(repo, trust_remote_code=True)
                assert type(proc).__module__.startswith("transformers_modules"), type(proc).__module__
                image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
                messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "describe it"}}]}}]
                prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
                again = proc(images=[image], text=prompt, return_tensors="pt")
                assert all(torch.equal(again[k], io[f"{{i}}.in.{{k}}"]) for k in keys), model_type
            print("REMOTE_OK", model_type)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    ok = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("REMOTE_OK")}
    assert ok == set(BUILDERS), proc.stderr[-4000:]


# ----------------------------------------------------------------------------------------------- pipelines
def _paint_pipeline():
    from hf_ext.testing import tiny_viscpm_paint_pipeline

    return tiny_viscpm_paint_pipeline()


def _iap_pipeline():
    from hf_ext.testing import tiny_iap_pipeline

    return tiny_iap_pipeline(zh_hidden_size=12)


@pytest.mark.parametrize("build", [_paint_pipeline, _iap_pipeline], ids=["viscpm_paint", "iap"])
def test_pipeline_round_trip(build, local_hub):
    pipe = build()
    repo = _repo("pipe")
    pipe.push_to_hub(repo)
    assert "model_index.json" in HfApi().list_repo_files(repo)
    loaded = type(pipe).from_pretrained(repo)  # a Hub id, not a local folder
    kwargs = dict(prompt="一只猫", num_inference_steps=2, height=16, width=16, output_type="np")
    expected = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    got = loaded(**kwargs, generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------------------------- training runs
def test_trainer_pushes_checkpoints_and_card(local_hub, tmp_path):
    """`push_to_hub=True` in the trainer arguments: checkpoints, code and an hf_ext model card land on the Hub."""
    from datasets import Dataset
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    from hf_ext.testing import tiny_text_vae
    from hf_ext.trainers.text_vae import TextVAEConfig, TextVAETrainer

    model = tiny_text_vae("della")
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_list([{"input_ids": torch.randint(2, 40, (8,), generator=g).tolist()} for _ in range(8)])
    repo = _repo("della-run")
    args = TextVAEConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        save_steps=1,
        report_to=[],
        use_cpu=True,
        push_to_hub=True,
        hub_model_id=repo,
        hub_strategy="every_save",
    )
    trainer = TextVAETrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.push_to_hub()
    files = set(HfApi().list_repo_files(repo))
    assert {"model.safetensors", "config.json", "modeling_della.py", "README.md"} <= files
    card = ModelCard.load(repo)
    assert "2207.06130" in card.text and "della" in card.data.tags
    # every save pushes, but asynchronously: a save while a push is still running is skipped (transformers), and a
    # final push identical to the last upload makes no commit, so the count varies with timing; the first
    # checkpoint's push always lands
    titles = [c.title for c in HfApi().list_repo_commits(repo)]
    assert any(t.startswith("Training in progress") for t in titles), titles
    loaded = AutoModelForCausalLM.from_pretrained(repo)
    for (name, a), b in zip(trainer.model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------- datasets
def _unimm_chat_dataset(tmp_path):
    from dataset_builders.unimm_chat import load_unimm_chat
    from dataset_builders.unimm_chat.fixtures import write_unimm_chat_parquet

    return load_unimm_chat(write_unimm_chat_parquet(tmp_path / "unimm.parquet"))


def _chinese_poetry_dataset(tmp_path):
    from dataset_builders.chinese_poetry import load_chinese_poetry

    poem = {
        "author": "王之渙",
        "title": "登鸛雀樓",
        "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"],
    }
    path = tmp_path / "poet.tang.0.json"
    path.write_text(json.dumps([poem], ensure_ascii=False), encoding="utf-8")
    return load_chinese_poetry(str(path))


def _semeval_dataset(tmp_path):
    from dataset_builders.elv import load_semeval2010_task8

    path = tmp_path / "TRAIN_FILE.TXT"
    path.write_text(
        '1\t"The <e1>system</e1> as described has an arrayed <e2>configuration</e2>."\n'
        "Component-Whole(e2,e1)\nComment: Not a collection.\n\n"
        '2\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\nOther\nComment:\n\n',
        encoding="utf-8",
    )
    return load_semeval2010_task8({"train": str(path)})["train"]


def _strip_image_paths(value):
    if isinstance(value, dict):
        if set(value) == {"bytes", "path"}:
            return value["bytes"]
        return {k: _strip_image_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_image_paths(v) for v in value]
    return value


def _rlhf_v_dataset(tmp_path):
    from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet

    return load_rlhf_v(write_rlhf_v_parquet(make_rlhf_v_rows(), tmp_path / "rlhf_v.parquet"))


def _semeval2014_dataset(tmp_path):
    from dataset_builders.elv import load_semeval2014_absa

    path = tmp_path / "Laptop_Train.xml"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<sentences>\n'
        '  <sentence id="1"><text>The battery life is great but the screen is dim.</text><aspectTerms>'
        '<aspectTerm term="battery life" polarity="positive" from="4" to="16"/>'
        '<aspectTerm term="screen" polarity="negative" from="34" to="40"/></aspectTerms></sentence>\n</sentences>\n',
        encoding="utf-8",
    )
    return load_semeval2014_absa({"train": str(path)})["train"]


DATASET_BUILDERS = {
    "semeval2014_absa": _semeval2014_dataset,
    "rlhf_v": _rlhf_v_dataset,
    "unimm_chat": _unimm_chat_dataset,
    "chinese_poetry": _chinese_poetry_dataset,
    "semeval2010_task8": _semeval_dataset,
}


@pytest.mark.parametrize("name", sorted(DATASET_BUILDERS))
def test_builder_output_round_trip(name, local_hub, tmp_path):
    from datasets import load_dataset

    ds = DATASET_BUILDERS[name](tmp_path)
    assert len(ds) > 0
    repo = _repo(f"ds-{name}")
    ds.push_to_hub(repo)
    from hf_ext.hub.cards import create_dataset_card

    card = create_dataset_card(
        pretty_name=f"{name} (converted by hf_ext)",
        builder=name,
        source="local fixture",
        num_rows={"train": len(ds)},
        features=", ".join(ds.features),
    )
    card.push_to_hub(repo, repo_type="dataset")
    loaded = load_dataset(repo, split="train")
    assert loaded.features == ds.features
    # push_to_hub embeds image bytes and keeps only the file name of their path: compare the bytes
    assert _strip_image_paths(loaded.to_dict()) == _strip_image_paths(ds.to_dict())
    from huggingface_hub import DatasetCard

    assert f"`{name}` builder" in DatasetCard.load(repo, repo_type="dataset").text


def test_dense_dpo_lora_adapter_round_trip(local_hub, tmp_path):
    """A LoRA adapter trained by DenseDPOTrainer, pushed, and loaded onto the base model with PEFT."""
    from _dense_dpo_helpers import lora_trainer
    from peft import PeftModel

    from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2

    tok = tiny_bpe_tokenizer()
    trainer = lora_trainer(tmp_path, tok)
    trainer.train()
    repo = _repo("dense-dpo-lora")
    trainer.model.push_to_hub(repo)
    files = set(HfApi().list_repo_files(repo))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    trained = trainer.model.eval()
    loaded = PeftModel.from_pretrained(tiny_gpt2(tok), repo).eval()
    ids = tok("a red circle", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=1e-6)
        assert not torch.allclose(loaded(input_ids=ids).logits, tiny_gpt2(tok)(input_ids=ids).logits)
