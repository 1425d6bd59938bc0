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

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

import hf_ext
from hf_ext.models.cpmbee import CpmBeeConfig, CpmBeeModel, CpmBeeTokenizer
from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.pipelines.viscpm_paint.testing import tiny_llm_text_encoder

from ...testing_utils import torch_device
from ..pipeline_params import TEXT_TO_IMAGE_BATCH_PARAMS, TEXT_TO_IMAGE_PARAMS
from ..testing_utils import BasePipelineTesterConfig, MemoryTesterMixin, PipelineTesterMixin


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
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=1,
            sample_size=32,
            time_cond_proj_dim=time_cond_proj_dim,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=2,
        )
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        )
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=[4, 8],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=2,
        )
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
