"""Convert the bridge of an original VisCPM-Chat checkpoint (`openbmb/VisCPM-Chat` `pytorch_model.bin`: `vpm.*`,
`query`, `mapping.*`, `llm.*`) into an hf_ext `VisCPMChatForConditionalGeneration` on a transformers LLM.

    python -m hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf \
        --checkpoint VisCPM-Chat/pytorch_model.bin --text_model path/to/hf-llm --output_dir viscpm-chat-hf

Two modes:

* **the released model, on CPM-Bee** (`--vocab` + `--llm_config`): `llm.*` is kept and becomes the `cpmbee` language
  model of a full `viscpm_chat` checkpoint (loads as [`VisCPMChatBeeForConditionalGeneration`]); tensors are streamed
  into safetensors shards in `--dtype` (see `hf_ext.models.cpmbee.convert_cpmbee_original_to_hf` for the memory plan)::

      python -m hf_ext.models.viscpm_chat.convert_viscpm_chat_original_to_hf \
          --checkpoint VisCPM-Chat/pytorch_model.v1.bin --vocab VisCPM/config/vocab.txt \
          --llm_config VisCPM/config/cpm-bee-10b.json --output_dir viscpm-chat-hf --dtype float16

* **a new pivot LLM** (`--text_model`): CPM-Bee's weights are dropped (and reported); the LLM weights and tokenizer
  come from `--text_model` (any causal LM whose hidden size equals the projector output, 4096 for the released
  bridge). The result is an MPM stage-1 starting point: run `examples/viscpm_chat/mpm_stage1.py` to align the bridge
  to the new LLM, then stage 2.
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


def convert_viscpm_chat_bee_checkpoint(
    checkpoint: str | Path,
    vocab: str | Path,
    llm_config: str | Path | dict,
    output_dir: str | Path,
    image_size: int = 224,
    vision_num_attention_heads: int | None = None,
    dtype: str = "float16",
    max_shard_size: str | int = "2GB",
) -> dict:
    """Convert a released VisCPM-Chat checkpoint *with* its CPM-Bee LLM into `output_dir`.

    Args:
        checkpoint (`str`): original `VLU_CPMBee` state dict (`vpm.*`, `query`, `mapping.*`, `llm.*`).
        vocab (`str`): CPM-Bee's `vocab.txt`.
        llm_config (`str` or `dict`): CPM-Bee's original config (`cpm-bee-10b.json`).
        output_dir (`str`): output folder (config, CPM-Bee tokenizer, image processor, safetensors shards).
        image_size (`int`, *optional*, defaults to 224): BEiT-3 image size.
        vision_num_attention_heads (`int`, *optional*): BEiT-3 heads (in no original file): inferred for BEiT-3
            Base/Large (768 -> 12, 1024 -> 16), required for any other size.
        dtype (`str`, *optional*, defaults to `"float16"`): stored dtype.
        max_shard_size (`str`, *optional*, defaults to `"2GB"`): shard size.
    """

    from ..cpmbee.convert_cpmbee_original_to_hf import (
        DTYPES,
        iter_original_tensors,
        load_cpmbee_config_and_tokenizer,
        load_original_checkpoint,
        write_safetensors_shards,
    )
    from ..muffin.image_processing_muffin import MuffinImageProcessor
    from .configuration_viscpm_chat import VisCPMChatConfig
    from .modeling_viscpm_chat_bee import VisCPMChatBeeForConditionalGeneration

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    text_config, tokenizer = load_cpmbee_config_and_tokenizer(llm_config, vocab)
    state = (
        load_original_checkpoint(checkpoint) if Path(checkpoint).is_file() else load_original_state_dict(checkpoint)
    )
    bridge, dropped = convert_viscpm_chat_state_dict(state)
    if "model.multi_modal_projector.linear_2.weight" not in bridge:
        raise ValueError(f"{checkpoint} has no `mapping.2.weight`: not a VisCPM-Chat checkpoint.")
    proj_out = bridge["model.multi_modal_projector.linear_2.weight"].shape[0]
    if proj_out != text_config.hidden_size:
        raise ValueError(
            f"The projector outputs {proj_out} features but CPM-Bee's dim_model is {text_config.hidden_size}."
        )
    config = VisCPMChatConfig(
        vision_config={"image_size": image_size, **infer_beit3_sizes(bridge, vision_num_attention_heads)},
        text_config=text_config.to_dict(),
        num_query=bridge["model.query"].shape[0],
        projector_type="mlp2",
        projector_hidden_size=bridge["model.multi_modal_projector.linear_1.weight"].shape[0],
        image_token_id=tokenizer.unk_token_id,
        image_start_token_id=tokenizer.bos_token_id,
        image_end_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.architectures = ["VisCPMChatBeeForConditionalGeneration"]
    config.dtype = dtype
    filled = _fill_tolerated(bridge, config)
    with torch.device("meta"):
        expected = VisCPMChatBeeForConditionalGeneration(config).state_dict()
    bridge_expected = {k: tuple(v.shape) for k, v in expected.items() if not k.startswith("model.language_model.")}
    bad = sorted(set(bridge_expected) ^ set(bridge)) + [
        k for k in bridge_expected if k in bridge and tuple(bridge[k].shape) != bridge_expected[k]
    ]
    if bad:
        raise ValueError(f"The VisCPM-Chat bridge does not match the inferred config: {bad[:5]}.")

    def tensors():
        for key, value in bridge.items():
            yield key, value.to(DTYPES[dtype]).contiguous()
        yield from iter_original_tensors(
            state, text_config, prefix="llm.", out_prefix="model.language_model.", dtype=DTYPES[dtype]
        )

    weight_map = write_safetensors_shards(tensors(), output_dir, max_shard_size)
    config.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    MuffinImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(str(output_dir))
    unused = [k for k in dropped if not k.startswith("llm.")]
    if unused:
        logger.warning("Dropped %d unused tensors (e.g. %s)", len(unused), unused[:3])
    return {"converted": len(weight_map), "dropped": unused, "initialised": filled}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Original VisCPM-Chat .bin/.pt file or folder.")
    parser.add_argument("--text_model", help="transformers causal LM folder or Hub id (a new pivot LLM).")
    parser.add_argument("--vocab", help="CPM-Bee vocab.txt (keep the released CPM-Bee LLM).")
    parser.add_argument("--llm_config", help="CPM-Bee original config json (cpm-bee-10b.json).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument(
        "--vision_num_attention_heads", type=int, default=None, help="BEiT-3 heads; inferred for BEiT-3 Base/Large."
    )
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--max_shard_size", default="2GB")
    args = parser.parse_args(argv)
    bee = args.vocab is not None or args.llm_config is not None
    if bee == (args.text_model is not None) or (bee and (args.vocab is None or args.llm_config is None)):
        parser.error("pass either --text_model, or both --vocab and --llm_config (keep CPM-Bee).")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.text_model is not None:
        convert_viscpm_chat_checkpoint(
            args.checkpoint, args.text_model, args.output_dir, args.image_size, args.vision_num_attention_heads
        )
    else:
        convert_viscpm_chat_bee_checkpoint(
            args.checkpoint, args.vocab, args.llm_config, args.output_dir, args.image_size,
            args.vision_num_attention_heads, args.dtype, args.max_shard_size,
        )  # fmt: skip


if __name__ == "__main__":
    main()
