"""Convert the bridge of an original VisCPM-Chat checkpoint (`openbmb/VisCPM-Chat` `pytorch_model.bin`: `vpm.*`,
`query`, `mapping.*`, `llm.*`) into an hf_ext `VisCPMChatForConditionalGeneration` on a transformers LLM.

    python -m hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf \
        --checkpoint VisCPM-Chat/pytorch_model.bin --text_model path/to/hf-llm --output_dir viscpm-chat-hf

CPM-Bee (`llm.*`) is not a transformers model, so its weights are dropped (and reported); the LLM weights and
tokenizer come from `--text_model` (any causal LM whose hidden size equals the projector output, 4096 for the
released bridge). The result is an MPM stage-1 starting point: run `examples/viscpm_chat/mpm_stage1.py` to align the
bridge to the new LLM, then stage 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers.utils import logging

from ..muffin.convert_muffin_original_to_hf import (
    _check_against_model,
    _fill_tolerated,
    convert_viscpm_chat_state_dict,
    infer_beit3_sizes,
    load_original_state_dict,
    save_converted,
)

logger = logging.get_logger(__name__)


def convert_viscpm_chat_checkpoint(
    checkpoint: str | Path,
    text_model: str | Path,
    output_dir: str | Path,
    image_size: int = 224,
    vision_num_attention_heads: int | None = None,
) -> dict:
    """Convert `checkpoint` (file or folder) + the transformers LLM at `text_model` into `output_dir`.

    `vision_num_attention_heads` (BEiT-3's head count, stored in no original file) is inferred for BEiT-3 Base/Large
    (768 -> 12, 1024 -> 16, the released bridge is Large) and required for any other size."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..muffin.image_processing_muffin import MuffinImageProcessor
    from ..muffin.processing_muffin import MuffinProcessor, add_muffin_image_tokens
    from .configuration_viscpm_chat import VisCPMChatConfig
    from .modeling_viscpm_chat import VisCPMChatForConditionalGeneration

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    else:
        state = load_original_state_dict(checkpoint)
    bridge, dropped = convert_viscpm_chat_state_dict(state)
    if "model.multi_modal_projector.linear_2.weight" not in bridge:
        raise ValueError(f"{checkpoint} has no `mapping.2.weight`: not a VisCPM-Chat checkpoint.")

    tokenizer = AutoTokenizer.from_pretrained(str(text_model))
    added = add_muffin_image_tokens(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(str(text_model), dtype=torch.float32)
    if added:
        llm.resize_token_embeddings(len(tokenizer))
    text_config = AutoConfig.from_pretrained(str(text_model)).to_dict()
    text_config["vocab_size"] = len(tokenizer)
    proj_out = bridge["model.multi_modal_projector.linear_2.weight"].shape[0]
    if proj_out != text_config.get("hidden_size"):
        raise ValueError(
            f"The VisCPM-Chat projector outputs {proj_out} features but {text_model} has hidden_size "
            f"{text_config.get('hidden_size')}; pick an LLM with hidden_size {proj_out}."
        )
    vocab = tokenizer.get_vocab()
    config = VisCPMChatConfig(
        vision_config={"image_size": image_size, **infer_beit3_sizes(bridge, vision_num_attention_heads)},
        text_config=text_config,
        num_query=bridge["model.query"].shape[0],
        projector_type="mlp2",
        projector_hidden_size=bridge["model.multi_modal_projector.linear_1.weight"].shape[0],
        image_token_id=vocab["<im_patch>"],
        image_start_token_id=vocab["<im_start>"],
        image_end_token_id=vocab["<im_end>"],
        pad_token_id=tokenizer.pad_token_id,
    )
    filled = _fill_tolerated(bridge, config)
    converted = dict(bridge)
    for k, v in llm.state_dict().items():
        if k.startswith("lm_head."):
            converted[k] = v
        else:
            base = llm.base_model_prefix + "."
            converted["model.language_model." + (k[len(base) :] if k.startswith(base) else k)] = v
    _check_against_model(converted, config, VisCPMChatForConditionalGeneration)
    save_converted(converted, config, output_dir)
    MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query=config.num_query,
    ).save_pretrained(str(output_dir))
    logger.warning("Dropped %d CPM-Bee/unused tensors; initialised %s", len(dropped), filled)
    return {"converted": len(converted), "dropped": dropped, "initialised": filled}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Original VisCPM-Chat .bin/.pt file or folder.")
    parser.add_argument("--text_model", required=True, help="transformers causal LM folder or Hub id (the pivot).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--vision_num_attention_heads", type=int, default=None, help="Inferred for BEiT-3 Base/Large.")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    convert_viscpm_chat_checkpoint(
        args.checkpoint, args.text_model, args.output_dir, args.image_size, args.vision_num_attention_heads
    )


if __name__ == "__main__":
    main()
