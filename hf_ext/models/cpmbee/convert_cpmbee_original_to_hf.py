"""Convert an original CPM-Bee checkpoint (OpenBMB ``cpm-bee-10b.pt`` + ``cpm-bee-10b.json`` + ``vocab.txt``) into a
folder that ``CpmBeeForCausalLM.from_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` load.

    python -m hf_ext.models.cpmbee.convert_cpmbee_original_to_hf \\
        --checkpoint cpm-bee-10b/pytorch_model.bin --config cpm-bee-10b/config.json \\
        --vocab cpm-bee-10b/vocab.txt --output_dir cpm-bee-10b-hf --dtype float16

Memory plan (10B parameters = 20 GB in fp16): the checkpoint is opened with ``torch.load(weights_only=True,
mmap=True)`` so tensors stay on disk until touched; each tensor is cast to ``--dtype`` on its own and appended to the
current safetensors shard, which is written (atomically) and released as soon as it reaches ``--max_shard_size``.
Peak memory is about one shard plus one tensor (a few GB), never the whole model, and never in fp32 unless asked.
A checkpoint in the legacy (non-zip) format cannot be memory-mapped; it is then loaded once in its stored dtype
(fp16: 20 GB).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ...utils.io import atomic_save_file, atomic_write

logger = logging.get_logger(__name__)

__all__ = [
    "convert_cpmbee_checkpoint",
    "expected_cpmbee_shapes",
    "iter_original_tensors",
    "load_original_checkpoint",
    "parse_size",
    "write_safetensors_shards",
]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_size(size: str | int) -> int:
    """`"2GB"` / `"500MB"` / bytes -> bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def load_original_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Open an original checkpoint lazily: safetensors are memory-mapped; `.pt`/`.bin` use
    `torch.load(weights_only=True, mmap=True)` (falling back to a plain `weights_only` load for legacy files)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {path} does not exist (pass the original .pt/.bin/.safetensors file).")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        logger.warning("%s cannot be memory-mapped (%s); loading it into memory.", path, err)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return state


