"""DenseDPOTrainer's training chat template: the choice (`DenseDPOConfig.chat_template`, the processor's
`training_chat_template`, per-row `chat_template_kwargs`) and the refusal of templates TRL would mis-split.

TRL renders a prompt with `add_generation_prompt=True` and keeps its common prefix with prompt + completion as the
prompt. Muffin's default template (`muffin_original`) renders a generation prompt in the *evaluation* layout, so TRL
would keep only the system line as the prompt. The expected token layouts below are written by hand from the v0
training format of the original code (`train_utils._add_speaker_and_signal`:
`"{system}\\n\\n### Human: <image>\\n{q}\\n### Assistant: {a}\\n### "`)."""

import copy

import numpy as np
import pytest
from _dense_dpo_helpers import base_args
from datasets import Dataset
from PIL import Image

from hf_ext import DenseDPOConfig, DenseDPOTrainer
from hf_ext.models.muffin.processing_muffin import DEFAULT_SYSTEM_PROMPT as SYSTEM
from hf_ext.testing import tiny_bpe_tokenizer, tiny_gpt2, tiny_muffin

PROMPT, CHOSEN, REJECTED = "what is in the image ?", "a red square .", "a blue circle ."


def _image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _vision_rows(n=2, **extra):
    row = {
        "images": [_image()],
        "prompt": [{"role": "user", "content": PROMPT}],
        "chosen": [{"role": "assistant", "content": CHOSEN}],
        "rejected": [{"role": "assistant", "content": REJECTED}],
        **extra,
    }
    return Dataset.from_list([row] * n)


def _muffin_trainer(tmp_path, dataset, processor=None, **config):
    model, default_processor = tiny_muffin()
    args = DenseDPOConfig(**base_args(tmp_path, per_device_train_batch_size=1, max_length=None, **config))
    return DenseDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=dataset,
        processing_class=processor or default_processor,
    )


def _layout(trainer, processor):
    """(prompt ids, chosen completion ids) of the first row as the trainer's collator builds them."""
    batch = trainer.data_collator([dict(trainer.train_dataset[0])])
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    completion = batch["completion_mask"][0][batch["attention_mask"][0].bool()].bool().tolist()
    n_prompt = completion.index(True)
    assert all(completion[n_prompt:])
    return ids[:n_prompt], ids[n_prompt:]


def _expected(processor, prompt_text, completion_text):
    block = "<im_start>" + "<im_patch>" * processor.num_query + "<im_end>"
    tok = processor.tokenizer
    prompt = tok(prompt_text.replace("<image>", block), add_special_tokens=False)["input_ids"]
    completion = tok(completion_text, add_special_tokens=False)["input_ids"]
    return prompt, completion


V0_PROMPT = f"{SYSTEM}\n\n### Human: <image>\n{PROMPT}\n### Assistant:"


def test_default_muffin_processor_trains_in_the_v0_training_format(tmp_path):
    """The RLHF-V setting: a converted Muffin (default template `muffin_original`) trains with its
    `training_chat_template` (`muffin_v0`) without any option; the caller's processor is untouched."""
    _, processor = tiny_muffin()
    assert processor.training_chat_template == "muffin_v0"
    templates_before = copy.deepcopy(processor.chat_template)
    trainer = _muffin_trainer(tmp_path, _vision_rows(), processor=processor)
    assert trainer.args.chat_template is None  # the config is not rewritten either
    assert _layout(trainer, processor) == _expected(processor, V0_PROMPT, f" {CHOSEN}\n### ")
    assert processor.chat_template == templates_before
    # the evaluation prompt (what generation uses) is still the default
    eval_prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
    )
    assert eval_prompt == f"{SYSTEM}\n###Human: {PROMPT}\n<image>\n###"


def test_config_chat_template_selects_another_format(tmp_path):
    trainer = _muffin_trainer(tmp_path, _vision_rows(), chat_template="hf_ext_v1")
    processor = trainer.processing_class
    # hf_ext_v1: the v0 layout ending with "###" (no trailing space)
    assert _layout(trainer, processor) == _expected(processor, V0_PROMPT, f" {CHOSEN}\n###")


def test_row_chat_template_kwargs_win_over_the_config(tmp_path):
    rows = _vision_rows(chat_template_kwargs={"chat_template": "muffin_v0"})
    trainer = _muffin_trainer(tmp_path, rows, chat_template="hf_ext_v1")
    processor = trainer.processing_class
    assert _layout(trainer, processor) == _expected(processor, V0_PROMPT, f" {CHOSEN}\n### ")


def test_evaluation_template_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError) as info:
        _muffin_trainer(tmp_path, _vision_rows(), chat_template="muffin_original")
    message = str(info.value)
    assert "train dataset, row 0" in message
    assert "'muffin_original'" in message
    assert "chat_template=NAME" in message and "--chat_template NAME" in message
    assert "'muffin_v0'" in message and "'hf_ext_v1'" in message  # the processor's templates that work here
    assert "'muffin_eval'" in message  # the evaluation format throughout is prefix-consistent too


def test_processor_without_a_training_template_is_refused(tmp_path):
    """A processor whose only template is the original formats (no named training template): the check, not a
    TRL error deep in the collator."""
    from hf_ext.models.muffin.processing_muffin import MUFFIN_ORIGINAL_CHAT_TEMPLATE

    _, processor = tiny_muffin(chat_template=MUFFIN_ORIGINAL_CHAT_TEMPLATE)
    assert processor.training_chat_template is None
    with pytest.raises(ValueError, match="default chat template of the MuffinProcessor does not render the prompt"):
        _muffin_trainer(tmp_path, _vision_rows(), processor=processor)


