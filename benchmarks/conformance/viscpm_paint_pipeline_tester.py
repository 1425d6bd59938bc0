"""hf_ext's test classes for `VisCPMPaintPipeline` on diffusers' common pipeline test mixins.

This module is NOT collected by hf_ext's own test suite: it imports diffusers' test package (`tests/pipelines/...`),
which diffusers' wheel does not ship. `run_diffusers_pipeline_suite.py` copies it into a scratch copy of a
user-provided diffusers checkout's `tests/pipelines/` (as `viscpm_paint/test_viscpm_paint.py`) and runs it next to
diffusers' own Stable Diffusion fast tests.

The configuration mirrors diffusers' `StableDiffusionPipelineTesterConfig`: same UNet/VAE/DDIM sizes and seeds, same
dummy inputs (2 steps, guidance 6.0, `output_type="pt"`, 64x64 images); only the text side differs: hf_ext's tiny
multilingual LLM (`LlamaForCausalLM`, hidden 16) and its byte-level BPE tokenizer, projected 16 -> 8 by
`VisCPMPaintTextProjection` into the UNet's cross-attention width.

Three text-side configurations each run the whole `PipelineTesterMixin`:

* `TestVisCPMPaintPipeline`: tiny Llama, encoder attention mask on (hf_ext's default for non-CPM-Bee encoders);
* `TestVisCPMPaintPipelineUnmasked`: the same with `use_encoder_attention_mask=False` (VisCPM's behaviour);
* `TestVisCPMPaintPipelineCpmBee`: a tiny random `CpmBeeModel` + `CpmBeeTokenizer` (the vocabulary of hf_ext's
  CPM-Bee test fixtures) as in converted VisCPM-Paint checkpoints: structured captions, bidirectional text, no mask.
"""

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)

import hf_ext
from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeModel, CpmBeeTokenizer
from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.testing import tiny_llm_text_encoder, tiny_unet, tiny_vae

from ...testing_utils import assert_tensors_close, torch_device
from ..pipeline_params import TEXT_TO_IMAGE_BATCH_PARAMS, TEXT_TO_IMAGE_PARAMS
from ..testing_utils import BasePipelineTesterConfig, MemoryTesterMixin, PipelineTesterMixin
from ..testing_utils.common import BasePipelineOutputMixin


class VisCPMPaintPipelineTesterConfig(BasePipelineTesterConfig):
    pipeline_class = VisCPMPaintPipeline
    required_input_params_in_call_signature = TEXT_TO_IMAGE_PARAMS
    output_shape = (3, 64, 64)
    batch_input_params = TEXT_TO_IMAGE_BATCH_PARAMS
    # encoder mask on (hf_ext's default for non-CPM-Bee text encoders); `use_encoder_attention_mask` is a config
    # value, not a component, so it is not part of `get_dummy_components`
    text_hidden_size = 16
    cross_attention_dim = 8

    # config values of `VisCPMPaintPipeline.__init__` that are not components
    pipeline_config = {}

    def get_pipeline(self, **components):
        pipe = super().get_pipeline(**components)
        if self.pipeline_config:
            pipe.register_to_config(**self.pipeline_config)
        return pipe

    def get_text_side(self):
        text_encoder, tokenizer = tiny_llm_text_encoder(self.text_hidden_size, seed=0)
        return text_encoder, tokenizer, self.text_hidden_size

    def get_dummy_components(self, time_cond_proj_dim=None):
        # hf_ext.testing's tiny UNet and VAE are diffusers' SD tester components (same sizes, seed 0)
        unet = tiny_unet(self.cross_attention_dim, sample_size=32)
        if time_cond_proj_dim is not None:  # the LCM variant of diffusers' SD tests
            torch.manual_seed(0)
            unet = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=time_cond_proj_dim)
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        )
        vae = tiny_vae(seed=0)
        text_encoder, tokenizer, text_hidden_size = self.get_text_side()
        torch.manual_seed(0)
        text_projection = VisCPMPaintTextProjection(
            in_features=text_hidden_size, out_features=self.cross_attention_dim
        )
        return {
            "unet": unet,
            "scheduler": scheduler,
            "vae": vae,
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "text_projection": text_projection,
        }

    def get_dummy_inputs(self):
        return {
            "prompt": "A painting of a squirrel eating a burger",
            "generator": self.get_generator(0),
            "num_inference_steps": 2,
            "guidance_scale": 6.0,
            "output_type": "pt",
        }


class TestVisCPMPaintPipeline(VisCPMPaintPipelineTesterConfig, PipelineTesterMixin):
    # same tolerance as diffusers' Stable Diffusion class
    def test_inference_batch_single_identical(self):
        super().test_inference_batch_single_identical(expected_max_diff=3e-3)

    # same extra arguments as diffusers' Stable Diffusion class
    def test_encode_prompt_works_in_isolation(self, monkeypatch):
        # diffusers' harness reads `encode_prompt`'s return names from the source of `diffusers.pipelines.<class name>`
        # (`ReturnNameVisitor.get_ast_tree`), so an out-of-tree pipeline has to be visible there for the test to run
        import diffusers.pipelines

        monkeypatch.setattr(diffusers.pipelines, "VisCPMPaintPipeline", VisCPMPaintPipeline, raising=False)
        extra_required_param_value_dict = {
            "device": torch.device(torch_device).type,
            "do_classifier_free_guidance": self.get_dummy_inputs().get("guidance_scale", 1.0) > 1.0,
        }
        return super().test_encode_prompt_works_in_isolation(extra_required_param_value_dict)


class TestVisCPMPaintPipelineUnmasked(TestVisCPMPaintPipeline):
    """VisCPM's own conditioning: no text mask in the UNet's cross-attention, prompts padded to a common length."""

    pipeline_config = {"use_encoder_attention_mask": False}


