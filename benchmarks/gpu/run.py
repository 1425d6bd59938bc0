"""The prepared GPU benchmark (one command, <= 8 minutes on one H100/H200/A100): bf16 + SDPA, random models built
from configs (no downloads), every figure next to its peer's in the same run.

Sections (`--only` picks some):

* `dpo`: dense DPO vs TRL's DPOTrainer on a ~1.2B-parameter Muffin (Llama-style LLM 2048 x 16 layers + BEiT-3 base
  bridge): step time, peak memory and MFU for TRL (live reference), DenseDPOTrainer (live reference) and
  DenseDPOTrainer with precomputed per-token reference log-probs (no reference in memory).
* `generate`: `benchmarks/muffin_generate.py` at its `full` preset (Muffin-13B vs LLaVA-1.5-13B sizes, same LLM
  weights, random): time to first token and decode throughput; Muffin feeds the LLM 64 query tokens, LLaVA-1.5 576
  patch tokens (336 px / 14).
* `paint`: VisCPM-Paint vs Stable Diffusion at 512 px, same SD-1.5-sized UNet, VAE and scheduler, 20 DDIM steps,
  classifier-free guidance; Paint's text encoder is a 1B LLM (as VisCPM-Paint's CPM-Bee), SD's is CLIP ViT-L's.
* `quant`: Muffin-1B loaded in bf16 vs bitsandbytes NF4 (QLoRA) and torchao int8: weight memory and logit error, and
  the NF4 round trip against nearest-code NF4 computed by hand (bitsandbytes' CPU backend fails that check).

MFU = model FLOPs per second / the GPU's dense bf16 peak, with training FLOPs = 6 x trainable parameters x tokens (+
2 x parameters x tokens for a live reference forward), attention's quadratic term left out (short sequences here).

    bash benchmarks/gpu/run.sh                 # on a GPU machine: writes benchmarks/results/gpu/<gpu>/results.{json,md}
    python benchmarks/gpu/run.py --dry-run     # CPU: builds every model at tiny size and runs one step of each

Not run on a GPU yet (no GPU lent to the session that wrote it): the dry run is what CI runs.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, by substring of torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

SIZES = {
    # LLM hidden, layers, heads, intermediate, vocab; vision hidden, layers, heads; image px, queries; text lengths
    "gpu": dict(
        hidden=2048,
        layers=16,
        heads=16,
        inter=5632,
        vocab=32000,
        vhidden=768,
        vlayers=12,
        vheads=12,
        image=224,
        queries=64,
    ),  # fmt: skip
    "tiny": dict(
        hidden=32, layers=2, heads=4, inter=64, vocab=400, vhidden=32, vlayers=2, vheads=4, image=32, queries=4
    ),
}


def peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


# ------------------------------------------------------------------------------------------------ models
def build_muffin(size: dict, dtype: torch.dtype, device: str):
    from hf_ext.models.muffin import MuffinForConditionalGeneration
    from hf_ext.models.muffin.image_processing_muffin import MuffinImageProcessor
    from hf_ext.models.muffin.processing_muffin import MuffinProcessor
    from hf_ext.testing import tiny_muffin_config, tiny_muffin_tokenizer

    tok = tiny_muffin_tokenizer()
    cfg = tiny_muffin_config(
        tok, num_query=size["queries"], image_size=size["image"], hidden_size=size["hidden"], num_layers=size["layers"]
    )
    t, v = cfg.text_config, cfg.vision_config
    t.num_attention_heads = t.num_key_value_heads = size["heads"]
    t.head_dim = size["hidden"] // size["heads"]
    t.intermediate_size, t.vocab_size = size["inter"], size["vocab"]
    v.hidden_size, v.num_hidden_layers, v.num_attention_heads = size["vhidden"], size["vlayers"], size["vheads"]
    v.intermediate_size = 4 * size["vhidden"]
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = MuffinForConditionalGeneration(cfg).to(dtype)
    processor = MuffinProcessor(
        image_processor=MuffinImageProcessor(size={"height": size["image"], "width": size["image"]}),
        tokenizer=tok,
        num_query=size["queries"],
        chat_template="muffin_v0",  # prompt + completion renderings share the prompt (what TRL needs)
    )
    return model, processor


def n_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------------------------ dense DPO
def bench_dpo(args, size: dict, dtype, device: str) -> dict:
    from trl import DPOConfig, DPOTrainer

    from dataset_builders.rlhf_v import load_rlhf_v, make_rlhf_v_rows, write_rlhf_v_parquet
    from hf_ext import DenseDPOConfig, DenseDPOTrainer

    batch, steps, warmup = args.batch, args.steps, args.warmup
    data_dir = tempfile.mkdtemp(prefix="gpu_bench_")
    parquet = write_rlhf_v_parquet(
        make_rlhf_v_rows(n=batch * 2, image_size=size["image"]), os.path.join(data_dir, "d.parquet")
    )
    dataset = load_rlhf_v(parquet)
    common = dict(
        per_device_train_batch_size=batch,
        max_length=None,
        bf16=dtype == torch.bfloat16,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        learning_rate=1e-6,
        save_strategy="no",
    )
    out = {"batch_pairs": batch, "steps": steps, "variants": {}}
    for variant in ("trl", "dense", "dense_precomputed"):
        reset_memory(device)
        model, processor = build_muffin(size, dtype, device)
        out["params"] = n_params(model)
        kwargs = dict(output_dir=tempfile.mkdtemp(prefix=f"gpu_bench_{variant}_"), **common)
        if variant == "trl":
            trainer = DPOTrainer(
                model=model,
                ref_model=copy.deepcopy(model),
                args=DPOConfig(**kwargs),
                train_dataset=dataset,
                processing_class=processor,
            )
        else:
            trainer = DenseDPOTrainer(
                model=model,
                ref_model=None if variant == "dense_precomputed" else copy.deepcopy(model),
                args=DenseDPOConfig(
                    **kwargs,
                    dense_gamma=5.0,  # RLHF-V's gamma
                    precompute_ref_log_probs=variant == "dense_precomputed",
                    ref_logps_cache_dir=os.path.join(data_dir, "cache"),
                ),
                train_dataset=dataset,
                processing_class=processor,
            )
        rows = [trainer.train_dataset[i] for i in range(batch)]
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        times, tokens = [], 0
        for step in range(warmup + steps):
            sync(device)
            start = time.perf_counter()
            collated = trainer.data_collator(copy.deepcopy(rows))
            tokens = int(collated["attention_mask"].sum())
            trainer.training_step(trainer.model, collated)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        live_ref = trainer.ref_model is not None
        flops = (6 * n_params(trainer.model, trainable_only=True) + (2 * out["params"] if live_ref else 0)) * tokens
        peak = peak_tflops(device)
        out["variants"][variant] = {
            "step_s": step_s,
            "peak_memory_gb": peak_memory_gb(device),
            "tokens_per_step": tokens,
            "live_reference": live_ref,
            "model_tflops_per_s": flops / step_s / 1e12,
            "mfu": flops / step_s / (peak * 1e12) if peak else None,
        }
        del trainer, model
    v = out["variants"]
    out["ratio_dense_over_trl_step"] = v["dense"]["step_s"] / v["trl"]["step_s"]
    out["ratio_precomputed_over_trl_step"] = v["dense_precomputed"]["step_s"] / v["trl"]["step_s"]
    return out


# ------------------------------------------------------------------------------------------------ generate
def bench_generate(args, size: dict, dtype, device: str) -> dict:
    """benchmarks/muffin_generate.py's comparison: its `full` preset (Muffin-13B vs LLaVA-1.5-13B sizes, random
    weights, ~26 GB each in bf16) when the GPU has the memory, else its `scaled` preset; `tiny` in the dry run."""
    import muffin_generate as mg

    if device != "cuda":
        preset = "tiny"
    else:
        preset = "full" if torch.cuda.get_device_properties(0).total_memory > 70 * 2**30 else "scaled"
    (muffin, m_in), (llava, l_in) = mg.build(preset, size["queries"], device, dtype)
    for model in (muffin, llava):  # transformers' default attention when torch has it
        assert model.config.text_config._attn_implementation == "sdpa", model.config.text_config._attn_implementation
    rm, rl = mg.measure_pair([(muffin, m_in), (llava, l_in)], args.new_tokens, args.repeats, device)
    del muffin, llava
    reset_memory(device)
    return {
        "preset": preset,
        "new_tokens": args.new_tokens,
        "muffin": rm,
        "llava": rl,
        "ttft_speedup_muffin": rl["ttft_s"] / rm["ttft_s"],
        "throughput_ratio_muffin_over_llava": rm["decode_tok_per_s"] / rl["decode_tok_per_s"],
    }


# ------------------------------------------------------------------------------------------------ paint
def bench_paint(args, dtype, device: str) -> dict:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaForCausalLM

    from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
    from hf_ext.testing import tiny_clip_tokenizer, tiny_llm_text_encoder, tiny_scheduler

    tiny = args.dry_run
    px = 32 if tiny else 512
    cross = 8 if tiny else 768
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16) if tiny else (320, 640, 1280, 1280),
        layers_per_block=1 if tiny else 2,
        sample_size=px // (2 if tiny else 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D")
        if tiny
        else ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")
        if tiny
        else ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=8,
        norm_num_groups=4 if tiny else 32,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16] if tiny else [128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * (2 if tiny else 4),
        up_block_types=["UpDecoderBlock2D"] * (2 if tiny else 4),
        latent_channels=4,
        norm_num_groups=4 if tiny else 32,
        layers_per_block=1 if tiny else 2,
    )
    _, llm_tok = tiny_llm_text_encoder()
    hidden = 16 if tiny else 2048
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(llm_tok) if tiny else 32000,
            hidden_size=hidden,
            intermediate_size=2 * hidden if tiny else 5632,
            num_hidden_layers=2 if tiny else 16,
            num_attention_heads=2 if tiny else 16,
            max_position_embeddings=128,
            pad_token_id=llm_tok.pad_token_id,
            attn_implementation="sdpa",
        )
    )
    clip_tok = tiny_clip_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=cross,
            intermediate_size=4 * cross,
            num_attention_heads=2 if tiny else 12,
            num_hidden_layers=2 if tiny else 12,
            vocab_size=len(clip_tok),
            max_position_embeddings=77,
            attn_implementation="sdpa",
        )
    )
    paint = VisCPMPaintPipeline(
        vae=vae,
        text_encoder=llm,
        tokenizer=llm_tok,
        text_projection=VisCPMPaintTextProjection(hidden, cross),
        unet=unet,
        scheduler=tiny_scheduler(),
    ).to(device, dtype)
    sd = StableDiffusionPipeline(
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        unet=unet,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    for pipe in (paint, sd):
        pipe.set_progress_bar_config(disable=True)
    steps = 2 if tiny else 20

    def call(pipe, prompt):
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=steps, height=px, width=px, output_type="np",
                 generator=torch.Generator(device).manual_seed(0))  # fmt: skip
        sync(device)
        return time.perf_counter() - start

    call(paint, "a red cat wearing a hat"), call(sd, "a red cat wearing a hat")  # warm-up
    t_paint, t_sd = [], []
    for _ in range(args.repeats):
        t_paint.append(call(paint, "一只戴着帽子的红色猫"))
        t_sd.append(call(sd, "a red cat wearing a hat"))
    del paint, sd, unet, vae, llm, clip
    reset_memory(device)
    return {
        "size_px": px,
        "steps": steps,
        "paint_s": min(t_paint),
        "sd_s": min(t_sd),
        "ratio_paint_over_sd": min(t_paint) / min(t_sd),
    }


# ------------------------------------------------------------------------------------------------ quantisation
def nf4_roundtrip_error(device: str) -> dict:
    """bitsandbytes' NF4 round trip vs nearest-code NF4 by hand (blocks of 64, absmax scaling)."""
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    w = (torch.randn(256, 256) * 0.02).to(device)
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    deq = F.dequantize_4bit(q, state).float()
    code = F.get_4bit_type("nf4", device=device).float()
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    hand = (code[((blocks / absmax)[..., None] - code).abs().argmin(-1)] * absmax).reshape(w.shape)
    return {
        "max_error_over_block_absmax": ((deq - w).reshape(-1, 64).abs() / absmax).max().item(),
        "agreement_with_hand_nf4": (deq - hand).abs().lt(1e-3 * absmax.max()).float().mean().item(),
    }


def bench_quant(args, size: dict, dtype, device: str) -> dict:
    from transformers import AutoModelForImageTextToText

    from hf_ext.utils.quantization import vlm_quantization_config

    out = {}
    reset_memory(device)
    model, processor = build_muffin(size, dtype, device)
    path = tempfile.mkdtemp(prefix="gpu_bench_quant_")
    model.save_pretrained(path)
    n_img = size["queries"]
    ids = torch.cat(
        [
            torch.full((2, n_img), model.config.image_token_id),
            torch.randint(5, 250, (2, 64 if not args.dry_run else 8)),
        ],
        1,
    ).to(device)
    pixels = torch.randn(2, 3, size["image"], size["image"], device=device, dtype=dtype)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits.float()
    out["bf16_weight_gb" if dtype == torch.bfloat16 else "weight_gb"] = model.get_memory_footprint() / 2**30
    del model
    methods = ["int8_weight_only"] + (["bnb_4bit", "bnb_8bit"] if device == "cuda" else [])
    for method in methods:
        for keep in (True, False):
            reset_memory(device)
            config = vlm_quantization_config(method, keep_bridge_full_precision=keep, compute_dtype=dtype)
            kwargs = {"device_map": device} if device == "cuda" else {}
            q = AutoModelForImageTextToText.from_pretrained(path, quantization_config=config, dtype=dtype, **kwargs)
            with torch.no_grad():
                logits = q(input_ids=ids, pixel_values=pixels).logits.float()
            out[f"{method}{'' if keep else '_bridge_quantised'}"] = {
                "weight_gb": q.get_memory_footprint() / 2**30,
                "rel_logit_error": ((logits - ref).norm() / ref.norm()).item(),
                "top1_agreement": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            }
            del q
    if device == "cuda":
        out["nf4_roundtrip"] = nf4_roundtrip_error(device)
    return out


