"""Muffin: splicing, placeholder errors, generate with/without cache, mixed image counts, save/load, processor,
chat template, Auto classes, pipeline, gradient checkpointing, LoRA."""

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ext  # noqa: F401  (registers the Auto classes)
from hf_ext.models.muffin import DEFAULT_SYSTEM_PROMPT, MuffinForConditionalGeneration, MuffinProcessor
from hf_ext.testing import tiny_muffin, tiny_muffin_config, tiny_muffin_tokenizer


def _img(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def muffin():
    # a larger init makes greedy decoding depend on the input (a near-uniform tiny model would not)
    model, processor = tiny_muffin()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(8.0)
    return model, processor


def _prompt(processor, n_images, text="what is in the image ?"):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def test_chat_templates_literal_strings(muffin):
    _, processor = muffin
    S = DEFAULT_SYSTEM_PROMPT
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "a red square ."},
        {"role": "user", "content": "and ?"},
    ]
    # default = "muffin_original": v0 training format (`_add_speaker_and_signal`, trailing "### ") for conversations...
    train = f"{S}\n\n### Human: <image>\nhi\n### Assistant: a red square .\n### Human: and ?\n### "
    assert processor.apply_chat_template(msgs) == train
    assert processor.apply_chat_template(msgs, chat_template="muffin_original") == train
    assert (
        processor.apply_chat_template(msgs[:2])
        == f"{S}\n\n### Human: <image>\nhi\n### Assistant: a red square .\n### "
    )
    # ... and muffin_vqa's evaluation prompt for generation: image after the question, "\n###" at the end
    assert processor.apply_chat_template(msgs[:1], add_generation_prompt=True) == f"{S}\n###Human: hi\n<image>\n###"
    evaluation = f"{S}\n###Human: hi\n<image>\n###Assistant: a red square .\n###Human: and ?\n###"
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == evaluation
    assert processor.apply_chat_template(msgs, chat_template="muffin_eval") == evaluation
    # "<image>" typed in the text moves after the question, as `expand_question_into_multimodal` does
    typed = [{"role": "user", "content": "<image>\nhi"}]
    assert processor.apply_chat_template(typed, add_generation_prompt=True) == f"{S}\n###Human: \nhi\n<image>\n###"
    # "muffin_v0": the training format with a prefix-consistent generation prompt
    v0_prompt = processor.apply_chat_template(msgs, chat_template="muffin_v0", add_generation_prompt=True)
    assert v0_prompt == train[: -len("### ")] + "### Assistant:"
    full = processor.apply_chat_template(msgs + [{"role": "assistant", "content": "red"}], chat_template="muffin_v0")
    assert full == v0_prompt + " red\n### "
    # "hf_ext_v1": hf_ext's earlier format, "###" instead of the final "### "
    v1 = processor.apply_chat_template(msgs[:2], chat_template="hf_ext_v1")
    assert v1 == f"{S}\n\n### Human: <image>\nhi\n### Assistant: a red square .\n###"
    v1_prompt = processor.apply_chat_template(msgs, chat_template="hf_ext_v1", add_generation_prompt=True)
    assert v1_prompt == v0_prompt
    # a system message replaces the default system prompt
    sys_msgs = [{"role": "system", "content": "Be brief."}, *msgs[:1]]
    assert (
        processor.apply_chat_template(sys_msgs, add_generation_prompt=True) == "Be brief.\n###Human: hi\n<image>\n###"
    )
    with pytest.raises(Exception, match="unsupported role tool"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_selection_and_save(tmp_path):
    from transformers import AutoProcessor

    from hf_ext.models.muffin import MUFFIN_CHAT_TEMPLATES

    _, processor = tiny_muffin(chat_template="muffin_v0")
    assert processor.chat_template["default"] == MUFFIN_CHAT_TEMPLATES["muffin_v0"]
    assert set(processor.chat_template) == {"default", "muffin_original", "muffin_v0", "muffin_eval", "hf_ext_v1"}
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.chat_template == processor.chat_template
    msgs = [{"role": "user", "content": "hi"}]
    for name in (None, "muffin_eval"):
        assert reloaded.apply_chat_template(msgs, chat_template=name, add_generation_prompt=True) == (
            processor.apply_chat_template(msgs, chat_template=name, add_generation_prompt=True)
        )
    _, custom = tiny_muffin(chat_template="{{ messages[0]['content'] }}")
    assert custom.apply_chat_template(msgs) == "hi"


def test_encode_conversation_label_masking(muffin):
    _, processor = muffin
    tok = processor.tokenizer
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what ?"}]},
        {"role": "assistant", "content": "a red square ."},
        {"role": "user", "content": "and ?"},
        {"role": "assistant", "content": "blue ."},
    ]
    img = _img(0)
    default = processor.encode_conversation(conv, images=[img])
    original = processor.encode_conversation(conv, images=[img], label_masking="original")
    everything = processor.encode_conversation(conv, images=[img], label_masking="none")
    ids = default["input_ids"][0]
    assert torch.equal(ids, original["input_ids"][0]) and torch.equal(everything["labels"][0], ids)
    assert default["pixel_values"].shape == (1, 3, 32, 32)
    # Muffin's `_mask_targets` written out by hand: header, then each turn tokenized ALONE (with its own BOS), human
    # turns masked from their 3rd token
    block = processor.replace_image_token({}, 0)
    header = DEFAULT_SYSTEM_PROMPT + "\n\n"
    turns = [
        f"### Human: {block}\nwhat ?\n",
        "### Assistant: a red square .\n",
        "### Human: and ?\n",
        "### Assistant: blue .\n",
    ]
    lengths = [len(tok(t)["input_ids"]) for t in [header, *turns]]
    # (this tokenizer adds no BOS, so nothing drifts here; the golden test covers the drift of a LLaMA-like one)
    expected = ids.clone()
    cur = lengths[0]
    expected[:cur] = -100
    for n, t in zip(lengths[1:], turns):
        if t.startswith("### Human"):
            expected[cur + 2 : cur + n] = -100
        cur += n
    assert torch.equal(original["labels"][0], expected)
    # default: exactly the decoded assistant turns with their stop markers
    kept = ids[default["labels"][0] != -100]
    assert tok.decode(kept) == "### Assistant: a red square .\n###### Assistant: blue .\n###"
    with pytest.raises(ValueError, match="label_masking must be one of"):
        processor.encode_conversation(conv, images=[img], label_masking="human")
    with pytest.raises(ValueError, match="v0 training layout"):
        processor.encode_conversation(conv, images=[img], label_masking="original", chat_template="muffin_eval")


