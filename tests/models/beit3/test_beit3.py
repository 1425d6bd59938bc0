"""BEiT-3 (multiway Transformer): shapes, expert routing, an independent reference forward, padding, checkpointing."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_ext.models.beit3 import Beit3Config, Beit3Model
from hf_ext.testing import tiny_beit3_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Beit3Model(tiny_beit3_config(initializer_range=0.2)).eval()


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        Beit3Config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        Beit3Config(image_size=30, patch_size=16)


def test_shapes(model):
    c = model.config
    px = torch.randn(2, 3, 32, 32)
    q = torch.randn(2, 5, c.hidden_size)
    n_vis = 1 + (32 // 16) ** 2
    out = model(pixel_values=px, inputs_embeds=q)
    assert out.last_hidden_state.shape == (2, n_vis + 5, c.hidden_size)
    assert out.split_position == n_vis
    assert model(pixel_values=px).last_hidden_state.shape == (2, n_vis, c.hidden_size)
    assert model(input_ids=torch.tensor([[0, 5, 6, 2]])).last_hidden_state.shape == (1, 4, c.hidden_size)
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(pixel_values=torch.randn(1, 3, 48, 48))


def _reference_forward(model: Beit3Model, pixel_values, lang_embeds):
    """Straightforward torchscale-style forward written from the paper/torchscale description: each token picks
    its expert's weights by a per-token modality flag (no splitting), eager softmax attention, positions restart
    at offset 2 in each segment."""
    c = model.config
    sd = model.state_dict()
    emb = F.conv2d(pixel_values, sd["embeddings.patch_embed.weight"], sd["embeddings.patch_embed.bias"], stride=16)
    emb = emb.flatten(2).transpose(1, 2)
    emb = torch.cat([sd["embeddings.cls_token"].expand(emb.shape[0], 1, -1), emb], 1)
    nv = emb.shape[1]
    emb = emb + sd["embeddings.vision_position_embeddings.weight"][2 : 2 + nv]
    lang = lang_embeds + sd["embeddings.text_position_embeddings.weight"][2 : 2 + lang_embeds.shape[1]]
    x = torch.cat([emb, lang], 1)
    is_lang = torch.arange(x.shape[1]) >= nv

    def pick(name, fn):
        v = fn(name.format(e="vision_expert"))
        lg = fn(name.format(e="language_expert"))
        return torch.where(is_lang[None, :, None], lg, v)

    def ln(t, prefix):
        return pick(prefix, lambda p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5))

    def lin(t, prefix):
        return pick(prefix, lambda p: F.linear(t, sd[p + ".weight"], sd[p + ".bias"]))

    h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        p = f"layers.{i}.{{e}}."
        y = ln(x, p + "self_attn_layer_norm")
        q, k, v = (lin(y, p + n).view(*y.shape[:2], h, d).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
        a = a.transpose(1, 2).reshape(x.shape)
        x = x + lin(ln(a, p + "inner_attn_ln"), p + "out_proj")
        y = F.gelu(lin(ln(x, p + "final_layer_norm"), p + "fc1"))
        x = x + lin(ln(y, p + "ffn_layernorm"), p + "fc2")
    v = F.layer_norm(x, x.shape[-1:], sd["vision_layer_norm.weight"], sd["vision_layer_norm.bias"], 1e-5)
    lg = F.layer_norm(x, x.shape[-1:], sd["language_layer_norm.weight"], sd["language_layer_norm.bias"], 1e-5)
    return torch.where(is_lang[None, :, None], lg, v)


def test_matches_reference_forward(model):
    px = torch.randn(2, 3, 32, 32)
    q = torch.randn(2, 3, model.config.hidden_size)
    with torch.no_grad():
        ours = model(pixel_values=px, inputs_embeds=q).last_hidden_state
        ref = _reference_forward(model, px, q)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_eager_equals_sdpa(model):
    px, q = torch.randn(1, 3, 32, 32), torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        sdpa = model(pixel_values=px, inputs_embeds=q).last_hidden_state
        out = model(pixel_values=px, inputs_embeds=q, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, sdpa, atol=1e-5, rtol=1e-4)
    probs = out.attentions[0]
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_expert_routing():
    """With one layer, the language expert's FFN changes only the language (query) positions and vice versa."""
    torch.manual_seed(0)
    m = Beit3Model(tiny_beit3_config(num_hidden_layers=1, initializer_range=0.2)).eval()
    px, q = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32)
    with torch.no_grad():
        base = m(pixel_values=px, inputs_embeds=q)
        split = base.split_position
        # a random (not constant) perturbation: the final LayerNorm would cancel a constant shift
        delta = torch.randn_like(m.layers[0].language_expert.fc2.weight)
        m.layers[0].language_expert.fc2.weight.add_(delta)
        lang_changed = m(pixel_values=px, inputs_embeds=q).last_hidden_state
        m.layers[0].language_expert.fc2.weight.sub_(delta)
        m.layers[0].vision_expert.fc2.weight.add_(delta)
        vis_changed = m(pixel_values=px, inputs_embeds=q).last_hidden_state
    b = base.last_hidden_state
    torch.testing.assert_close(lang_changed[:, :split], b[:, :split])
    assert (lang_changed[:, split:] - b[:, split:]).abs().max() > 1e-3
    torch.testing.assert_close(vis_changed[:, split:], b[:, split:])
    assert (vis_changed[:, :split] - b[:, :split]).abs().max() > 1e-3


def test_text_padding_is_ignored(model):
    ids = torch.tensor([[0, 7, 9, 2]])
    padded = torch.tensor([[0, 7, 9, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = model(input_ids=ids).last_hidden_state
        b = model(input_ids=padded, attention_mask=mask).last_hidden_state[:, :4]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    m = Beit3Model(tiny_beit3_config()).train()
    px, q = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32)
    m(pixel_values=px, inputs_embeds=q).last_hidden_state.square().sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.gradient_checkpointing_enable()
    m(pixel_values=px, inputs_embeds=q).last_hidden_state.square().sum().backward()
    for n, p in m.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-5)


def test_save_load_round_trip_auto_model(model, tmp_path):
    from transformers import AutoConfig, AutoModel

    import hf_ext  # noqa: F401  (registers beit3)

    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "Beit3Config"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Beit3Model)
    px, q = torch.randn(1, 3, 32, 32), torch.randn(1, 2, model.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(
            loaded(pixel_values=px, inputs_embeds=q).last_hidden_state,
            model(pixel_values=px, inputs_embeds=q).last_hidden_state,
        )
