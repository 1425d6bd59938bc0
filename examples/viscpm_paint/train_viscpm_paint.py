#!/usr/bin/env python
"""Train VisCPM-Paint's bridge: a frozen LLM's hidden states -> projection -> Stable Diffusion UNet.

Follows diffusers' ``examples/text_to_image/train_text_to_image.py`` (``parse_args`` + ``main``, ``Accelerator``,
save/load-state hooks that write diffusers-format folders, resumable ``checkpoint-N`` folders, validation images).
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
import logging
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline, VisCPMPaintTextProjection
from hf_ext.utils.io import atomic_write

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
    parser.add_argument("--dataset_name", type=str, default=None, help="A datasets name or a local dataset folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config name.")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An `imagefolder` directory (images + metadata.jsonl with the caption column).",
    )
    parser.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    parser.add_argument("--caption_column", type=str, default="text", help="Column holding the captions.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training set (debugging).")
    parser.add_argument(
        "--validation_prompts", type=str, nargs="+", default=None, help="Prompts rendered at validation."
    )
    parser.add_argument("--validation_steps", type=int, default=500, help="Render validation images every N steps.")
    parser.add_argument("--num_validation_inference_steps", type=int, default=20, help="Sampling steps at validation.")
    parser.add_argument("--validation_guidance_scale", type=float, default=7.5, help="CFG scale at validation.")
    parser.add_argument("--output_dir", type=str, default="viscpm-paint-finetuned", help="Where to write everything.")
    parser.add_argument("--cache_dir", type=str, default=None, help="datasets / hub cache directory.")
    parser.add_argument("--seed", type=int, default=None, help="Seed for reproducible training.")
    parser.add_argument("--resolution", type=int, default=512, help="Training image size (square).")
    parser.add_argument("--center_crop", action="store_true", help="Center crop instead of random crop.")
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    parser.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device.")
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the UNet's activations.")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Learning rate of the projection.")
    parser.add_argument(
        "--cross_attention_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the unfrozen cross-attention (default: --learning_rate).",
    )
    parser.add_argument(
        "--scale_lr", action="store_true", help="Scale the learning rate by batch x accumulation x processes."
    )
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
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
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument(
        "--report_to",
        type=str,
        default=None,
        help='Trackers: "tensorboard", "wandb", "all" (default: none; validation images are saved as PNG).',
    )
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--tracker_project_name", type=str, default="viscpm-paint")
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps."
    )
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder or "latest".')
    args = parser.parse_args(input_args)

    if args.dataset_name is None and args.train_data_dir is None:
        parser.error("Need either --dataset_name or --train_data_dir.")
    if args.resolution % 8 != 0:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}.")
    if not 0 <= args.uncond_dropout < 1:
        parser.error(f"--uncond_dropout must be in [0, 1), got {args.uncond_dropout}.")
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
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
            "--caption_column accordingly."
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
    images = []
    for prompt in args.validation_prompts:
        images.append(
            pipeline(
                prompt,
                num_inference_steps=args.num_validation_inference_steps,
                guidance_scale=args.validation_guidance_scale,
                height=args.resolution,
                width=args.resolution,
                generator=generator,
            ).images[0]
        )
    if accelerator.is_main_process:
        save_validation_images(
            images, Path(args.output_dir) / "validation" / f"step-{global_step}", args.validation_prompts
        )
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            np_images = np.stack([np.asarray(img) for img in images])
            tracker.writer.add_images("validation", np_images, global_step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(img, caption=p) for img, p in zip(images, args.validation_prompts)]}
            )
    return images


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
    logging_dir = Path(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
        # seeded per-epoch shuffling: a resumed run sees the batches the uninterrupted run would have seen
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

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
    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                if isinstance(model, VisCPMPaintTextProjection):
                    model.save_pretrained(os.path.join(output_dir, "text_projection"))
                elif isinstance(model, UNet2DConditionModel):
                    model.save_pretrained(os.path.join(output_dir, "unet"))
                weights.pop()

    def load_model_hook(models, input_dir):
        for _ in range(len(models)):
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, VisCPMPaintTextProjection):
                loaded = VisCPMPaintTextProjection.from_pretrained(input_dir, subfolder="text_projection")
            else:
                loaded = UNet2DConditionModel.from_pretrained(input_dir, subfolder="unet")
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    groups = [{"params": list(projection.parameters()), "lr": args.learning_rate}]
    if cross_params:
        groups.append({"params": cross_params, "lr": args.cross_attention_learning_rate or args.learning_rate})
    optimizer = torch.optim.AdamW(
        groups, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon
    )

    # data
    train_dataset = load_train_dataset(args, [args.image_column, args.caption_column])
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
        captions = []
        for i, example in enumerate(examples):
            caption = example[args.caption_column]
            if isinstance(caption, (list, tuple)):
                caption = example["_rng"].choice(caption) if caption else None
            if not isinstance(caption, str):
                raise ValueError(f"Caption of a training example ({i} in its batch) is {caption!r}, not a string.")
            captions.append(caption)
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(), "captions": captions}

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
    if args.train_cross_attention:
        projection, unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            projection, unet, optimizer, train_dataloader, lr_scheduler
        )
    else:
        projection, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            projection, optimizer, train_dataloader, lr_scheduler
        )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
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

    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    trained = [projection, unet] if args.train_cross_attention else [projection]
    if args.train_cross_attention:
        unet.train()
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    last_loss = float("nan")
    for epoch in range(first_epoch, num_train_epochs):
        augment["epoch"] = epoch
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and resume_batches:
            loader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        train_loss = 0.0
        for batch in loader:
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

                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                last_loss = train_loss
                logger.debug(f"step {global_step}: loss {train_loss:.6f}")
                accelerator.log({"train_loss": train_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
                train_loss = 0.0
                if global_step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, args, global_step)
                if args.validation_prompts and global_step % args.validation_steps == 0:
                    projection.eval()
                    log_validation(pipeline, args, accelerator, global_step)
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
            log_validation(final, args, accelerator, global_step)
    accelerator.end_training()
    return output


if __name__ == "__main__":
    main(parse_args())
