"""Muffin vs transformers' Llava: time to first token and decode throughput at realistic proportions.

Muffin-13B / RLHF-V-13B put a 13B LLM (LLaMA-13B / Vicuna-13B: hidden 5120, 40 layers, FFN 13824) behind BEiT-3 Large
(hidden 1024, 24 layers, FFN 4096; 448 px for RLHF-V, patch 16 -> 784 patches + CLS + 64 queries) and hand the LLM 64
visual tokens. LLaVA-1.5-13B puts the same LLM behind CLIP ViT-L/14 at 336 px and hands it 576 patch tokens. The LLM is
~40x more expensive per token than the vision tower, so what matters is how many visual tokens reach the LLM.

Presets (``--preset``):

* ``scaled`` (CPU): both widths / 8 and both depths / 4, **sequence lengths unchanged** (BEiT-3 at 448 px with 64
  queries, CLIP at 336 px / patch 14 = 576 patch tokens): LLM hidden 640, 10 layers, 10 heads, FFN 1728; vision hidden
  128, 6 layers, 2 heads, FFN 512. The LLM : vision per-token cost ratio is the real one (41.7).
* ``full`` (GPU): the real sizes (random weights, bf16; ~26 GB per model).
* ``tiny``: a seconds-long smoke run.

Both models are random, built from configs; they share the same LLM weights. Each uses its own prompt format (Muffin:
the original evaluation prompt; Llava-1.5: ``{system} USER: <image>\\n{q} ASSISTANT:``, same system prompt) and one 320x240 image. Time to first
token (TTFT) = ``generate(max_new_tokens=1)`` (image encoding + prefill + one token); decode throughput =
``(N - 1) / (time(generate N) - TTFT)``. Models are timed interleaved (A, B, A, B, ...), minimum over repeats.

    python benchmarks/muffin_generate.py --preset scaled --threads 1
    python benchmarks/muffin_generate.py --preset full --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

# llm: (hidden, layers, heads, ffn); vision: (hidden, layers, heads, ffn); muffin image/patch; llava image/patch
PRESETS = {
    "tiny": {"llm": (64, 2, 4, 128), "vision": (32, 2, 2, 64), "muffin_image": (64, 16), "llava_image": (56, 14)},
    "scaled": {
        "llm": (640, 10, 10, 1728),
        "vision": (128, 6, 2, 512),
        "muffin_image": (448, 16),
        "llava_image": (336, 14),
    },
    "full": {
        "llm": (5120, 40, 40, 13824),
        "vision": (1024, 24, 16, 4096),
        "muffin_image": (448, 16),
        "llava_image": (336, 14),
    },
}
QUESTION = "Describe the image in detail."


def build(preset: str, num_query: int, device: str, dtype: torch.dtype):
    from PIL import Image
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from hf_ext.models.muffin import (
        MuffinConfig,
        MuffinForConditionalGeneration,
        MuffinImageProcessor,
        MuffinProcessor,
    )
    from hf_ext.models.muffin.processing_muffin import DEFAULT_SYSTEM_PROMPT
    from hf_ext.testing import tiny_bpe_tokenizer

    p = PRESETS[preset]
    (lh, ll, lheads, lffn), (vh, vl, vheads, vffn) = p["llm"], p["vision"]
    (m_img, m_patch), (l_img, l_patch) = p["muffin_image"], p["llava_image"]
    # a BPE trained on the prompts' words, so that the text takes about as many tokens as with LLaMA's tokenizer
    corpus = [DEFAULT_SYSTEM_PROMPT, QUESTION, "### Human: Assistant: USER: ASSISTANT:"] * 20
    tok = tiny_bpe_tokenizer(
        corpus, vocab_size=400, additional_special_tokens=["<im_patch>", "<im_start>", "<im_end>", "<image>"]
    )
    text = LlamaConfig(
        hidden_size=lh,
        num_hidden_layers=ll,
        num_attention_heads=lheads,
        num_key_value_heads=lheads,
        intermediate_size=lffn,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
    )
    vocab = tok.get_vocab()
    # BEiT-3 and CLIP at the same width, depth and heads
    tower = dict(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=vheads, intermediate_size=vffn)
    cfg = MuffinConfig(
        vision_config=dict(
            **tower,
            image_size=m_img,
            patch_size=m_patch,
            vocab_size=64,
            max_position_embeddings=num_query + 4,
        ),
        text_config=text.to_dict(),
        num_query=num_query,
        image_token_id=vocab["<im_patch>"],
        image_start_token_id=vocab["<im_start>"],
        image_end_token_id=vocab["<im_end>"],
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        muffin = MuffinForConditionalGeneration(cfg).to(dtype).eval()
    mproc = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": m_img, "width": m_img}),
        tokenizer=tok,
        num_query=num_query,
    )
    lcfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**tower, image_size=l_img, patch_size=l_patch),
        text_config=text,
        image_token_id=vocab["<image>"],
        vision_feature_layer=-2,  # LLaVA-1.5
        vision_feature_select_strategy="default",
        image_seq_length=(l_img // l_patch) ** 2,
    )
    with torch.device(device):
        llava = LlavaForConditionalGeneration(lcfg).to(dtype).eval()
    llava.model.language_model.load_state_dict(muffin.model.language_model.state_dict())
    llava.lm_head.load_state_dict(muffin.lm_head.state_dict())
    lproc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"height": l_img, "width": l_img}, crop_size={"height": l_img, "width": l_img}
        ),
        tokenizer=tok,
        patch_size=l_patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    image = Image.new("RGB", (320, 240), (120, 30, 200))
    m_prompt = mproc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )
    m_inputs = mproc(images=[image], text=m_prompt, return_tensors="pt")
    # LLaVA-1.5's prompt (conv_vicuna_v1): the same system prompt, "USER: <image>\n{q} ASSISTANT:"
    l_prompt = f"{DEFAULT_SYSTEM_PROMPT} USER: <image>\n{QUESTION} ASSISTANT:"
    l_inputs = lproc(images=[image], text=l_prompt, return_tensors="pt")
    return (muffin, m_inputs.to(device)), (llava, l_inputs.to(device))


def _prepare(model, inputs):
    return {k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in inputs.items()}


def _clock(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure_pair(pair, new_tokens: int, repeats: int, device: str) -> list[dict]:
    """TTFT and decode throughput of both models, timed interleaved; minimum over `repeats`."""
    one = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False)
    many = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    prepared = [(model, _prepare(model, inputs)) for model, inputs in pair]
    ttft = [[] for _ in pair]
    full = [[] for _ in pair]
    with torch.inference_mode():
        for model, inputs in prepared:  # warm-up
            model.generate(**inputs, **many)
        for _ in range(repeats):
            for i, (model, inputs) in enumerate(prepared):
                ttft[i].append(_clock(lambda m=model, x=inputs: m.generate(**x, **one), device))
                full[i].append(_clock(lambda m=model, x=inputs: m.generate(**x, **many), device))
    results = []
    for (_, inputs), t, f in zip(prepared, ttft, full):
        first, total = min(t), min(f)
        results.append(
            {
                "prompt_tokens": inputs["input_ids"].shape[1],
                "ttft_s": first,
                "decode_tok_per_s": (new_tokens - 1) / max(total - first, 1e-9),
            }
        )
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="scaled")
    parser.add_argument("--num_query", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared CPU).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"preset={args.preset} device={device_name} dtype={dtype} threads={torch.get_num_threads()} "
        f"new_tokens={args.new_tokens} repeats={args.repeats}"
    )
    (muffin, m_in), (llava, l_in) = build(args.preset, args.num_query, args.device, dtype)
    m_llm = sum(p.numel() for p in muffin.model.language_model.parameters())
    m_vis = sum(p.numel() for p in muffin.model.vision_tower.parameters())
    l_vis = sum(p.numel() for p in llava.model.vision_tower.parameters())
    print(f"LLM {m_llm / 1e6:.1f}M params; BEiT-3 {m_vis / 1e6:.1f}M; CLIP {l_vis / 1e6:.1f}M")
    rm, rl = measure_pair([(muffin, m_in), (llava, l_in)], args.new_tokens, args.repeats, args.device)
    print(f"{'model':7} {'prompt tokens':>13} {'TTFT ms':>9} {'decode tok/s':>12}")
    for name, r in (("muffin", rm), ("llava", rl)):
        print(f"{name:7} {r['prompt_tokens']:13d} {1e3 * r['ttft_s']:9.1f} {r['decode_tok_per_s']:12.1f}")
    ratios = {
        "ttft_muffin_over_llava": rm["ttft_s"] / rl["ttft_s"],
        "decode_muffin_over_llava": rm["decode_tok_per_s"] / rl["decode_tok_per_s"],
    }
    print(
        f"TTFT muffin/llava = {ratios['ttft_muffin_over_llava']:.2f} (target <= 0.5), "
        f"decode throughput muffin/llava = {ratios['decode_muffin_over_llava']:.2f} (target >= 0.9)"
    )
    return {"muffin": rm, "llava": rl, **ratios}


if __name__ == "__main__":
    main()
