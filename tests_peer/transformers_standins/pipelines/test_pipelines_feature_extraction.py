"""Stand-in for transformers' ``tests/pipelines/test_pipelines_feature_extraction.py`` (not in the distribution).

Follows the real class: the pipeline returns ``[batch][tokens][hidden]`` nested lists equal to the model's last hidden
state, one row per token, and ``return_tensors=True`` returns the tensor itself.
"""

from __future__ import annotations

import unittest

import torch
from transformers import FeatureExtractionPipeline


class FeatureExtractionPipelineTests(unittest.TestCase):
    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        extractor = FeatureExtractionPipeline(model=model, tokenizer=tokenizer, dtype=dtype)
        return extractor, ["This is a test", "This is another test"]

    def run_pipeline_test(self, extractor, examples):
        model, tokenizer = extractor.model, extractor.tokenizer
        outputs = extractor("This is a test")
        ids = tokenizer("This is a test", return_tensors="pt").to(model.device)
        with torch.no_grad():
            expected = model(**ids).last_hidden_state
        self.assertEqual(len(outputs), 1)
        self.assertEqual(len(outputs[0]), ids["input_ids"].shape[1])
        torch.testing.assert_close(torch.tensor(outputs), expected.float(), rtol=1e-4, atol=1e-4)
        as_tensor = extractor("This is a test", return_tensors=True)
        torch.testing.assert_close(as_tensor.float(), expected.float(), rtol=1e-4, atol=1e-4)
        outputs = extractor(examples)
        self.assertEqual(len(outputs), len(examples))
        self.assertEqual(len(outputs[1][0][0]), expected.shape[-1])
