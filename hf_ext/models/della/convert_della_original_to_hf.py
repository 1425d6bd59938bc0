"""Convert a checkpoint of the original DELLA code (``OpenVLG/DELLA``, ``Della.state_dict()``) to an hf_ext
`DellaForCausalLM` folder (``config.json`` + ``model.safetensors``) that computes what the original computes
(the configuration is [`DellaConfig.from_original_defaults`]).

    python -m hf_ext.models.della.convert_della_original_to_hf --input_dir checkpoints/della_yelp \\
        --checkpoint model_epoch_40.pt --output_dir della-yelp-hf

The input folder holds the weights (``*.safetensors``, or the original's ``model_epoch_N.pt`` read with
``torch.load(weights_only=True)``), and optionally ``config.json`` (the 4.x ``GPT2Config`` plus DELLA's fields, as
``prepare_model`` builds it), ``train_opt.json`` (``main.py``'s arguments: ``--latent_size``, ``--begin_layer``,
``--end_layer``, ``--kl_threshold``, ``--use_bow``, ``--bow_weight``, ``--dataset_type``) and ``special_tokens.json``
(``pad_id``, ``bos_id``, ``eos_id``; the original adds ``<s>`` and ``</s>`` to GPT-2's vocabulary and pads with
``<|endoftext|>``). Command-line options override what the files say.

The mapping (exact, no weight is re-fitted):

* ``encoder.*`` and ``decoder.*`` hold copies of the one shared GPT-2 (``wte``, ``wpe``, ``h.i``, ``ln_f``): they map
  to ``transformer.*`` once (the copies are checked to be identical); ``attn.bias`` / ``attn.masked_bias`` buffers are
  dropped (causal masks are built on the fly); ``decoder.lm_head`` -> ``lm_head`` (untied, as in the original).
* ``h.i.attn.lmf.{text,latent}_factor.r`` (``nn.Linear`` on ``[x; 1]``, weight ``[d, in + 1]`` and a bias) ->
  ``value_factor[r]`` / ``latent_factor[r]`` (``[in + 1, d]``) with the bias folded into the row of the constant 1;
  ``lmf_form="summed_factors"`` sums them over the rank before the product, as the original does.
* ``encoder.recog_network.i`` (input ``[pooled; state]``) -> ``latent_layers.k.posterior`` (input ``[state; pooled]``:
  the columns are swapped); ``prior_network.i``, ``reccurnt_cell_weight_{hh,ih}.i``, ``pooling.i.attention_weights``
  -> ``prior``, ``state_hh``, ``state_ih``, ``pooler.weight``.
* ``decoder.mlp_bow`` (``--use_bow``) -> ``bow_head`` with ``bow_head="lm_head"``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers.utils import logging

from ...utils.io import atomic_save_file, atomic_write
from .configuration_della import DellaConfig
from .modeling_della import DellaForCausalLM

logger = logging.get_logger(__name__)

__all__ = [
    "della_config_from_original",
    "convert_della_state_dict",
    "load_original_state_dict",
    "convert_della_checkpoint",
]

# GPT-2 fields carried over from the original's config.json
_GPT2_FIELDS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "initializer_range",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
)
_SHARED = re.compile(r"^(encoder|decoder)\.(wte\.weight|wpe\.weight|ln_f\.(?:weight|bias)|h\.\d+\..+)$")
_LMF = re.compile(r"^h\.(\d+)\.attn\.lmf\.(text_factor|latent_factor)\.(\d+)\.(weight|bias)$")
_LATENT = re.compile(
    r"^encoder\.(recog_network|prior_network|reccurnt_cell_weight_hh|reccurnt_cell_weight_ih)\.(\d+)\.(weight|bias)$"
)
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # the 4.x causal-mask buffers
_POOLING = re.compile(r"^encoder\.pooling\.(\d+)\.attention_weights$")
_LATENT_NAMES = {
    "recog_network": "posterior",
    "prior_network": "prior",
    "reccurnt_cell_weight_hh": "state_hh",
    "reccurnt_cell_weight_ih": "state_ih",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass the original's file unchanged.") from e


def della_config_from_original(
    original_config: dict | None = None,
    train_opt: dict | None = None,
    special_tokens: dict | None = None,
    begin_layer: int | None = None,
    end_layer: int | None = None,
    **overrides,
) -> DellaConfig:
    """The [`DellaConfig`] (official flags) of an original run.

    Args:
        original_config (`dict`, *optional*): the original's ``config.json`` (GPT-2 sizes, ``latent_size``,
            ``latent_lmf_rank``, ``kl_threshold``, ``is_cvae``, ``use_bow``, ``begin_layer``, ``end_layer``).
        train_opt (`dict`, *optional*): ``main.py``'s arguments; they fill what ``original_config`` lacks
            (``bow_weight``, ``dataset_type``).
        special_tokens (`dict`, *optional*): ``pad_id``, ``bos_id``, ``eos_id`` of the original's tokenizer.
        begin_layer, end_layer (`int`, *optional*): override the files' ``--begin_layer`` / ``--end_layer``
            (``end_layer`` inclusive, as in the original).
        overrides: any [`DellaConfig`] argument.
    """
    cfg = dict(original_config or {})
    opt = dict(train_opt or {})
    kwargs: dict = {k: cfg[k] for k in _GPT2_FIELDS if cfg.get(k) is not None}

    def pick(name, default=None):
        if cfg.get(name) is not None:
            return cfg[name]
        if opt.get(name) is not None:
            return opt[name]
        return default

    kwargs["latent_size"] = pick("latent_size", 32)
    kwargs["latent_lmf_rank"] = pick("latent_lmf_rank", 4)
    kwargs["free_bits"] = float(pick("kl_threshold", 0) or 0)
    kwargs["conditional"] = bool(cfg.get("is_cvae", opt.get("dataset_type", "vae") != "vae"))
    if pick("use_bow", False):
        kwargs["bow_weight"] = float(opt.get("bow_weight", 0.2))
    tokens = special_tokens or {}
    pad = tokens.get("pad_id", cfg.get("pad_token_id"))
    kwargs["pad_token_id"] = pad
    kwargs["bos_token_id"] = tokens.get("bos_id", cfg.get("bos_token_id"))
    kwargs["eos_token_id"] = tokens.get("eos_id", cfg.get("eos_token_id"))
    begin = begin_layer if begin_layer is not None else pick("begin_layer")
    end = end_layer if end_layer is not None else pick("end_layer")
    kwargs.update(overrides)
    return DellaConfig.from_original_defaults(begin_layer=begin, end_layer=end, **kwargs)


def _fold_bias(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` on ``[x; 1]`` (weight ``[out, in + 1]``, bias) -> a bias-free factor ``[in + 1, out]``."""
    folded = weight.clone()
    folded[:, -1] += bias
    return folded.t().contiguous()


