"""VisCPM-Chat: defaults, mlp2 projector, MPM stage freezing, stage-1 training with TRL's SFTTrainer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _cpu_training import cpu_training_args
from datasets import Dataset
from PIL import Image

import hf_ext  # noqa: F401
from hf_ext.models.viscpm_chat import VisCPMChatConfig, VisCPMChatForConditionalGeneration, prepare_mpm_stage
from hf_ext.testing import tiny_muffin


def _img(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def test_defaults():
    c = VisCPMChatConfig()
    assert (c.model_type, c.projector_type, c.num_query) == ("viscpm_chat", "mlp2", 64)
    assert c.vision_config.image_size == 224 and c.vision_config.hidden_size == 1024
    assert c.text_config.model_type == "qwen2" and c.text_config.hidden_size == 4096
    from transformers import AutoConfig

    assert type(AutoConfig.for_model("viscpm_chat")).__name__ == "VisCPMChatConfig"


def test_mlp2_projector_matches_formula():
    model, processor = tiny_muffin(model_type="viscpm_chat")
    assert isinstance(model, VisCPMChatForConditionalGeneration)
    proj = model.model.multi_modal_projector
    x = torch.randn(3, 32)
    expected = F.linear(
        F.gelu(F.linear(x, proj.linear_1.weight, proj.linear_1.bias)), proj.linear_2.weight, proj.linear_2.bias
    )
    torch.testing.assert_close(proj(x), expected)
    feats = model.get_image_features(processor.image_processor([_img()], return_tensors="pt")["pixel_values"])
    assert feats.pooler_output[0].shape == (model.config.num_query, model.config.text_config.hidden_size)


def test_prepare_mpm_stage():
    model, _ = tiny_muffin(model_type="viscpm_chat")
    total = sum(p.numel() for p in model.parameters())
    llm = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("model.language_model.", "lm_head.")))
    counts = prepare_mpm_stage(model, 1)
    assert counts == {"trainable": total - llm, "frozen": llm}
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith(("model.language_model.", "lm_head."))), n
    counts = prepare_mpm_stage(model, 1, freeze_patch_embed=True, freeze_vision_experts=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.vision_tower.embeddings.patch_embed.weight" not in trainable
    assert "model.vision_tower.layers.0.vision_expert.fc1.weight" not in trainable
    assert "model.vision_tower.layers.0.language_expert.fc1.weight" in trainable and "model.query" in trainable
    assert prepare_mpm_stage(model, 2) == {"trainable": total, "frozen": 0}
    with pytest.raises(ValueError, match="stage must be 1"):
        prepare_mpm_stage(model, 3)


def test_stage1_sft_trainer_freezes_llm_and_loss_matches(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model, processor = tiny_muffin(model_type="viscpm_chat")
    prepare_mpm_stage(model, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [
        {
            "images": [_img(i)],
            "messages": [
                {"role": "user", "content": "Describe the image briefly."},
                {"role": "assistant", "content": "a red square ."},
            ],
        }
        for i in range(2)
    ]
    args = SFTConfig(
        **cpu_training_args(tmp_path, per_device_train_batch_size=1, max_steps=1, learning_rate=1e-2),
        assistant_only_loss=True,
        max_length=None,
        shuffle_dataset=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    # the loss covers exactly Muffin's target: the assistant turn with its header and the final "###"
    target_ids = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(target_ids) == "### Assistant: a red square .\n###"
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    manual = F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100).item()
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(manual, rel=1e-4)
    params = dict(model.named_parameters())
    for n, p in params.items():
        if n.startswith(("model.language_model.", "lm_head.")):
            assert torch.equal(p, before[n]), n
    for n in (
        "model.query",
        "model.multi_modal_projector.linear_2.weight",
        "model.vision_tower.layers.1.language_expert.fc2.weight",
    ):
        assert not torch.equal(params[n], before[n]), n
