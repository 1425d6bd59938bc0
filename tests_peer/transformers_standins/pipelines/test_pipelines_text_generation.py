"""Stand-in for transformers' ``tests/pipelines/test_pipelines_text_generation.py`` (not in the distribution).

``PipelineTesterMixin.run_pipeline_test`` builds this class and calls ``get_test_pipeline`` and ``run_pipeline_test``;
the checks below follow the real class's: output structure, ``return_full_text``, lists of prompts,
``num_return_sequences``, and that greedy text equals what ``model.generate`` gives for the same prompt.
"""

from __future__ import annotations

import unittest
import unittest.mock

import torch
from transformers import TextGenerationPipeline


class TextGenerationPipelineTests(unittest.TestCase):
    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        generator = TextGenerationPipeline(model=model, tokenizer=tokenizer, dtype=dtype, max_new_tokens=5)
        return generator, ["This is a test", "Another test"]

    def run_pipeline_test(self, text_generator, _):
        model, tokenizer = text_generator.model, text_generator.tokenizer
        outputs = text_generator("This is a test", do_sample=False)
        self.assertEqual(outputs, [{"generated_text": unittest.mock.ANY}])
        self.assertTrue(outputs[0]["generated_text"].startswith("This is a test"))

        # the new text is exactly what generate() makes (greedy, same prompt, same number of tokens)
        ids = tokenizer("This is a test", return_tensors="pt").to(model.device)
        torch.manual_seed(0)
        with torch.no_grad():
            generated = model.generate(**ids, do_sample=False, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        torch.manual_seed(0)
        new_only = text_generator("This is a test", return_full_text=False, do_sample=False)
        self.assertEqual(new_only, [{"generated_text": expected}])
        self.assertFalse(new_only[0]["generated_text"].startswith("This is a test") and expected == "")

        outputs = text_generator(["This is great !", "Something else"], do_sample=False)
        self.assertEqual(len(outputs), 2)
        for prompt, out in zip(["This is great !", "Something else"], outputs):
            self.assertEqual(out, [{"generated_text": unittest.mock.ANY}])
            self.assertTrue(out[0]["generated_text"].startswith(prompt))

        outputs = text_generator("This is a test", do_sample=True, num_return_sequences=2)
        self.assertEqual(len(outputs), 2)
        for out in outputs:
            self.assertTrue(out["generated_text"].startswith("This is a test"))
