#!/usr/bin/env python
"""IAP: align a Chinese text encoder to Stable Diffusion's frozen cross-attention, with images as pivots.

Reconstruction of Hu et al., "Efficient Cross-Lingual Transfer for Chinese Stable Diffusion with Images as Pivots"
(arXiv 2305.11540) from its abstract: only the Chinese encoder (plus a projection when its width differs from the
UNet's ``cross_attention_dim``) is trained; the UNet, VAE and English CLIP encoder stay frozen. For each
(image, English caption, Chinese caption) triplet the image is encoded and noised, and the loss pulls the UNet's
cross-attention outputs with the Chinese states towards those with the English states
(:func:`hf_ext.pipelines.iap.iap_alignment_loss`; layers, distance, pivot mode and timestep sampling are flags, and
their defaults are our choices, not the paper's).

Follows diffusers' ``train_text_to_image.py`` / ``textual_inversion.py`` conventions (``parse_args`` + ``main``,
``Accelerator``, diffusers-format checkpoints that resume, validation images); the pieces it shares with
``examples/viscpm_paint/train_viscpm_paint.py`` live in :mod:`hf_ext.pipelines.training_utils`. The result is saved
as a plain ``StableDiffusionPipeline`` when no projection is needed (Taiyi-style: ``BertModel`` + ``BertTokenizer``),
else as :class:`hf_ext.pipelines.iap.IAPStableDiffusionPipeline`.

Example::

    accelerate launch examples/iap/train_iap.py \
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --zh_text_encoder_name_or_path IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese \
        --train_data_dir triplets/ --en_caption_column text_en --zh_caption_column text_zh \
        --resolution 512 --train_batch_size 16 --max_train_steps 20000 --output_dir iap-zh-sd
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer, PreTrainedModel

from hf_ext.pipelines import training_utils
from hf_ext.pipelines.iap import (
    IAPLossConfig,
    IAPTextProjection,
    build_iap_pipeline,
    encode_text_like_sd,
    iap_alignment_loss,
    sample_timesteps,
    tokenize_like_sd,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/, for `_shared`
from _shared import scale_learning_rate  # noqa: E402

logger = get_logger(__name__, log_level=os.environ.get("HF_EXT_LOG_LEVEL", "INFO"))


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="IAP: train a Chinese text encoder against frozen Stable Diffusion.")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Stable Diffusion folder or repo (unet/, vae/, text_encoder/, tokenizer/, scheduler/).",
    )
    parser.add_argument(
        "--zh_text_encoder_name_or_path",
        type=str,
        required=True,
        help="Chinese text encoder to train (AutoModel, e.g. a Chinese BERT/RoBERTa).",
    )
    parser.add_argument(
        "--zh_tokenizer_name_or_path",
        type=str,
        default=None,
        help="Its tokenizer (default: --zh_text_encoder_name_or_path).",
    )
    parser.add_argument(
        "--projection",
        type=str,
        default="auto",
        choices=["auto", "always", "never"],
        help="Add an IAPTextProjection: 'auto' only when the encoder width differs from cross_attention_dim.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the pretrained model.")
    parser.add_argument("--variant", type=str, default=None, help="Weight variant, e.g. fp16.")
    training_utils.add_data_arguments(parser, caption_columns="both caption columns")
    parser.add_argument("--en_caption_column", type=str, default="text_en", help="English captions.")
    parser.add_argument("--zh_caption_column", type=str, default="text_zh", help="Chinese captions.")
    parser.add_argument(
        "--iap_layers",
        type=str,
        default="all",
        help="'all' or comma-separated cross-attention name prefixes (e.g. 'mid_block,up_blocks.1').",
    )
    parser.add_argument("--iap_distance", type=str, default="mse", choices=["mse", "l2", "cosine"])
    parser.add_argument("--iap_layer_reduction", type=str, default="mean", choices=["mean", "sum"])
    parser.add_argument(
        "--iap_pivot",
        type=str,
        default="shared_queries",
        choices=["shared_queries", "two_pass"],
        help="shared_queries: re-run each layer on the English pass's queries; two_pass: one UNet pass per language.",
    )
    parser.add_argument("--timestep_sampling", type=str, default="uniform", choices=["uniform", "stratified"])
    parser.add_argument("--min_timestep", type=int, default=0)
    parser.add_argument("--max_timestep", type=int, default=None)
    parser.add_argument(
        "--use_encoder_attention_mask",
        action="store_true",
        help="Mask Chinese padding in cross-attention (SD pipelines pass no mask at inference).",
    )
    parser.add_argument(
        "--lambda_denoise",
        type=float,
        default=0.0,
        help="Weight of an extra noise-prediction loss with the Chinese states (0 = pure IAP).",
    )
    parser.add_argument(
        "--uncond_dropout",
        type=float,
        default=0.1,
        help="Probability of replacing a caption pair by ('', '') to learn the CFG empty prompt.",
    )
    training_utils.add_validation_arguments(parser, prompts_help="Chinese validation prompts.")
    training_utils.add_optimization_arguments(parser)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the Chinese encoder.")
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="Learning rate of the Chinese encoder.")
    parser.add_argument("--projection_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    training_utils.add_output_arguments(parser, output_dir="iap-chinese-sd", tracker_project_name="iap")
    args = parser.parse_args(input_args)

    training_utils.check_data_arguments(parser, args)
    try:
        args.loss_config = IAPLossConfig(
            layers=args.iap_layers,
            distance=args.iap_distance,
            layer_reduction=args.iap_layer_reduction,
            pivot=args.iap_pivot,
            timestep_sampling=args.timestep_sampling,
            min_timestep=args.min_timestep,
            max_timestep=args.max_timestep,
            use_encoder_attention_mask=args.use_encoder_attention_mask,
            lambda_denoise=args.lambda_denoise,
            uncond_dropout=args.uncond_dropout,
        )
    except ValueError as e:
        parser.error(str(e))
    return args


def main(args: argparse.Namespace) -> Path:
    cfg: IAPLossConfig = args.loss_config
    accelerator = training_utils.create_accelerator(args)

    path = args.pretrained_model_name_or_path
    kwargs = {"revision": args.revision}
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kwargs)
    # the saved pipeline keeps the base model's inference scheduler class (e.g. PNDM/DDIM)
    scheduler_config = DDPMScheduler.load_config(path, subfolder="scheduler", **kwargs)
    inference_scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", "DDPMScheduler"), DDPMScheduler)
    en_tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kwargs)
    en_text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=args.variant, **kwargs)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=args.variant, **kwargs)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=args.variant, **kwargs)
    zh_text_encoder = AutoModel.from_pretrained(args.zh_text_encoder_name_or_path, **kwargs)
    zh_tokenizer = AutoTokenizer.from_pretrained(args.zh_tokenizer_name_or_path or args.zh_text_encoder_name_or_path)

    zh_width = zh_text_encoder.config.get_text_config().hidden_size
    cross_dim = unet.config.cross_attention_dim
    need_projection = args.projection == "always" or (args.projection == "auto" and zh_width != cross_dim)
    if args.projection == "never" and zh_width != cross_dim:
        raise ValueError(
            f"The Chinese encoder's width {zh_width} differs from the UNet's cross_attention_dim {cross_dim}: use "
            "--projection auto (or always)."
        )
    projection = IAPTextProjection(zh_width, cross_dim) if need_projection else None

    # Stable Diffusion stays frozen; only the Chinese side trains
    for module in (vae, unet, en_text_encoder):
        module.requires_grad_(False)
        module.eval()
    zh_text_encoder.requires_grad_(True)
    zh_text_encoder.train()
    if projection is not None:
        projection.train()
    if args.gradient_checkpointing:
        zh_text_encoder.gradient_checkpointing_enable()

    # checkpoints hold the trained models in save_pretrained format
    training_utils.register_checkpoint_hooks(
        accelerator, {IAPTextProjection: "text_projection", PreTrainedModel: "text_encoder"}
    )

    scale_learning_rate(args, accelerator)
    groups = [{"params": [p for p in zh_text_encoder.parameters() if p.requires_grad], "lr": args.learning_rate}]
    if projection is not None:
        groups.append(
            {"params": list(projection.parameters()), "lr": args.projection_learning_rate or args.learning_rate}
        )
    optimizer = training_utils.create_optimizer(args, groups)

    columns = {
        "--image_column": args.image_column,
        "--en_caption_column": args.en_caption_column,
        "--zh_caption_column": args.zh_caption_column,
    }
    augmentation = training_utils.SeededImageAugmentation(args)  # its epoch is set at each epoch start
    train_dataset = augmentation.apply(training_utils.load_train_dataset(args, columns), accelerator)

    def collate_fn(examples):
        en, zh = [], []
        for i, example in enumerate(examples):
            pair = (example[args.en_caption_column], example[args.zh_caption_column])
            if not all(isinstance(c, str) for c in pair):
                raise ValueError(f"Training example {i} of its batch has non-string captions {pair!r}.")
            en.append(pair[0])
            zh.append(pair[1])
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(), "en": en, "zh": zh}

    train_dataloader = training_utils.create_train_dataloader(train_dataset, collate_fn, args)
    lr_scheduler = training_utils.create_lr_scheduler(args, optimizer, train_dataloader, accelerator)
    trained = [zh_text_encoder] + ([projection] if projection is not None else [])
    prepared = accelerator.prepare(*trained, optimizer, train_dataloader, lr_scheduler)
    trained = list(prepared[: len(trained)])
    optimizer, train_dataloader, lr_scheduler = prepared[len(trained) :]
    zh_text_encoder = trained[0]
    projection = trained[1] if projection is not None else None

    weight_dtype = training_utils.weight_dtype_of(accelerator)
    for module in (vae, unet, en_text_encoder):
        module.to(accelerator.device, dtype=weight_dtype)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers(
            args.tracker_project_name, {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )

    logger.info("***** Running IAP training *****")
    logger.info(f"  Num examples = {len(train_dataset)}; total optimization steps = {args.max_train_steps}")
    logger.info(
        f"  Chinese encoder width {zh_width} -> cross_attention_dim {cross_dim}; projection: {need_projection}"
    )
    logger.info(f"  Loss config (reconstructed; defaults are our choices): {cfg}")

    global_step, first_epoch, resume_batches = training_utils.resume_from_checkpoint(
        accelerator, args, num_update_steps_per_epoch
    )

    def validation_pipeline():
        return build_iap_pipeline(
            vae,
            accelerator.unwrap_model(zh_text_encoder),
            zh_tokenizer,
            unet,
            inference_scheduler_cls.from_config(scheduler_config),
            accelerator.unwrap_model(projection) if projection is not None else None,
        )

    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    T = noise_scheduler.config.num_train_timesteps
    logs = {}
    for epoch in range(first_epoch, num_train_epochs):
        augmentation.epoch = epoch
        for batch in training_utils.epoch_batches(
            accelerator, train_dataloader, epoch, resume_batches if epoch == first_epoch else 0
        ):
            if global_step >= args.max_train_steps:
                break
            with accelerator.accumulate(*trained):
                en_captions, zh_captions = list(batch["en"]), list(batch["zh"])
                for i in range(len(en_captions)):
                    if cfg.uncond_dropout and random.random() < cfg.uncond_dropout:
                        en_captions[i], zh_captions[i] = "", ""
                with torch.no_grad():
                    pixel_values = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)
                    latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
                    en_ids = tokenize_like_sd(en_tokenizer, en_captions)["input_ids"].to(accelerator.device)
                    en_states = encode_text_like_sd(en_text_encoder, en_ids)
                zh_inputs = tokenize_like_sd(zh_tokenizer, zh_captions)
                zh_mask = zh_inputs["attention_mask"].to(accelerator.device)
                zh_states = encode_text_like_sd(
                    zh_text_encoder, zh_inputs["input_ids"].to(accelerator.device), zh_mask, projection
                )

                noise = torch.randn_like(latents)
                timesteps = sample_timesteps(
                    latents.shape[0], T, cfg.timestep_sampling, cfg.min_timestep, cfg.max_timestep
                ).to(latents.device)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                out = iap_alignment_loss(
                    unet,
                    noisy_latents,
                    timesteps,
                    en_states,
                    zh_states.to(weight_dtype),
                    zh_attention_mask=zh_mask if cfg.use_encoder_attention_mask else None,
                    layers=cfg.layers,
                    distance=cfg.distance,
                    layer_reduction=cfg.layer_reduction,
                    pivot=cfg.pivot,
                )
                loss = out.loss
                logs = {"iap_loss": out.loss.detach().item()}
                if cfg.lambda_denoise > 0:
                    pred = out.zh_model_pred
                    if pred is None:
                        pred = unet(
                            noisy_latents,
                            timesteps,
                            encoder_hidden_states=zh_states.to(weight_dtype),
                            encoder_attention_mask=zh_mask if cfg.use_encoder_attention_mask else None,
                            return_dict=False,
                        )[0]
                    if noise_scheduler.config.prediction_type == "v_prediction":
                        target = noise_scheduler.get_velocity(latents, noise, timesteps)
                    else:
                        target = noise
                    denoise = F.mse_loss(pred.float(), target.float())
                    loss = loss + cfg.lambda_denoise * denoise
                    logs["denoise_loss"] = denoise.detach().item()
                logs["loss"] = loss.detach().item()

                training_utils.backward_and_step(accelerator, loss, optimizer, lr_scheduler, args.max_grad_norm)

            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                accelerator.log(logs, step=global_step)
                logger.debug(f"step {global_step}: {logs}")
                if global_step % args.checkpointing_steps == 0:
                    training_utils.save_checkpoint(accelerator, args, global_step)
                if args.validation_prompts and global_step % args.validation_steps == 0:
                    for m in trained:
                        m.eval()
                    training_utils.log_validation(validation_pipeline(), args, accelerator, global_step)
                    for m in trained:
                        m.train()
            progress_bar.set_postfix(**{k: round(v, 5) for k, v in logs.items()})
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for m in trained:
            m.eval()
        if weight_dtype != torch.float32:
            vae, unet = vae.to(torch.float32), unet.to(torch.float32)
        final = validation_pipeline()
        final.save_pretrained(args.output_dir)
        if args.validation_prompts:
            training_utils.log_validation(final, args, accelerator, global_step)
    accelerator.end_training()
    return Path(args.output_dir)


if __name__ == "__main__":
    main(parse_args())
