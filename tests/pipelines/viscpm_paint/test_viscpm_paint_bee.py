"""VisCPM-Paint on CPM-Bee (golden text features of OpenBMB's VisCPM), the converter from original-format files,
text-side-only pipelines, input validation and CLIP reranking."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeModel, CpmBeeTokenizer
from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.testing import tiny_scheduler, tiny_unet, tiny_vae, tiny_viscpm_paint_pipeline

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cpmbee"
PAINT = json.loads((FIX / "expected" / "viscpm_paint.json").read_text(encoding="utf-8"))
GOLD = load_file(str(FIX / "expected" / "viscpm_paint.safetensors"))
ORIGINAL = load_file(str(FIX / "original_checkpoint" / "viscpm_paint_text.safetensors"))
ATOL = 1e-4


def gold(ref):
    return GOLD[ref.split(":", 1)[1]]


def bee_text_side():
    config = CpmBeeConfig.from_original_config(json.loads((FIX / "original_checkpoint" / "config.json").read_text()))
    encoder = CpmBeeModel(config).eval()
    encoder.load_state_dict({k[4:]: v for k, v in ORIGINAL.items() if k.startswith("llm.")})
    projection = VisCPMPaintTextProjection(64, 32).eval()
    projection.load_state_dict(
        {
            "linear.weight": ORIGINAL["trans_block.w_out_res.weight"],
            "layer_norm.weight": ORIGINAL["trans_block.layernorm.weight"],
            "layer_norm.bias": ORIGINAL["trans_block.layernorm.bias"],
        }
    )
    return encoder, CpmBeeTokenizer(str(FIX / "vocab.txt")), projection


def text_only_pipeline(encoder, tokenizer, projection, **kwargs):
    return VisCPMPaintPipeline(
        vae=None, text_encoder=encoder, tokenizer=tokenizer, text_projection=projection, unet=None, scheduler=None,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("index", [0, 1])
def test_text_features_golden_with_text_side_only(index):
    case = PAINT["prompts"][index]
    pipe = text_only_pipeline(*bee_text_side(), use_encoder_attention_mask=False)
    assert pipe.caption_data(case["prompt"]) == case["cond_data"]
    cond, uncond, cond_mask, uncond_mask = pipe.encode_prompt(
        case["prompt"], device=torch.device("cpu"), negative_prompt=case["negative_prompt"]
    )
    # both padded to the longer of the two, as VisCPM's collater; features at ALL positions (padding included)
    torch.testing.assert_close(cond[0], gold(case["expected"]["text_features_cond"])[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(uncond[0], gold(case["expected"]["text_features_uncond"])[0], atol=ATOL, rtol=0)
    assert cond_mask.sum().item() == case["cond_inputs"]["length"][0]
    assert uncond_mask.sum().item() == case["uncond_inputs"]["length"][0]


def test_encode_prompt_works_in_isolation():
    """diffusers' `test_encode_prompt_works_in_isolation`: a pipeline with only the text components (unet, vae and
    scheduler None) encodes prompts exactly as the full pipeline."""
    full = tiny_viscpm_paint_pipeline()
    text_only = text_only_pipeline(full.text_encoder, full.tokenizer, full.text_projection)
    kwargs = {"device": torch.device("cpu"), "num_images_per_prompt": 2, "negative_prompt": "blurry"}
    for a, b in zip(full.encode_prompt("a red cat", **kwargs), text_only.encode_prompt("a red cat", **kwargs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # and the precomputed embeddings drive the full pipeline like the prompt does
    embeds, neg, mask, neg_mask = text_only.encode_prompt("a red cat", device=torch.device("cpu"))
    run = {"num_inference_steps": 2, "output_type": "np"}
    direct = full("a red cat", generator=torch.Generator().manual_seed(0), **run).images
    via = full(
        prompt_embeds=embeds, negative_prompt_embeds=neg, prompt_attention_mask=mask,
        negative_prompt_attention_mask=neg_mask, generator=torch.Generator().manual_seed(0), **run,
    ).images  # fmt: skip
    np.testing.assert_allclose(via, direct, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": -3}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"timesteps": []}, "timesteps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_rescale": 1.5}, "guidance_rescale"),
        ({"eta": float("inf")}, "eta"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"height": -8}, "height"),
    ],
)
def test_nonsensical_values_raise(kwargs, match):
    pipe = tiny_viscpm_paint_pipeline()
    kwargs.setdefault("num_inference_steps", 2)
    with pytest.raises(ValueError, match=match):
        pipe("a cat", output_type="np", **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Original-format VisCPM-Paint file (trans_block.*, llm.* from the golden fixture, unet.* of a tiny SD UNet) and a
    tiny SD-2.1-like folder, through the converter."""
    from hf_ext.pipelines.viscpm_paint.convert_viscpm_paint_original_to_diffusers import main

    root = tmp_path_factory.mktemp("viscpm_paint")
    unet = tiny_unet(cross_attention_dim=32)
    sd = root / "sd21"
    unet.save_pretrained(sd / "unet")
    tiny_vae().save_pretrained(sd / "vae")
    tiny_scheduler().save_pretrained(sd / "scheduler")
    state = dict(ORIGINAL)
    state.update({"unet." + k: v for k, v in unet.state_dict().items()})
    torch.save(state, root / "viscpm_paint_balance_checkpoint.pt")
    out = root / "out"
    main(
        [
            "--checkpoint", str(root / "viscpm_paint_balance_checkpoint.pt"), "--vocab", str(FIX / "vocab.txt"),
            "--llm_config", str(FIX / "original_checkpoint" / "config.json"), "--sd_model", str(sd),
            "--output_dir", str(out), "--dtype", "float32", "--max_shard_size", "200KB",
        ]
    )  # fmt: skip
    return out, unet


