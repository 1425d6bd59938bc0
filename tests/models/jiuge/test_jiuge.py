"""Jiuge: tokenizer and sample format, form-stressed loss, constrained decoding, Auto-class round trip."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from hf_ext.models.jiuge import (
    BUILTIN_FORMS,
    JiugeConfig,
    JiugeForCausalLM,
    JiugeTokenizer,
    PoemForm,
    PoemFormLogitsProcessor,
    form_stressed_weights,
    format_sample,
    learn_ci_forms,
    split_lines,
    weighted_lm_loss,
)
from hf_ext.testing import tiny_jiuge

CORPUS = [
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回。",
    "登鹳雀楼 春晓 浣溪沙 五言七绝句律诗对联",
]

# Two 浣溪沙 in the corpus's layout (7,7,7 / 7,7,7) and one variant: the learned pattern is the mode.
HUANXISHA = [
    "一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回。无可奈何花落去，似曾相识燕归来。小园香径独徘徊。",
    "游蝶困花风欲静，鸣禽恋树日初长。柳丝无力袅轻黄。尽日画楼人散后，半帘残雨燕归忙。篆烟消尽带余香。",
    "山下兰芽短浸溪，松间沙路净无泥，萧萧暮雨子规啼。",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models decode token by token: on a shared CPU, thread hand-offs cost more than the matmuls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return JiugeTokenizer.from_corpus(CORPUS + HUANXISHA)


@pytest.fixture(scope="module")
def ci_forms():
    return learn_ci_forms([("浣溪沙", b) for b in HUANXISHA], min_count=2)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and sample format


def test_format_sample_and_char_level_tokenization(tokenizer):
    text = format_sample("五言绝句", "登鹳雀楼", CORPUS[0])
    assert text == "[FORM]五言绝句[TITLE]登鹳雀楼[BODY]" + CORPUS[0] + "[EOS]"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
    # One token per character; the markers are single tokens.
    assert tokens == ["[FORM]", *"五言绝句", "[TITLE]", *"登鹳雀楼", "[BODY]", *CORPUS[0], "[EOS]"]
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == "五言绝句登鹳雀楼" + CORPUS[0]
    assert format_sample(" 五言 绝句", "登 楼") == "[FORM]五言绝句[TITLE]登楼[BODY]"


def test_tokenizer_vocabulary_is_deterministic_and_maps_unknowns(tokenizer):
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[EOS]", "[FORM]", "[TITLE]", "[BODY]")] == list(range(6))
    # Characters ordered by decreasing frequency after the 6 specials and 7 punctuation marks: "，" is reserved,
    # and among characters the most frequent in the corpus comes first.
    counts = {}
    for text in CORPUS + HUANXISHA:
        for ch in text:
            if not ch.isspace() and ch not in "，。、；：？！":
                counts[ch] = counts.get(ch, 0) + 1
    top = sorted(counts, key=lambda c: (-counts[c], c))[0]
    assert vocab[top] == 13
    assert tokenizer("龘").input_ids == [tokenizer.unk_token_id]
    small = JiugeTokenizer.from_corpus(CORPUS, max_vocab_size=20)
    assert len(small) == 20


def test_tokenizer_round_trip_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    config = JiugeConfig.from_tokenizer(tokenizer, n_embd=8, n_layer=1, n_head=1)
    config.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, JiugeTokenizer)
    text = format_sample("七言绝句", "无题", CORPUS[2])
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.body_token_id == tokenizer.body_token_id


def test_format_sample_errors():
    with pytest.raises(ValueError, match="form is empty"):
        format_sample("", "t")
    with pytest.raises(ValueError, match=r"title .* contains the special token \[EOS\]"):
        format_sample("五言绝句", "a[EOS]")


# ---------------------------------------------------------------------------------------------------------------
# Forms


def test_builtin_forms_and_learned_ci_form(ci_forms):
    assert BUILTIN_FORMS["七言律诗"].template() == "XXXXXXX，XXXXXXX。" * 4
    assert BUILTIN_FORMS["五言绝句"].rhyme_lines == (1, 3)
    form = ci_forms["浣溪沙"]
    assert form.line_lengths == (7, 7, 7, 7, 7, 7)
    # Every poem with the mode pattern ends lines with "，。。，。。": one allowed mark per line.
    assert form.punctuation == ("，", "。", "。", "，", "。", "。")
    assert form.support == pytest.approx(2 / 3)
    assert form.matches(HUANXISHA[0]) and not form.matches(HUANXISHA[2])
    assert PoemForm.from_dict(form.to_dict()) == form


def test_learn_ci_forms_mode_and_punctuation_shares():
    # 10 poems of pattern (3, 4): 7 end line 1 with "，", 2 with "。", 1 with "、" (10% is the threshold, kept);
    # 4 poems of pattern (4, 4) lose to the mode; a tune seen twice falls under min_count.
    pairs = [("甲", "天地人，日月星辰。")] * 7 + [("甲", "天地人。日月星辰。")] * 2 + [("甲", "天地人、日月星辰。")]
    pairs += [("甲", "天地人日，月星辰天。")] * 4 + [("乙", "天地，人。")] * 2 + [("失调名", "天地，人。")] * 9
    forms = learn_ci_forms(pairs, min_count=3, min_punctuation_share=0.1)
    assert list(forms) == ["甲"]
    assert forms["甲"].line_lengths == (3, 4)
    assert forms["甲"].punctuation == ("，。、", "。")
    assert forms["甲"].support == pytest.approx(10 / 14)
    assert learn_ci_forms(pairs, min_count=3, min_punctuation_share=0.25)["甲"].punctuation == ("，", "。")


def test_poem_form_validation_errors():
    with pytest.raises(ValueError, match="2 line_lengths but 1 punctuation"):
        PoemForm("x", "ci", (5, 5), ("，",))
    with pytest.raises(ValueError, match="kind must be"):
        PoemForm("x", "fu", (5,), ("。",))
    with pytest.raises(ValueError, match="after the last punctuation"):
        split_lines("白日依山尽，黄河入海流")


# ---------------------------------------------------------------------------------------------------------------
# Form-stressed loss


def test_form_stressed_weights_by_hand(tokenizer):
    config = JiugeConfig.from_tokenizer(
        tokenizer,
        n_embd=8,
        n_layer=1,
        n_head=1,
        prompt_weight=0.5,
        content_weight=1.0,
        line_end_weight=2.0,
        sentence_end_weight=1.5,
        eos_weight=3.0,
        long_form_exponent=1.0,
        long_form_reference_lines=4,
    )
    short = tokenizer(format_sample("对联", "春", "春眠，夜来。")).input_ids
    long_body = "白日，黄河。欲穷，更上。春眠，处处。夜来，花落。"  # 8 lines -> scale (8 / 4) ** 1 = 2
    long = tokenizer(format_sample("律", "春", long_body)).input_ids
    # short: [FORM] 对 联 [TITLE] 春 [BODY] 春 眠 ， 夜 来 。 [EOS]; 2 lines -> scale max(1, 2/4) = 1.
    expected_short = [0.5] * 6 + [1, 1, 2.0, 1, 1, 1.5, 3.0]
    # long: [FORM] 律 [TITLE] 春 [BODY] then 8 x (2 chars + mark) then [EOS];
    # line end 1 + (2 - 1) * 2 = 3, sentence end 1 + 0.5 * 2 = 2, eos 1 + 2 * 2 = 5.
    expected_long = [0.5] * 5 + [1, 1, 3, 1, 1, 2] * 4 + [5]
    pad = len(expected_long) - len(expected_short)
    batch = torch.tensor([short + [tokenizer.pad_token_id] * pad, long])
    weights = form_stressed_weights(batch, config)
    torch.testing.assert_close(weights[0, : len(short)], torch.tensor(expected_short))
    torch.testing.assert_close(weights[1], torch.tensor(expected_long, dtype=torch.float))


def test_weighted_loss_equals_hand_computation(tokenizer):
    model = tiny_jiuge(tokenizer, line_end_weight=2.0, sentence_end_weight=2.0, eos_weight=3.0, prompt_weight=1.0)
    ids = tokenizer(format_sample("五言绝句", "春晓", CORPUS[1])).input_ids
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :3] = -100  # part of the prompt left out of the loss
    out = model(input_ids=input_ids, labels=labels)

    # By hand: 4 lines -> scale 1; "，" weighs 2, "。" 2, [EOS] 3, everything else 1.
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)
    total, n, plain = 0.0, 0, 0.0
    for t in range(1, len(ids)):
        if labels[0, t] == -100:
            continue
        tok = tokenizer.convert_ids_to_tokens(ids[t])
        w = {"，": 2.0, "。": 2.0, "[EOS]": 3.0}.get(tok, 1.0)
        nll = -logp[t - 1, ids[t]].item()
        total, n, plain = total + w * nll, n + 1, plain + nll
    assert out.loss.item() == pytest.approx(total / n, rel=1e-5)
    assert out.lm_loss.item() == pytest.approx(plain / n, rel=1e-5)

    weights = form_stressed_weights(input_ids, model.config)
    w_sum = sum(weights[0, t].item() for t in range(1, len(ids)) if labels[0, t] != -100)
    by_weights = weighted_lm_loss(out.logits, labels, weights, normalization="weights")
    assert by_weights.item() == pytest.approx(total / w_sum, rel=1e-5)


def test_without_weighting_loss_is_gpt2_loss(tokenizer):
    model = tiny_jiuge(tokenizer, use_form_weighting=False)
    peer = GPT2LMHeadModel(model.config)
    peer.load_state_dict(model.state_dict())
    peer.eval()
    batch = tokenizer(
        [format_sample("五言绝句", "春晓", CORPUS[1]), format_sample("五言绝句", "", CORPUS[0])],
        return_tensors="pt",
        padding=True,
    )
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    ours = model(**batch, labels=labels)
    theirs = peer(**batch, labels=labels)
    torch.testing.assert_close(ours.loss, theirs.loss)
    torch.testing.assert_close(ours.logits, theirs.logits)


def test_loss_weights_argument_overrides_and_gradient_flows(tokenizer):
    model = tiny_jiuge(tokenizer).train()
    ids = torch.tensor([tokenizer(format_sample("五言绝句", "春晓", CORPUS[1])).input_ids])
    ones = torch.ones_like(ids, dtype=torch.float)
    out = model(input_ids=ids, labels=ids, loss_weights=ones)
    torch.testing.assert_close(out.loss, out.lm_loss)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert model.transformer.wte.weight.grad is not None and model.transformer.wte.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="loss_weights has shape"):
        model(input_ids=ids, labels=ids, loss_weights=ones[:, :-1])


def test_forward_contract_return_dict_inputs_embeds_shift_labels(tokenizer):
    model = tiny_jiuge(tokenizer)
    ids = torch.tensor([tokenizer(format_sample("五言绝句", "春晓", CORPUS[1])).input_ids])
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(input_ids=ids, labels=labels)
    # return_dict=False: the same values as a tuple (loss, logits, ...), not the field names
    as_tuple = model(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)
    # inputs_embeds: the embedding lookup done by hand gives the same logits
    with torch.no_grad():
        by_embeds = model(inputs_embeds=model.transformer.wte(ids)).logits
    torch.testing.assert_close(by_embeds, out.logits)
    # shift_labels = labels shifted by hand (last position has no target): the same weighted and plain losses
    shift = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    shifted = model(input_ids=ids, labels=torch.zeros_like(labels), shift_labels=shift)
    torch.testing.assert_close(shifted.loss, out.loss)
    torch.testing.assert_close(shifted.lm_loss, out.lm_loss)
    hidden = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    assert len(hidden.hidden_states) == model.config.n_layer + 1


def test_write_poem_rejects_bad_num_poems_and_forms_longer_than_the_context(tokenizer):
    model = tiny_jiuge(tokenizer)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"num_poems must be an integer >= 1, got"):
            model.write_poem("五言绝句", "春", tokenizer=tokenizer, num_poems=bad)
    short = tiny_jiuge(tokenizer, n_positions=32)  # 七言律诗: 64 characters + [EOS] after the prompt
    prompt_length = len(tokenizer(format_sample("七言律诗", "春")).input_ids)
    needed = BUILTIN_FORMS["七言律诗"].body_length + 1
    with pytest.raises(
        ValueError, match=rf"needs {needed} tokens .* {prompt_length + needed} in all, .*n_positions=32"
    ):
        short.write_poem("七言律诗", "春", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's context n_positions=128"):
        model.write_poem("五言绝句", "春", tokenizer=tokenizer, constrained=False, max_new_tokens=200)


# ---------------------------------------------------------------------------------------------------------------
# Constrained decoding


def test_processor_state_machine_by_hand(tokenizer):
    form = BUILTIN_FORMS["五言绝句"]
    proc = PoemFormLogitsProcessor.from_tokenizer(form, tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    chars = set(tokenizer.hanzi_token_ids())
    assert set(proc.allowed_token_ids([], form).tolist()) == chars
    assert set(proc.allowed_token_ids(ids(list("白日依山")), form).tolist()) == chars
    assert proc.allowed_token_ids(ids(list("白日依山尽")), form) == [ids("，")]
    assert proc.allowed_token_ids(ids(list("白日依山尽，黄河入海流")), form) == ids(list("。？！"))
    assert proc.allowed_token_ids(ids(list(CORPUS[0])), form) == [tokenizer.eos_token_id]
    # Masking keeps exactly the allowed ids finite.
    prompt = tokenizer(format_sample("五言绝句", "登楼") + "白日依山尽", return_tensors="pt").input_ids
    scores = proc(prompt, torch.zeros(1, len(tokenizer)))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [ids("，")]


@pytest.mark.parametrize("form_name", [*BUILTIN_FORMS, "浣溪沙"])
def test_every_form_is_guaranteed_by_constrained_decoding(tokenizer, ci_forms, form_name):
    model = tiny_jiuge(tokenizer, ci_forms={k: v.to_dict() for k, v in ci_forms.items()})
    model.set_tokenizer(tokenizer)
    form = model.get_form(form_name)
    torch.manual_seed(1)
    sampled = model.write_poem(form_name, "春晓", num_poems=4)
    beams = model.write_poem(form_name, "春晓", do_sample=False, num_beams=2, num_poems=2)
    for body in [*sampled, *beams]:
        assert form.check(body) == [], body
        lines = split_lines(body)
        assert [len(c) for c, _ in lines] == list(form.line_lengths)
        assert all(p in marks for (_, p), marks in zip(lines, form.punctuation))


def test_batched_prompts_with_different_forms_and_left_padding(tokenizer):
    model = tiny_jiuge(tokenizer)
    forms = [BUILTIN_FORMS["五言绝句"], BUILTIN_FORMS["七言对联"]]
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer([format_sample(f.name, "春") for f in forms], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    proc = PoemFormLogitsProcessor.from_tokenizer(forms, tokenizer)
    out = model.generate(
        **batch,
        logits_processor=[proc],
        do_sample=True,
        num_return_sequences=2,
        max_new_tokens=max(f.body_length for f in forms) + 1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    bodies = tokenizer.decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    expected = [forms[0], forms[0], forms[1], forms[1]]  # each prompt's form repeated for its 2 return sequences
    for body, form in zip(bodies, expected):
        assert form.matches("".join(body.split())), body


def test_unconstrained_generation_stops_at_eos_and_errors(tokenizer):
    model = tiny_jiuge(tokenizer)
    body = model.write_poem("五言绝句", "春", tokenizer=tokenizer, constrained=False, do_sample=False)
    assert isinstance(body, str)
    # independent: a greedy loop over full forward passes up to [EOS] or the default limit, 2 x (body + [EOS])
    ids = torch.tensor([tokenizer(format_sample("五言绝句", "春")).input_ids])
    new_tokens = []
    with torch.no_grad():
        for _ in range(2 * (BUILTIN_FORMS["五言绝句"].body_length + 1)):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new_tokens.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert body == "".join(tokenizer.decode(new_tokens, skip_special_tokens=True).split())
    # the tiny model never picks [EOS] by itself: force it as the 11th new token; the body must end right before it
    start = ids.shape[1] - len(new_tokens)

    def force_eos(input_ids, scores):
        if input_ids.shape[1] == start + 10:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, tokenizer.eos_token_id] = 0.0
        return scores

    short = model.write_poem(
        "五言绝句", "春", tokenizer=tokenizer, constrained=False, do_sample=False, logits_processor=[force_eos]
    )
    assert short == "".join(tokenizer.decode(new_tokens[:10], skip_special_tokens=True).split())
    assert short and len(short) < len(body)
    with pytest.raises(ValueError, match="Unknown form '水调歌头'"):
        model.write_poem("水调歌头", "春", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens=5 is too short"):
        model.write_poem("五言绝句", "春", tokenizer=tokenizer, max_new_tokens=5)
    proc = PoemFormLogitsProcessor.from_tokenizer(BUILTIN_FORMS["五言绝句"], tokenizer)
    with pytest.raises(ValueError, match=r"row 0 of input_ids has no \[BODY\] token"):
        proc(torch.tensor([[3, 7, 8]]), torch.zeros(1, len(tokenizer)))
    with pytest.raises(ValueError, match="must be a multiple of the forms"):
        two = PoemFormLogitsProcessor.from_tokenizer([BUILTIN_FORMS["五言绝句"]] * 2, tokenizer)
        two(torch.full((3, 2), tokenizer.body_token_id), torch.zeros(3, len(tokenizer)))


# ---------------------------------------------------------------------------------------------------------------
# Auto classes


def test_auto_classes_round_trip_and_write_poem_loads_tokenizer(tokenizer, ci_forms, tmp_path):
    model = tiny_jiuge(tokenizer, ci_forms={k: v.to_dict() for k, v in ci_forms.items()})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is JiugeConfig
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is JiugeForCausalLM
    assert reloaded.config.ci_forms == model.config.ci_forms
    ids = torch.tensor([tokenizer(format_sample("浣溪沙", "", HUANXISHA[0])).input_ids])
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    body = reloaded.write_poem("浣溪沙", "春")  # tokenizer found next to the weights
    assert ci_forms["浣溪沙"].matches(body)
    assert math.isfinite(reloaded(input_ids=ids, labels=ids).loss.item())


def test_config_validation():
    with pytest.raises(ValueError, match="loss_normalization must be"):
        JiugeConfig(loss_normalization="mean")
    with pytest.raises(ValueError, match="eos_weight must be >= 0"):
        JiugeConfig(eos_weight=-1.0)


def test_trainer_trains_with_the_weighted_loss(tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = tiny_jiuge(tokenizer).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = [format_sample("五言绝句", "春晓", CORPUS[1]), format_sample("浣溪沙", "", HUANXISHA[0])] * 4
    data = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns="text")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(before)
