"""Quantised loading of hf_ext's vision-language models (Muffin, VisCPM-Chat) and their LLM backbones (CPM-Bee).

`from_pretrained(..., quantization_config=...)` works with transformers' own configs; this module only chooses the
modules kept in full precision. For Muffin and VisCPM-Chat the default keeps the **vision bridge** (BEiT-3
`model.vision_tower` and `model.multi_modal_projector`, about 5 % of Muffin-13B's parameters) and `lm_head` out of
quantisation: on the measurement in `benchmarks/quantization_muffin.py` quantising the bridge to int8 doubled the
logit error of int8 weight-only quantisation (2.5e-2 vs 1.2e-2) (see docs/scale.md for the numbers and their caveat: random weights).

    from hf_ext.utils.quantization import vlm_quantization_config

    model = AutoModelForImageTextToText.from_pretrained(path, quantization_config=vlm_quantization_config("bnb_4bit"))

Methods: `"int8_weight_only"` (torchao, CPU and GPU), `"bnb_8bit"` / `"bnb_4bit"` (bitsandbytes LLM.int8() / NF4 with
double quantisation, the QLoRA recipe; bitsandbytes >= 0.49 also runs on CPU).
"""

from __future__ import annotations

import torch

__all__ = ["QUANTIZATION_METHODS", "VISION_BRIDGE_MODULES", "vlm_quantization_config"]

QUANTIZATION_METHODS = ("int8_weight_only", "bnb_8bit", "bnb_4bit")
# Full parameter-name prefixes (transformers matches `modules_to_not_convert` from the start of the name or as a suffix)
VISION_BRIDGE_MODULES = ("model.vision_tower", "model.multi_modal_projector")


def vlm_quantization_config(
    method: str = "int8_weight_only",
    keep_bridge_full_precision: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    extra_modules_to_not_convert: list[str] | None = None,
):
    """A transformers quantization config for Muffin / VisCPM-Chat (or, with `keep_bridge_full_precision=False`, any
    causal LM such as CPM-Bee): the LLM's linear layers quantised, `lm_head` (and by default the vision bridge) not.

    Args:
        method (`str`, *optional*, defaults to `"int8_weight_only"`):
            One of `"int8_weight_only"` (torchao `Int8WeightOnlyConfig`), `"bnb_8bit"`, `"bnb_4bit"` (NF4, double
            quantisation, the QLoRA recipe).
        keep_bridge_full_precision (`bool`, *optional*, defaults to `True`):
            Keep BEiT-3 and the projector (`VISION_BRIDGE_MODULES`) unquantised.
        compute_dtype (`torch.dtype`, *optional*, defaults to `torch.bfloat16`):
            The matmul dtype of 4-bit layers (use `torch.float32` on CPUs without bf16).
        extra_modules_to_not_convert (`list[str]`, *optional*):
            More module names (full prefixes such as `"model.language_model.layers.0"`, or suffixes) to keep.

    Returns:
        `transformers.TorchAoConfig` or `transformers.BitsAndBytesConfig`.
    """
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"vlm_quantization_config: `method` must be one of {QUANTIZATION_METHODS}, got {method!r}.")
    skip = ["lm_head"]
    if keep_bridge_full_precision:
        skip += list(VISION_BRIDGE_MODULES)
    skip += list(extra_modules_to_not_convert or [])
    if method == "int8_weight_only":
        from transformers import TorchAoConfig
        from transformers.utils import is_torchao_available

        if not is_torchao_available():
            raise ImportError("`method='int8_weight_only'` needs torchao: `pip install 'hf_ext[scale]'`.")
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=skip)
    from transformers import BitsAndBytesConfig

    if method == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )
