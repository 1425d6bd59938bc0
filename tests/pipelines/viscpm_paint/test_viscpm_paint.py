"""VisCPMPaintPipeline on tiny random components (offline): determinism, batching, embeds path, save/load, training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _diffusion_training_helpers import copy_checkpoint, import_example, train, write_imagefolder
from PIL import Image

from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.testing import tiny_viscpm_paint_pipeline

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = ["a red cat wearing a hat", "一只蓝色的狗在公园里跑"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_viscpm_paint_pipeline()


def run(pipe, prompt=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    generator = [gen(seed + i) for i in range(len(prompt))] if isinstance(prompt, list) else gen(seed)
    return pipe(prompt, generator=kwargs.pop("generator", generator), **kwargs).images


def test_projection_matches_viscpm_trans_block():
    proj = VisCPMPaintTextProjection(6, 4).eval()
    x = torch.randn(2, 3, 6)
    # CPMBeeTransBlock: Linear(bias=False) -> Dropout(0) -> LayerNorm(eps=1e-6), computed by hand
    y = x @ proj.linear.weight.T
    mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
    expected = (y - mean) / torch.sqrt(var + 1e-6) * proj.layer_norm.weight + proj.layer_norm.bias
    assert proj.linear.bias is None
    torch.testing.assert_close(proj(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expects 6"):
        proj(torch.randn(1, 2, 5))


def test_seeded_determinism_and_output_types(pipe):
    a = run(pipe, PROMPTS[0], seed=0)
    b = run(pipe, PROMPTS[0], seed=0)
    c = run(pipe, PROMPTS[0], seed=1)
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    pt = run(pipe, PROMPTS[0], seed=0, output_type="pt")
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), a, atol=1e-6)
    pil = run(pipe, PROMPTS[0], seed=0, output_type="pil")
    np.testing.assert_array_equal(np.asarray(pil[0]), (a[0] * 255).round().astype(np.uint8))
    latents = run(pipe, PROMPTS[0], seed=0, output_type="latent")
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    np.testing.assert_allclose((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).detach().numpy(), a, atol=1e-5)


def test_batch_of_two_equals_each_alone(pipe):
    batch = run(pipe, PROMPTS, seed=0)
    alone = [run(pipe, p, seed=i)[0] for i, p in enumerate(PROMPTS)]
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(batch[1], alone[1], atol=1e-5)


def test_prompt_embeds_path_equals_prompt_path(pipe):
    expected = run(pipe, PROMPTS, seed=0, negative_prompt=["blurry", "低质量"])
    embeds, neg, mask, neg_mask = pipe.encode_prompt(PROMPTS, negative_prompt=["blurry", "低质量"])
    got = run(
        pipe,
        None,
        generator=[gen(0), gen(1)],
        prompt_embeds=embeds,
        negative_prompt_embeds=neg,
        prompt_attention_mask=mask,
        negative_prompt_attention_mask=neg_mask,
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_encode_prompt_matches_manual_projection(pipe):
    embeds, neg, mask, _ = pipe.encode_prompt(PROMPTS[:1], do_classifier_free_guidance=True, num_images_per_prompt=2)
    ids = pipe.tokenizer(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        manual = pipe.text_projection(hidden)
    assert embeds.shape[0] == 2 and neg.shape[0] == 2
    torch.testing.assert_close(embeds[0, : len(ids)], manual[0])
    torch.testing.assert_close(embeds[1], embeds[0])
    assert mask[0].sum().item() == len(ids)


def test_num_images_per_prompt_and_callback(pipe):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append((step, int(t), kwargs["latents"].shape))
        return kwargs

    images = pipe(
        PROMPTS,
        num_images_per_prompt=2,
        num_inference_steps=3,
        output_type="np",
        generator=gen(0),
        callback_on_step_end=callback,
    ).images
    assert images.shape == (4, 32, 32, 3)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert all(s[2] == (4, 4, 16, 16) for s in seen)


def test_no_guidance_single_unet_batch(pipe):
    unet_batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: unet_batches.append(args[0].shape[0]))
    try:
        a = run(pipe, PROMPTS[0], seed=0, guidance_scale=1.0)
        n_plain = len(unet_batches)
        b = run(pipe, PROMPTS[0], seed=0, guidance_scale=7.5)
    finally:
        hook.remove()
    # guidance_scale=1 skips the unconditional half: one image -> UNet batch 1 per step; with guidance, batch 2
    assert unet_batches == [1] * n_plain + [2] * n_plain and n_plain == 2
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match="divisible"):
        pipe(PROMPTS[0], height=31, num_inference_steps=1)
    with pytest.raises(ValueError, match="not both"):
        pipe(PROMPTS[0], prompt_embeds=torch.zeros(1, 3, 8), num_inference_steps=1)
    with pytest.raises(ValueError, match="cross_attention_dim|\\[batch, seq_len, 8\\]"):
        pipe(prompt_embeds=torch.zeros(1, 3, 5), num_inference_steps=1)
    with pytest.raises(ValueError, match="negative prompt per prompt"):
        pipe(PROMPTS, negative_prompt=["x"], num_inference_steps=1)
    with pytest.raises(ValueError, match="out_features"):
        VisCPMPaintPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            text_projection=VisCPMPaintTextProjection(16, 5),
            unet=pipe.unet,
            scheduler=pipe.scheduler,
        )


def test_save_load_bit_identical(pipe, tmp_path):
    before = run(pipe, PROMPTS, seed=0)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "VisCPMPaintPipeline"
    assert index["text_projection"] == [
        "hf_ext.pipelines.viscpm_paint.modeling_text_projection",
        "VisCPMPaintTextProjection",
    ]
    assert (tmp_path / "text_projection" / "diffusion_pytorch_model.safetensors").exists()
    loaded = VisCPMPaintPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = run(loaded, PROMPTS, seed=0)
    np.testing.assert_array_equal(before, after)
    for name in ("unet", "vae", "text_projection", "text_encoder"):
        sd_a, sd_b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


# ------------------------------------------------------------------------------------------ training script
def _imagefolder(path: Path) -> Path:
    captions = ["a red cat", "一只蓝色的狗", "a painting of a squirrel", "一只戴着帽子的猫"]
    return write_imagefolder(path, [{"text": caption} for caption in captions], size=(40, 36))


@pytest.fixture(scope="module")
def train_module():
    return import_example("viscpm_paint/train_viscpm_paint.py")


@pytest.mark.slow  # ~35 s on the shared 2-core machine (three short training runs)
def test_train_script_two_steps_then_resume(train_module, tmp_path):
    base = tmp_path / "base"
    initial = tiny_viscpm_paint_pipeline()
    initial.save_pretrained(base)
    data = _imagefolder(tmp_path / "data")
    common = [
        "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data), "--resolution", "32",
        "--train_batch_size", "2", "--checkpointing_steps", "1", "--seed", "0", "--lr_warmup_steps", "0",
        "--learning_rate", "1e-2", "--train_cross_attention", "--random_flip", "--uncond_dropout", "0.3",
    ]  # fmt: skip
    out = tmp_path / "out"
    validation = [
        "--validation_prompts", "a red cat", "--validation_steps", "2", "--num_validation_inference_steps", "2",
    ]  # fmt: skip
    train(train_module, [*common, "--max_train_steps", "2", "--output_dir", str(out), *validation])
    assert (out / "checkpoint-1" / "text_projection").is_dir() and (out / "checkpoint-2" / "unet").is_dir()
    assert not list(out.glob("*.tmp"))
    assert Image.open(out / "validation" / "step-2" / "00.png").size == (32, 32)
    trained = VisCPMPaintPipeline.from_pretrained(out)
    # the projection and attn2.to_k/to_v moved; everything else in the UNet, and the LLM, did not
    assert not torch.equal(trained.text_projection.linear.weight, initial.text_projection.linear.weight)
    for name, p in trained.unet.named_parameters():
        moved = not torch.equal(p, initial.unet.get_parameter(name))
        assert moved == (".attn2.to_k." in name or ".attn2.to_v." in name), name
    for name, p in trained.text_encoder.named_parameters():
        assert torch.equal(p, initial.text_encoder.get_parameter(name)), name

    # resume from checkpoint-1 in a fresh folder and finish step 2: bit-identical to the uninterrupted run
    # (weights, optimizer, RNG and sampler state restored; augmentation is seeded per example, not global)
    resumed = copy_checkpoint(out / "checkpoint-1", tmp_path / "resumed")
    train(
        train_module,
        [*common, "--max_train_steps", "2", "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"],
    )
    assert (resumed / "checkpoint-2").is_dir()
    again = VisCPMPaintPipeline.from_pretrained(resumed)
    ckpt = VisCPMPaintTextProjection.from_pretrained(out / "checkpoint-1", subfolder="text_projection")
    assert not torch.equal(ckpt.linear.weight, trained.text_projection.linear.weight)
    for name, p in again.text_projection.state_dict().items():
        assert torch.equal(p, trained.text_projection.state_dict()[name]), name
    for name, p in again.unet.state_dict().items():
        assert torch.equal(p, trained.unet.state_dict()[name]), name


def test_train_script_rejects_missing_column(train_module, tmp_path):
    base = tmp_path / "base"
    tiny_viscpm_paint_pipeline().save_pretrained(base)
    data = _imagefolder(tmp_path / "data")
    args = train_module.parse_args(
        [
            "--pretrained_model_name_or_path",
            str(base),
            "--train_data_dir",
            str(data),
            "--caption_column",
            "caption",
            "--resolution",
            "32",
            "--max_train_steps",
            "1",
            "--output_dir",
            str(tmp_path / "o"),
        ]  # fmt: skip
    )
    with pytest.raises(ValueError, match="--caption_column"):
        train_module.main(args)
