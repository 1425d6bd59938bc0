#!/usr/bin/env python
"""Train VisCPM-Paint's bridge: a frozen LLM's hidden states -> projection -> Stable Diffusion UNet.

Follows diffusers' ``examples/text_to_image/train_text_to_image.py`` (``parse_args`` + ``main``, ``Accelerator``,
save/load-state hooks that write diffusers-format folders, resumable ``checkpoint-N`` folders, validation images); the
pieces it shares with ``examples/iap/train_iap.py`` live in :mod:`hf_ext.pipelines.training_utils`.
VisCPM released no Paint training code; its README says the LLM is frozen and the UNet is fused with it "by
gradually unfreezing key bridging parameters". Here the LLM, VAE and UNet are frozen, ``text_projection`` is trained,
and ``--train_cross_attention`` also trains the UNet's cross-attention key/value projections (``attn2.to_k``/``to_v``,
the parameters that read the text states), optionally from step ``--cross_attention_start_step``.

Loss (as VisCPM's ``SDWrapper.forward``): ``MSE(unet(z_t, t, proj(llm(caption))), target)`` with ``z_t`` the DDPM-noised
VAE latent and ``t ~ U{0..T-1}``.

Example::

    accelerate launch examples/viscpm_paint/train_viscpm_paint.py \
        --pretrained_model_name_or_path path/to/viscpm-paint-diffusers \
        --train_data_dir path/to/imagefolder --caption_column text \
        --resolution 512 --train_batch_size 8 --max_train_steps 10000 --output_dir viscpm-paint-ft

``--pretrained_model_name_or_path`` is either a saved ``VisCPMPaintPipeline`` or, with ``--text_encoder_name_or_path``,
a Stable Diffusion folder (``unet/``, ``vae/``, ``scheduler/``) plus a separate language model; a fresh projection
is then created unless the SD folder has ``text_projection/``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from hf_ext.pipelines import training_utils
from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for `_shared`
from _shared import scale_learning_rate  # noqa: E402

logger = get_logger(__name__, log_level=os.environ.get("HF_EXT_LOG_LEVEL", "INFO"))


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train VisCPM-Paint's text projection (and optionally cross-attention)."
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="A saved VisCPMPaintPipeline, or a Stable Diffusion folder with --text_encoder_name_or_path.",
    )
    parser.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=None,
        help="Language model to condition on (AutoModel); default: the pipeline's text_encoder.",
    )
    parser.add_argument(
        "--tokenizer_name_or_path",
        type=str,
        default=None,
        help="Tokenizer of the language model (default: --text_encoder_name_or_path).",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the pretrained model.")
    parser.add_argument("--variant", type=str, default=None, help="Weight variant, e.g. fp16.")
    training_utils.add_data_arguments(parser, caption_columns="the caption column")
    parser.add_argument("--caption_column", type=str, default="text", help="Column holding the captions.")
    training_utils.add_validation_arguments(parser, prompts_help="Prompts rendered at validation.")
    training_utils.add_optimization_arguments(parser)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the UNet's activations.")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Learning rate of the projection.")
    parser.add_argument(
        "--cross_attention_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the unfrozen cross-attention (default: --learning_rate).",
    )
    parser.add_argument(
        "--train_cross_attention",
        action="store_true",
        help="Also train the UNet's attn2.to_k / attn2.to_v (VisCPM's 'bridging parameters').",
    )
    parser.add_argument(
        "--cross_attention_start_step",
        type=int,
        default=0,
        help="With --train_cross_attention: keep cross-attention frozen before this step (gradual unfreezing).",
    )
    parser.add_argument("--max_sequence_length", type=int, default=None, help="Truncate captions to this many tokens.")
    parser.add_argument(
        "--uncond_dropout",
        type=float,
        default=0.1,
        help="Probability of replacing a caption by '' (learns the unconditional input for CFG).",
    )
    parser.add_argument(
        "--no_encoder_attention_mask",
        action="store_true",
        help="Do not mask caption padding in cross-attention (VisCPM's released behaviour).",
    )
    parser.add_argument("--noise_offset", type=float, default=0.0, help="Noise offset (0 disables).")
    parser.add_argument(
        "--prediction_type", type=str, default=None, help="'epsilon' or 'v_prediction' (default: the scheduler's)."
    )
    training_utils.add_output_arguments(
        parser, output_dir="viscpm-paint-finetuned", tracker_project_name="viscpm-paint"
    )
    args = parser.parse_args(input_args)

    training_utils.check_data_arguments(parser, args)
    if not 0 <= args.uncond_dropout < 1:
        parser.error(f"--uncond_dropout must be in [0, 1), got {args.uncond_dropout}.")
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    return args


# ---------------------------------------------------------------------------------------------- model
def load_components(args):
    """(unet, vae, text_encoder, tokenizer, text_projection, inference scheduler, use_mask)."""
    path = args.pretrained_model_name_or_path
    if args.text_encoder_name_or_path is None:
        pipe = VisCPMPaintPipeline.from_pretrained(path, revision=args.revision, variant=args.variant)
        return (
            pipe.unet,
            pipe.vae,
            pipe.text_encoder,
            pipe.tokenizer,
            pipe.text_projection,
            pipe.scheduler,
            pipe.config.use_encoder_attention_mask and not args.no_encoder_attention_mask,
        )
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", revision=args.revision, variant=args.variant)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", revision=args.revision, variant=args.variant)
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", revision=args.revision)
    text_encoder = AutoModel.from_pretrained(args.text_encoder_name_or_path, revision=args.revision)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path or args.text_encoder_name_or_path)
    if os.path.isdir(os.path.join(path, "text_projection")):
        projection = VisCPMPaintTextProjection.from_pretrained(path, subfolder="text_projection")
    else:
        hidden = text_encoder.config.get_text_config().hidden_size
        projection = VisCPMPaintTextProjection(hidden, unet.config.cross_attention_dim)
        logger.info(f"New text projection {hidden} -> {unet.config.cross_attention_dim}")
    return unet, vae, text_encoder, tokenizer, projection, scheduler, not args.no_encoder_attention_mask


def cross_attention_parameters(unet: UNet2DConditionModel) -> list[torch.nn.Parameter]:
    params = []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            params += list(module.to_k.parameters()) + list(module.to_v.parameters())
    return params


def main(args: argparse.Namespace) -> Path:
    accelerator = training_utils.create_accelerator(args)

    unet, vae, text_encoder, tokenizer, projection, inference_scheduler, use_mask = load_components(args)
    noise_scheduler = DDPMScheduler.from_config(inference_scheduler.config)
    if args.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)

    # frozen parts
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    projection.requires_grad_(True)
    projection.train()
    text_encoder.eval()
    vae.eval()
    cross_params = cross_attention_parameters(unet) if args.train_cross_attention else []
    if args.train_cross_attention:
        for p in cross_params:
            p.requires_grad_(True)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # checkpoints in diffusers format
    training_utils.register_checkpoint_hooks(
        accelerator, {VisCPMPaintTextProjection: "text_projection", UNet2DConditionModel: "unet"}
    )

    scale_learning_rate(args, accelerator)
    groups = [{"params": list(projection.parameters()), "lr": args.learning_rate}]
    if cross_params:
        groups.append({"params": cross_params, "lr": args.cross_attention_learning_rate or args.learning_rate})
    optimizer = training_utils.create_optimizer(args, groups)

    # data
    columns = {"--image_column": args.image_column, "--caption_column": args.caption_column}
    augmentation = training_utils.SeededImageAugmentation(args)  # its epoch is set at each epoch start
    train_dataset = augmentation.apply(training_utils.load_train_dataset(args, columns), accelerator)

    def collate_fn(examples):
        captions = []
        for i, example in enumerate(examples):
            caption = example[args.caption_column]
            if isinstance(caption, (list, tuple)):
                caption = example["_rng"].choice(caption) if caption else None
            if not isinstance(caption, str):
                raise ValueError(f"Caption of a training example ({i} in its batch) is {caption!r}, not a string.")
            captions.append(caption)
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(), "captions": captions}

    train_dataloader = training_utils.create_train_dataloader(train_dataset, collate_fn, args)
    lr_scheduler = training_utils.create_lr_scheduler(args, optimizer, train_dataloader, accelerator)
    if args.train_cross_attention:
        projection, unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            projection, unet, optimizer, train_dataloader, lr_scheduler
        )
    else:
        projection, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            projection, optimizer, train_dataloader, lr_scheduler
        )
    weight_dtype = training_utils.weight_dtype_of(accelerator)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    if not args.train_cross_attention:
        unet.to(accelerator.device, dtype=weight_dtype)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    if accelerator.is_main_process:
        accelerator.init_trackers(
            args.tracker_project_name, {k: v for k, v in vars(args).items() if not isinstance(v, list)}
        )

    # a pipeline object sharing the (unwrapped) modules: used for tokenization/encoding and validation
    pipeline = VisCPMPaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_projection=accelerator.unwrap_model(projection),
        unet=accelerator.unwrap_model(unet),
        scheduler=inference_scheduler,
        use_encoder_attention_mask=use_mask,
    )

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}")
    logger.info(f"  Num epochs = {num_train_epochs}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")

    global_step, first_epoch, resume_batches = training_utils.resume_from_checkpoint(
        accelerator, args, num_update_steps_per_epoch
    )

    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    trained = [projection, unet] if args.train_cross_attention else [projection]
    if args.train_cross_attention:
        unet.train()
    last_loss = float("nan")
    for epoch in range(first_epoch, num_train_epochs):
        augmentation.epoch = epoch
        train_loss = 0.0
        for batch in training_utils.epoch_batches(
            accelerator, train_dataloader, epoch, resume_batches if epoch == first_epoch else 0
        ):
            if global_step >= args.max_train_steps:
                break
            if args.train_cross_attention:
                frozen = global_step < args.cross_attention_start_step
                for p in cross_params:
                    p.requires_grad_(not frozen)
            with accelerator.accumulate(*trained):
                pixel_values = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)
                with torch.no_grad():
                    latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
                    captions = [
                        "" if args.uncond_dropout and random.random() < args.uncond_dropout else c
                        for c in batch["captions"]
                    ]
                    input_ids, attention_mask = pipeline.tokenize_prompts(captions, args.max_sequence_length)
                    hidden = pipeline.text_hidden_states(input_ids, attention_mask, accelerator.device)
                text_states = projection(hidden.float())
                attention_mask = attention_mask.to(accelerator.device)

                noise = torch.randn_like(latents)
                if args.noise_offset:
                    noise += args.noise_offset * torch.randn(
                        (latents.shape[0], latents.shape[1], 1, 1), device=latents.device
                    )
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                ).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                elif noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    raise ValueError(f"Unknown prediction type {noise_scheduler.config.prediction_type}")
                model_pred = unet(
                    noisy_latents,
                    timesteps,
                    encoder_hidden_states=text_states.to(weight_dtype),
                    encoder_attention_mask=attention_mask if use_mask else None,
                    return_dict=False,
                )[0]
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(args.train_batch_size)).mean()
                train_loss += avg_loss.item() / args.gradient_accumulation_steps

                training_utils.backward_and_step(accelerator, loss, optimizer, lr_scheduler, args.max_grad_norm)

            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                last_loss = train_loss
                logger.debug(f"step {global_step}: loss {train_loss:.6f}")
                accelerator.log({"train_loss": train_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
                train_loss = 0.0
                if global_step % args.checkpointing_steps == 0:
                    training_utils.save_checkpoint(accelerator, args, global_step)
                if args.validation_prompts and global_step % args.validation_steps == 0:
                    projection.eval()
                    training_utils.log_validation(pipeline, args, accelerator, global_step)
                    projection.train()
            progress_bar.set_postfix(loss=last_loss, lr=lr_scheduler.get_last_lr()[0])
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    output = Path(args.output_dir)
    if accelerator.is_main_process:
        projection = accelerator.unwrap_model(projection).eval()
        unet = accelerator.unwrap_model(unet).eval()
        if weight_dtype != torch.float32:  # save full-precision weights
            vae, text_encoder, unet = vae.to(torch.float32), text_encoder.to(torch.float32), unet.to(torch.float32)
        final = VisCPMPaintPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_projection=projection,
            unet=unet,
            scheduler=inference_scheduler,
            use_encoder_attention_mask=use_mask,
        )
        final.save_pretrained(args.output_dir)
        if args.validation_prompts:
            training_utils.log_validation(final, args, accelerator, global_step)
    accelerator.end_training()
    return output


if __name__ == "__main__":
    main(parse_args())
