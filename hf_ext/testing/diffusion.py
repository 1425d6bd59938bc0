"""Tiny, randomly initialised components for tests, demos and benchmarks: no download, built in well under a second.

The sizes follow diffusers' own pipeline tests (``UNet2DConditionModel(block_out_channels=(4, 8),
layers_per_block=1, norm_num_groups=2, ...)``). Every builder seeds torch before creating weights, so two calls with
the same arguments give identical components.

One call builds a whole pipeline::

    from hf_ext.testing.diffusion import tiny_viscpm_paint_pipeline, tiny_stable_diffusion_pipeline

    paint = tiny_viscpm_paint_pipeline()  # VisCPMPaintPipeline, tiny Llama as the text encoder
    sd = tiny_stable_diffusion_pipeline(unet=paint.unet, vae=paint.vae, scheduler=paint.scheduler)
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_ext.pipelines.viscpm_paint.modeling_text_projection import VisCPMPaintTextProjection
from hf_ext.pipelines.viscpm_paint.pipeline_viscpm_paint import VisCPMPaintPipeline
from hf_ext.testing.text_models import tiny_llama_config
from hf_ext.testing.tokenizers import tiny_bpe_tokenizer

__all__ = [
    "MULTILINGUAL_CORPUS",
    "tiny_clip_text_encoder",
    "tiny_clip_tokenizer",
    "tiny_llm_text_encoder",
    "tiny_scheduler",
    "tiny_stable_diffusion_pipeline",
    "tiny_unet",
    "tiny_vae",
    "tiny_viscpm_paint_pipeline",
]

MULTILINGUAL_CORPUS = [
    "a red cat wearing a hat sits on the table . a blue dog runs in the park .",
    "一只戴着帽子的红色猫坐在桌子上。一只蓝色的狗在公园里跑。",
    "a painting of a squirrel eating a burger . 一幅松鼠吃汉堡的画。",
]


def tiny_unet(
    cross_attention_dim: int = 8, sample_size: int = 16, seed: int = 0, time_cond_proj_dim: int | None = None
) -> UNet2DConditionModel:
    """A two-level UNet with one cross-attention block per level (4 `attn2` layers), as in diffusers' SD tests
    (`time_cond_proj_dim`: the guidance embedding of LCM-style distilled UNets, as there)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=sample_size,
        time_cond_proj_dim=time_cond_proj_dim,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A 2-level `AutoencoderKL` (scale factor 2)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def tiny_scheduler() -> DDIMScheduler:
    """Stable Diffusion's DDIM settings (`steps_offset=1`, so no deprecation warning)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_llm_text_encoder(hidden_size: int = 16, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny multilingual "LLM" (`LlamaForCausalLM`, dropout 0) and its byte-level BPE tokenizer."""
    tokenizer = tiny_bpe_tokenizer(MULTILINGUAL_CORPUS * 4, vocab_size=320)
    tokenizer.model_max_length = 64
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, hidden_size, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval(), tokenizer


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A character-level `CLIPTokenizer` built in memory (no merges): every ASCII letter/digit is a token."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, pad_token="<|endoftext|>")


def tiny_clip_text_encoder(hidden_size: int = 8, seed: int = 0) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A 2-layer `CLIPTextModel` (SD's English encoder) and the in-memory `CLIPTokenizer`."""
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config).eval(), tokenizer


def tiny_viscpm_paint_pipeline(
    cross_attention_dim: int = 8,
    text_hidden_size: int = 16,
    sample_size: int = 16,
    use_encoder_attention_mask: bool = True,
    seed: int = 0,
) -> VisCPMPaintPipeline:
    """A complete tiny :class:`VisCPMPaintPipeline` (images are `sample_size * 2` pixels square)."""
    text_encoder, tokenizer = tiny_llm_text_encoder(text_hidden_size, seed=seed)
    torch.manual_seed(seed)
    projection = VisCPMPaintTextProjection(in_features=text_hidden_size, out_features=cross_attention_dim).eval()
    pipe = VisCPMPaintPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_projection=projection,
        unet=tiny_unet(cross_attention_dim, sample_size, seed),
        scheduler=tiny_scheduler(),
        use_encoder_attention_mask=use_encoder_attention_mask,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_stable_diffusion_pipeline(
    cross_attention_dim: int = 8,
    sample_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    vae: AutoencoderKL | None = None,
    scheduler=None,
    seed: int = 0,
) -> StableDiffusionPipeline:
    """A tiny English `StableDiffusionPipeline` (CLIP text encoder); pass `unet`/`vae`/`scheduler` to share them."""
    if unet is not None:
        cross_attention_dim = unet.config.cross_attention_dim
    text_encoder, tokenizer = tiny_clip_text_encoder(cross_attention_dim, seed=seed)
    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet if unet is not None else tiny_unet(cross_attention_dim, sample_size, seed),
        scheduler=scheduler if scheduler is not None else tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
