"""`clone_model`: a copy of a model TRL patched in-process runs its own weights."""

import copy
import types

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

from hf_ext.utils.copying import clone_model


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config).eval()


def _own_logits(model, ids):
    """The logits of ``model``'s own weights, computed without its (possibly patched) top-level forward."""
    return model.lm_head(model.model(input_ids=ids).last_hidden_state)


@torch.no_grad()
def test_clone_of_a_trl_patched_model_runs_its_own_weights():
    model = _tiny_llama()
    add_fused_lm_head(model)  # what every TRL trainer does to the model it trains
    ids = torch.randint(0, 64, (2, 7))
    before = model(input_ids=ids).logits.clone()

    clone = clone_model(model)
    clone.lm_head.weight.add_(torch.randn_like(clone.lm_head.weight))
    got = clone(input_ids=ids).logits
    torch.testing.assert_close(got, _own_logits(clone, ids))
    assert not torch.allclose(got, before)
    torch.testing.assert_close(model(input_ids=ids).logits, before)  # the original is untouched

    # the fused path works on the clone once a trainer patches it again: log-probs of its own weights
    add_fused_lm_head(clone)
    log_probs = clone(input_ids=ids, labels=ids, fused_lm_head=True).log_probs
    expected = torch.log_softmax(_own_logits(clone, ids)[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected)


@torch.no_grad()
def test_plain_deepcopy_is_what_clone_model_fixes():
    """The failure mode: a deep copy of a TRL-patched model keeps calling the original's forward (if TRL's patch
    becomes copy-safe, this documents that `clone_model` is then equal to `copy.deepcopy`)."""
    model = _tiny_llama()
    add_fused_lm_head(model)
    ids = torch.randint(0, 64, (1, 5))
    plain = copy.deepcopy(model)
    plain.lm_head.weight.zero_()
    stale = torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits)
    clone = clone_model(model)
    clone.lm_head.weight.zero_()
    assert torch.count_nonzero(clone(input_ids=ids).logits) == 0
    assert stale or torch.count_nonzero(plain(input_ids=ids).logits) == 0


def test_patches_that_refer_to_the_copy_itself_are_kept():
    model = _tiny_llama()

    def forward(self, *args, **kwargs):  # no closure over another module
        return "patched"

    model.forward = types.MethodType(forward, model)
    clone = clone_model(model)
    assert "forward" in vars(clone) and clone.forward() == "patched"
    assert clone.forward.__self__ is clone