def test_eval_dataset_is_checked_too(tmp_path):
    bad_eval = _vision_rows(chat_template_kwargs={"chat_template": "muffin_original"})
    model, processor = tiny_muffin()
    with pytest.raises(ValueError, match="eval dataset, row 0"):
        DenseDPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=DenseDPOConfig(**base_args(tmp_path, max_length=None)),
            train_dataset=_vision_rows(),
            eval_dataset=bad_eval,
            processing_class=processor,
        )


def test_unknown_template_name(tmp_path):
    with pytest.raises(ValueError, match="muffin_v9'` is neither a Jinja template nor a template name"):
        _muffin_trainer(tmp_path, _vision_rows(), chat_template="muffin_v9")


# ----------------------------------------------------------------------------- text datasets (tokenizer templates)

SPLIT_TEMPLATE = (  # the generation prompt is another layout: TRL would keep nothing of the prompt
    "{% if add_generation_prompt %}Q {{ messages[0]['content'] }} A:"
    "{% else %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% endif %}"
)
PREFIX_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
THINK_TEMPLATE = (  # DeepSeek-R1 style: the generation prompt adds a token the full rendering lacks (TRL tolerates it)
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: <think>{% endif %}"
)


def _text_trainer(tmp_path, template, extra=None, **config):
    tokenizer = tiny_bpe_tokenizer()
    tokenizer.chat_template = template
    rows = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "describe the image ."}],
                "chosen": [{"role": "assistant", "content": "a red circle is on the left ."}],
                "rejected": [{"role": "assistant", "content": "a blue circle is on the left ."}],
                **(extra or {}),
            }
        ]
        * 2
    )
    model = tiny_gpt2(tokenizer)
    return DenseDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=DenseDPOConfig(**base_args(tmp_path, **config)),
        train_dataset=rows,
        processing_class=tokenizer,
    )


def test_text_dataset_with_a_mis_splitting_template_is_refused(tmp_path):
    with pytest.raises(ValueError, match="the default chat template of the .* does not render the prompt as a prefix"):
        _text_trainer(tmp_path, SPLIT_TEMPLATE)


def test_text_dataset_with_a_jinja_template_in_the_config(tmp_path):
    trainer = _text_trainer(tmp_path, SPLIT_TEMPLATE, chat_template=PREFIX_TEMPLATE)
    tok = trainer.processing_class
    assert tok.chat_template == SPLIT_TEMPLATE  # not modified
    row = trainer.train_dataset[0]
    prompt = tok("user: describe the image .\nassistant:", add_special_tokens=False)["input_ids"]
    full = tok("user: describe the image .\nassistant: a red circle is on the left .\n", add_special_tokens=False)
    assert row["prompt_ids"] == prompt
    assert row["prompt_ids"] + row["chosen_ids"] == full["input_ids"]


def test_generation_prompt_variants_tolerated_by_trl_still_train(tmp_path):
    trainer = _text_trainer(tmp_path, THINK_TEMPLATE)
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    full = tok("user: describe the image .\nassistant: a red circle is on the left .\n", add_special_tokens=False)
    assert row["prompt_ids"] + row["chosen_ids"] == full["input_ids"]
    assert tok.decode(row["chosen_ids"]).strip() == "a red circle is on the left ."


def test_cli_flag():
    from hf_ext.cli import make_dense_dpo_parser

    parser = make_dense_dpo_parser()
    _, training_args, _ = parser.parse_args_and_config(
        args=["--model_name_or_path", "m", "--output_dir", "out", "--chat_template", "muffin_v0", "--use_cpu"]
    )
    assert training_args.chat_template == "muffin_v0"


def test_processor_training_template_attribute(tmp_path):
    from hf_ext.models.muffin import MuffinProcessor

    assert tiny_muffin(chat_template="muffin_original")[1].training_chat_template == "muffin_v0"
    assert tiny_muffin(chat_template="hf_ext_v1")[1].training_chat_template is None  # its default trains as is
    _, processor = tiny_muffin()
    processor.save_pretrained(tmp_path)
    assert MuffinProcessor.from_pretrained(tmp_path).training_chat_template == "muffin_v0"
    with pytest.raises(ValueError, match="training_chat_template='v0' is not one of the processor's chat templates"):
        MuffinProcessor(
            image_processor=processor.image_processor,
            tokenizer=processor.tokenizer,
            num_query=processor.num_query,
            training_chat_template="v0",
        )


def test_explicit_segments_follow_the_training_template(tmp_path):
    """Character spans are mapped to tokens in the row's training template (the collator renders as TRL does)."""
    rows = _vision_rows(chosen_segments=[[2, 5]], rejected_segments=[[2, 6]])  # "red" / "blue"
    trainer = _muffin_trainer(tmp_path, rows)
    batch = trainer.data_collator([dict(trainer.train_dataset[0])])
    tok = trainer.processing_class.tokenizer
    for row, word in ((0, "red"), (1, "blue")):
        flagged = batch["input_ids"][row][batch["corrected_mask"][row]].tolist()
        assert tok.decode(flagged).strip() == word


def test_text_segments_follow_the_config_template(tmp_path):
    extra = {"chosen_segments": [[2, 5]], "rejected_segments": [[2, 6]]}  # "red" / "blue"
    trainer = _text_trainer(tmp_path, SPLIT_TEMPLATE, extra=extra, chat_template=PREFIX_TEMPLATE)
    batch = trainer.data_collator([dict(trainer.train_dataset[0])])
    tok = trainer.processing_class
    for row, word in ((0, "red"), (1, "blue")):
        flagged = batch["input_ids"][row][batch["corrected_mask"][row]].tolist()
        assert tok.decode(flagged).strip() == word
