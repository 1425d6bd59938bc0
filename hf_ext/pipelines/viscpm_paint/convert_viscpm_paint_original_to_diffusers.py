"""Convert a released VisCPM-Paint checkpoint (``viscpm_paint_{balance,zhplus}_checkpoint.pt``: ``trans_block.*``,
``unet.*``, ``llm.*``) into a folder that ``VisCPMPaintPipeline.from_pretrained`` loads.

    python -m hf_ext.pipelines.viscpm_paint.convert_viscpm_paint_original_to_diffusers \\
        --checkpoint viscpm_paint_balance_checkpoint.pt --vocab VisCPM/config/vocab.txt \\
        --llm_config VisCPM/config/cpm-bee-10b.json --sd_model path/to/stable-diffusion-2-1-base \\
        --output_dir viscpm-paint-diffusers --dtype float16

* ``llm.*`` -> ``text_encoder/`` (a :class:`~hf_ext.models.cpmbee.CpmBeeModel`) + ``tokenizer/`` (CPM-Bee vocab);
* ``trans_block.w_out_res`` / ``trans_block.layernorm`` -> ``text_projection/`` (``linear`` / ``layer_norm``);
* ``unet.*`` -> ``unet/`` (a diffusers ``UNet2DConditionModel`` with the SD-2.1-base unet config from ``--sd_model``);
* ``vae/`` is copied from ``--sd_model``; ``scheduler/`` is a ``DDPMScheduler`` built from the SD scheduler config
  (VisCPM samples with DDPM; ``--scheduler keep`` keeps SD's own class);
* the pipeline is saved with ``use_encoder_attention_mask=False`` (VisCPM passes no text mask to the UNet).

Memory plan: the checkpoint is memory-mapped (``torch.load(weights_only=True, mmap=True)``) and every tensor is cast
to ``--dtype`` on its own and streamed into safetensors shards (see
:mod:`hf_ext.models.cpmbee.convert_cpmbee_original_to_hf`); peak memory is about one shard, never the 10B model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers.utils import logging

from ...models.cpmbee.convert_cpmbee_original_to_hf import (
    DTYPES,
    iter_original_tensors,
    load_cpmbee_config_and_tokenizer,
    load_original_checkpoint,
    write_safetensors_shards,
)
from ...utils.io import atomic_write

logger = logging.get_logger(__name__)

__all__ = ["convert_viscpm_paint_checkpoint"]


def convert_viscpm_paint_checkpoint(
    checkpoint: str | Path,
    vocab: str | Path,
    llm_config: str | Path | dict,
    sd_model: str | Path,
    output_dir: str | Path,
    dtype: str = "float16",
    max_shard_size: str | int = "2GB",
    scheduler: str = "ddpm",
) -> Path:
    """Convert VisCPM-Paint's `checkpoint` into the diffusers folder `output_dir` (see the module docstring).

    Args:
        checkpoint (`str`): the released `.pt` (or a `.safetensors` with the same keys).
        vocab (`str`): CPM-Bee's `vocab.txt`.
        llm_config (`str` or `dict`): CPM-Bee's original config (`cpm-bee-10b.json`).
        sd_model (`str`): a local Stable Diffusion 2.1-base folder (`unet/config.json`, `vae/`, `scheduler/`).
        output_dir (`str`): output folder.
        dtype (`str`, *optional*, defaults to `"float16"`): stored dtype of the text encoder and the UNet.
        max_shard_size (`str`, *optional*, defaults to `"2GB"`): shard size.
        scheduler (`str`, *optional*, defaults to `"ddpm"`): `"ddpm"` (VisCPM) or `"keep"` (SD's scheduler class).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from .modeling_text_projection import VisCPMPaintTextProjection

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if scheduler not in ("ddpm", "keep"):
        raise ValueError(f"scheduler must be 'ddpm' or 'keep', got {scheduler!r}.")
    sd_model, output_dir = Path(sd_model), Path(output_dir)
    for sub in ("unet/config.json", "vae", "scheduler"):
        if not (sd_model / sub).exists():
            raise ValueError(f"--sd_model {sd_model} has no {sub}: point it to a Stable Diffusion 2.1-base folder.")
    text_config, tokenizer = load_cpmbee_config_and_tokenizer(llm_config, vocab)
    state = load_original_checkpoint(checkpoint)
    for key in ("trans_block.w_out_res.weight", "trans_block.layernorm.weight", "trans_block.layernorm.bias"):
        if key not in state:
            raise ValueError(f"{checkpoint} has no {key!r}: not a VisCPM-Paint checkpoint.")
    unknown = [k for k in state if not k.startswith(("llm.", "unet.", "trans_block."))]
    if unknown:
        raise ValueError(f"{checkpoint} has keys outside llm./unet./trans_block.: {unknown[:5]}.")
    cast = DTYPES[dtype]

    # text encoder (CPM-Bee) and tokenizer
    text_config.architectures = ["CpmBeeModel"]
    text_config.dtype = dtype
    write_safetensors_shards(
        iter_original_tensors(state, text_config, prefix="llm.", out_prefix="", dtype=cast),
        output_dir / "text_encoder",
        max_shard_size,
    )
    text_config.save_pretrained(str(output_dir / "text_encoder"))
    tokenizer.save_pretrained(str(output_dir / "tokenizer"))

    # text projection (CPMBeeTransBlock); kept in float32 like VisCPM's LayerNorm (it is tiny)
    w = state["trans_block.w_out_res.weight"]
    projection = VisCPMPaintTextProjection(in_features=w.shape[1], out_features=w.shape[0])
    projection.load_state_dict(
        {
            "linear.weight": w.float(),
            "layer_norm.weight": state["trans_block.layernorm.weight"].float(),
            "layer_norm.bias": state["trans_block.layernorm.bias"].float(),
        }
    )
    if w.shape[1] != text_config.hidden_size:
        raise ValueError(
            f"trans_block expects {w.shape[1]} features but CPM-Bee's dim_model is {text_config.hidden_size}."
        )
    projection.save_pretrained(str(output_dir / "text_projection"))

    # UNet: SD-2.1-base config, weights from unet.*
    unet_config = UNet2DConditionModel.load_config(str(sd_model / "unet"))
    if unet_config.get("cross_attention_dim") != w.shape[0]:
        logger.warning(
            "The SD unet config has cross_attention_dim %s; VisCPM's projection outputs %d: using %d.",
            unet_config.get("cross_attention_dim"),
            w.shape[0],
            w.shape[0],
        )
        unet_config["cross_attention_dim"] = w.shape[0]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    unet_keys = {k[len("unet.") :]: k for k in state if k.startswith("unet.")}
    missing, extra = sorted(set(shapes) - set(unet_keys)), sorted(set(unet_keys) - set(shapes))
    wrong = [k for k in shapes if k in unet_keys and tuple(state[unet_keys[k]].shape) != shapes[k]]
    if missing or extra or wrong:
        raise ValueError(
            f"unet.* does not match the UNet config of {sd_model}: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shapes {wrong[:5]}."
        )
    write_safetensors_shards(
        ((k, state[unet_keys[k]].to(cast).contiguous()) for k in shapes),
        output_dir / "unet",
        max_shard_size,
        weights_name="diffusion_pytorch_model.safetensors",
    )
    unet.save_config(str(output_dir / "unet"))

    # VAE and scheduler from the SD folder
    AutoencoderKL.from_pretrained(str(sd_model / "vae")).save_pretrained(str(output_dir / "vae"))
    scheduler_config = DDPMScheduler.load_config(str(sd_model / "scheduler"))
    if scheduler == "ddpm":
        sched = DDPMScheduler.from_config(scheduler_config)
    else:
        import diffusers

        sched = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    sched.save_pretrained(str(output_dir / "scheduler"))

    import diffusers

    index = {
        "_class_name": "VisCPMPaintPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(sched).__name__],
        "text_encoder": ["hf_ext.models.cpmbee.modeling_cpmbee", "CpmBeeModel"],
        "text_projection": ["hf_ext.pipelines.viscpm_paint.modeling_text_projection", "VisCPMPaintTextProjection"],
        "tokenizer": ["hf_ext.models.cpmbee.tokenization_cpmbee", "CpmBeeTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "use_encoder_attention_mask": False,
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with atomic_write(output_dir / "model_index.json", mode="wb") as f:
        f.write(json.dumps(index, indent=2).encode())
    logger.info("Wrote VisCPM-Paint to %s", output_dir)
    return output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="viscpm_paint_*_checkpoint.pt")
    parser.add_argument("--vocab", required=True, help="CPM-Bee vocab.txt")
    parser.add_argument("--llm_config", required=True, help="CPM-Bee original config (cpm-bee-10b.json)")
    parser.add_argument(
        "--sd_model", required=True, help="Local Stable Diffusion 2.1-base folder (unet/, vae/, scheduler/)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--max_shard_size", default="2GB")
    parser.add_argument("--scheduler", default="ddpm", choices=["ddpm", "keep"])
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    convert_viscpm_paint_checkpoint(
        args.checkpoint, args.vocab, args.llm_config, args.sd_model, args.output_dir, args.dtype,
        args.max_shard_size, args.scheduler,
    )  # fmt: skip


if __name__ == "__main__":
    main()
