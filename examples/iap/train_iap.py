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
``Accelerator``, diffusers-format checkpoints that resume, validation images). The result is saved as a plain
``StableDiffusionPipeline`` when no projection is needed (Taiyi-style: ``BertModel`` + ``BertTokenizer``), else as
:class:`hf_ext.pipelines.iap.IAPStableDiffusionPipeline`.

Example::

    accelerate launch examples/iap/train_iap.py \
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --zh_text_encoder_name_or_path IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese \
        --train_data_dir triplets/ --en_caption_column text_en --zh_caption_column text_zh \
        --resolution 512 --train_batch_size 16 --max_train_steps 20000 --output_dir iap-zh-sd
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

from hf_ext.pipelines.iap import (
    IAPLossConfig,
    IAPStableDiffusionPipeline,
    IAPTextProjection,
    encode_text_like_sd,
    iap_alignment_loss,
    sample_timesteps,
    tokenize_like_sd,
)
from hf_ext.utils.io import atomic_write

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
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--variant", type=str, default=None)
    parser.add_argument("--dataset_name", type=str, default=None, help="A datasets name or a local dataset folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An `imagefolder` directory (images + metadata.jsonl with both caption columns).",
    )
    parser.add_argument("--image_column", type=str, default="image")
    parser.add_argument("--en_caption_column", type=str, default="text_en", help="English captions.")
    parser.add_argument("--zh_caption_column", type=str, default="text_zh", help="Chinese captions.")
    parser.add_argument("--max_train_samples", type=int, default=None)
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
    parser.add_argument("--validation_prompts", type=str, nargs="+", default=None, help="Chinese validation prompts.")
    parser.add_argument("--validation_steps", type=int, default=500)
    parser.add_argument("--num_validation_inference_steps", type=int, default=20)
    parser.add_argument("--validation_guidance_scale", type=float, default=7.5)
    parser.add_argument("--output_dir", type=str, default="iap-chinese-sd")
    parser.add_argument("--cache_dir", type=str, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--center_crop", action="store_true")
    parser.add_argument("--random_flip", action="store_true")
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the Chinese encoder.")
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--projection_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    parser.add_argument("--scale_lr", action="store_true")
    parser.add_argument("--lr_scheduler", type=str, default="constant")
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--report_to", type=str, default=None)
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--tracker_project_name", type=str, default="iap")
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder or "latest".')
    args = parser.parse_args(input_args)

    if args.dataset_name is None and args.train_data_dir is None:
        parser.error("Need either --dataset_name or --train_data_dir.")
    if args.resolution % 8 != 0:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}.")
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


# ---------------------------------------------------------------------------------------------- data
def image_transform(resolution: int, center_crop: bool, random_flip: bool):
    """Resize (shorter side), crop, flip, to `[-1, 1]` CHW tensors; PIL + numpy (no torchvision needed).

    Random crops/flips draw from the `rng` passed per example (seeded by seed, epoch and row), not from the global
    RNG: the dataloader prefetches the next batch before a checkpoint is saved, so global-RNG augmentation would
    make a resumed run diverge from the uninterrupted one.
    """

    def apply(image: Image.Image, rng: random.Random) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        if center_crop:
            left, top = (w - resolution) // 2, (h - resolution) // 2
        else:
            left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
        image = image.crop((left, top, left + resolution, top + resolution))
        if random_flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    return apply


def load_train_dataset(args, columns: list[str]):
    from datasets import load_dataset

    if args.dataset_name is not None:
        dataset = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
    else:
        dataset = load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
    train = dataset["train"]
    missing = [c for c in columns if c not in train.column_names]
    if missing:
        raise ValueError(
            f"Columns {missing} are not in the dataset (it has {train.column_names}): set --image_column / "
            "--en_caption_column / --zh_caption_column accordingly."
        )
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    return train


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(output_dir: str) -> list[str]:
    dirs = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return sorted(dirs, key=lambda d: int(d.split("-")[1]))


def save_checkpoint(accelerator: Accelerator, args, global_step: int) -> None:
    """`accelerator.save_state` into a temporary folder renamed at the end, so a checkpoint is never half-written."""
    if accelerator.is_main_process and args.checkpoints_total_limit is not None:
        existing = checkpoint_dirs(args.output_dir)
        if len(existing) >= args.checkpoints_total_limit:
            for old in existing[: len(existing) - args.checkpoints_total_limit + 1]:
                logger.info(f"removing checkpoint {old} (--checkpoints_total_limit)")
                shutil.rmtree(os.path.join(args.output_dir, old))
    final = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info(f"Saved state to {final}")
    accelerator.wait_for_everyone()


def resolve_resume_path(args) -> str | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint != "latest":
        path = args.resume_from_checkpoint
        if not os.path.isdir(path):
            path = os.path.join(args.output_dir, os.path.basename(path))
        if not os.path.isdir(path):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a checkpoint folder.")
        return path
    dirs = checkpoint_dirs(args.output_dir) if os.path.isdir(args.output_dir) else []
    return os.path.join(args.output_dir, dirs[-1]) if dirs else None


