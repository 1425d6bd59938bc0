"""Conversion of original Muffin / VisCPM-Chat checkpoints (torchscale + Beit3LlavaLlama key names) at tiny size."""

import json

import pytest
import torch

from hf_ext.models.muffin import MuffinForConditionalGeneration
from hf_ext.models.muffin.convert_muffin_original_to_hf import (
    convert_muffin_checkpoint,
    convert_muffin_state_dict,
    convert_viscpm_chat_state_dict,
)
from hf_ext.testing import tiny_muffin

_SIDE = {"vision_expert": "A", "language_expert": "B"}


def _to_original_muffin_key(key: str) -> str:
    """Hand-written inverse: hf_ext name -> the name in `Beit3LlavaLlamaForCausalLM` / torchscale's BEiT3."""
    if key.startswith("model.vision_tower."):
        k = key[len("model.vision_tower.") :]
        simple = {
            "embeddings.patch_embed.weight": "vision_embed.proj.weight",
            "embeddings.patch_embed.bias": "vision_embed.proj.bias",
            "embeddings.cls_token": "vision_embed.cls_token",
            "embeddings.mask_token": "vision_embed.mask_token",
            "embeddings.word_embeddings.weight": "text_embed.weight",
            "embeddings.vision_position_embeddings.weight": "encoder.embed_positions.A.weight",
            "embeddings.text_position_embeddings.weight": "encoder.embed_positions.B.weight",
            "vision_layer_norm.weight": "encoder.layer_norm.A.weight",
            "vision_layer_norm.bias": "encoder.layer_norm.A.bias",
            "language_layer_norm.weight": "encoder.layer_norm.B.weight",
            "language_layer_norm.bias": "encoder.layer_norm.B.bias",
        }
        if k in simple:
            return "model.vision_tower.beit3." + simple[k]
        _, i, expert, module, param = k.split(".")
        side = _SIDE[expert]
        if module in ("q_proj", "k_proj", "v_proj", "out_proj", "inner_attn_ln"):
            orig = f"encoder.layers.{i}.self_attn.{module}.{side}.{param}"
        elif module in ("fc1", "fc2", "ffn_layernorm"):
            orig = f"encoder.layers.{i}.ffn.{side}.{module}.{param}"
        else:
            orig = f"encoder.layers.{i}.{module}.{side}.{param}"
        return "model.vision_tower.beit3." + orig
    if key.startswith("model.multi_modal_projector.linear_1."):
        return "model.mm_projector." + key.rsplit(".", 1)[1]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key  # model.query, lm_head.weight


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_muffin()
    original = {_to_original_muffin_key(k): v.clone() for k, v in model.state_dict().items()}
    return model, processor, original


def test_state_dict_mapping_is_exact(tiny):
    model, _, original = tiny
    converted, dropped = convert_muffin_state_dict(
        {**original, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(2)}
    )
    assert dropped == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    expected = model.state_dict()
    assert set(converted) == set(expected)
    for k in expected:
        assert torch.equal(converted[k], expected[k]), k
    with pytest.raises(ValueError, match="no mapping"):
        convert_muffin_state_dict({"model.vision_tower.beit3.something_new": torch.ones(1)})


