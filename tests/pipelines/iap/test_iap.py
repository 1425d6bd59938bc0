"""IAP alignment loss, capture processors, IAPStableDiffusionPipeline and the training script (tiny, offline)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _diffusion_training_helpers import copy_checkpoint, import_example, train, write_imagefolder
from diffusers import StableDiffusionPipeline
from PIL import Image
from transformers import BertModel

from hf_ext.pipelines.iap import (
    CrossAttentionCapture,
    IAPLossConfig,
    IAPStableDiffusionPipeline,
    encode_text_like_sd,
    iap_alignment_distance,
    iap_alignment_loss,
    sample_timesteps,
    select_cross_attention_layers,
    tokenize_like_sd,
)
from hf_ext.testing import tiny_iap_components, tiny_iap_pipeline, tiny_stable_diffusion_pipeline

ROOT = Path(__file__).resolve().parents[3]
EN = ["a red cat", "a blue dog"]
ZH = ["一只红色的猫", "一只蓝色的狗"]


@pytest.fixture
def parts():
    c = tiny_iap_components(zh_hidden_size=12)
    for name in ("unet", "vae", "en_text_encoder"):
        c[name].requires_grad_(False)
    return c


def en_states(c, texts=EN):
    ids = tokenize_like_sd(c["en_tokenizer"], texts)["input_ids"]
    with torch.no_grad():
        return encode_text_like_sd(c["en_text_encoder"], ids)


def zh_states(c, texts=ZH):
    inputs = tokenize_like_sd(c["zh_tokenizer"], texts)
    return encode_text_like_sd(
        c["zh_text_encoder"], inputs["input_ids"], inputs["attention_mask"], c["text_projection"]
    )


def noisy(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([50, 700][:batch])


def test_layer_selection(parts):
    unet = parts["unet"]
    every = select_cross_attention_layers(unet)
    assert list(every) == [n for n, m in unet.named_modules() if n.endswith("attn2")]
    assert len(every) == 4
    assert list(select_cross_attention_layers(unet, "mid_block")) == [
        "mid_block.attentions.0.transformer_blocks.0.attn2"
    ]
    assert len(select_cross_attention_layers(unet, "up_blocks.0,down_blocks")) == 3
    with pytest.raises(ValueError, match="matches no cross-attention layer"):
        select_cross_attention_layers(unet, "up_blocks.7")


def test_capture_restores_processors_and_does_not_change_output(parts):
    unet = parts["unet"]
    z, t = noisy()
    states = en_states(parts)
    before = {n: type(p) for n, p in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(z, t, states).sample
        with CrossAttentionCapture(unet) as capture:
            captured = unet(z, t, states).sample
    assert torch.equal(plain, captured)
    assert {n: type(p) for n, p in unet.attn_processors.items()} == before
    assert all(r.output.shape == r.hidden_states.shape for r in capture.records.values())


def test_recompute_matches_attention_by_hand(parts):
    unet = parts["unet"]
    z, t = noisy()
    zh = zh_states(parts).detach()
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    with torch.no_grad(), CrossAttentionCapture(unet, name) as capture:
        unet(z, t, en_states(parts))
        got = capture.recompute(name, zh)
        attn = capture.layers[name]
        x = capture.records[name].hidden_states
        q, k, v = attn.to_q(x), attn.to_k(zh), attn.to_v(zh)
        b, h = x.shape[0], attn.heads
        split = lambda y: y.view(b, -1, h, y.shape[-1] // h).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
        expected = attn.to_out[0](out)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pivot", ["shared_queries", "two_pass"])
@pytest.mark.parametrize("distance", ["mse", "l2", "cosine"])
def test_loss_is_zero_when_chinese_encoder_is_the_english_one(parts, pivot, distance):
    z, t = noisy()
    english = en_states(parts)
    # the "Chinese" encoder is SD's CLIP encoder itself, on the same captions
    same = encode_text_like_sd(parts["en_text_encoder"], tokenize_like_sd(parts["en_tokenizer"], EN)["input_ids"])
    out = iap_alignment_loss(parts["unet"], z, t, english, same, pivot=pivot, distance=distance)
    assert len(out.per_layer) == 4
    assert abs(out.loss.item()) < 1e-6
    different = en_states(parts, ["a white car", "a bird"])
    assert iap_alignment_loss(parts["unet"], z, t, english, different, pivot=pivot, distance=distance).loss > 1e-4


def test_distances_and_reductions_by_hand(parts):
    z, t = noisy()
    english, chinese = en_states(parts), zh_states(parts).detach()
    out = iap_alignment_loss(parts["unet"], z, t, english, chinese, distance="mse")
    with torch.no_grad(), CrossAttentionCapture(parts["unet"]) as cap:
        parts["unet"](z, t, english)
        manual = {n: ((cap.recompute(n, chinese) - r.output) ** 2).mean() for n, r in dict(cap.records).items()}
    torch.testing.assert_close(out.loss, torch.stack(list(manual.values())).mean())
    summed = iap_alignment_loss(parts["unet"], z, t, english, chinese, distance="mse", layer_reduction="sum")
    torch.testing.assert_close(summed.loss, torch.stack(list(manual.values())).sum())


@pytest.mark.parametrize("pivot", ["shared_queries", "two_pass"])
def test_gradient_reaches_only_the_chinese_encoder(parts, pivot):
    z, t = noisy()
    out = iap_alignment_loss(parts["unet"], z, t, en_states(parts), zh_states(parts), pivot=pivot)
    out.loss.backward()
    zh_grads = [p.grad for p in parts["zh_text_encoder"].parameters() if p.requires_grad]
    assert parts["zh_text_encoder"].embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert parts["text_projection"].linear.weight.grad.abs().sum() > 0
    assert sum(g is not None for g in zh_grads) > 0
    for name in ("unet", "vae", "en_text_encoder"):
        assert all(p.grad is None for p in parts[name].parameters()), name


def test_trainable_unet_is_rejected(parts):
    parts["unet"].requires_grad_(True)
    z, t = noisy()
    with pytest.raises(ValueError, match="requires_grad_\\(False\\)"):
        iap_alignment_loss(parts["unet"], z, t, en_states(parts), zh_states(parts))
    parts["unet"].requires_grad_(False)
    with pytest.raises(ValueError, match="project the Chinese"):
        iap_alignment_loss(parts["unet"], z, t, en_states(parts), torch.zeros(2, 5, 12))


@pytest.mark.parametrize("pivot", ["shared_queries", pytest.param("two_pass", marks=pytest.mark.slow)])
def test_a_few_iap_steps_lower_the_loss(parts, pivot):
    params = list(parts["zh_text_encoder"].parameters()) + list(parts["text_projection"].parameters())
    opt = torch.optim.Adam(params, lr=3e-2)
    z, t = noisy()
    english = en_states(parts)
    losses = []
    for _ in range(12):
        loss = iap_alignment_loss(parts["unet"], z, t, english, zh_states(parts), pivot=pivot).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = iap_alignment_loss(parts["unet"], z, t, english, zh_states(parts), pivot=pivot).loss.item()
    assert final < 0.5 * losses[0], (losses, final)


def test_sample_timesteps():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(1000, 1000, "uniform", 100, 199, generator=g)
    assert t.min() >= 100 and t.max() <= 199 and len(t.unique()) > 50
    s = sample_timesteps(10, 1000, "stratified", generator=g)
    assert sorted((s // 100).tolist()) == list(range(10))  # one draw in each tenth of [0, 999]
    with pytest.raises(ValueError, match="max_timestep"):
        sample_timesteps(2, 1000, max_timestep=1000)
    with pytest.raises(ValueError, match="distance"):
        IAPLossConfig(distance="l1")


def test_iap_alignment_distance(parts):
    """The held-out distance is the loss without gradient at fixed timesteps, with one noise draw for all of them."""
    en = en_states(parts, EN[:1])
    with torch.no_grad():
        zh = zh_states(parts, ZH[:1])
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    same = iap_alignment_distance(parts["unet"], parts["scheduler"], latents, en, en, timesteps=(100, 800))
    assert same["mean"] == pytest.approx(0.0, abs=1e-7)
    res = iap_alignment_distance(
        parts["unet"],
        parts["scheduler"],
        latents,
        en,
        zh,
        timesteps=(100, 800),
        generator=torch.Generator().manual_seed(1),
    )
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    manual = []
    for t in (100, 800):
        tt = torch.tensor([t])
        with torch.no_grad():
            noisy_latents = parts["scheduler"].add_noise(latents, noise, tt)
            manual.append(iap_alignment_loss(parts["unet"], noisy_latents, tt, en, zh).loss.item())
    assert res["per_timestep"] == pytest.approx({100: manual[0], 800: manual[1]}, rel=1e-5)
    assert res["mean"] == pytest.approx(sum(manual) / 2, rel=1e-5)
    assert len(res["per_layer"]) == len(select_cross_attention_layers(parts["unet"]))


def test_iap_pipeline_encode_save_load_and_embeds(tmp_path):
    pipe = tiny_iap_pipeline(zh_hidden_size=12)
    assert isinstance(pipe, IAPStableDiffusionPipeline)
    embeds, negative = pipe.encode_prompt(ZH, "cpu", 1, True)
    inputs = tokenize_like_sd(pipe.tokenizer, ZH)
    with torch.no_grad():
        manual = pipe.text_projection(pipe.text_encoder(inputs["input_ids"])[0])
    torch.testing.assert_close(embeds, manual)
    assert negative.shape == embeds.shape
    # no negative prompt: Stable Diffusion's unconditional embedding is the encoding of "" (then projected here)
    with torch.no_grad():
        empty = tokenize_like_sd(pipe.tokenizer, [""] * len(ZH))["input_ids"]
        manual_negative = pipe.text_projection(pipe.text_encoder(empty)[0])
    torch.testing.assert_close(negative, manual_negative)

    def images(p, **kw):
        g = torch.Generator().manual_seed(0)
        return p(num_inference_steps=2, output_type="np", generator=g, **kw).images

    ref = images(pipe, prompt=ZH)
    np.testing.assert_allclose(images(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative), ref, atol=1e-6)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_projection"] == ["hf_ext.pipelines.iap.modeling_iap_projection", "IAPTextProjection"]
    loaded = IAPStableDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(images(loaded, prompt=ZH), ref)


def test_matching_width_is_a_plain_stable_diffusion_pipeline(tmp_path):
    pipe = tiny_iap_pipeline(zh_hidden_size=8)
    assert type(pipe) is StableDiffusionPipeline
    embeds, _ = pipe.encode_prompt(ZH, "cpu", 1, False)
    with torch.no_grad():
        manual = pipe.text_encoder(tokenize_like_sd(pipe.tokenizer, ZH)["input_ids"])[0]
    torch.testing.assert_close(embeds, manual)
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    np.testing.assert_array_equal(
        pipe(ZH, num_inference_steps=2, output_type="np", generator=g()).images,
        loaded(ZH, num_inference_steps=2, output_type="np", generator=g()).images,
    )


# ------------------------------------------------------------------------------------------ training script
@pytest.fixture(scope="module")
def train_module():
    return import_example("iap/train_iap.py")


def _setup(tmp_path: Path, zh_hidden_size: int):
    c = tiny_iap_components(zh_hidden_size=zh_hidden_size)
    tiny_stable_diffusion_pipeline(unet=c["unet"], vae=c["vae"], scheduler=c["scheduler"]).save_pretrained(
        tmp_path / "sd"
    )
    c["zh_text_encoder"].save_pretrained(tmp_path / "zh")
    c["zh_tokenizer"].save_pretrained(tmp_path / "zh")
    pairs = [
        ("a red cat", "一只红色的猫"),
        ("a blue dog", "一只蓝色的狗"),
        ("a bird", "天空上的鸟"),
        ("a car", "白色的车"),
    ]
    rows = [{"text_en": en, "text_zh": zh} for en, zh in pairs]
    data = write_imagefolder(tmp_path / "data", rows, size=(32, 32))
    return c, [
        "--pretrained_model_name_or_path", str(tmp_path / "sd"), "--zh_text_encoder_name_or_path", str(tmp_path / "zh"),
        "--train_data_dir", str(data), "--resolution", "32", "--train_batch_size", "2", "--checkpointing_steps", "1",
        "--seed", "0", "--lr_warmup_steps", "0", "--learning_rate", "1e-3", "--random_flip", "--uncond_dropout", "0.3",
    ]  # fmt: skip


@pytest.mark.slow  # ~30 s on the shared 2-core machine
def test_train_script_two_steps_then_resume(train_module, tmp_path):
    c, common = _setup(tmp_path, zh_hidden_size=12)
    out = tmp_path / "out"
    common = [*common, "--max_train_steps", "2", "--lambda_denoise", "0.5"]
    validation = ["--validation_prompts", "一只猫", "--validation_steps", "2", "--num_validation_inference_steps", "2"]
    train(train_module, [*common, "--output_dir", str(out), *validation])
    assert (out / "checkpoint-1" / "text_encoder").is_dir() and (out / "checkpoint-2" / "text_projection").is_dir()
    assert Image.open(out / "validation" / "step-2" / "00.png").size == (32, 32)
    trained = IAPStableDiffusionPipeline.from_pretrained(out)
    for name, p in trained.unet.named_parameters():  # SD frozen
        assert torch.equal(p, c["unet"].get_parameter(name)), name
    moved = [
        not torch.equal(p, c["zh_text_encoder"].get_parameter(n)) for n, p in trained.text_encoder.named_parameters()
    ]
    assert any(moved)

    # resume from checkpoint-1 and finish step 2: bit-identical to the uninterrupted run
    resumed = copy_checkpoint(out / "checkpoint-1", tmp_path / "resumed")
    train(train_module, [*common, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    again = IAPStableDiffusionPipeline.from_pretrained(resumed)
    ckpt_encoder = BertModel.from_pretrained(out / "checkpoint-1" / "text_encoder")
    assert any(not torch.equal(p, ckpt_encoder.get_parameter(n)) for n, p in trained.text_encoder.named_parameters())
    for name in ("text_encoder", "text_projection"):
        a, b = getattr(again, name).state_dict(), getattr(trained, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name


def test_train_script_rejects_projection_never_on_width_mismatch(train_module, tmp_path):
    _, common = _setup(tmp_path, zh_hidden_size=12)
    with pytest.raises(ValueError, match="--projection auto"):
        train(
            train_module,
            [*common, "--max_train_steps", "1", "--projection", "never", "--output_dir", str(tmp_path / "o")],
        )


@pytest.mark.slow  # ~20 s on the shared 2-core machine
def test_train_script_matching_width_saves_plain_stable_diffusion(train_module, tmp_path):
    c, common = _setup(tmp_path, zh_hidden_size=8)  # == cross_attention_dim: no projection
    out = tmp_path / "out"
    train(train_module, [*common, "--max_train_steps", "1", "--checkpointing_steps", "100", "--output_dir", str(out)])
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "BertModel"]
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(ZH[:1], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    assert any(
        not torch.equal(p, c["zh_text_encoder"].get_parameter(n)) for n, p in pipe.text_encoder.named_parameters()
    )
