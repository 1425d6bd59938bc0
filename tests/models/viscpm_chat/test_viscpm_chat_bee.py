"""VisCPM-Chat on CPM-Bee: the original-format tiny checkpoint through the converter, against the golden outputs of
OpenBMB's VisCPM code (tests/fixtures/cpmbee/expected/viscpm_chat.*)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_ext.models.cpmbee import CpmBeeTokenizer
from hf_ext.models.viscpm_chat import (
    VisCPMChatBeeForConditionalGeneration,
    build_viscpm_chat_prompt,
    viscpm_chat_image_bound,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cpmbee"
CHAT = json.loads((FIX / "expected" / "viscpm_chat.json").read_text(encoding="utf-8"))
GOLD = load_file(str(FIX / "expected" / "viscpm_chat.safetensors"))
ATOL = 1e-4


def gold(ref):
    return GOLD[ref.split(":", 1)[1]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf import main

    out = tmp_path_factory.mktemp("viscpm_chat_bee")
    main(
        [
            "--checkpoint", str(FIX / "original_checkpoint" / "viscpm_chat.safetensors"),
            "--vocab", str(FIX / "vocab.txt"), "--llm_config", str(FIX / "original_checkpoint" / "config.json"),
            "--output_dir", str(out), "--vision_num_attention_heads", "4", "--dtype", "float32",
        ]
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def loaded(converted):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(converted).eval()
    tok = CpmBeeTokenizer.from_pretrained(converted)
    image_processor = AutoImageProcessor.from_pretrained(converted)
    return model, tok, image_processor


def test_loads_as_bee_model_with_original_llm(loaded):
    model, tok, _ = loaded
    assert isinstance(model, VisCPMChatBeeForConditionalGeneration)
    original = load_file(str(FIX / "original_checkpoint" / "viscpm_chat.safetensors"))
    state = model.state_dict()
    for key, value in original.items():
        if key.startswith("llm."):
            assert torch.equal(state["model.language_model." + key[4:]], value), key
    assert torch.equal(state["model.query"], original["query"])
    assert torch.equal(state["model.multi_modal_projector.linear_2.weight"], original["mapping.2.weight"])


def test_image_encoder_golden(loaded):
    model, _, image_processor = loaded
    pixel_values = image_processor([Image.open(FIX / "expected" / "viscpm_chat_image.png")], return_tensors="pt")[
        "pixel_values"
    ]
    torch.testing.assert_close(pixel_values, gold(CHAT["expected"]["pixel_values"]), atol=1e-6, rtol=0)
    captured = {}
    tower = model.model.vision_tower

    def grab_input(module, args, kwargs):
        captured["layer_input"] = args[0] if args else kwargs["hidden_states"]

    hooks = [tower.layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    for i, layer in enumerate(tower.layers):
        hooks.append(
            layer.register_forward_hook(
                lambda m, a, o, i=i: captured.__setitem__(f"layer{i}", o[0] if isinstance(o, tuple) else o)
            )
        )
    try:
        with torch.no_grad():
            out = model.get_image_features(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    for key in ("layer_input", "layer0", "layer1"):
        torch.testing.assert_close(captured[key], gold(CHAT["expected"][f"vpm.{key}"]), atol=ATOL, rtol=0)
    query = out.last_hidden_state[:, out.split_position :]
    torch.testing.assert_close(query, gold(CHAT["expected"]["vpm_query_features"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out.pooler_output[0], gold(CHAT["expected"]["vision_hidden_states"])[0], atol=ATOL, rtol=0
    )


def test_two_turn_chat_golden(loaded):
    model, tok, image_processor = loaded
    image = Image.open(FIX / "expected" / "viscpm_chat_image.png")
    settings = CHAT["settings"]
    vision, context = None, ""
    for turn in CHAT["turns"]:
        question = turn["extra_inp_dict"]["question"]
        assert turn["extra_inp_dict"]["context"] == context
        data = build_viscpm_chat_prompt(question, context)
        assert data == turn["prompt_dict"]
        enc, infos = tok.prepare_for_generation(data)
        mi = turn["model_inputs"]
        assert enc["input_ids"].tolist() == mi["input_ids"] and enc["segment_ids"].tolist() == mi["segment_ids"]
        bound = viscpm_chat_image_bound(infos[0], enc["input_ids"], 0)
        assert [list(bound)] == mi["image_bound"][0]
        with torch.no_grad():
            states = (
                vision
                if vision is not None
                else model.get_image_features(
                    image_processor([image], return_tensors="pt")["pixel_values"]
                ).pooler_output
            )
            llm = model.model.language_model
            embeds = model.inject_image_features(llm.embed(enc["input_ids"], enc["input_id_sub"]), [[bound]], states)
            torch.testing.assert_close(embeds, gold(turn["expected"]["input_embeds_injected"]), atol=ATOL, rtol=0)
            out = model(**enc, vision_hidden_states=states, image_bound=[[bound]], use_cache=True)
            torch.testing.assert_close(out.logits, gold(turn["expected"]["prefill_logits"]), atol=ATOL, rtol=0)
            seg = turn["predict_segments"][0][0]
            step = model(
                input_ids=torch.tensor([[tok.bos_token_id]]), position_ids=torch.tensor([[0]]),
                segment_ids=torch.tensor([[seg]]), context=torch.ones(1, 1, dtype=torch.long), cache=out.cache,
                use_cache=True,
            )  # fmt: skip
            torch.testing.assert_close(step.logits[:, -1:], gold(turn["expected"]["step1_logits"]), atol=ATOL, rtol=0)
            from hf_ext.models.cpmbee import VISCPM_CHAT_BEAM_SETTINGS, cpmbee_beam_search

            beams = cpmbee_beam_search(
                model, tok, model_inputs=enc, infos=infos, inputs_embeds=embeds, max_length=settings["max_length"],
                **VISCPM_CHAT_BEAM_SETTINGS,
            )  # fmt: skip
            ref = turn["hypotheses"][0]
            assert [[list(t) for t in toks] for _, toks in beams.hypotheses[0]] == [h["tokens"] for h in ref]
            assert [s for s, _ in beams.hypotheses[0]] == pytest.approx([h["score"] for h in ref], abs=ATOL)
            answer, context, vision = model.chat(
                tok, image_processor, image, question, context=context, vision_hidden_states=vision,
                max_length=settings["max_length"],
            )  # fmt: skip
        assert answer == turn["answer"]
