"""VisCPMPaintPipeline vs StableDiffusionPipeline with the *identical* UNet, VAE and scheduler: latency ratio.

Both pipelines share the same module objects; only the text side differs (a tiny Llama + projection vs a tiny CLIP
text encoder). Runs are interleaved (paint, sd, paint, sd, ...) after a warm-up and the medians are compared, so
machine-load drift hits both alike. Target: ratio <= 1.05.

    .venv/bin/python benchmarks/paint_vs_sd.py --steps 10 --size 64 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.testing import tiny_llm_text_encoder, tiny_scheduler, tiny_stable_diffusion_pipeline, tiny_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--size", type=int, default=64, help="image height = width (pixels)")
    parser.add_argument("--batch", type=int, default=2, help="prompts per call")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per pipeline")
    parser.add_argument("--channels", type=int, nargs=2, default=(32, 64), help="UNet block_out_channels")
    parser.add_argument("--cross_attention_dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = least noise on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=tuple(args.channels),
        layers_per_block=1,
        sample_size=args.size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=args.cross_attention_dim,
        norm_num_groups=min(32, args.channels[0]),
        attention_head_dim=8,
    ).eval()
    vae, scheduler = tiny_vae(), tiny_scheduler()
    llm, tokenizer = tiny_llm_text_encoder(hidden_size=64)
    paint = VisCPMPaintPipeline(
        vae=vae,
        text_encoder=llm,
        tokenizer=tokenizer,
        text_projection=VisCPMPaintTextProjection(64, args.cross_attention_dim).eval(),
        unet=unet,
        scheduler=scheduler,
    )
    sd = tiny_stable_diffusion_pipeline(unet=unet, vae=vae, scheduler=scheduler)
    paint.set_progress_bar_config(disable=True)
    prompts = ["a red cat wearing a hat", "一只蓝色的狗在公园里跑"][: args.batch]
    prompts += [prompts[-1]] * (args.batch - len(prompts))
    sd_prompts = ["a red cat wearing a hat", "a blue dog running in the park"][: args.batch]
    sd_prompts += [sd_prompts[-1]] * (args.batch - len(sd_prompts))

    def call(pipe, p):
        start = time.perf_counter()
        pipe(p, num_inference_steps=args.steps, height=args.size, width=args.size, output_type="np",
             generator=torch.Generator().manual_seed(0))  # fmt: skip
        return time.perf_counter() - start

    call(paint, prompts), call(sd, sd_prompts)  # warm-up
    t_paint, t_sd = [], []
    for _ in range(args.repeats):
        t_paint.append(call(paint, prompts))
        t_sd.append(call(sd, sd_prompts))
    m_paint, m_sd = statistics.median(t_paint), statistics.median(t_sd)
    print(f"torch {torch.__version__}, threads={args.threads}, steps={args.steps}, size={args.size}, "
          f"batch={args.batch}, CFG on, UNet channels={tuple(args.channels)}, repeats={args.repeats}")  # fmt: skip
    print(f"StableDiffusionPipeline  median {m_sd * 1000:8.1f} ms   (min {min(t_sd) * 1000:.1f})")
    print(f"VisCPMPaintPipeline      median {m_paint * 1000:8.1f} ms   (min {min(t_paint) * 1000:.1f})")
    print(f"latency ratio paint/sd (median) = {m_paint / m_sd:.3f}   (min/min = {min(t_paint) / min(t_sd):.3f})")


if __name__ == "__main__":
    main()
