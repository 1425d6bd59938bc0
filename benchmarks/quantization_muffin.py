"""Which parts of Muffin to quantise: logit error of int8 weight-only quantisation (torchao) with the vision bridge
(BEiT-3, projector) quantised or kept in full precision, against the fp32 model, in one run.

Random weights built from a config (LLM and BEiT-3 width `--hidden`, `--layers` layers, `--queries` queries), 4
sequences of `queries` image tokens + 24 text tokens. Writes `benchmarks/results/quantization_muffin/results.json`.

    python benchmarks/quantization_muffin.py [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

VARIANTS = {
    "all_but_lm_head": ["lm_head"],
    "bridge_fp32": ["lm_head", "model.vision_tower", "model.multi_modal_projector"],  # hf_ext's default keeps lm_head
    "beit3_fp32": ["model.vision_tower"],
    "projector_fp32": ["model.multi_modal_projector"],
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quantization_muffin"))
    args = parser.parse_args(argv)
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    from hf_ext.models.muffin import MuffinForConditionalGeneration
    from hf_ext.testing import tiny_muffin

    torch.manual_seed(0)
    model, _ = tiny_muffin(
        hidden_size=args.hidden, num_layers=args.layers, num_query=args.queries, image_size=args.image_size
    )
    path = tempfile.mkdtemp()
    model.save_pretrained(path)
    pixels = torch.randn(4, 3, args.image_size, args.image_size)
    image = torch.full((4, args.queries), model.config.image_token_id)
    ids = torch.cat([image, torch.randint(5, 250, (4, 24))], 1)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits
    results = {"config": vars(args), "variants": {}}
    print(f"{'variant':18} {'quantised':45} {'rel. logit error':>16} {'top-1 agree':>11}")
    for name, skip in VARIANTS.items():
        config = TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=skip)
        quant = MuffinForConditionalGeneration.from_pretrained(path, quantization_config=config)
        parts = sorted(
            {
                n.split(".")[1] if n.startswith("model.") else n
                for n, m in quant.named_modules()
                if isinstance(m, torch.nn.Linear) and type(m.weight).__name__ != "Parameter"
            }
        )
        with torch.no_grad():
            out = quant(input_ids=ids, pixel_values=pixels).logits
        rel = ((out - ref).norm() / ref.norm()).item()
        agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
        results["variants"][name] = {"quantised": parts, "rel_logit_error": rel, "top1_agreement": agree}
        print(f"{name:18} {','.join(parts):45} {rel:16.2e} {agree:11.3f}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
