"""Convert an original Muffin checkpoint (`Beit3LlavaLlamaForCausalLM`, e.g. `Yirany/Muffin-13B`, `openbmb/RLHF-V`)
to an hf_ext `MuffinForConditionalGeneration` folder (config.json + safetensors, + processor when a tokenizer is
found).

    python -m hf_ext.models.muffin.convert_muffin_original_to_hf --input_dir Muffin-13B --output_dir muffin-13b-hf

The input folder holds the original `config.json` (`model_type: beit3_llava`) and `pytorch_model*.bin` shards (read
with `torch.load(weights_only=True)`) or `*.safetensors`. Weights are renamed, never instantiated in a model, so the
conversion needs about one checkpoint's worth of RAM. Keys the released checkpoints lack (BEiT-3's `text_embed` and
`mask_token`, removed before saving by the training code) are initialised as a fresh model would be, and reported.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# torchscale BEiT-3 (inside `BEiT3Wrapper.beit3`) -> hf_ext Beit3Model, relative to the vision tower.
_EXPERT = {"A": "vision_expert", "B": "language_expert"}
_BEIT3_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^vision_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embed.\1"),
    (re.compile(r"^vision_embed\.cls_token$"), "embeddings.cls_token"),
    (re.compile(r"^vision_embed\.mask_token$"), "embeddings.mask_token"),
    (re.compile(r"^text_embed\.weight$"), "embeddings.word_embeddings.weight"),
    (re.compile(r"^encoder\.embed_positions\.A\.weight$"), "embeddings.vision_position_embeddings.weight"),
    (re.compile(r"^encoder\.embed_positions\.B\.weight$"), "embeddings.text_position_embeddings.weight"),
    (re.compile(r"^encoder\.layer_norm\.A\.(weight|bias)$"), r"vision_layer_norm.\1"),
    (re.compile(r"^encoder\.layer_norm\.B\.(weight|bias)$"), r"language_layer_norm.\1"),
    (
        re.compile(
            r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj|inner_attn_ln)\.([AB])\.(weight|bias)$"
        ),
        lambda m: f"layers.{m[1]}.{_EXPERT[m[3]]}.{m[2]}.{m[4]}",
    ),
    (
        re.compile(r"^encoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.([AB])\.(weight|bias)$"),
        lambda m: f"layers.{m[1]}.{_EXPERT[m[3]]}.{m[2]}.{m[4]}",
    ),
    (
        re.compile(r"^encoder\.layers\.(\d+)\.ffn\.([AB])\.(fc1|fc2|ffn_layernorm)\.(weight|bias)$"),
        lambda m: f"layers.{m[1]}.{_EXPERT[m[2]]}.{m[3]}.{m[4]}",
    ),
]
# Keys of the original checkpoints that have no counterpart (dropped, and reported).
_DROPPED = [
    re.compile(r"(^|\.)mim_head\."),  # VisCPM's unused masked-image-modelling head
    re.compile(r"rotary_emb\.inv_freq$"),  # non-persistent buffer in current transformers
]
# Parameters a released checkpoint may lack; they are initialised like a fresh model.
TOLERATED_MISSING = ("embeddings.word_embeddings.weight", "embeddings.mask_token")


def convert_beit3_key(key: str) -> str | None:
    """Map one torchscale BEiT-3 key (without the `beit3.` prefix) to hf_ext's name, or None if unknown."""
    for pattern, repl in _BEIT3_PATTERNS:
        m = pattern.match(key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def convert_muffin_key(key: str) -> str | None:
    """Map one `Beit3LlavaLlamaForCausalLM` key to `MuffinForConditionalGeneration`'s name (None = drop)."""
    if any(p.search(key) for p in _DROPPED):
        return None
    if key.startswith("model.vision_tower.beit3."):
        new = convert_beit3_key(key[len("model.vision_tower.beit3.") :])
        return None if new is None else "model.vision_tower." + new
    if key == "model.query":
        return "model.query"
    if key.startswith("model.mm_projector."):
        return "model.multi_modal_projector.linear_1." + key[len("model.mm_projector.") :]
    if key.startswith("lm_head."):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return None


def convert_muffin_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original Muffin state dict. Returns `(converted, dropped_keys)`.

    Raises:
        ValueError: on a key that is neither mapped nor a known leftover (the message lists them).
    """
    out, dropped, unknown = {}, [], []
    for key, value in state_dict.items():
        new = convert_muffin_key(key)
        if new is None:
            (dropped if any(p.search(key) for p in _DROPPED) else unknown).append(key)
            continue
        out[new] = value
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint key(s) have no mapping to MuffinForConditionalGeneration, e.g. {unknown[:5]}. "
            "Is this a Muffin (Beit3LlavaLlamaForCausalLM) checkpoint?"
        )
    return out, dropped


def convert_viscpm_chat_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the bridge of an original VisCPM-Chat (`VLU_CPMBee`) state dict: `vpm.beit3.*`, `query`, `mapping.*`.

    CPM-Bee (`llm.*`) is not a transformers model, so its keys are returned in the dropped list; pair the bridge
    with a transformers LLM (MPM) and train stage 1 to align it.
    """
    out, dropped, unknown = {}, [], []
    for key, value in state_dict.items():
        if any(p.search(key) for p in _DROPPED) or key.startswith("llm."):
            dropped.append(key)
        elif key.startswith("vpm.beit3."):
            new = convert_beit3_key(key[len("vpm.beit3.") :])
            if new is None:
                unknown.append(key)
            else:
                out["model.vision_tower." + new] = value
        elif key == "query":
            out["model.query"] = value
        elif m := re.match(r"^mapping\.(0|2)\.(weight|bias)$", key):
            out[f"model.multi_modal_projector.linear_{1 if m[1] == '0' else 2}.{m[2]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} VisCPM-Chat key(s) have no mapping, e.g. {unknown[:5]}.")
    return out, dropped


_NON_TEXT_KEYS = {
    "architectures",
    "model_type",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "mm_vision_tower",
    "mm_use_im_start_end",
    "mm_hidden_size",
    "mm_vision_select_layer",
    "num_query",
    "use_mm_proj",
    "fully_tune",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "max_sequence_length",
    "sep_image_conv_front",
    "image_token_len",
    "use_cache",  # train_muffin.py saves use_cache=False (training); inference wants the KV cache
}


# BEiT-3 sizes published with torchscale / unilm (`_get_base_config`, `_get_large_config`): hidden size -> heads.
KNOWN_BEIT3_HEADS = {768: 12, 1024: 16}


def infer_beit3_sizes(converted: dict[str, torch.Tensor], num_attention_heads: int | None = None) -> dict:
    """Read BEiT-3's sizes from converted tensors (the original config only names the timm model).

    The head count is in neither the original config nor the weights: it is taken from the known BEiT-3 sizes
    (Base 768 -> 12 heads, Large 1024 -> 16) unless `num_attention_heads` is given, and required otherwise.

    Raises:
        ValueError: when the hidden size is not a known BEiT-3 size and `num_attention_heads` is not given, or when
            `num_attention_heads` does not divide the hidden size.
    """
    p = "model.vision_tower."
    hidden = converted[p + "embeddings.cls_token"].shape[-1]
    if num_attention_heads is None:
        if hidden not in KNOWN_BEIT3_HEADS:
            known = ", ".join(f"{d} -> {h} heads" for d, h in KNOWN_BEIT3_HEADS.items())
            raise ValueError(
                f"BEiT-3 hidden size {hidden} is not a known BEiT-3 size ({known}), and the number of attention heads "
                "is stored in neither the original config nor the weights. Pass it explicitly "
                "(`--vision_num_attention_heads N` / `vision_num_attention_heads=N`)."
            )
        num_attention_heads = KNOWN_BEIT3_HEADS[hidden]
    elif num_attention_heads < 1 or hidden % num_attention_heads:
        raise ValueError(
            f"vision_num_attention_heads={num_attention_heads} must be a positive divisor of BEiT-3's hidden size "
            f"{hidden}."
        )
    elif hidden in KNOWN_BEIT3_HEADS and num_attention_heads != KNOWN_BEIT3_HEADS[hidden]:
        logger.warning(
            "BEiT-3 with hidden size %d normally has %d heads; using the %d you passed.",
            hidden,
            KNOWN_BEIT3_HEADS[hidden],
            num_attention_heads,
        )
    layers = 1 + max(int(k.split(".")[3]) for k in converted if k.startswith(p + "layers."))
    sizes = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": converted[p + "layers.0.vision_expert.fc1.weight"].shape[0],
        "num_attention_heads": num_attention_heads,
        "max_position_embeddings": converted[p + "embeddings.text_position_embeddings.weight"].shape[0],
    }
    if p + "embeddings.word_embeddings.weight" in converted:
        sizes["vocab_size"] = converted[p + "embeddings.word_embeddings.weight"].shape[0]
    return sizes