def test_processor_expansion_and_pixels(muffin):
    model, processor = muffin
    n = model.config.num_query
    img1, img2 = _img(0), _img(1, (17, 50))
    enc = processor(images=[img1, img2], text=_prompt(processor, 2), return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    starts = [i for i, t in enumerate(ids) if t == processor.image_start_token_id]
    assert len(starts) == 2
    for s in starts:
        assert ids[s + 1 : s + 1 + n] == [processor.image_patch_token_id] * n
        assert ids[s + 1 + n] == processor.image_end_token_id
    assert ids.count(processor.image_patch_token_id) == 2 * n
    # reference: the original torchvision eval transform on PIL = bicubic resize, /255, (x - 0.5) / 0.5
    for k, im in enumerate((img1, img2)):
        ref = (np.asarray(im.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(enc["pixel_values"][k].numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="number of <image> tokens"):
        processor(images=[img1], text=_prompt(processor, 2))


def test_processor_requires_image_tokens():
    from hf_ext.models.muffin import MuffinImageProcessor
    from hf_ext.testing import tiny_bpe_tokenizer

    with pytest.raises(ValueError, match="add_muffin_image_tokens"):
        MuffinProcessor(image_processor=MuffinImageProcessor(), tokenizer=tiny_bpe_tokenizer())


def test_forward_equals_manual_splice(muffin):
    model, processor = muffin
    enc = processor(images=[_img(0), _img(1)], text=_prompt(processor, 2), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        # manual: BEiT-3 on [patches, queries] -> query outputs -> projector, written into the <im_patch> rows
        inner = model.model
        feats = []
        for k in range(2):
            q = inner.query.unsqueeze(0)
            out = inner.vision_tower(pixel_values=enc["pixel_values"][k : k + 1], inputs_embeds=q).last_hidden_state
            feats.append(inner.multi_modal_projector.linear_1(out[0, -model.config.num_query :]))
        emb = inner.language_model.embed_tokens(enc["input_ids"]).clone()
        pos = (enc["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
        emb[0, pos] = torch.cat(feats)
        hidden = inner.language_model(inputs_embeds=emb, attention_mask=enc["attention_mask"]).last_hidden_state
        ref = model.lm_head(hidden)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_placeholder_count_mismatch(muffin):
    model, processor = muffin
    enc = processor(images=[_img(0)], text=_prompt(processor, 1), return_tensors="pt")
    ids = enc["input_ids"].clone()
    first = (ids[0] == model.config.image_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.pad_token_id  # one placeholder fewer
    n = model.config.num_query
    with pytest.raises(
        ValueError, match=f"Image features and image tokens do not match, tokens: {n - 1}, features: {n}"
    ):
        model(input_ids=ids, pixel_values=enc["pixel_values"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=enc["input_ids"])


def test_generate_cache_equals_no_cache(muffin):
    model, processor = muffin
    enc = processor(images=[_img(3)], text=_prompt(processor, 1), return_tensors="pt")
    kw = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
    with_cache = model.generate(**enc, **kw)
    no_cache = model.generate(**enc, use_cache=False, **kw)
    assert torch.equal(with_cache, no_cache)
    # and equal to a manual greedy loop over full forwards
    ids = enc["input_ids"]
    for _ in range(8):
        with torch.no_grad():
            nxt = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(with_cache, ids)
    assert len(set(with_cache[0, -8:].tolist())) > 1  # the test model is input-sensitive


def test_generate_returns_the_language_models_hidden_states(muffin):
    # the image encoder must not swallow generate's output flags: each step carries the LLM's hidden states, and the
    # prefill step's equal a forward pass over the prompt
    model, processor = muffin
    enc = processor(images=[_img(3)], text=_prompt(processor, 1), return_tensors="pt")
    out = model.generate(
        **enc, max_new_tokens=2, do_sample=False, return_dict_in_generate=True, output_hidden_states=True
    )
    n_layers = model.config.text_config.num_hidden_layers
    assert len(out.hidden_states) == 2 and all(len(step) == n_layers + 1 for step in out.hidden_states)
    with torch.no_grad():
        reference = model(**enc, output_hidden_states=True).hidden_states
    for got, expected in zip(out.hidden_states[0], reference):
        torch.testing.assert_close(got, expected)


def test_batch_with_different_image_counts(muffin):
    model, processor = muffin
    processor.tokenizer.padding_side = "left"
    texts = [_prompt(processor, 2, "compare"), _prompt(processor, 0, "hello world"), _prompt(processor, 1)]
    images = [[_img(0), _img(1)], [], [_img(2)]]
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    assert batch["pixel_values"].shape[0] == 3
    kw = dict(max_new_tokens=5, do_sample=False, min_new_tokens=5)
    out = model.generate(**batch, **kw)
    with torch.no_grad():
        batch_logits = model(**batch).logits
    for i, (ims, text) in enumerate(zip(images, texts)):
        one = processor(images=ims or None, text=text, return_tensors="pt")
        single = model.generate(**one, **kw)
        assert out[i, -5:].tolist() == single[0, -5:].tolist()
        with torch.no_grad():
            ref = model(**one).logits[0]
        torch.testing.assert_close(batch_logits[i, -ref.shape[0] :], ref, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip_auto_classes(muffin, tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

    model, processor = muffin
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "MuffinConfig"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MuffinForConditionalGeneration) and isinstance(proc2, MuffinProcessor)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)).__name__ == "MuffinImageProcessor"
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "MuffinModel"
    enc = processor(images=[_img(0)], text=_prompt(processor, 1), return_tensors="pt")
    enc2 = proc2(images=[_img(0)], text=_prompt(proc2, 1), return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded.eval()(**enc2).logits)


def test_pipeline_image_text_to_text(muffin):
    from transformers import pipeline

    model, processor = muffin
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    img = _img(5)
    messages = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "what ?"}]}]
    out = pipe(text=messages, max_new_tokens=4, do_sample=False, min_new_tokens=4, return_full_text=False)
    enc = processor(images=[img], text=_prompt(processor, 1, "what ?"), return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    expected = processor.tokenizer.decode(ref[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out[0]["generated_text"] == expected


def test_gradient_checkpointing_same_grads():
    model, processor = tiny_muffin()
    model.train()
    enc = processor(images=[_img(0)], text=_prompt(processor, 1) + " a red square", return_tensors="pt")
    labels = enc["input_ids"].clone()
    model(**enc, labels=labels).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "model.query" in ref and "model.vision_tower.layers.0.language_expert.q_proj.weight" in ref
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(**enc, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-5)


def test_lora_on_llm_and_beit3():
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_muffin()
    cfg = tiny_muffin_config()
    targets = ["language_model.layers.0.self_attn.q_proj", "language_expert.q_proj", "language_expert.v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, lora_alpha=4))
    # each adapted Linear(32 -> 32) gets A (2x32) + B (32x2)
    n_llm = 1
    n_beit = 2 * cfg.vision_config.num_hidden_layers
    expected = (n_llm + n_beit) * (2 * 32 + 32 * 2)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == expected
    enc = processor(images=[_img(0)], text=_prompt(processor, 1), return_tensors="pt")
    loss = peft_model(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    grads = [n for n, p in peft_model.named_parameters() if p.requires_grad and p.grad is not None]
    assert any("vision_tower" in n for n in grads) and any("language_model" in n for n in grads)


def test_tokenizer_helper_is_consistent():
    tok = tiny_muffin_tokenizer()
    cfg = tiny_muffin_config(tok)
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<im_patch>")


def test_query_init_from_beit3_text_embeddings():
    model, _ = tiny_muffin()
    inner = model.model
    words = inner.vision_tower.embeddings.word_embeddings.weight
    vcfg = model.config.vision_config
    middle = inner.query[1:-1].detach().clone()
    inner.init_query_from_beit3()
    torch.testing.assert_close(inner.query[0], words[vcfg.bos_token_id])
    torch.testing.assert_close(inner.query[-1], words[vcfg.eos_token_id])
    torch.testing.assert_close(inner.query[1:-1], middle)
    # the official init: timm trunc_normal_(std=0.02), i.e. N(0, 0.02^2) for practical purposes (64 samples here)
    assert 0.01 < middle.std().item() < 0.03


def test_other_llm_qwen2_with_tied_embeddings():
    tok = tiny_muffin_tokenizer()
    cfg = tiny_muffin_config(tok, text_model_type="qwen2")
    cfg.text_config.tie_word_embeddings = True
    cfg = type(cfg)(**cfg.to_dict())  # rebuild so __post_init__ sees the tied LLM
    model = MuffinForConditionalGeneration(cfg).eval()
    assert type(model.model.language_model).__name__ == "Qwen2Model"
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    _, processor = tiny_muffin()
    enc = processor(images=[_img(0)], text=_prompt(processor, 1), return_tensors="pt")
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(**enc, **kw), model.generate(**enc, use_cache=False, **kw))


def test_get_image_features_return_dict_and_attentions(muffin):
    """transformers' Llava contract: `return_dict=False` gives a tuple, attentions come back when asked."""
    model, _ = muffin
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=px, output_attentions=True, output_hidden_states=True)
        tup = model.get_image_features(pixel_values=px, return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], out.last_hidden_state)
    torch.testing.assert_close(torch.stack(list(tup[1])), torch.stack(out.pooler_output))
    n_tokens = 1 + (32 // 16) ** 2 + model.config.num_query
    assert len(out.attentions) == model.config.vision_config.num_hidden_layers
    assert out.attentions[0].shape == (2, model.config.vision_config.num_attention_heads, n_tokens, n_tokens)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, n_tokens))
    assert len(out.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    # and from the config, as the test mixins set it
    model.set_attn_implementation("eager")
    model.config.output_attentions = True
    try:
        with torch.no_grad():
            assert len(model.get_image_features(pixel_values=px).attentions) == 2
    finally:
        model.config.output_attentions = False
        model.set_attn_implementation("sdpa")


def test_return_dict_false_from_config(muffin):
    model, processor = muffin
    enc = processor(images=[_img(0)], text=_prompt(processor, 1), return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits
        out = model(**enc, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], ref)


def test_tensor_parallel_plan_as_llava():
    """Muffin's TP plan is Llava's for the same LLM: lm_head column-parallel with gathered output, the LLM's own plan
    under `model.language_model.` (BEiT-3, like Llava's CLIP tower, is not sharded)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    model, _ = tiny_muffin()
    text = model.config.text_config.to_dict()
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=16,
            ),
            text_config=text,
        )
    )
    llava_llm_plan = {k: v for k, v in llava.tp_plan.items() if not k.startswith("model.vision_tower")}
    assert model.tp_plan == llava_llm_plan
    assert model.tp_plan["lm_head"] == "colwise_gather_output" and model.supports_tp_plan


def test_extract_muffin_answer():
    from hf_ext.models.muffin import extract_muffin_answer

    # as muffin_chat.MuffinForSingleTurnChat.decode: cut at "###", then drop up to "Assistant:", strip
    assert extract_muffin_answer(" Assistant: A red circle.\n### Human: next") == "A red circle."
    assert extract_muffin_answer(" a cat .\n###") == "a cat ."
    assert extract_muffin_answer("no stop marker ") == "no stop marker"
    assert extract_muffin_answer("### Assistant: x") == ""


def test_chat_example_uses_original_inference_prompt():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "examples" / "muffin" / "chat.py"
    spec = importlib.util.spec_from_file_location("muffin_chat_example", path)
    chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat)
    answer = chat.main(["--tiny", "--max_new_tokens", "6", "--num_beams", "2", "--question", "what ?"])
    # independent: the original evaluation prompt written out, beam search, the original's answer extraction
    model, processor = tiny_muffin()
    prompt = f"{DEFAULT_SYSTEM_PROMPT}\n###Human: what ?\n<image>\n###"
    enc = processor(images=[Image.new("RGB", (64, 64), (220, 40, 40))], text=prompt, return_tensors="pt")
    out = model.generate(
        **enc,
        max_new_tokens=6,
        num_beams=2,
        do_sample=False,
        repetition_penalty=1.1,
        stop_strings="###",
        tokenizer=processor.tokenizer,
    )
    text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    text = text.split("###")[0]
    text = text[text.index("Assistant:") + len("Assistant:") :] if "Assistant:" in text else text
    assert answer == text.strip()


def test_viscpm_layout_without_start_end_tokens():
    """VisCPM-Chat's image segment is exactly `num_query` placeholder slots (no start/end markers): the processor
    can emit that layout and the model splices the features into those slots."""
    from hf_ext.models.muffin import MuffinImageProcessor

    model, processor = tiny_muffin(model_type="viscpm_chat")
    slots = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=processor.tokenizer,
        num_query=model.config.num_query,
        image_start_token=None,
        image_end_token=None,
    )
    n = model.config.num_query
    assert slots.image_seq_length == n and slots.replace_image_token({}, 0) == "<im_patch>" * n
    text = "<image>what ?"
    enc = slots(images=[_img(0)], text=text, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert processor.image_start_token_id not in ids and processor.image_end_token_id not in ids
    first = ids.index(model.config.image_token_id)
    assert ids[first : first + n] == [model.config.image_token_id] * n and ids.count(model.config.image_token_id) == n
    # the splice: the same features land in the slots as with the Muffin layout (compare the LLM inputs directly)
    with torch.no_grad():
        feats = torch.stack(model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output)
        embeds = model.get_input_embeddings()(enc["input_ids"])
        mask = model.model.get_placeholder_mask(enc["input_ids"], embeds, feats)
        spliced = embeds.masked_scatter(mask, feats)
    torch.testing.assert_close(spliced[0, first : first + n], feats[0])
    with torch.no_grad():
        assert model(**enc).logits.shape[1] == len(ids)