def test_convert_checkpoint_folder_end_to_end(tiny, tmp_path):
    model, processor, original = tiny
    src = tmp_path / "orig"
    src.mkdir()
    # the released checkpoints lack BEiT-3's text_embed and mask_token
    released = {k: v for k, v in original.items() if "text_embed" not in k and "mask_token" not in k}
    keys = sorted(released)
    torch.save({k: released[k] for k in keys[: len(keys) // 2]}, src / "pytorch_model-00001-of-00002.bin")
    torch.save({k: released[k] for k in keys[len(keys) // 2 :]}, src / "pytorch_model-00002-of-00002.bin")
    c = model.config
    text = c.text_config.to_dict()
    original_config = {
        **{
            k: text[k]
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
                "rms_norm_eps",
                "max_position_embeddings",
            )
        },
        "model_type": "beit3_llava",
        "architectures": ["Beit3LlavaLlamaForCausalLM"],
        "mm_vision_tower": "beit3_large_patch16_32",
        "num_query": c.num_query,
        "use_mm_proj": True,
        "pad_token_id": -1,
    }
    (src / "config.json").write_text(json.dumps(original_config))
    tok_ids = {"<im_patch>": c.image_token_id, "<im_start>": c.image_start_token_id, "<im_end>": c.image_end_token_id}
    (src / "added_tokens.json").write_text(json.dumps(tok_ids))
    out = tmp_path / "hf"
    report = convert_muffin_checkpoint(src, out, vision_num_attention_heads=c.vision_config.num_attention_heads)
    assert sorted(report["initialised"]) == [
        "model.vision_tower.embeddings.mask_token",
        "model.vision_tower.embeddings.word_embeddings.weight",
    ]
    loaded = MuffinForConditionalGeneration.from_pretrained(out).eval()
    assert loaded.config.num_query == c.num_query and loaded.config.vision_config.image_size == 32
    assert loaded.config.image_token_id == c.image_token_id
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    from PIL import Image

    enc = processor(
        images=[Image.new("RGB", (9, 9), (1, 2, 3))],
        text=processor.apply_chat_template(msgs, add_generation_prompt=True),
        return_tensors="pt",
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits, rtol=0, atol=0)


def _original_viscpm_chat_bridge(sd: dict) -> dict:
    """The bridge of a VisCPM-Chat state dict (BEiT-3, queries, 2-layer projector) under the original's names."""
    original = {}
    for k, v in sd.items():
        if k.startswith("model.vision_tower."):
            original["vpm.beit3." + _to_original_muffin_key(k)[len("model.vision_tower.beit3.") :]] = v
    original["query"] = sd["model.query"]
    for i, j in ((0, 1), (2, 2)):
        for p in ("weight", "bias"):
            original[f"mapping.{i}.{p}"] = sd[f"model.multi_modal_projector.linear_{j}.{p}"]
    return original


def test_viscpm_chat_bridge_mapping():
    model, _ = tiny_muffin(model_type="viscpm_chat")
    sd = model.state_dict()
    original = {
        "llm.input_embedding.weight": torch.ones(3, 2),
        "vpm.mim_head.weight": torch.ones(2, 2),
        **_original_viscpm_chat_bridge(sd),
    }
    converted, dropped = convert_viscpm_chat_state_dict(original)
    assert sorted(dropped) == ["llm.input_embedding.weight", "vpm.mim_head.weight"]
    bridge = {k: v for k, v in sd.items() if not k.startswith(("model.language_model.", "lm_head."))}
    assert set(converted) == set(bridge)
    assert all(torch.equal(converted[k], bridge[k]) for k in bridge)


def test_viscpm_chat_converter_end_to_end(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.viscpm_chat import VisCPMChatForConditionalGeneration
    from hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf import convert_viscpm_chat_checkpoint
    from hf_ext.testing import tiny_bpe_tokenizer

    bridge_model, _ = tiny_muffin(model_type="viscpm_chat")
    sd = bridge_model.state_dict()
    original = {"llm.encoder.layers.0.weight": torch.ones(2), **_original_viscpm_chat_bridge(sd)}
    torch.save(original, tmp_path / "pytorch_model.bin")
    # the pivot LLM: a tiny transformers Llama whose tokenizer lacks the image tokens (the converter adds them)
    tok = tiny_bpe_tokenizer()
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=len(tok)
        )
    )
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    report = convert_viscpm_chat_checkpoint(
        tmp_path / "pytorch_model.bin",
        tmp_path / "llm",
        tmp_path / "out",
        image_size=32,
        vision_num_attention_heads=bridge_model.config.vision_config.num_attention_heads,
    )
    assert report["dropped"] == ["llm.encoder.layers.0.weight"]
    loaded = VisCPMChatForConditionalGeneration.from_pretrained(tmp_path / "out")
    out = loaded.state_dict()
    for k, v in sd.items():
        if (
            not k.startswith(("model.language_model.", "lm_head."))
            and "word_embeddings" not in k
            and "mask_token" not in k
        ):
            assert torch.equal(out[k], v), k
    n = len(tok)
    assert out["model.language_model.embed_tokens.weight"].shape[0] == n + 3  # + <im_patch>, <im_start>, <im_end>
    assert torch.equal(out["model.language_model.embed_tokens.weight"][:n], llm.model.embed_tokens.weight)
    assert torch.equal(out["model.language_model.layers.0.mlp.up_proj.weight"], llm.model.layers[0].mlp.up_proj.weight)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert processor.image_patch_token_id == loaded.config.image_token_id
