"""Stand-in for transformers' ``tests/generation/test_utils.py`` (not shipped in the source distribution).

transformers' real ``GenerationTesterMixin`` lives in that file, which PyPI does not distribute, so this module is
hf_ext's own generation suite, modelled on it: the same entry points (``model_tester``,
``all_generative_model_classes``, ``prepare_config_and_inputs_for_common``) and the same kind of checks, each against an
independent reference rather than a stored value:

* greedy ``generate`` equals an explicit argmax loop over full forward passes (no cache);
* with and without a KV cache give the same tokens and scores; continuing from a returned cache equals one longer run;
* sampling is reproducible under a seed, returns ``num_return_sequences`` rows, and ``top_k=1`` sampling is greedy;
* beam search's ``sequences_scores`` (``length_penalty=0``) equal the summed log-probabilities of the returned
  sequences recomputed by a forward pass;
* left padding does not change the last-token logits;
* ``generate`` from ``inputs_embeds`` produces the tokens ``generate`` from ``input_ids`` does;
* dict outputs carry one score / hidden-state tuple / attention tuple per new token;
* ``generate`` after ``save_pretrained`` / ``from_pretrained`` gives the same tokens.

A tester adapts the inputs through optional hooks: ``model_tester.generation_inputs(inputs_dict)`` (e.g. fixed
latents for a VAE), ``model_tester.suppressed_token_ids`` (tokens never to generate, e.g. image placeholders, which
each need an image) and the class attribute ``generate_from_inputs_embeds``.
"""

from __future__ import annotations

import copy
import inspect
import tempfile

import torch
from transformers.testing_utils import torch_device

MAX_NEW_TOKENS = 3