def muffin_config_from_original(
    original: dict, added_tokens: dict[str, int] | None = None, vision_sizes: dict | None = None
):
    """Build a `MuffinConfig` from an original `beit3_llava` config dict (and `added_tokens.json`)."""
    from .configuration_muffin import MuffinConfig

    tower = original.get("mm_vision_tower", "beit3_large_patch16_224")
    m = re.match(r"^beit3_large(?:_itc)?_patch(\d+)_(\d+)$", str(tower))
    if not m:
        raise ValueError(f"Unsupported mm_vision_tower {tower!r}; expected e.g. 'beit3_large_patch16_448'.")
    text = {k: v for k, v in original.items() if k not in _NON_TEXT_KEYS}
    text["model_type"] = "llama"
    if text.get("pad_token_id") is not None and text["pad_token_id"] < 0:
        text["pad_token_id"] = None  # the released configs carry -1 (LLaMA v0 tokenizer), which is not a valid id
    added = added_tokens or {}
    return MuffinConfig(
        vision_config={"patch_size": int(m[1]), "image_size": int(m[2]), **(vision_sizes or {})},
        text_config=text,
        num_query=int(original.get("num_query", 64)),
        projector_type="linear",
        image_token_id=added.get("<im_patch>", 32001),
        image_start_token_id=added.get("<im_start>", 32002),
        image_end_token_id=added.get("<im_end>", 32003),
    )


