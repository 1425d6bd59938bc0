"""BEiT-3 against its reference implementation, torchscale 0.2.0 (the version Muffin and VisCPM pin), on random
weights: image only, text only, image + text (with text padding), image + learned queries (Muffin's path), under SDPA
and eager attention.

torchscale is a test-only dependency installed with `--no-deps` (its declared deps would pull timm -> torchvision and
a CUDA torch); `make install` does it. It imports fairscale (installed) and timm's `drop_path` (only used when
`drop_path_rate > 0`): a stand-in for that one function is put in `sys.modules` while torchscale is imported, then
removed again.
"""

import importlib.util
import sys
import types

import pytest
import torch

from hf_ext.models.beit3 import Beit3Model
from hf_ext.models.muffin.convert_muffin_original_to_hf import convert_beit3_key
from hf_ext.testing import tiny_beit3_config

pytest.importorskip("fairscale", reason="torchscale imports fairscale (`make install` installs it)")
if importlib.util.find_spec("torchscale") is None:
    pytest.skip(
        "torchscale not installed (`pip install --no-deps torchscale==0.2.0`, done by make install)",
        allow_module_level=True,
    )


def _import_torchscale():
    stubs = {}
    if importlib.util.find_spec("timm") is None:

        def drop_path(x, drop_prob: float = 0.0, training: bool = False):
            if drop_prob == 0.0 or not training:
                return x
            raise NotImplementedError("test stand-in for timm's drop_path: use drop_path_rate=0")

        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = drop_path
        models = types.ModuleType("timm.models")
        models.layers = layers
        timm = types.ModuleType("timm")
        timm.models = models
        stubs = {"timm": timm, "timm.models": models, "timm.models.layers": layers}
    sys.modules.update(stubs)
    try:
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return EncoderConfig, BEiT3


EncoderConfig, BEiT3 = _import_torchscale()


@pytest.fixture(scope="module")
def pair():
    """A torchscale BEiT3 (BEiT-3 Large's settings, tiny sizes) with every parameter randomised, and hf_ext's
    Beit3Model loaded from its state dict through the converter's key mapping."""
    cfg = tiny_beit3_config(
        hidden_size=48,
        num_attention_heads=4,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=50,
        max_position_embeddings=24,
    )
    args = EncoderConfig(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vocab_size=cfg.vocab_size,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0.0,
        encoder_embed_dim=cfg.hidden_size,
        encoder_attention_heads=cfg.num_attention_heads,
        encoder_ffn_embed_dim=cfg.intermediate_size,
        encoder_layers=cfg.num_hidden_layers,
        max_source_positions=cfg.max_position_embeddings,
    )
    torch.manual_seed(0)
    reference = BEiT3(args).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # LayerNorm gains around 1
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_((0.3 if p.ndim > 1 else 0.1) * torch.randn_like(p))
    state = {}
    for key, value in reference.state_dict().items():
        new = convert_beit3_key(key)
        assert new is not None, key
        state[new] = value
    models = {}
    for impl in ("sdpa", "eager"):
        model = Beit3Model(cfg).eval()
        result = model.load_state_dict(state, strict=False)
        assert not result.missing_keys and not result.unexpected_keys
        model.set_attn_implementation(impl)
        models[impl] = model
    return reference, models


def _check(ours, ref):
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    assert ref.abs().max() > 0.1  # not a degenerate output


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_image_only(pair, impl):
    reference, models = pair
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = reference(visual_tokens=px)["encoder_out"]
        ours = models[impl](pixel_values=px).last_hidden_state
    _check(ours, ref)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_text_only_with_padding(pair, impl):
    reference, models = pair
    ids = torch.randint(3, 50, (2, 7))
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        ref = reference(textual_tokens=ids, text_padding_position=padding)["encoder_out"]
        ours = models[impl](input_ids=ids, attention_mask=(~padding).long()).last_hidden_state
    # torchscale zeroes padded inputs but still writes outputs there; compare the real tokens
    keep = ~padding
    _check(ours[keep], ref[keep])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_image_and_text(pair, impl):
    reference, models = pair
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    with torch.no_grad():
        out = reference(textual_tokens=ids, visual_tokens=px, text_padding_position=padding)
        ours = models[impl](pixel_values=px, input_ids=ids, attention_mask=(~padding).long())
    assert ours.split_position == out["multiway_split_position"] == 5
    keep = torch.cat([torch.ones(2, 5, dtype=torch.bool), ~padding], 1)
    _check(ours.last_hidden_state[keep], out["encoder_out"][keep])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_image_and_queries_as_muffin(pair, impl):
    """Muffin's BEiT3Wrapper: vision embedding, then the queries appended as language-side token embeddings."""
    reference, models = pair
    px, queries = torch.randn(3, 3, 32, 32), torch.randn(6, 48)
    with torch.no_grad():
        tokens = reference.vision_embed(px)
        split = tokens.size(1)
        tokens = torch.cat([tokens, queries.expand(3, -1, -1)], 1)
        ref = reference.encoder(src_tokens=None, token_embeddings=tokens, multiway_split_position=split)["encoder_out"]
        ours = models[impl](pixel_values=px, inputs_embeds=queries[None]).last_hidden_state
    _check(ours, ref)
    _check(ours[:, split:], ref[:, split:])


def test_attentions_match_reference_probabilities(pair):
    """The eager path returns the same attention probabilities torchscale computes (first layer, by hand from its
    q/k projections of its first LayerNorm's output)."""
    reference, models = pair
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = models["eager"](pixel_values=px, output_attentions=True).attentions[0]
        x = reference.vision_embed(px)
        x = x + reference.encoder.embed_positions(x, multiway_split_position=-1)
        layer = reference.encoder.layers[0]
        h = layer.self_attn_layer_norm.A(x)
        q = layer.self_attn.q_proj.A(h).view(1, -1, 4, 12).transpose(1, 2) * 12**-0.5
        k = layer.self_attn.k_proj.A(h).view(1, -1, 4, 12).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2), -1)
    torch.testing.assert_close(ours, probs, atol=1e-5, rtol=1e-5)


def test_word_embedding_has_no_padding_idx():
    """torchscale's TextEmbedding is a plain nn.Embedding: the pad row trains like any other."""
    model = Beit3Model(tiny_beit3_config())
    assert model.embeddings.word_embeddings.padding_idx is None
    args = EncoderConfig(
        vocab_size=10, multiway=True, encoder_embed_dim=8, encoder_attention_heads=2, encoder_layers=1, img_size=16
    )
    assert BEiT3(args).text_embed.padding_idx is None