class GenerationTesterMixin:
    model_tester = None
    all_generative_model_classes = ()
    # whether `generate(inputs_embeds=...)` is supported (decoder-only text models)
    generate_from_inputs_embeds = True
    # whether the forward pass returns attentions (and `generate` can therefore return them)
    generation_has_attentions = True

    # ------------------------------------------------------------------------------------------------- helpers

    def _generation_config_and_inputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "loss_weights")}
        if hasattr(self.model_tester, "generation_inputs"):
            inputs = self.model_tester.generation_inputs(inputs)
        return config, inputs

    def _generative_model(self, model_class, config):
        torch.manual_seed(0)
        model = model_class(copy.deepcopy(config)).to(torch_device).eval()
        # no early stop at an end-of-sequence token: every run below makes exactly MAX_NEW_TOKENS tokens
        model.generation_config.eos_token_id = None
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = 0
        return model

    def _suppressed(self):
        # tokens a tester forbids in generated text (e.g. image placeholders, which need an image each)
        return list(getattr(self.model_tester, "suppressed_token_ids", []))

    def _gen(self, model, inputs, **kwargs):
        if self._suppressed():
            kwargs.setdefault("suppress_tokens", self._suppressed())
        kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
        kwargs.setdefault("do_sample", False)
        with torch.no_grad():
            return model.generate(**inputs, **kwargs)

    @staticmethod
    def _sequences(out):
        return out if isinstance(out, torch.Tensor) else out.sequences

    def _forward_logits(self, model, inputs, input_ids):
        """Logits of a full forward pass (no cache) on ``input_ids`` with ``inputs``' other tensors."""
        step = dict(inputs)
        step["input_ids"] = input_ids
        if inputs.get("attention_mask") is not None:
            extra = input_ids.shape[1] - inputs["attention_mask"].shape[1]
            mask = inputs["attention_mask"]
            step["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], extra)], dim=1)
        with torch.no_grad():
            return model(**step, use_cache=False).logits

    def _for_each_generative_model(self):
        if not self.all_generative_model_classes:
            self.skipTest(reason="no model class of this type can generate")
        config, inputs = self._generation_config_and_inputs()
        for model_class in self.all_generative_model_classes:
            yield model_class, self._generative_model(model_class, config), inputs

    # --------------------------------------------------------------------------------------------------- tests

    def test_greedy_generate_matches_argmax_loop(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                out = self._gen(model, inputs)
                ids = inputs["input_ids"]
                expected = ids
                for _ in range(MAX_NEW_TOKENS):
                    logits = self._forward_logits(model, inputs, expected)[:, -1]
                    logits[:, self._suppressed()] = float("-inf")
                    expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
                self.assertEqual(out.shape, (ids.shape[0], ids.shape[1] + MAX_NEW_TOKENS))
                torch.testing.assert_close(out, expected, rtol=0, atol=0)

    def test_greedy_generate_cache_matches_no_cache(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                kw = {"return_dict_in_generate": True, "output_scores": True}
                with_cache = self._gen(model, inputs, use_cache=True, **kw)
                without = self._gen(model, inputs, use_cache=False, **kw)
                torch.testing.assert_close(with_cache.sequences, without.sequences, rtol=0, atol=0)
                self.assertEqual(len(with_cache.scores), MAX_NEW_TOKENS)
                for a, b in zip(with_cache.scores, without.scores):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    def test_generate_continue_from_cache(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                full = self._gen(model, inputs, max_new_tokens=MAX_NEW_TOKENS + 2)
                first = self._gen(model, inputs, return_dict_in_generate=True, use_cache=True)
                self.assertIsNotNone(first.cache, msg="generate returned no cache to continue from")
                cont_inputs = dict(inputs)
                # images are already encoded in the cache: continuing passes the text only (as with Llava)
                for key in ("pixel_values", "image_sizes"):
                    cont_inputs.pop(key, None)
                cont_inputs["input_ids"] = first.sequences
                if inputs.get("attention_mask") is not None:
                    mask = inputs["attention_mask"]
                    cont_inputs["attention_mask"] = torch.cat(
                        [mask, mask.new_ones(mask.shape[0], MAX_NEW_TOKENS)], dim=1
                    )
                second = self._gen(model, cont_inputs, cache=first.cache, max_new_tokens=2)
                torch.testing.assert_close(second, full, rtol=0, atol=0)

    def test_sample_generate(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                ids = inputs["input_ids"]
                torch.manual_seed(0)
                a = self._gen(model, inputs, do_sample=True, num_return_sequences=2, top_k=0, temperature=1.5)
                torch.manual_seed(0)
                b = self._gen(model, inputs, do_sample=True, num_return_sequences=2, top_k=0, temperature=1.5)
                self.assertEqual(a.shape, (2 * ids.shape[0], ids.shape[1] + MAX_NEW_TOKENS))
                torch.testing.assert_close(a, b, rtol=0, atol=0)
                torch.testing.assert_close(a[::2, : ids.shape[1]], ids, rtol=0, atol=0)
                self.assertTrue(bool((a >= 0).all() and (a < model.config.get_text_config().vocab_size).all()))
                # top_k=1 leaves one candidate per step: sampling is greedy decoding
                top1 = self._gen(model, inputs, do_sample=True, top_k=1)
                torch.testing.assert_close(top1, self._gen(model, inputs), rtol=0, atol=0)

    def test_beam_search_generate(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                ids = inputs["input_ids"]
                out = self._gen(
                    model,
                    inputs,
                    num_beams=2,
                    num_return_sequences=2,
                    length_penalty=0.0,
                    early_stopping=False,
                    return_dict_in_generate=True,
                    output_scores=True,
                )
                seqs = out.sequences
                self.assertEqual(seqs.shape, (2 * ids.shape[0], ids.shape[1] + MAX_NEW_TOKENS))
                # reference: the summed log-probabilities of each returned sequence, from one forward pass
                expanded = {
                    k: (
                        v.repeat_interleave(2, dim=0)
                        if isinstance(v, torch.Tensor) and v.shape[:1] == ids.shape[:1]
                        else v
                    )
                    for k, v in inputs.items()
                }
                logits = self._forward_logits(model, expanded, seqs)
                logp = torch.log_softmax(logits[:, ids.shape[1] - 1 : -1].float(), dim=-1)
                new = seqs[:, ids.shape[1] :]
                expected = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1).sum(-1)
                torch.testing.assert_close(out.sequences_scores, expected, rtol=1e-4, atol=1e-4)
                # the two beams of a prompt are distinct and ordered by score
                self.assertTrue(bool((out.sequences_scores[::2] >= out.sequences_scores[1::2] - 1e-6).all()))

    def test_left_padding_compatibility(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                ids = inputs["input_ids"]
                mask = inputs.get("attention_mask")
                mask = torch.ones_like(ids) if mask is None else mask
                accepts_positions = "position_ids" in inspect.signature(model.forward).parameters
                unpadded = dict(inputs, attention_mask=mask)
                if accepts_positions:
                    unpadded["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
                pad = torch.full((ids.shape[0], 2), model.generation_config.pad_token_id, dtype=ids.dtype)
                padded = dict(inputs, input_ids=torch.cat([pad, ids], 1))
                padded["attention_mask"] = torch.cat([torch.zeros_like(pad), mask], 1)
                if "latent_index" in padded:
                    padded["latent_index"] = torch.cat([torch.zeros_like(pad), padded["latent_index"]], 1)
                if accepts_positions:
                    padded["position_ids"] = (padded["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    ref = model(**unpadded, use_cache=False).logits[:, -1]
                    got = model(**padded, use_cache=False).logits[:, -1]
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

    def test_generate_from_inputs_embeds(self):
        if not self.generate_from_inputs_embeds:
            self.skipTest(reason="this model generates from token ids only (see docs/conformance.md)")
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                ids = inputs["input_ids"]
                from_ids = self._gen(model, inputs)
                embeds = dict(inputs)
                embeds.pop("input_ids")
                with torch.no_grad():
                    embeds["inputs_embeds"] = model.get_input_embeddings()(ids)
                from_embeds = self._gen(model, embeds)
                # decoder-only models return only the new tokens when the prompt is given as embeddings
                torch.testing.assert_close(from_embeds, from_ids[:, ids.shape[1] :], rtol=0, atol=0)

    def test_generate_dict_outputs(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                if self.generation_has_attentions:
                    model.set_attn_implementation("eager")  # SDPA kernels return no attention weights
                out = self._gen(
                    model,
                    inputs,
                    return_dict_in_generate=True,
                    output_scores=True,
                    output_logits=True,
                    output_hidden_states=True,
                    output_attentions=self.generation_has_attentions,
                )
                batch = inputs["input_ids"].shape[0]
                vocab = model.config.get_text_config().vocab_size
                self.assertEqual(len(out.scores), MAX_NEW_TOKENS)
                self.assertEqual(len(out.logits), MAX_NEW_TOKENS)
                for step_logits in out.logits:
                    self.assertEqual(step_logits.shape, (batch, vocab))
                # greedy: each new token is the argmax of its step's processed scores
                chosen = torch.stack([s.argmax(-1) for s in out.scores], dim=1)
                torch.testing.assert_close(chosen, out.sequences[:, -MAX_NEW_TOKENS:], rtol=0, atol=0)
                n_layers = model.config.get_text_config().num_hidden_layers
                self.assertEqual(len(out.hidden_states), MAX_NEW_TOKENS)
                for step in out.hidden_states:
                    self.assertEqual(len(step), n_layers + 1)
                if self.generation_has_attentions:
                    self.assertEqual(len(out.attentions), MAX_NEW_TOKENS)
                    for step in out.attentions:
                        self.assertEqual(len(step), n_layers)

    def test_generate_after_save_load(self):
        for model_class, model, inputs in self._for_each_generative_model():
            with self.subTest(model_class.__name__):
                before = self._gen(model, inputs)
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_pretrained(tmp)
                    reloaded = model_class.from_pretrained(tmp).to(torch_device).eval()
                reloaded.generation_config.eos_token_id = None
                reloaded.generation_config.pad_token_id = model.generation_config.pad_token_id
                torch.testing.assert_close(self._gen(reloaded, inputs), before, rtol=0, atol=0)