def test_converted_pipeline_matches_viscpm(converted):
    out, unet = converted
    pipe = VisCPMPaintPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, DDPMScheduler) and not pipe.config.use_encoder_attention_mask
    assert isinstance(pipe.text_encoder, CpmBeeModel) and isinstance(pipe.tokenizer, CpmBeeTokenizer)
    assert (out / "text_encoder" / "model.safetensors.index.json").exists()  # streamed into shards
    for k, v in unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[k], v), k
    case = PAINT["prompts"][1]
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        images = pipe(
            case["prompt"], negative_prompt=case["negative_prompt"], num_inference_steps=2, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip
    finally:
        hook.remove()
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    # the UNet cross-attends to cat([uncond, cond]) with no mask, as VisCPM
    torch.testing.assert_close(seen[0], gold(case["expected"]["unet_encoder_hidden_states"]), atol=ATOL, rtol=0)


def test_converter_rejects_foreign_checkpoint(converted, tmp_path):
    from hf_ext.pipelines.viscpm_paint.convert_viscpm_paint_original_to_diffusers import (
        convert_viscpm_paint_checkpoint,
    )

    torch.save({"llm.x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="trans_block"):
        convert_viscpm_paint_checkpoint(
            tmp_path / "bad.pt", FIX / "vocab.txt", FIX / "original_checkpoint" / "config.json",
            converted[0].parent / "sd21", tmp_path / "o",
        )  # fmt: skip


def test_generate_reranked_keeps_best_clip_score():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from hf_ext.testing import tiny_clip_tokenizer

    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            text_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "vocab_size": 1000, "max_position_embeddings": 77},
            vision_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            projection_dim=8,
        )
    ).eval()  # fmt: skip
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tiny_clip_tokenizer(),
    )
    pipe = tiny_viscpm_paint_pipeline()
    best, scores = pipe.generate_reranked(
        "a red cat",
        clip,
        processor,
        num_candidates=3,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    images = pipe("a red cat", num_images_per_prompt=3, num_inference_steps=2, output_type="pil",
                  generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    inputs = processor(text=["a red cat"] * 3, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = clip(**inputs)
    manual = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    torch.testing.assert_close(scores[0], manual, atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(best[0]), np.asarray(images[int(manual.argmax())]))
