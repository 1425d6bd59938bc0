"""CPM-Bee against the golden outputs of OpenBMB's original code (tests/fixtures/cpmbee, see its README)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeForCausalLM, CpmBeeTokenizer
from hf_ext.models.cpmbee.modeling_cpmbee import cpmbee_position_bucket

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cpmbee"
CASES = json.loads((FIX / "cases.json").read_text(encoding="utf-8"))
ATOL = 1e-4
_TENSORS: dict[str, dict[str, torch.Tensor]] = {}


def expected(ref: str) -> torch.Tensor:
    path, key = ref.split(":", 1)
    if path not in _TENSORS:
        _TENSORS[path] = load_file(str(FIX / path))
    return _TENSORS[path][key]


@pytest.fixture(scope="module")
def tok():
    return CpmBeeTokenizer(str(FIX / "vocab.txt"))


@pytest.fixture(scope="module")
def model():
    config = CpmBeeConfig.from_original_config(json.loads((FIX / "original_checkpoint" / "config.json").read_text()))
    m = CpmBeeForCausalLM(config).eval()
    state = {"cpmbee." + k: v for k, v in load_file(str(FIX / "original_checkpoint" / "model.safetensors")).items()}
    missing, unexpected = m.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return m


# ------------------------------------------------------------------ tokenizer
def test_vocab_size_and_specials(tok):
    assert tok.vocab_size == CASES["vocab_size"]
    assert tok.convert_tokens_to_ids(["\n", " "]) == [CASES["newline_id"], CASES["space_id"]]
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 6, 7)


@pytest.mark.parametrize("case", CASES["tokenizer"], ids=lambda c: repr(c["text"])[:30])
def test_tokenizer_golden(tok, case):
    if "error" in case:
        with pytest.raises(ValueError, match=case["error"].split(": ", 1)[1].split(" `")[0].split(" at")[0]):
            tok.encode_with_ext_table(case["text"])
        return
    ids, ext = tok.encode_with_ext_table(case["text"])
    assert ids == case["encode_ids"]
    assert {str(k): v for k, v in ext.items()} == case["encode_ext_table"]
    assert [list(t) for t in tok.tokenize_with_info(case["text"])] == case["tokenize"]
    assert tok.decode_with_ext_table(ids, ext) == case["decode"]


def _instances(case):
    cd = case["convert_data_to_id"]
    if isinstance(cd, list):
        return list(zip(case["data"], cd))
    if "A" in case["data"]:
        return [(case["data"][k], cd[k]) for k in case["data"]]
    return [(case["data"], cd)]


def _packed(tok, name, case):
    if name == "batch_packed":
        d = case["data"]
        return tok.pack([[[d["A"], d["A_incontext_sample"]], [d["B"]]], [[d["C"]]]], return_tensors=None)
    return tok(case["data"], return_tensors=None)


FORWARD_KEYS = {"input": "input_ids", "input_sub": "input_id_sub", "segment": "segment_ids"}


@pytest.mark.parametrize("name", list(CASES["cases"]))
def test_structured_inputs_golden(tok, name):
    case = CASES["cases"][name]
    for data, ref in _instances(case):
        mine = tok.convert_data_to_id(data)
        mine["ext_table"] = {str(k): v for k, v in mine["ext_table"].items()}
        mine["token_id_table"] = {g: {str(k): v for k, v in m.items()} for g, m in mine["token_id_table"].items()}
        for key in ref:
            assert mine[key] == ref[key], key
    enc = _packed(tok, name, case)
    for key, value in case["forward_inputs"].items():
        assert enc[FORWARD_KEYS.get(key, key)] == value, key
    assert enc["labels"] == case["target"]
    assert enc["position_ids"] == case["position"]


def test_structured_input_errors(tok):
    with pytest.raises(TypeError, match="dicts and strings"):
        tok.convert_data_to_id({"a": 3})
    with pytest.raises(ValueError, match="no base token"):
        tok.convert_data_to_id({"a": "x</n>y"})
    with pytest.raises(ValueError, match="'<ans>'"):
        tok.prepare_for_generation({"input": "x"})


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == (FIX / "vocab.txt").read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, CpmBeeTokenizer)
    case = CASES["tokenizer"][2]
    assert reloaded.encode_with_ext_table(case["text"])[0] == case["encode_ids"]


# ------------------------------------------------------------------ model
def test_position_buckets_golden():
    ref = json.loads((FIX / "expected" / "position_buckets.json").read_text())
    rel = torch.tensor(ref["relative_position(key_pos-query_pos)"])
    for key, buckets in ref["buckets"].items():
        nb, md = (int(part.split("=")[1]) for part in key.split(","))
        assert cpmbee_position_bucket(rel, nb, md).tolist() == buckets, key


def _forward(model, case, **kwargs):
    fi = {k: torch.tensor(v) for k, v in case["forward_inputs"].items()}
    return model(
        input_ids=fi["input"],
        input_id_sub=fi["input_sub"],
        length=fi["length"],
        context=fi["context"],
        sample_ids=fi["sample_ids"],
        num_segments=fi["num_segments"],
        segment_ids=fi["segment"],
        segment_rel_offset=fi["segment_rel_offset"],
        segment_rel=fi["segment_rel"],
        span=fi["span"],
        ext_table_ids=fi["ext_table_ids"],
        ext_table_sub=fi["ext_table_sub"],
        use_cache=False,
        **kwargs,
    )


@pytest.mark.parametrize("name", list(CASES["cases"]))
def test_forward_golden(model, name):
    case = CASES["cases"][name]
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(f"layer{n}", o[0]))
        for n, layer in enumerate(model.cpmbee.encoder.layers)
    ]
    hooks.append(
        model.cpmbee.position_bias.register_forward_hook(
            lambda m, i, o: captured.update(segment_bucket=i[2], position_bias=o)
        )
    )
    hooks.append(
        model.cpmbee.encoder.layers[0].self_att.self_attention.register_forward_hook(
            lambda m, i, o: captured.__setitem__("attention_mask", i[1])
        )
    )
    try:
        with torch.no_grad():
            out = _forward(model, case, labels=torch.tensor(case["target"]), output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    mine = {"logits": out.logits, "hidden": out.hidden_states[-1], "embedding": out.hidden_states[0], **captured}
    lengths = case["forward_inputs"]["length"]
    for key, ref in case["expected"].items():
        ref_t = expected(ref)
        for b, n in enumerate(lengths):
            if key in ("segment_bucket", "attention_mask"):
                got = mine[key][b].to(torch.long)
                assert torch.equal(got[:n, :n], ref_t[b][:n, :n].to(torch.long)), (key, b)
            elif key == "position_bias":
                torch.testing.assert_close(mine[key][b][:, :n, :n], ref_t[b][:, :n, :n], atol=ATOL, rtol=0)
            else:
                torch.testing.assert_close(mine[key][b][:n], ref_t[b][:n], atol=ATOL, rtol=0, msg=f"{key}[{b}]")
    assert abs(out.loss.item() - case["loss"]) < ATOL


def test_cached_inference_steps_golden(tok, model):
    inf = json.loads((FIX / "expected" / "inference_steps.json").read_text(encoding="utf-8"))
    enc, infos = tok.prepare_for_generation(inf["data"])
    pre = inf["steps"][0]
    assert enc["input_ids"].tolist() == pre["input"] and enc["input_id_sub"].tolist() == pre["input_sub"]
    assert enc["segment_ids"].tolist() == pre["segment"] and enc["num_segments"].tolist() == pre["num_segments"]
    assert enc["position_ids"].tolist() == pre["position"] and enc["segment_rel"].tolist() == pre["segment_rel"]
    assert [enc["ext_table_ids"].tolist(), enc["ext_table_sub"].tolist()] == [
        pre["ext_table_ids"],
        pre["ext_table_sub"],
    ]
    assert [list(p) for p in infos[0]["predict_segments"]] == inf["predict_segments"]
    assert {str(k): v for k, v in infos[0]["rev_ext_table"].items()} == inf["rev_ext_table"]
    with torch.no_grad():
        out = model(**enc, use_cache=True)
        torch.testing.assert_close(out.logits[0], expected(inf["expected"]["prefill"])[0], atol=ATOL, rtol=0)
        cache = out.cache
        fed = []
        for st in inf["steps"][1:]:
            step = model(
                input_ids=torch.tensor(st["input"]),
                input_id_sub=torch.tensor(st["input_sub"]),
                position_ids=torch.tensor(st["position"]),
                segment_ids=torch.tensor(st["segment"]),
                context=torch.tensor(st["context"]),
                ext_table_ids=enc["ext_table_ids"],
                ext_table_sub=enc["ext_table_sub"],
                cache=cache,
                use_cache=True,
            )
            ref = expected(inf["expected"][f"step{st['step']}"])[0, 0]
            torch.testing.assert_close(step.logits[0, -1], ref, atol=ATOL, rtol=0)
            fed.append(st)
        # cached steps = one full forward of prompt + fed tokens (fed tokens as answer tokens, context 0)
        full = {k: enc[k] for k in ("input_ids", "input_id_sub", "position_ids", "segment_ids", "num_segments")}
        for st in fed:
            full["input_ids"] = torch.cat([full["input_ids"], torch.tensor(st["input"])], 1)
            full["input_id_sub"] = torch.cat([full["input_id_sub"], torch.tensor(st["input_sub"])], 1)
            full["position_ids"] = torch.cat([full["position_ids"], torch.tensor(st["position"])], 1)
            full["segment_ids"] = torch.cat([full["segment_ids"], torch.tensor(st["segment"])], 1)
            full["num_segments"] = torch.cat([full["num_segments"], torch.tensor(st["num_segments"])], 1)
        context = torch.cat([enc["context"], torch.zeros(1, len(fed), dtype=torch.long)], 1)
        whole = model(
            **full,
            context=context,
            segment_rel=enc["segment_rel"],
            ext_table_ids=enc["ext_table_ids"],
            ext_table_sub=enc["ext_table_sub"],
            use_cache=False,
        )
        for j, st in enumerate(fed):
            ref = expected(inf["expected"][f"step{st['step']}"])[0, 0]
            torch.testing.assert_close(whole.logits[0, enc["input_ids"].shape[1] + j], ref, atol=ATOL, rtol=0)


def test_ext_ids_embed_as_their_table_entry(model):
    ids = torch.tensor([[6, 1, 626]])
    ext_ids, ext_sub = torch.tensor([1]), torch.tensor([2])
    a = model.cpmbee.embed(ids, None, ext_ids, ext_sub)
    b = model.cpmbee.embed(torch.tensor([[6, 1, 1]]), torch.tensor([[0, 0, 2]]))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="ext_table_ids"):
        model.cpmbee.embed(torch.tensor([[627]]), None, ext_ids, ext_sub)


def test_input_embedding_is_an_embedding_and_lora_wraps_it(model):
    # `get_input_embeddings()` is an nn.Embedding (what transformers and PEFT look for); with LoRA on it the output
    # projection keeps using the (tied) base weight, and at LoRA's zero init the logits are the base model's
    import copy

    from peft import LoraConfig, get_peft_model

    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    ids = torch.tensor([[6, 8, 7, 6, 145, 7]])
    with torch.no_grad():
        base = model(ids).logits
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules=["input_embedding"], r=2))
        torch.testing.assert_close(peft_model(input_ids=ids).logits, base)
        # a non-zero adapter moves the input embeddings by scaling * A[ids] @ B^T and nothing else
        lora = peft_model.base_model.model.cpmbee.input_embedding
        torch.nn.init.normal_(lora.lora_embedding_A["default"])
        torch.nn.init.normal_(lora.lora_embedding_B["default"])
        a, b = lora.lora_embedding_A["default"], lora.lora_embedding_B["default"]
        delta = (a.T[ids] @ b.T) * lora.scaling["default"]
        torch.testing.assert_close(
            lora(ids, torch.zeros_like(ids)), model.cpmbee.input_embedding(ids, torch.zeros_like(ids)) + delta
        )
    with pytest.raises(NotImplementedError, match="resize"):
        model.resize_token_embeddings(700)


def test_auto_classes_and_save_load(model, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "cpmbee"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[6, 8, 7, 6, 145, 7]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert CpmBeeForCausalLM._no_split_modules == ["CpmBeeTransformerBlock"]


def test_config_validation():
    with pytest.raises(ValueError, match="max_depth"):
        CpmBeeConfig(position_bias_num_segment_buckets=32)
    with pytest.raises(ValueError, match="Unknown CPM-Bee config key"):
        CpmBeeConfig.from_original_config({"dim_model": 8, "bogus": 1})


# ------------------------------------------------------------------ beam search
BEAMS = json.loads((FIX / "expected" / "beam_search.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("run", BEAMS["runs"], ids=lambda r: f"{r['implementation'][:12]}-{'+'.join(r['cases'])}")
def test_beam_search_golden(tok, model, run):
    from hf_ext.models.cpmbee import cpmbee_beam_search

    settings = run["settings"]
    enc, infos = tok.prepare_for_generation(run["data"])
    if "model_inputs" in run:  # the original's prompt tensors (left-padded batch)
        mi = run["model_inputs"]
        assert enc["input_ids"].tolist() == mi["input"] and enc["segment_ids"].tolist() == mi["segment"]
        assert enc["num_segments"].tolist() == mi["num_segments"] and enc["position_ids"].tolist() == mi["input_pos"]
        assert enc["ext_table_ids"].tolist() == mi["batch_ext_table_ids"]
        for info, ref in zip(infos, run["other_info"]):
            assert [list(p) for p in info["predict_segments"]] == ref["predict_segments"]
            assert info["answer_placeholders"] == ref["answer_placeholders"]
    out = cpmbee_beam_search(model, tok, run["data"], **settings)
    assert [[list(t) for t in r] for r in out.result_ids] == run["result_ids"]
    assert out.answers == run["result"]
    for mine, ref in zip(out.hypotheses, run["hypotheses"]):
        assert [[list(t) for t in toks] for _, toks in mine] == [h["tokens"] for h in ref]
        assert [s for s, _ in mine] == pytest.approx([h["score"] for h in ref], abs=ATOL)


def _greedy_by_full_forward(model, enc, steps):
    """Greedy decoding that recomputes every step with one uncached forward (generated tokens are answer tokens)."""
    keys = ("input_ids", "input_id_sub", "position_ids", "segment_ids", "num_segments", "context", "attention_mask")
    cur = {k: enc[k].clone() for k in keys}
    out = []
    for _ in range(steps):
        logits = model(
            **cur,
            segment_rel=enc["segment_rel"],
            ext_table_ids=enc["ext_table_ids"],
            ext_table_sub=enc["ext_table_sub"],
            use_cache=False,
        ).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        out.append(nxt)
        cur["input_ids"] = torch.cat([cur["input_ids"], nxt], 1)
        for k, extra in (("input_id_sub", 0), ("context", 0), ("attention_mask", 1)):
            cur[k] = torch.cat([cur[k], torch.full_like(nxt, extra)], 1)
        cur["position_ids"] = torch.cat([cur["position_ids"], cur["position_ids"][:, -1:] + 1], 1)
        cur["segment_ids"] = torch.cat([cur["segment_ids"], cur["segment_ids"][:, -1:]], 1)
        cur["num_segments"] = torch.cat([cur["num_segments"], cur["num_segments"][:, -1:]], 1)
    return torch.cat(out, 1)


def test_stock_generate_matches_uncached_greedy(tok, model):
    data = [{"input": "今天天气不错，", "<ans>": ""}, {"question": "What is this? 🍎", "<ans>": ""}]
    enc, infos = tok.prepare_for_generation(data, add_answer_bos=True)
    assert enc["input_ids"][:, -1].tolist() == [tok.bos_token_id] * 2 and enc["context"][:, -1].tolist() == [0, 0]
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
        reference = _greedy_by_full_forward(model, enc, 5)
    assert torch.equal(generated[:, enc["input_ids"].shape[1] :], reference)
    # a left-padded batch gives each row what it gives alone
    with torch.no_grad():
        alone, _ = tok.prepare_for_generation(data[0], add_answer_bos=True)
        single = model.generate(**alone, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(single[0, alone["input_ids"].shape[1] :], reference[0])


# ------------------------------------------------------------------ conversion
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_convert_original_checkpoint_sharded(tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.models.cpmbee.convert_cpmbee_original_to_hf import main

    state = load_file(str(FIX / "original_checkpoint" / "model.safetensors"))
    torch.save(state, tmp_path / "cpm-bee.pt")  # original keys, .pt as released
    out = tmp_path / "hf"
    main(
        [
            "--checkpoint", str(tmp_path / "cpm-bee.pt"), "--config", str(FIX / "original_checkpoint" / "config.json"),
            "--vocab", str(FIX / "vocab.txt"), "--output_dir", str(out), "--dtype", dtype, "--max_shard_size", "150KB",
        ]
    )  # fmt: skip
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    assert not list(out.glob("*.tmp.safetensors"))
    stored = {}
    for shard in shards:
        stored.update(load_file(str(out / shard)))
    for key, value in state.items():  # each tensor is stored once, cast to the requested dtype
        assert stored["cpmbee." + key].dtype == getattr(torch, dtype)
        torch.testing.assert_close(stored["cpmbee." + key], value.to(getattr(torch, dtype)), atol=0, rtol=0)
    if dtype == "float32":
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(out)
        case = CASES["cases"]["emoji_oov"]
        enc = tok(case["data"])
        with torch.no_grad():
            logits = model(**{k: v for k, v in enc.items() if k != "labels"}, use_cache=False).logits
        torch.testing.assert_close(logits[0], expected(case["expected"]["logits"])[0], atol=ATOL, rtol=0)


def test_convert_rejects_mismatched_checkpoint(tmp_path):
    from hf_ext.models.cpmbee.convert_cpmbee_original_to_hf import convert_cpmbee_checkpoint

    state = load_file(str(FIX / "original_checkpoint" / "model.safetensors"))
    state.pop("encoder.output_layernorm.weight")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        convert_cpmbee_checkpoint(
            tmp_path / "bad.pt", FIX / "original_checkpoint" / "config.json", FIX / "vocab.txt", tmp_path / "o"
        )


def test_gradient_checkpointing_gives_the_same_gradients(tok):
    config = CpmBeeConfig(
        vocab_size=tok.vocab_size, hidden_size=32, dim_ff=64, num_hidden_layers=2, num_attention_heads=2, dim_head=16,
        position_bias_num_buckets=32, position_bias_max_distance=128, position_bias_num_segment_buckets=80,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CpmBeeForCausalLM(config).train()
    batch = tok([{"input": "Hello world", "<ans>": "hi"}, {"input": "今天天气不错", "<ans>": "图片"}])
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.cpmbee.encoder.layers[0].gradient_checkpointing
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_token_mask_logits_processor_with_stock_generate(tok, model):
    from transformers import LogitsProcessorList

    from hf_ext.models.cpmbee import CpmBeeTokenMaskLogitsProcessor

    data = [{"input": "Ωmega ∑∑ x ∞", "<ans>": ""}, {"input": "今天天气不错，", "<ans>": ""}]
    enc, infos = tok.prepare_for_generation(data, add_answer_bos=True)
    proc = CpmBeeTokenMaskLogitsProcessor(tok.vocab_size, tok.unk_token_id, [i["rev_ext_table"] for i in infos])
    scores = torch.zeros(4, tok.vocab_size + 2)  # 2 prompts x 2 beams
    masked = proc(None, scores)
    # row 0 (prompt 0) has OOV pieces: <unk> (first piece) and both ext columns are its own; prompt 1 has none
    assert masked[:2].eq(0).all()
    assert masked[2:, tok.unk_token_id].eq(-10000).all() and masked[2:, tok.vocab_size :].eq(-10000).all()
    assert masked[2:, : tok.unk_token_id].eq(0).all() and masked[2:, tok.unk_token_id + 1 : tok.vocab_size].eq(0).all()
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0,
            logits_processor=LogitsProcessorList([proc]),
        )  # fmt: skip
    new = out[1, enc["input_ids"].shape[1] :]
    assert (new != tok.unk_token_id).all() and (new < tok.vocab_size).all()
