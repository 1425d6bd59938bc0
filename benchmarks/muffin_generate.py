"""Muffin vs transformers' Llava: prefill latency and `generate` throughput, same LLM, same prompt and image.

Both models are random, built from configs, fp32 (CPU) or fp16/bf16 (GPU). The LLM is the same Llama config (and
the same weights); the vision towers have the same width/depth/heads/patch (BEiT-3 multiway vs CLIP vision). Muffin
feeds `num_query` (64) visual tokens to the LLM, Llava one per patch (196 at 224 px): that difference is inherent to
the methods and is reported next to the timings. Ratios > 1 mean Muffin is faster. Throughput = new tokens / `generate` wall time (prefill included).

    python benchmarks/muffin_generate.py --size tiny
    python benchmarks/muffin_generate.py --size small --new_tokens 32 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

SIZES = {
    # name: (hidden, layers, heads, image_size)
    "tiny": (64, 2, 4, 64),
    "small": (256, 4, 4, 224),
    "base": (768, 12, 12, 224),
}


def build(size: str, num_query: int, device: str, dtype: torch.dtype):
    from PIL import Image
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from hf_ext.models.muffin import MuffinForConditionalGeneration, tiny_muffin_config, tiny_muffin_tokenizer
    from hf_ext.models.muffin.image_processing_muffin import MuffinImageProcessor
    from hf_ext.models.muffin.processing_muffin import MuffinProcessor

    hidden, layers, heads, image_size = SIZES[size]
    tok = tiny_muffin_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<im_patch>", "<im_start>", "<im_end>", "<image>"]})
    cfg = tiny_muffin_config(tok, num_query=num_query, image_size=image_size, hidden_size=hidden, num_layers=layers)
    cfg.vision_config.num_attention_heads = heads
    cfg.text_config.num_attention_heads = heads
    cfg.text_config.num_key_value_heads = heads
    cfg.text_config.head_dim = hidden // heads
    cfg.text_config.intermediate_size = 4 * hidden
    cfg.vision_config.intermediate_size = 4 * hidden
    cfg.text_config.vocab_size = len(tok)
    torch.manual_seed(0)
    muffin = MuffinForConditionalGeneration(cfg).to(device, dtype).eval()
    mproc = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tok,
        num_query=num_query,
    )

    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=16,
    )
    lcfg = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**cfg.text_config.to_dict()),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    llava = LlavaForConditionalGeneration(lcfg).to(device, dtype).eval()
    # same LLM weights in both models
    llava.model.language_model.load_state_dict(muffin.model.language_model.state_dict())
    llava.lm_head.load_state_dict(muffin.lm_head.state_dict())
    lproc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"height": image_size, "width": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    image = Image.new("RGB", (320, 240), (120, 30, 200))
    question = "describe the image in detail ."
    m_inputs = mproc(images=[image], text=f"### Human: <image>\n{question}\n### Assistant:", return_tensors="pt")
    l_inputs = lproc(images=[image], text=f"### Human: <image>\n{question}\n### Assistant:", return_tensors="pt")
    return (muffin, m_inputs.to(device)), (llava, l_inputs.to(device))


def _prepare(model, inputs):
    return {k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in inputs.items()}


def _clock(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure_pair(pair, new_tokens: int, repeats: int, device: str) -> list[dict]:
    """Time both models *interleaved* (A, B, A, B, ...) so that load changes on a shared machine hit both alike;
    report the minimum over repeats (other processes only ever add time)."""
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    prepared = [(model, _prepare(model, inputs)) for model, inputs in pair]
    prefill = [[] for _ in pair]
    gen = [[] for _ in pair]
    with torch.inference_mode():
        for model, inputs in prepared:  # warm-up
            model(**inputs)
            model.generate(**inputs, **kw)
        for _ in range(repeats):
            for i, (model, inputs) in enumerate(prepared):
                prefill[i].append(_clock(lambda m=model, x=inputs: m(**x, logits_to_keep=1), device))
                gen[i].append(_clock(lambda m=model, x=inputs: m.generate(**x, **kw), device))
    return [
        {"prompt_tokens": inputs["input_ids"].shape[1], "prefill_s": min(p), "tok_per_s": new_tokens / min(g)}
        for (_, inputs), p, g in zip(prepared, prefill, gen)
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), nargs="+", default=["tiny", "small"])
    parser.add_argument("--num_query", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared CPU).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    print(f"device={args.device} dtype={dtype} threads={torch.get_num_threads()} new_tokens={args.new_tokens}")
    header = f"{'size':6} {'model':7} {'prompt':>6} {'prefill ms':>10} {'tok/s':>8}"
    print(header)
    for size in args.size:
        (muffin, m_in), (llava, l_in) = build(size, args.num_query, args.device, dtype)
        rm, rl = measure_pair([(muffin, m_in), (llava, l_in)], args.new_tokens, args.repeats, args.device)
        for name, r in (("muffin", rm), ("llava", rl)):
            print(f"{size:6} {name:7} {r['prompt_tokens']:6d} {1e3 * r['prefill_s']:10.1f} {r['tok_per_s']:8.1f}")
        print(
            f"{size:6} ratio   throughput muffin/llava = {rm['tok_per_s'] / rl['tok_per_s']:.2f}, "
            f"prefill speed-up llava_time/muffin_time = {rl['prefill_s'] / rm['prefill_s']:.2f}"
        )


if __name__ == "__main__":
    main()