def save_validation_images(images, folder: Path, prompts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        with atomic_write(folder / f"{i:02d}.png", "wb") as f:
            image.save(f, format="PNG")
    with atomic_write(folder / "prompts.txt", "w") as f:
        f.write("\n".join(prompts) + "\n")


def log_validation(pipeline, args, accelerator: Accelerator, global_step: int) -> list:
    logger.info(f"Running validation at step {global_step}: {args.validation_prompts}")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed) if args.seed is not None else None
    images = [
        pipeline(
            prompt,
            num_inference_steps=args.num_validation_inference_steps,
            guidance_scale=args.validation_guidance_scale,
            height=args.resolution,
            width=args.resolution,
            generator=generator,
        ).images[0]
        for prompt in args.validation_prompts
    ]
    if accelerator.is_main_process:
        save_validation_images(
            images, Path(args.output_dir) / "validation" / f"step-{global_step}", args.validation_prompts
        )
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(
                "validation", np.stack([np.asarray(i) for i in images]), global_step, dataformats="NHWC"
            )
    return images


def build_pipeline(vae, zh_text_encoder, zh_tokenizer, unet, scheduler, projection):
    """The inference artefact: a plain StableDiffusionPipeline when no projection is needed."""
    common = {
        "vae": vae,
        "text_encoder": zh_text_encoder,
        "tokenizer": zh_tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if projection is None:
        return StableDiffusionPipeline(**common)
    return IAPStableDiffusionPipeline(text_projection=projection, **common)


def main(args: argparse.Namespace) -> Path:
    cfg: IAPLossConfig = args.loss_config
    logging_dir = Path(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

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

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                if isinstance(model, IAPTextProjection):
                    model.save_pretrained(os.path.join(output_dir, "text_projection"))
                else:
                    model.save_pretrained(os.path.join(output_dir, "text_encoder"))
                weights.pop()

    def load_model_hook(models, input_dir):
        for _ in range(len(models)):
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, IAPTextProjection):
                loaded = IAPTextProjection.from_pretrained(input_dir, subfolder="text_projection")
                model.register_to_config(**loaded.config)
            else:
                loaded = type(model).from_pretrained(os.path.join(input_dir, "text_encoder"))
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    groups = [{"params": [p for p in zh_text_encoder.parameters() if p.requires_grad], "lr": args.learning_rate}]
    if projection is not None:
        groups.append(
            {"params": list(projection.parameters()), "lr": args.projection_learning_rate or args.learning_rate}
        )
    optimizer = torch.optim.AdamW(
        groups, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon
    )

    train_dataset = load_train_dataset(args, [args.image_column, args.en_caption_column, args.zh_caption_column])
    transform = image_transform(args.resolution, args.center_crop, args.random_flip)

    augment = {"epoch": 0}  # updated at each epoch start

    def preprocess(examples):
        rngs = [random.Random(f"{args.seed}-{augment['epoch']}-{row}") for row in examples["_row"]]
        examples["pixel_values"] = [transform(image, rng) for image, rng in zip(examples[args.image_column], rngs)]
        examples["_rng"] = rngs
        return examples

    with accelerator.main_process_first():
        train_dataset = train_dataset.add_column("_row", list(range(len(train_dataset))))
        train_dataset = train_dataset.with_transform(preprocess)

    def collate_fn(examples):
        en, zh = [], []
        for i, example in enumerate(examples):
            pair = (example[args.en_caption_column], example[args.zh_caption_column])
            if not all(isinstance(c, str) for c in pair):
                raise ValueError(f"Training example {i} of its batch has non-string captions {pair!r}.")
            en.append(pair[0])
            zh.append(pair[1])
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(), "en": en, "zh": zh}

    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        shuffle=True,
        collate_fn=collate_fn,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        # its own generator: creating the iterator then draws no number from the global RNG, so a resumed run's
        # noise and timesteps continue exactly where the checkpoint's RNG state left off
        generator=torch.Generator().manual_seed(args.seed if args.seed is not None else 0),
    )
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    trained = [zh_text_encoder] + ([projection] if projection is not None else [])
    prepared = accelerator.prepare(*trained, optimizer, train_dataloader, lr_scheduler)
    trained = list(prepared[: len(trained)])
    optimizer, train_dataloader, lr_scheduler = prepared[len(trained) :]
    zh_text_encoder = trained[0]
    projection = trained[1] if projection is not None else None

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
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

    global_step = 0
    first_epoch = 0
    resume_path = resolve_resume_path(args)
    if args.resume_from_checkpoint and resume_path is None:
        logger.info(f"No checkpoint found for {args.resume_from_checkpoint!r}; starting a new run.")
    if resume_path is not None:
        logger.info(f"Resuming from checkpoint {resume_path}")
        accelerator.load_state(resume_path)
        global_step = int(os.path.basename(resume_path.rstrip("/")).split("-")[1])
        first_epoch = global_step // num_update_steps_per_epoch
    resume_batches = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    def validation_pipeline():
        return build_pipeline(
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
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    T = noise_scheduler.config.num_train_timesteps
    logs = {}
    for epoch in range(first_epoch, num_train_epochs):
        augment["epoch"] = epoch
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and resume_batches:
            loader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        for batch in loader:
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

                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                accelerator.log(logs, step=global_step)
                logger.debug(f"step {global_step}: {logs}")
                if global_step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, args, global_step)
                if args.validation_prompts and global_step % args.validation_steps == 0:
                    for m in trained:
                        m.eval()
                    log_validation(validation_pipeline(), args, accelerator, global_step)
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
            log_validation(final, args, accelerator, global_step)
    accelerator.end_training()
    return Path(args.output_dir)


if __name__ == "__main__":
    main(parse_args())
