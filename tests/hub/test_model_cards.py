"""Model and dataset cards: every family's template renders with its citation and honest reconstruction note."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_ext.hub import cards
from hf_ext.hub.cards import FAMILIES, HfExtModelCardMixin, create_dataset_card, create_model_card, template_path

REPO_MODEL_CARDS = Path(__file__).resolve().parents[2] / "model_cards"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_card_renders(family, tmp_path):
    info = FAMILIES[family]
    card = create_model_card(
        family,
        model_id="tester/model",
        base_model="tester/base",
        datasets=["tester/data"],
        training_config={"learning_rate": 1e-5, "beta": 0.1},
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.license == info.license
    assert loaded.data.base_model == ["tester/base"]
    assert loaded.data.datasets == ["tester/data"]
    assert set(info.tags) <= set(loaded.data.tags)
    assert f"arxiv.org/abs/{info.arxiv}" in loaded.text
    assert info.bibtex.splitlines()[0] in loaded.text
    assert '"learning_rate": 1e-05' in loaded.text
    assert ("Reconstructed method" in loaded.text) == (info.reconstructed is not None)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="known families"):
        create_model_card("nope", model_id="x")


def test_every_family_has_exactly_one_template_in_model_cards():
    # the wheel ships model_cards/*.md as hf_ext/model_cards/ (setup.py): a family without a file there cannot render
    assert sorted(p.stem for p in REPO_MODEL_CARDS.glob("*.md")) == sorted(FAMILIES)


def test_template_path_in_a_checkout_is_the_repository_file():
    # tests run from the checkout: hf_ext/model_cards/ does not exist, so the lookup falls back to <repo>/model_cards
    assert not (Path(cards.__file__).resolve().parents[1] / "model_cards").exists()
    for family in FAMILIES:
        assert template_path(family) == REPO_MODEL_CARDS / f"{family}.md"


def test_template_path_prefers_the_installed_package_folder(tmp_path, monkeypatch):
    package, checkout = tmp_path / "site-packages" / "hf_ext" / "model_cards", tmp_path / "checkout" / "model_cards"
    for folder in (package, checkout):
        folder.mkdir(parents=True)
        (folder / "rlhf_v.md").write_text(f"---\n---\n{folder.parent.name}\n")
    monkeypatch.setattr(cards, "_TEMPLATE_DIRS", (package, checkout))
    assert template_path("rlhf_v") == package / "rlhf_v.md"
    (package / "rlhf_v.md").unlink()
    assert template_path("rlhf_v") == checkout / "rlhf_v.md"
    card = create_model_card("rlhf_v", model_id="tester/model")
    assert "checkout" in card.text  # rendered from the file found, not from a copy elsewhere


def test_missing_template_names_the_file_and_the_folders_searched(tmp_path, monkeypatch):
    folders = (tmp_path / "installed", tmp_path / "checkout")
    monkeypatch.setattr(cards, "_TEMPLATE_DIRS", folders)
    with pytest.raises(FileNotFoundError) as excinfo:
        create_model_card("muffin", model_id="tester/model")
    message = str(excinfo.value)
    assert "muffin.md" in message
    assert all(str(folder) in message for folder in folders)


def test_dataset_card():
    card = create_dataset_card(
        pretty_name="RLHF-V (converted)",
        builder="rlhf_v",
        source="openbmb/RLHF-V-Dataset",
        num_rows={"train": 12},
        features="prompt, chosen, rejected, images",
        license="cc-by-nc-4.0",
        bad_rows="1 skipped (idx=3: invalid JSON)",
    )
    assert card.data.license == "cc-by-nc-4.0"
    assert card.data.size_categories == ["n<1K"]
    assert "| train | 12 |" in card.text and "idx=3" in card.text
    assert "[More Information Needed]" in card.text  # unknown facts are not guessed


def test_trainer_mixin_writes_hf_ext_card(tmp_path):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class CardTrainer(HfExtModelCardMixin, Trainer):
        _hf_ext_card_family = "care"

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[1, 2, 3, 4]] * 4})
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    trainer = CardTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "2211.07164" in card.text and "Reconstructed method" in card.text
    assert "care" in card.data.tags


def test_trainer_mixin_falls_back_to_the_library_card_for_non_hf_ext_models(tmp_path):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class CardTrainer(HfExtModelCardMixin, Trainer):
        pass  # no family: inferred from the model type, and a GPT-2 is not an hf_ext model

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 2, "labels": [[1, 2, 3, 4]] * 2})
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, report_to=[], use_cpu=True)
    trainer = CardTrainer(model=model, args=args, train_dataset=data)
    trainer.create_model_card(tags=["my-tag"])
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "my-tag" in card.data.tags
    assert "arxiv.org/abs" not in card.text  # transformers' own card, not an hf_ext family card