def load_original_state_dict(input_dir: str | Path) -> dict[str, torch.Tensor]:
    """Read every `*.safetensors` (preferred) or `pytorch_model*.bin` / `*.pt` in `input_dir` (weights only)."""
    input_dir = Path(input_dir)
    files: Iterable[Path] = sorted(input_dir.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            state.update(load_file(str(f)))
        return state
    files = sorted(input_dir.glob("pytorch_model*.bin")) + sorted(input_dir.glob("*.pt"))
    if not files:
        raise ValueError(f"No *.safetensors, pytorch_model*.bin or *.pt weights found in {input_dir}.")
    for f in files:
        obj = torch.load(str(f), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        state.update(obj)
    return state


def _fill_tolerated(converted: dict[str, torch.Tensor], config) -> list[str]:
    """Initialise the tolerated missing BEiT-3 tensors like a fresh model (normal / truncated normal)."""
    filled = []
    v = config.vision_config
    ref = converted["model.vision_tower.embeddings.cls_token"]
    gen = torch.Generator().manual_seed(0)
    if "model.vision_tower.embeddings.word_embeddings.weight" not in converted:
        w = torch.randn(v.vocab_size, v.hidden_size, generator=gen) * v.initializer_range
        converted["model.vision_tower.embeddings.word_embeddings.weight"] = w.to(ref.dtype)
        filled.append("model.vision_tower.embeddings.word_embeddings.weight")
    if "model.vision_tower.embeddings.mask_token" not in converted:
        t = torch.randn(1, 1, v.hidden_size, generator=gen).clamp(-2, 2) * v.initializer_range
        converted["model.vision_tower.embeddings.mask_token"] = t.to(ref.dtype)
        filled.append("model.vision_tower.embeddings.mask_token")
    return filled


def _check_against_model(converted: dict[str, torch.Tensor], config, model_class) -> None:
    """Compare names and shapes with a meta-device model; raise on anything missing or mis-shaped."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    extra = sorted(set(converted) - set(expected))
    wrong = [
        f"{k}: {tuple(converted[k].shape)} != {expected[k]}"
        for k in expected
        if k in converted and tuple(converted[k].shape) != expected[k]
    ]
    if missing or extra or wrong:
        raise ValueError(
            f"Converted checkpoint does not match the config: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shapes {wrong[:5]}."
        )


def save_converted(converted: dict[str, torch.Tensor], config, output_dir: str | Path, max_shard_size: str = "5GB"):
    """Write `config.json` and safetensors shards (atomically per file) that `from_pretrained` loads."""
    from huggingface_hub import save_torch_state_dict

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.architectures = [
        "VisCPMChatForConditionalGeneration"
        if config.model_type == "viscpm_chat"
        else "MuffinForConditionalGeneration"
    ]
    # save_torch_state_dict writes through temporary files only for the index; write each shard to a temp dir first
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".convert_", dir=output_dir))
    try:
        save_torch_state_dict({k: v.contiguous() for k, v in converted.items()}, tmp, max_shard_size=max_shard_size)
        for f in tmp.iterdir():
            shutil.move(str(f), output_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config.save_pretrained(output_dir)


def convert_muffin_checkpoint(
    input_dir: str | Path,
    output_dir: str | Path,
    dtype: str | None = None,
    vision_num_attention_heads: int | None = None,
) -> dict:
    """Convert the original Muffin folder `input_dir` into `output_dir`. Returns a small report dict.

    `vision_num_attention_heads`: BEiT-3's head count, which neither the original config nor the weights store;
    inferred for the known sizes (Base 768 -> 12, Large 1024 -> 16) and required for any other size.
    """
    from .modeling_muffin import MuffinForConditionalGeneration

    input_dir = Path(input_dir)
    cfg_path = input_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"{cfg_path} not found: the input folder must contain the original config.json.")
    original = json.loads(cfg_path.read_text())
    added_path = input_dir / "added_tokens.json"
    added = json.loads(added_path.read_text()) if added_path.exists() else None
    converted, dropped = convert_muffin_state_dict(load_original_state_dict(input_dir))
    config = muffin_config_from_original(original, added, infer_beit3_sizes(converted, vision_num_attention_heads))
    filled = _fill_tolerated(converted, config)
    if dtype is not None:
        target = getattr(torch, dtype)
        converted = {k: v.to(target) if v.is_floating_point() else v for k, v in converted.items()}
    _check_against_model(converted, config, MuffinForConditionalGeneration)
    save_converted(converted, config, output_dir)
    _maybe_save_processor(input_dir, output_dir, config)
    report = {"converted": len(converted), "dropped": dropped, "initialised": filled}
    logger.warning("Converted %d tensors; dropped %s; initialised %s", len(converted), dropped, filled)
    return report


def _maybe_save_processor(input_dir: Path, output_dir: str | Path, config) -> bool:
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(input_dir))
    except Exception as e:  # no tokenizer files: the weights are still converted
        logger.warning("No tokenizer converted (%s); build a MuffinProcessor with your tokenizer.", e)
        return False
    from .image_processing_muffin import MuffinImageProcessor
    from .processing_muffin import MuffinProcessor

    size = config.vision_config.image_size
    processor = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        num_query=config.num_query,
    )
    processor.save_pretrained(str(output_dir))
    return True


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="Folder with the original config.json and weights.")
    parser.add_argument("--output_dir", required=True, help="Where to write the hf_ext checkpoint.")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="Cast weights.")
    parser.add_argument(
        "--vision_num_attention_heads",
        type=int,
        default=None,
        help="BEiT-3 attention heads; inferred for Base (768 -> 12) and Large (1024 -> 16), required otherwise.",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    convert_muffin_checkpoint(args.input_dir, args.output_dir, args.dtype, args.vision_num_attention_heads)


if __name__ == "__main__":
    main()
