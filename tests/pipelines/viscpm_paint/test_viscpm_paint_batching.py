"""Batch invariance of VisCPMPaintPipeline in its two conditioning modes.

diffusers' common `test_inference_batch_single_identical` (run by `benchmarks/conformance/
run_diffusers_pipeline_suite.py`) passes with the encoder mask and cannot pass without it: these tests pin down why.
Without a text mask (VisCPM's conditioning) the UNet attends to padding states, and prompts are padded to the
longest one in the batch (VisCPM's collater), so an image depends on its batch mates' token counts and on nothing
else about them.
"""

import numpy as np
import pytest
import torch

from hf_ext.testing import tiny_viscpm_paint_pipeline

PROMPT = "a red cat wearing a hat"
LONG_PROMPT = "a painting of a squirrel eating a burger . a blue dog runs in the park . " * 2


def images(pipe, prompts, seeds):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, generator=generators, num_inference_steps=2, output_type="np").images


def n_tokens(pipe, text):
    return len(pipe.tokenizer(text)["input_ids"])


@pytest.fixture(scope="module")
def masked():
    return tiny_viscpm_paint_pipeline(use_encoder_attention_mask=True)


@pytest.fixture(scope="module")
def unmasked():
    return tiny_viscpm_paint_pipeline(use_encoder_attention_mask=False)


def test_masked_batch_mate_length_does_not_matter(masked):
    assert n_tokens(masked, LONG_PROMPT) > n_tokens(masked, PROMPT)
    alone = images(masked, [PROMPT], [0])
    batched = images(masked, [PROMPT, LONG_PROMPT], [0, 1])
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


def test_unmasked_batch_mate_of_same_token_count_does_not_matter(unmasked):
    # a different prompt with exactly PROMPT's token count: the padded length, hence the conditioning, is unchanged
    target = n_tokens(unmasked, PROMPT)
    candidates = [
        "a blue dog wearing a hat",
        "a red dog wearing a hat",
        "a blue cat wearing a hat",
        "a red cat in a hat",
    ]
    mate = next(c for c in candidates if n_tokens(unmasked, c) == target and c != PROMPT)
    alone = images(unmasked, [PROMPT], [0])
    batched = images(unmasked, [PROMPT, mate], [0, 1])
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


def test_unmasked_longer_batch_mate_changes_the_image(unmasked):
    # VisCPM's behaviour, kept on purpose: padding to the longer prompt adds attended positions
    alone = images(unmasked, [PROMPT], [0])
    batched = images(unmasked, [PROMPT, LONG_PROMPT], [0, 1])
    assert np.abs(batched[0] - alone[0]).max() > 1e-3