# ------------------------------------------------------------------------------------------------ report
def table(results: dict) -> str:
    lines = [f"# GPU benchmark ({results['device_name']}, {results['dtype']}, SDPA)", ""]
    if "dpo" in results:
        d = results["dpo"]
        lines += [f"## Dense DPO vs TRL ({d['params'] / 1e9:.2f}B-parameter Muffin, {d['batch_pairs']} pairs/step)", "",
                  "| variant | step s | peak GB | tokens | TFLOP/s | MFU |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, v in d["variants"].items():
            mem = "-" if v["peak_memory_gb"] is None else f"{v['peak_memory_gb']:.1f}"
            mfu = "-" if v["mfu"] is None else f"{100 * v['mfu']:.1f} %"
            lines.append(f"| {name} | {v['step_s']:.3f} | {mem} | {v['tokens_per_step']} | "
                         f"{v['model_tflops_per_s']:.1f} | {mfu} |")  # fmt: skip
        lines += ["", f"step-time ratio dense/TRL {d['ratio_dense_over_trl_step']:.2f}, precomputed/TRL "
                      f"{d['ratio_precomputed_over_trl_step']:.2f}", ""]  # fmt: skip
    if "generate" in results:
        g = results["generate"]
        lines += [f"## Muffin vs Llava generation (muffin_generate preset {g['preset']})", "", "| model | prompt tokens | TTFT ms | decode tok/s |",
                  "|---|---|---|---|"]  # fmt: skip
        for name in ("muffin", "llava"):
            r = g[name]
            lines.append(f"| {name} | {r['prompt_tokens']} | {1e3 * r['ttft_s']:.1f} | {r['decode_tok_per_s']:.1f} |")
        lines += ["", f"TTFT speed-up (Llava/Muffin time) {g['ttft_speedup_muffin']:.2f}, throughput ratio "
                      f"{g['throughput_ratio_muffin_over_llava']:.2f}", ""]  # fmt: skip
    if "paint" in results:
        p = results["paint"]
        lines += [f"## VisCPM-Paint vs Stable Diffusion ({p['size_px']} px, {p['steps']} steps)", "",
                  f"Paint {p['paint_s']:.3f} s, SD {p['sd_s']:.3f} s, ratio {p['ratio_paint_over_sd']:.2f}", ""]  # fmt: skip
    if "quant" in results:
        lines += ["## Quantised loading", "", "| config | weight GB | rel. logit error | top-1 agreement |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, v in results["quant"].items():
            if isinstance(v, dict) and "weight_gb" in v:
                lines.append(f"| {name} | {v['weight_gb']:.2f} | {v['rel_logit_error']:.2e} | "
                             f"{v['top1_agreement']:.3f} |")  # fmt: skip
        if "nf4_roundtrip" in results["quant"]:
            lines += ["", f"NF4 round trip: {results['quant']['nf4_roundtrip']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, tiny models, one step each")
    parser.add_argument("--only", nargs="+", choices=["dpo", "generate", "paint", "quant"], default=None)
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/results/gpu/<gpu name>)")
    parser.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, size = "cpu", torch.float32, SIZES["tiny"]
        args.steps, args.warmup, args.repeats, args.new_tokens, args.batch = 1, 0, 1, 4, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu/run.py needs a CUDA GPU; use --dry-run to check it on the CPU.")
        device, dtype, size = "cuda", torch.bfloat16, SIZES["gpu"]
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    results = {"device_name": name, "dtype": str(dtype), "torch": torch.__version__, "dry_run": args.dry_run,
               "bf16_peak_tflops": peak_tflops(device)}  # fmt: skip
    sections = args.only or ["dpo", "generate", "paint", "quant"]
    timings = {}
    for section in sections:
        start = time.perf_counter()
        if section == "dpo":
            results["dpo"] = bench_dpo(args, size, dtype, device)
        elif section == "generate":
            results["generate"] = bench_generate(args, size, dtype, device)
        elif section == "paint":
            results["paint"] = bench_paint(args, dtype, device)
        else:
            results["quant"] = bench_quant(args, size, dtype, device)
        timings[section] = time.perf_counter() - start
        print(f"[gpu-bench] {section} done in {timings[section]:.1f} s", flush=True)
    results["section_wall_s"] = timings
    if args.out is None and args.dry_run:  # a dry run's numbers are no results: keep them out of the repository
        args.out = tempfile.mkdtemp(prefix="gpu_bench_dry_run_")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / "gpu" / name.replace(" ", "_").replace("(", "").replace(")", "")
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
