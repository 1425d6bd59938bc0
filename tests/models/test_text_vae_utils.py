"""The text-VAE helpers DELLA and TRACE share: the masked (TRACE) bookkeeping against hand-computed values (DELLA's
unmasked path is pinned by tests/models/della, including its golden fixtures)."""

import math
from types import SimpleNamespace

import pytest
import torch

from hf_ext.models.text_vae_utils import check_text_inputs, kl_loss_with_free_bits, latent_kl_terms


def test_latent_kl_terms_masks_missing_segments_by_hand():
    # two rows, two segment latents of size 1; row 0 has one segment. Standard-normal prior, unit posterior variance,
    # latents at the posterior means: KL = m^2 / 2, log p(z) = -(log 2pi + z^2) / 2, log q(z) = -(log 2pi) / 2.
    mean = torch.tensor([[[1.0], [1.0]], [[2.0], [0.0]]])
    zeros = torch.zeros_like(mean)
    lo = SimpleNamespace(
        latents=mean, prior_mean=zeros, prior_logvar=zeros, posterior_mean=mean, posterior_logvar=zeros
    )
    valid = torch.tensor([[True, False], [True, True]])
    log2pi = math.log(2 * math.pi)
    out = latent_kl_terms(lo, "sum", valid)
    torch.testing.assert_close(out["kl_per_group"], torch.tensor([[0.5, 0.0], [2.0, 0.0]]))
    torch.testing.assert_close(out["kl"], torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out["log_prior"], torch.tensor([-(log2pi + 1) / 2, -log2pi - 2]))
    torch.testing.assert_close(out["log_posterior"], torch.tensor([-log2pi / 2, -log2pi]))
    torch.testing.assert_close(latent_kl_terms(lo, "mean", valid)["kl"], torch.tensor([0.5, 1.0]))
    # no mask: every group counts (row 0's second latent too)
    torch.testing.assert_close(latent_kl_terms(lo, "sum")["kl"], torch.tensor([1.0, 2.0]))


def test_kl_loss_with_free_bits_masked_by_hand():
    kl = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # row 0 has no second segment (its KL is already 0)
    valid = torch.tensor([[1, 0], [1, 1]])
    assert kl_loss_with_free_bits(kl, "sum", 0.0, valid=valid).item() == pytest.approx((1 + 5) / 2)
    assert kl_loss_with_free_bits(kl, "mean", 0.0, valid=valid).item() == pytest.approx((1 / 1 + 5 / 2) / 2)
    # free bits per segment: batch means over the rows that have it, [4/2, 2/1]
    assert kl_loss_with_free_bits(kl, "sum", 1.5, valid=valid).item() == pytest.approx(2 + 2)
    assert kl_loss_with_free_bits(kl, "sum", 2.5, valid=valid).item() == pytest.approx(2.5 + 2.5)
    assert kl_loss_with_free_bits(kl, "mean", 2.5, valid=valid).item() == pytest.approx(2.5)
    # a segment no row has counts for nothing, not even its free bits
    only_first = torch.tensor([[1, 0], [1, 0]])
    kl_first = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert kl_loss_with_free_bits(kl_first, "sum", 1.0, valid=only_first).item() == pytest.approx(2.0)
    assert kl_loss_with_free_bits(kl_first, "mean", 1.0, valid=only_first).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="free_bits_reduction='batch'"):
        kl_loss_with_free_bits(kl, "sum", 1.0, "sample", valid=valid)


def test_check_text_inputs_names_the_caller():
    with pytest.raises(ValueError, match="my_encode needs `input_ids`"):
        check_text_inputs(None, None, "my_encode")
    with pytest.raises(ValueError, match=r"seq >= 1, got \(2, 0\)"):
        check_text_inputs(torch.zeros(2, 0, dtype=torch.long), None, "x")
    with pytest.raises(ValueError, match=r"my_encode: rows \[1\] of `attention_mask` are all zeros"):
        check_text_inputs(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]), "my_encode")
    check_text_inputs(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 0, 0]]), "ok")