def expected_cpmbee_shapes(config) -> dict[str, tuple[int, ...]]:
    """Original CPM-Bee key -> shape for `config` (built on the meta device: no memory)."""
    from .modeling_cpmbee import CpmBeeModel

    with torch.device("meta"):
        model = CpmBeeModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def iter_original_tensors(
    state: dict[str, torch.Tensor], config, prefix: str = "", out_prefix: str = "cpmbee.", dtype=None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf key, tensor cast to dtype)` for the CPM-Bee keys under `prefix` (e.g. `"llm."` in VisCPM files),
    checking the key set and every shape against `config` first."""
    shapes = expected_cpmbee_shapes(config)
    keys = {k[len(prefix) :]: k for k in state if k.startswith(prefix)}
    missing = sorted(set(shapes) - set(keys))
    unexpected = sorted(set(keys) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint's CPM-Bee keys{f' (under {prefix!r})' if prefix else ''} do not match the config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}. Check --config against the checkpoint."
        )
    for key, shape in shapes.items():
        tensor = state[keys[key]]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{keys[key]} has shape {tuple(tensor.shape)}, the config expects {shape}.")
    for key in shapes:
        tensor = state[keys[key]]
        yield out_prefix + key, (tensor.to(dtype) if dtype is not None else tensor).contiguous()


def write_safetensors_shards(
    tensors: Iterable[tuple[str, torch.Tensor]],
    output_dir: str | os.PathLike,
    max_shard_size: int | str = "2GB",
    weights_name: str = "model.safetensors",
) -> dict[str, str]:
    """Stream `(name, tensor)` pairs into safetensors shards of at most `max_shard_size` (one tensor may exceed it),
    each written atomically as soon as it is full. A single shard is saved as `weights_name`; several as
    `<stem>-0000k-of-0000n.safetensors` plus `<weights_name>.index.json` (the layout transformers and diffusers
    load). Returns the weight map (tensor -> file)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    stem = weights_name[: -len(".safetensors")]
    shard: dict[str, torch.Tensor] = {}
    size, files, weight_map, total = 0, [], {}, 0

    def flush() -> None:
        nonlocal shard, size
        if not shard:
            return
        name = f"{stem}-{len(files) + 1:05d}.tmp.safetensors"
        atomic_save_file(shard, output_dir / name, metadata={"format": "pt"})
        files.append((name, list(shard)))
        shard, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > limit:
            flush()
        shard[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    if len(files) == 1:
        os.replace(output_dir / files[0][0], output_dir / weights_name)
        return {k: weights_name for k in files[0][1]}
    for i, (tmp, names) in enumerate(files, start=1):
        final = f"{stem}-{i:05d}-of-{len(files):05d}.safetensors"
        os.replace(output_dir / tmp, output_dir / final)
        weight_map.update({k: final for k in names})
    with atomic_write(output_dir / f"{weights_name}.index.json", mode="wb") as f:
        f.write(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode())
    return weight_map


def load_cpmbee_config_and_tokenizer(config: str | os.PathLike | dict, vocab: str | os.PathLike) -> tuple[Any, Any]:
    """The [`CpmBeeConfig`] and [`CpmBeeTokenizer`] of an original release, checked against each other (every
    converter of a CPM-Bee-based checkpoint starts here).

    Args:
        config (`str` or `dict`): the original config (`cpm-bee-10b.json` keys) or an hf_ext `config.json`, as a path
            or a dict.
        vocab (`str`): the original `vocab.txt`.

    Returns:
        `tuple[CpmBeeConfig, CpmBeeTokenizer]`; raises a `ValueError` when their vocabulary sizes differ.
    """
    from .configuration_cpmbee import CpmBeeConfig
    from .tokenization_cpmbee import CpmBeeTokenizer

    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    hf_config = (
        CpmBeeConfig(**{k: v for k, v in config.items() if k != "model_type"})
        if config.get("model_type") == "cpmbee"
        else CpmBeeConfig.from_original_config(config)
    )
    tokenizer = CpmBeeTokenizer(str(vocab))
    if tokenizer.vocab_size != hf_config.vocab_size:
        raise ValueError(
            f"{vocab} has {tokenizer.vocab_size} tokens but the config says vocab_size={hf_config.vocab_size}."
        )
    return hf_config, tokenizer


def convert_cpmbee_checkpoint(
    checkpoint: str | os.PathLike,
    config: str | os.PathLike | dict,
    vocab: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float16",
    max_shard_size: str | int = "2GB",
    prefix: str = "",
) -> dict[str, str]:
    """Convert the original CPM-Bee `checkpoint` (+ original `config` json and `vocab`) into `output_dir`.

    Args:
        checkpoint (`str`): original `.pt` / `.bin` / `.safetensors` state dict (original keys).
        config (`str` or `dict`): original config (`cpm-bee-10b.json` keys) or an hf_ext `config.json`.
        vocab (`str`): the original `vocab.txt`.
        output_dir (`str`): output folder (config, tokenizer, safetensors shards).
        dtype (`str`, *optional*, defaults to `"float16"`): stored dtype (`float16` as released, `bfloat16`,
            `float32`).
        max_shard_size (`str`, *optional*, defaults to `"2GB"`): shard size.
        prefix (`str`, *optional*, defaults to `""`): prefix of the CPM-Bee keys (`"llm."` in VisCPM files).

    Returns:
        `dict[str, str]`: tensor -> file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    hf_config, tokenizer = load_cpmbee_config_and_tokenizer(config, vocab)
    hf_config.architectures = ["CpmBeeForCausalLM"]
    hf_config.dtype = dtype
    state = load_original_checkpoint(checkpoint)
    weight_map = write_safetensors_shards(
        iter_original_tensors(state, hf_config, prefix=prefix, dtype=DTYPES[dtype]), output_dir, max_shard_size
    )
    hf_config.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    logger.info("Wrote %d tensors to %s", len(weight_map), output_dir)
    return weight_map


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Original CPM-Bee .pt/.bin/.safetensors state dict.")
    parser.add_argument("--config", required=True, help="Original config json (cpm-bee-10b.json).")
    parser.add_argument("--vocab", required=True, help="Original vocab.txt.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--max_shard_size", default="2GB")
    parser.add_argument("--prefix", default="", help="Key prefix of the CPM-Bee tensors (e.g. 'llm.').")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    convert_cpmbee_checkpoint(
        args.checkpoint, args.config, args.vocab, args.output_dir, args.dtype, args.max_shard_size, args.prefix
    )


if __name__ == "__main__":
    main()