CPMBEE_FIXTURES = Path(hf_ext.__file__).resolve().parents[1] / "tests" / "fixtures" / "cpmbee"


class TestVisCPMPaintPipelineCpmBee(TestVisCPMPaintPipeline):
    """The released VisCPM-Paint's text side: CPM-Bee (random, tiny) fed `{"caption": prompt, "objects": ""}`."""

    pipeline_config = {"use_encoder_attention_mask": False}

    def get_text_side(self):
        original = json.loads((CPMBEE_FIXTURES / "original_checkpoint" / "config.json").read_text())
        config = CpmBeeConfig.from_original_config(original)
        torch.manual_seed(0)
        return CpmBeeModel(config).eval(), CpmBeeTokenizer(str(CPMBEE_FIXTURES / "vocab.txt")), config.hidden_size


class TestVisCPMPaintPipelineMemory(VisCPMPaintPipelineTesterConfig, MemoryTesterMixin):
    """Memory tests (CPU offload, group offload, layerwise casting); most need an accelerator and skip on CPU."""


class TestVisCPMPaintPipelineFeatures(VisCPMPaintPipelineTesterConfig, BasePipelineOutputMixin):
    """hf_ext's checks of the UNet/VAE features diffusers' SD class tests beyond the common mixin (schedulers, VAE
    slicing and tiling, FreeU, fused QKV, interruption, image size, negative prompt), on the Paint configuration.
    SD's hard-coded expected pixel slices are specific to its CLIP text encoder and have no Paint counterpart."""

    @pytest.mark.parametrize(
        "scheduler_class",
        [
            DPMSolverMultistepScheduler,
            EulerAncestralDiscreteScheduler,
            EulerDiscreteScheduler,
            LMSDiscreteScheduler,
            PNDMScheduler,
        ],
        ids=lambda cls: cls.__name__,
    )
    def test_scheduler_swap(self, scheduler_class, base_pipe_output):
        components = self.get_dummy_components()
        # PNDM's Runge-Kutta warm-up needs more than 2 steps, for SD too: skip it, as diffusers' SD class does
        extra = {"skip_prk_steps": True} if scheduler_class is PNDMScheduler else {}
        components["scheduler"] = scheduler_class.from_config(components["scheduler"].config, **extra)
        image = self.run_pipe(self.get_pipeline(**components).to(torch_device))
        assert image.shape == (1, *self.output_shape)
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
        assert (image - base_pipe_output).abs().max() > 1e-4, "the scheduler swap had no effect"

    def test_vae_slicing(self):
        pipe = self.get_pipeline().to(torch_device)
        prompts = [self.get_dummy_inputs()["prompt"]] * 3
        full = self.run_pipe(pipe, prompt=prompts)
        pipe.vae.enable_slicing()
        sliced = self.run_pipe(pipe, prompt=prompts)
        assert_tensors_close(sliced, full, atol=3e-3, msg="sliced VAE decoding changed the images")

    def test_vae_tiling(self, base_pipe_output):
        pipe = self.get_pipeline().to(torch_device)
        pipe.vae.enable_tiling()
        tiled = self.run_pipe(pipe)
        # tiles are blended at their seams, so the tolerance is loose (the same bound as diffusers' SD class)
        assert (tiled - base_pipe_output).abs().max() < 5e-1

    def test_freeu(self, base_pipe_output):
        pipe = self.get_pipeline().to(torch_device)
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        with_freeu = self.run_pipe(pipe)
        assert (with_freeu - base_pipe_output).abs().max() > 1e-4, "FreeU had no effect"
        pipe.disable_freeu()
        assert all(
            getattr(block, key, None) is None for block in pipe.unet.up_blocks for key in ("s1", "s2", "b1", "b2")
        )
        assert_tensors_close(self.run_pipe(pipe), base_pipe_output, atol=1e-5, msg="disable_freeu did not restore")

    def test_fused_qkv_projections(self, base_pipe_output):
        pipe = self.get_pipeline().to(torch_device)
        pipe.fuse_qkv_projections()
        fused = self.run_pipe(pipe)
        pipe.unfuse_qkv_projections()
        unfused = self.run_pipe(pipe)
        assert_tensors_close(fused, base_pipe_output, atol=1e-2, msg="fusing QKV changed the images")
        assert_tensors_close(unfused, base_pipe_output, atol=1e-4, msg="unfusing QKV did not restore the images")

    def test_interrupt(self):
        pipe = self.get_pipeline().to(torch_device)
        seen = []

        def record(pipe, step, timestep, callback_kwargs):
            seen.append(callback_kwargs["latents"].clone())
            return callback_kwargs

        self.run_pipe(pipe, num_inference_steps=3, callback_on_step_end=record)
        stop_at = 1

        def interrupt(pipe, step, timestep, callback_kwargs):
            if step == stop_at:
                pipe._interrupt = True
            return callback_kwargs

        latents = self.run_pipe(pipe, num_inference_steps=3, output_type="latent", callback_on_step_end=interrupt)
        assert len(seen) == 3
        assert_tensors_close(latents, seen[stop_at], atol=1e-6, msg="interrupted run did not stop at that step")

    def test_height_width(self):
        pipe = self.get_pipeline().to(torch_device)
        image = self.run_pipe(pipe, height=48, width=80)
        assert image.shape == (1, 3, 48, 80)

    def test_negative_prompt(self, base_pipe_output):
        pipe = self.get_pipeline().to(torch_device)
        image = self.run_pipe(pipe, negative_prompt="french fries")
        assert image.shape == base_pipe_output.shape
        assert (image - base_pipe_output).abs().max() > 1e-4, "the negative prompt had no effect"
