"""Peak memory of converting an original CPM-Bee checkpoint: hf_ext's streaming converter side by side with the naive
way (``torch.load`` everything, cast the whole state dict, ``save_file`` once), on the same synthetic fp16 checkpoint
in CPM-Bee's original key layout. Each method runs in its own process; the peak resident set size (``ru_maxrss``) of
that process is reported, minus the RSS of a process that only imports the libraries, and printed as a ratio.

    .venv/bin/python benchmarks/cpmbee_convert_memory.py                       # ~130M params (260 MB fp16), ~1 min
    .venv/bin/python benchmarks/cpmbee_convert_memory.py --hidden 2048 --layers 12

The 10B model scales the same way: the streaming peak is about one shard (``--max_shard_size``) plus one tensor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETUP = "import resource, torch, safetensors.torch, hf_ext.models.cpmbee.convert_cpmbee_original_to_hf\n"
REPORT = "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # KiB on Linux


def _rss_kib(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", SETUP + code + REPORT], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=30000)
    p.add_argument("--max_shard_size", default="50MB")
    args = p.parse_args(argv)

    import torch

    from hf_ext.models.cpmbee import CpmBeeConfig
    from hf_ext.models.cpmbee.convert_cpmbee_original_to_hf import expected_cpmbee_shapes

    original = {
        "vocab_size": args.vocab, "dim_model": args.hidden, "dim_ff": int(2.5 * args.hidden),
        "num_layers": args.layers, "num_heads": args.hidden // 64, "dim_head": 64,
        "position_bias_num_buckets": 256, "position_bias_num_segment_buckets": 256,
        "position_bias_max_distance": 2048, "eps": 1e-6, "half": True,
    }  # fmt: skip
    config = CpmBeeConfig.from_original_config(original)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = torch.Generator().manual_seed(0)
        state = {k: torch.randn(s, generator=gen).half() for k, s in expected_cpmbee_shapes(config).items()}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        torch.save(state, tmp / "cpm-bee.pt")
        del state
        (tmp / "config.json").write_text(json.dumps(original))
        (tmp / "vocab.txt").write_text("".join(f"<t{i}>\n" if i > 10 else t + "\n" for i, t in enumerate(
            ["<pad>", "<unk>", "<mask>", "<sep>", "</n>", "</_>", "<s>", "</s>", "<root>", "<ans>", "<option>"]
            + [None] * (args.vocab - 11))))  # fmt: skip

        base = _rss_kib("")
        streaming = _rss_kib(
            "from hf_ext.models.cpmbee.convert_cpmbee_original_to_hf import convert_cpmbee_checkpoint\n"
            f"convert_cpmbee_checkpoint({str(tmp / 'cpm-bee.pt')!r}, {str(tmp / 'config.json')!r}, "
            f"{str(tmp / 'vocab.txt')!r}, {str(tmp / 'out_stream')!r}, dtype='float16', "
            f"max_shard_size={args.max_shard_size!r})\n"
        )
        naive = _rss_kib(
            f"sd = torch.load({str(tmp / 'cpm-bee.pt')!r}, weights_only=True)\n"
            "sd = {'cpmbee.' + k: v.float() for k, v in sd.items()}\n"
            f"safetensors.torch.save_file(sd, {str(tmp / 'naive.safetensors')!r})\n"
        )
    mib = 1024
    print(
        f"checkpoint: {nbytes / 2**20:.0f} MiB fp16 ({nbytes // 2 / 1e6:.0f}M parameters), shard {args.max_shard_size}"
    )
    print(f"extra peak RSS, streaming converter (fp16 out): {(streaming - base) / mib:8.1f} MiB")
    print(f"extra peak RSS, naive load + fp32 cast + save:   {(naive - base) / mib:8.1f} MiB")
    print(f"ratio naive / streaming: {(naive - base) / max(streaming - base, 1):.1f}x")


if __name__ == "__main__":
    main()
