"""Dense DPO: bad values and broken caches fail loudly (regressions of silent failures found in review)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _dense_dpo_helpers import base_args, perturbed, text_dataset
from safetensors import safe_open
from safetensors.torch import save_file

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2
from hf_ext.trainers.dense_dpo import DataCollatorForDensePreference, correction_weights
from hf_ext.trainers.dense_dpo.ref_logps_cache import load_ref_cache, save_ref_cache


def _config(tmp_path, **kwargs):
    return DenseDPOConfig(**base_args(tmp_path), **kwargs)


# ---------------------------------------------------------------- γ


@pytest.mark.parametrize("gamma", [math.inf, -math.inf, math.nan, 0.0, -1.0])
def test_gamma_not_a_finite_positive_number(tmp_path, gamma):
    with pytest.raises(ValueError, match="dense_gamma.*finite number > 0"):
        _config(tmp_path, dense_gamma=gamma)


@pytest.mark.parametrize("gamma", ["1.1", None, True, [1.1]])
def test_gamma_not_a_number(tmp_path, gamma):
    with pytest.raises(TypeError, match="dense_gamma.*must be a real number"):
        _config(tmp_path, dense_gamma=gamma)


def test_gamma_set_to_inf_after_construction_is_an_error_not_a_nan_loss(tmp_path):
    # before: inf turned the weights into NaN while the logged loss read 0.0
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    trainer = DenseDPOTrainer(
        model=model,
        ref_model=perturbed(model),
        args=_config(tmp_path),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.args.dense_gamma = math.inf
    with pytest.raises(ValueError, match="dense_gamma.*finite"):
        trainer.compute_loss(trainer.model, dict(batch))
    with pytest.raises(ValueError, match="gamma"):
        correction_weights([1, 2], [1, 3], gamma=math.nan)


def test_other_bad_numbers(tmp_path):
    with pytest.raises(ValueError, match="sft_weight"):
        _config(tmp_path, sft_weight=math.inf)
    with pytest.raises(TypeError, match="dense_min_match"):
        _config(tmp_path, dense_min_match=2.5)


# ---------------------------------------------------------------- spans


@pytest.mark.parametrize(
    ("chosen_segments", "error", "match"),
    [
        ("[[4, 9]]", TypeError, r"row 0.*chosen_segments.*string.*json.loads"),
        ([[4, 4]], ValueError, r"row 0.*chosen_segments.*\[4, 4\] is empty"),
        ([[4.0, 9.0]], TypeError, r"row 0.*chosen_segments.*integers"),
        ([[9, 4]], ValueError, r"row 0.*chosen_segments.*outside"),
        ([[4, 9, 11]], ValueError, r"row 0.*chosen_segments.*\[start, end\] pair"),
    ],
    ids=["string", "empty", "float", "reversed", "triple"],
)
def test_bad_spans(tmp_path, chosen_segments, error, match):
    tok = tiny_bpe_tokenizer()
    rows = [("describe the image .", "the green triangle is in the middle .", "the red triangle is in the middle .")]
    ds = text_dataset(rows, chosen_segments=[chosen_segments], rejected_segments=[[[4, 7]]])
    with pytest.raises(error, match=match):
        DenseDPOTrainer(
            model=tiny_gpt2(tok),
            ref_model=tiny_gpt2(tok),
            args=_config(tmp_path),
            train_dataset=ds,
            processing_class=tok,
        )


def test_empty_span_list_means_nothing_corrected(tmp_path):
    tok = tiny_bpe_tokenizer()
    rows = [("describe the image .", "the green triangle is in the middle .", "the red triangle is in the middle .")]
    ds = text_dataset(rows, chosen_segments=[[]], rejected_segments=[[[4, 7]]])
    trainer = DenseDPOTrainer(
        model=tiny_gpt2(tok), ref_model=tiny_gpt2(tok), args=_config(tmp_path), train_dataset=ds, processing_class=tok
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert not batch["corrected_mask"][0].any()  # explicit [] beats the diff (which would flag "green")
    assert tok.decode(batch["input_ids"][1][batch["corrected_mask"][1]]).strip() == "red"


# ---------------------------------------------------------------- args and collator


def test_args_are_not_mutated(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    args = _config(
        tmp_path,
        precompute_ref_log_probs=True,
        ld_alpha=0.5,
        use_weighting=True,
        ref_logps_cache_dir=str(tmp_path / "cache"),
    )
    before = copy.deepcopy(args.to_dict())
    trainer = DenseDPOTrainer(model=model, args=args, train_dataset=text_dataset(), processing_class=tok)
    assert args.to_dict() == before
    assert args.precompute_ref_log_probs is True and args.ld_alpha == 0.5
    assert trainer.args is not args and trainer.args.precompute_ref_log_probs is True


def test_collator_diff_options_must_match_args(tmp_path):
    tok = tiny_bpe_tokenizer()
    collator = DataCollatorForDensePreference(pad_token_id=tok.pad_token_id, min_match=2)
    with pytest.raises(ValueError, match=r"min_match=2.*dense_min_match=3"):
        DenseDPOTrainer(
            model=tiny_gpt2(tok),
            ref_model=tiny_gpt2(tok),
            args=_config(tmp_path),
            data_collator=collator,
            train_dataset=text_dataset(),
            processing_class=tok,
        )
    with pytest.raises(TypeError, match="gamma"):  # γ lives in the config only
        DataCollatorForDensePreference(pad_token_id=0, gamma=5.0)


# ---------------------------------------------------------------- reference cache


def _precomputed_trainer(tmp_path, cache, model, tok):
    return DenseDPOTrainer(
        model=copy.deepcopy(model),
        args=_config(tmp_path, precompute_ref_log_probs=True, ref_logps_cache_dir=str(cache)),
        train_dataset=text_dataset(),
        processing_class=tok,
    )


def test_truncated_cache_is_a_clear_error(tmp_path):
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    cache = tmp_path / "cache"
    _precomputed_trainer(tmp_path / "a", cache, model, tok)
    (path,) = cache.glob("train-*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match=rf"{path}.*truncated or corrupt.*Delete this file"):
        _precomputed_trainer(tmp_path / "b", cache, model, tok)
    path.write_bytes(data[:5])  # not even a header
    with pytest.raises(ValueError, match=rf"{path}.*truncated or corrupt"):
        _precomputed_trainer(tmp_path / "c", cache, model, tok)


def test_tampered_cache_is_not_used(tmp_path):
    # before: a valid safetensors file with edited values was used silently (loss 0.69 -> 2e-6)
    tok = tiny_bpe_tokenizer()
    model = tiny_gpt2(tok)
    cache = tmp_path / "cache"
    first = _precomputed_trainer(tmp_path / "a", cache, model, tok)
    batch = first.data_collator([first.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        assert first.compute_loss(first.model, dict(batch)).item() == pytest.approx(math.log(2), abs=1e-6)
    (path,) = cache.glob("train-*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["rejected_values"] = tensors["rejected_values"] - 30.0
    save_file(tensors, str(path), metadata=metadata)  # a valid file, same metadata, other content
    with pytest.raises(ValueError, match=rf"{path}.*integrity check.*modified.*Delete this file"):
        _precomputed_trainer(tmp_path / "b", cache, model, tok)

    # deleting the file, as the message says, recomputes it
    path.unlink()
    again = _precomputed_trainer(tmp_path / "c", cache, model, tok)
    assert path.exists()
    with torch.no_grad():
        assert again.compute_loss(again.model, dict(batch)).item() == pytest.approx(math.log(2), abs=1e-6)


def test_cache_round_trip_and_row_count(tmp_path):
    path = tmp_path / "c.safetensors"
    rows = [([-1.0, -2.5], [-0.5]), ([], [-3.0, -4.0, -5.0])]
    save_ref_cache(path, rows, "train")
    columns = load_ref_cache(path, 2, "train")
    assert columns == {
        "ref_chosen_token_logps": [[-1.0, -2.5], []],
        "ref_rejected_token_logps": [[-0.5], [-3.0, -4.0, -5.0]],
    }
    with pytest.raises(ValueError, match=rf"{path}.*holds 2 rows but the train dataset has 3.*Delete"):
        load_ref_cache(path, 3, "train")