def convert_della_state_dict(
    state_dict: dict[str, torch.Tensor],
    config: DellaConfig,
    bow_state_dict: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename and reshape an original ``Della.state_dict()`` for [`DellaForCausalLM`] built from ``config``.

    Returns:
        `(converted, dropped)`: the new state dict, and the original keys with no counterpart (buffers, the
        networks of layers without a latent).
    """
    state = dict(state_dict)
    if bow_state_dict:
        state.update(bow_state_dict)
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    ids = config.latent_layer_ids
    with torch.device("meta"):
        all_networks = DellaForCausalLM(config).transformer._all_layer_networks
    module_of = {i: i for i in range(config.n_layer)} if all_networks else {i: k for k, i in enumerate(ids)}
    lmf: dict[tuple[int, str], dict[int, dict[str, torch.Tensor]]] = {}
    latent: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _SHARED.match(key)
        if m:
            prefix, rest = m.groups()
            lm = _LMF.match(rest)
            if lm:
                if prefix == "encoder":
                    layer, factor, rank, kind = int(lm[1]), lm[2], int(lm[3]), lm[4]
                    lmf.setdefault((layer, factor), {}).setdefault(rank, {})[kind] = value
                continue
            if _BUFFER.match(rest):
                dropped.append(key)
                continue
            other = ("decoder." if prefix == "encoder" else "encoder.") + rest
            if other in state and not torch.equal(state[other], value):
                raise ValueError(
                    f"{key} and {other} differ: the original shares one GPT-2 between encoder and decoder, so its "
                    "checkpoints hold identical copies. This checkpoint was not saved by the original code."
                )
            out[f"transformer.{rest}"] = value
            continue
        m = _LATENT.match(key)
        if m:
            latent.setdefault((int(m[2]), _LATENT_NAMES[m[1]]), {})[m[3]] = value
            continue
        m = _POOLING.match(key)
        if m:
            latent.setdefault((int(m[1]), "pooler"), {})["weight"] = value
            continue
        if key == "decoder.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("decoder.mlp_bow."):
            if config.bow_weight > 0:
                out["bow_head." + key.rsplit(".", 1)[1]] = value
            else:
                dropped.append(key)
        else:
            raise ValueError(f"Unknown key {key!r} in the original DELLA checkpoint; is it a `Della.state_dict()`?")
    d = config.n_embd
    for (layer, name), tensors in latent.items():
        if not all_networks and layer not in ids:
            dropped.append(f"encoder.{name}.{layer}")
            continue
        k = module_of[layer]
        if name == "pooler":
            out[f"transformer.latent_layers.{k}.pooler.weight"] = tensors["weight"]
            continue
        weight = tensors["weight"]
        if name == "posterior":  # original input [pooled (d); state (p)] -> hf_ext [state; pooled]
            weight = torch.cat([weight[:, d:], weight[:, :d]], dim=1)
        out[f"transformer.latent_layers.{k}.{name}.weight"] = weight
        out[f"transformer.latent_layers.{k}.{name}.bias"] = tensors["bias"]
    for (layer, factor), ranks in lmf.items():
        if layer not in ids:
            dropped.append(f"encoder.h.{layer}.attn.lmf.{factor}")
            continue
        if sorted(ranks) != list(range(config.latent_lmf_rank)):
            raise ValueError(
                f"Layer {layer} has {factor} ranks {sorted(ranks)}; the config's latent_lmf_rank is "
                f"{config.latent_lmf_rank}."
            )
        stacked = torch.stack([_fold_bias(ranks[r]["weight"], ranks[r]["bias"]) for r in range(len(ranks))])
        name = "value_factor" if factor == "text_factor" else "latent_factor"
        out[f"transformer.h.{layer}.attn.lmf.{name}"] = stacked
    return out, sorted(dropped)


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original checkpoint file (``.safetensors``, or ``.pt`` / ``.bin`` with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor).")
    return obj


def _check_against_model(converted: dict[str, torch.Tensor], config: DellaConfig) -> None:
    with torch.device("meta"):
        model = DellaForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong = [
        f"{k}: {tuple(converted[k].shape)} != {s}"
        for k, s in expected.items()
        if k in converted and tuple(converted[k].shape) != s
    ]
    if missing or extra or wrong:
        raise ValueError(
            f"The converted checkpoint does not fit the config: missing {missing[:5]}, unexpected {extra[:5]}, wrong "
            f"shapes {wrong[:5]}. Check --latent_size / --begin_layer / --end_layer / --use_bow against the run."
        )


def convert_della_checkpoint(
    input_dir: str | Path,
    output_dir: str | Path,
    checkpoint: str | None = None,
    bow_checkpoint: str | None = None,
    **config_overrides,
) -> dict:
    """Convert the original run folder ``input_dir`` into an hf_ext checkpoint in ``output_dir``.

    Args:
        input_dir (`str` or `Path`): folder with the weights and the optional JSON files (see the module doc).
        output_dir (`str` or `Path`): where ``config.json`` and ``model.safetensors`` are written (atomically).
        checkpoint (`str`, *optional*): the weights file inside ``input_dir``; defaults to the only
            ``*.safetensors`` / ``*.pt`` there (``bow_head.safetensors`` excepted).
        bow_checkpoint (`str`, *optional*): a separate file with ``decoder.mlp_bow.*`` (``--use_bow`` runs whose
            main checkpoint lacks it); ``bow_head.safetensors`` in ``input_dir`` is used when present.
        config_overrides: [`DellaConfig`] arguments that override the files.

    Returns:
        `dict` with ``output_dir``, ``num_tensors`` and ``dropped`` (original keys without a counterpart).
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ValueError(f"--input_dir {input_dir} is not a folder.")
    if checkpoint is None:
        files = [
            f
            for f in sorted(input_dir.glob("*.safetensors")) + sorted(input_dir.glob("*.pt"))
            if f.name != "bow_head.safetensors"
        ]
        if len(files) != 1:
            raise ValueError(
                f"Found {len(files)} weight files in {input_dir} ({[f.name for f in files]}); name one with --checkpoint."
            )
        ckpt = files[0]
    else:
        ckpt = input_dir / checkpoint
    files = {n: input_dir / n for n in ("config.json", "train_opt.json", "special_tokens.json")}
    jsons = {n: _read_json(p) if p.is_file() else None for n, p in files.items()}
    config = della_config_from_original(
        jsons["config.json"], jsons["train_opt.json"], jsons["special_tokens.json"], **config_overrides
    )
    state = load_original_state_dict(ckpt)
    bow = None
    bow_path = Path(bow_checkpoint) if bow_checkpoint else input_dir / "bow_head.safetensors"
    if config.bow_weight > 0 and "decoder.mlp_bow.weight" not in state:
        if not bow_path.is_file():
            raise ValueError(f"The run used --use_bow but no `decoder.mlp_bow.*` weights were found ({bow_path}).")
        bow = load_original_state_dict(bow_path)
    converted, dropped = convert_della_state_dict(state, config, bow)
    _check_against_model(converted, config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.architectures = ["DellaForConditionalGeneration" if config.conditional else "DellaForCausalLM"]
    atomic_save_file(
        {k: v.contiguous() for k, v in converted.items()}, output_dir / "model.safetensors", {"format": "pt"}
    )
    with atomic_write(output_dir / "config.json", "w") as f:
        f.write(config.to_json_string())
    if dropped:
        logger.info("Dropped %d original keys without a counterpart: %s", len(dropped), dropped[:8])
    return {"output_dir": str(output_dir), "num_tensors": len(converted), "dropped": dropped}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="Folder with the original weights (and JSON files).")
    parser.add_argument("--output_dir", required=True, help="Where to write the hf_ext checkpoint.")
    parser.add_argument("--checkpoint", default=None, help="Weights file inside --input_dir (e.g. model_epoch_40.pt).")
    parser.add_argument("--bow_checkpoint", default=None, help="File with decoder.mlp_bow.* if not in --checkpoint.")
    parser.add_argument("--latent_size", type=int, default=None, help="Overrides the files (--latent_size).")
    parser.add_argument("--begin_layer", type=int, default=None, help="The original's --begin_layer.")
    parser.add_argument("--end_layer", type=int, default=None, help="The original's --end_layer (inclusive).")
    parser.add_argument("--kl_threshold", type=float, default=None, help="The original's --kl_threshold.")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    overrides = {}
    if args.latent_size is not None:
        overrides["latent_size"] = args.latent_size
    if args.kl_threshold is not None:
        overrides["free_bits"] = args.kl_threshold
    overrides["begin_layer"], overrides["end_layer"] = args.begin_layer, args.end_layer
    report = convert_della_checkpoint(
        args.input_dir, args.output_dir, args.checkpoint, args.bow_checkpoint, **overrides
    )
    logger.warning("Wrote %s (%d tensors).", report["output_dir"], report["num_tensors"])


if __name__ == "__main__":
    main()
