"""Shared pieces of the diffusers-style training scripts (``examples/viscpm_paint/train_viscpm_paint.py``,
``examples/iap/train_iap.py``).

Each script stays a readable ``parse_args()`` + ``main()`` in the manner of diffusers' ``train_text_to_image.py``;
what is identical between them lives here: the common command-line flags, the ``Accelerator`` set-up, the image
pipeline with per-example seeded augmentation, the seeded dataloader, the optimizer and learning-rate schedule,
atomic ``checkpoint-N`` folders in diffusers format, resuming, and validation images.

Resuming is bit-identical to an uninterrupted run because nothing here draws from the global RNGs outside the
training step: augmentation uses a ``random.Random`` per example seeded by ``(seed, epoch, row)`` (the dataloader
prefetches the next batch before a checkpoint is saved), the dataloader shuffles with its own ``torch.Generator``,
and the sampler is accelerate's seedable one, whose epoch the checkpoint restores.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.configuration_utils import ConfigMixin
from diffusers.optimization import get_scheduler
from PIL import Image

from ..utils.io import atomic_write

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "SeededImageAugmentation",
    "add_data_arguments",
    "add_optimization_arguments",
    "add_output_arguments",
    "add_validation_arguments",
    "backward_and_step",
    "check_data_arguments",
    "checkpoint_dirs",
    "create_accelerator",
    "create_lr_scheduler",
    "create_optimizer",
    "create_train_dataloader",
    "epoch_batches",
    "image_transform",
    "load_train_dataset",
    "log_validation",
    "register_checkpoint_hooks",
    "resolve_resume_path",
    "resume_from_checkpoint",
    "save_checkpoint",
    "save_validation_images",
    "weight_dtype_of",
]

logger = get_logger(__name__, log_level=os.environ.get("HF_EXT_LOG_LEVEL", "INFO"))


# ---------------------------------------------------------------------------------------------- arguments
def add_data_arguments(parser: argparse.ArgumentParser, caption_columns: str = "the caption column") -> None:
    """Dataset, image pre-processing and dataloader flags (``--dataset_name`` ... ``--dataloader_num_workers``).

    The script adds its own caption-column flags; ``caption_columns`` only words ``--train_data_dir``'s help.
    """
    parser.add_argument("--dataset_name", type=str, default=None, help="A datasets name or a local dataset folder.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's config name.")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help=f"An `imagefolder` directory (images + metadata.jsonl with {caption_columns}).",
    )
    parser.add_argument("--cache_dir", type=str, default=None, help="datasets / hub cache directory.")
    parser.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training set (debugging).")
    parser.add_argument("--resolution", type=int, default=512, help="Training image size (square).")
    parser.add_argument("--center_crop", action="store_true", help="Center crop instead of random crop.")
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)


def add_validation_arguments(
    parser: argparse.ArgumentParser, prompts_help: str = "Prompts rendered at validation."
) -> None:
    """``--validation_prompts``, ``--validation_steps``, ``--num_validation_inference_steps``,
    ``--validation_guidance_scale``."""
    parser.add_argument("--validation_prompts", type=str, nargs="+", default=None, help=prompts_help)
    parser.add_argument("--validation_steps", type=int, default=500, help="Render validation images every N steps.")
    parser.add_argument("--num_validation_inference_steps", type=int, default=20, help="Sampling steps at validation.")
    parser.add_argument("--validation_guidance_scale", type=float, default=7.5, help="CFG scale at validation.")


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    """Batch size, steps, learning-rate schedule, AdamW and precision flags.

    ``--learning_rate`` (whose default and meaning differ per script) and ``--gradient_checkpointing`` (which module
    it checkpoints) are left to the script.
    """
    parser.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device.")
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
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
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])


def add_output_arguments(parser: argparse.ArgumentParser, output_dir: str, tracker_project_name: str) -> None:
    """Output folder, seed, trackers and checkpointing flags, with the script's default folder and project name."""
    parser.add_argument("--output_dir", type=str, default=output_dir, help="Where to write everything.")
    parser.add_argument("--seed", type=int, default=None, help="Seed for reproducible training.")
    parser.add_argument(
        "--report_to",
        type=str,
        default=None,
        help='Trackers: "tensorboard", "wandb", "all" (default: none; validation images are saved as PNG).',
    )
    parser.add_argument("--logging_dir", type=str, default="logs")
    parser.add_argument("--tracker_project_name", type=str, default=tracker_project_name)
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps."
    )
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder or "latest".')


def check_data_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` when neither ``--dataset_name`` nor ``--train_data_dir`` is given, or the resolution is not
    a multiple of 8 (the VAE downsamples by 8)."""
    if args.dataset_name is None and args.train_data_dir is None:
        parser.error("Need either --dataset_name or --train_data_dir.")
    if args.resolution % 8 != 0:
        parser.error(f"--resolution must be a multiple of 8, got {args.resolution}.")


# ---------------------------------------------------------------------------------------------- set-up
def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """The ``Accelerator`` of a run, with logging configured, the seed set and ``--output_dir`` created.

    The dataloader sampler is accelerate's seedable one: a resumed run sees the batches the uninterrupted run would
    have seen.
    """
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=str(Path(args.output_dir, args.logging_dir))
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def weight_dtype_of(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen modules under ``accelerator``'s mixed precision (float32 without it)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def register_checkpoint_hooks(accelerator: Accelerator, subfolders: Mapping[type, str]) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` write and read the trained models in ``save_pretrained``
    format, one subfolder per model (``{IAPTextProjection: "text_projection", PreTrainedModel: "text_encoder"}``).

    A model goes to the subfolder of the first type in ``subfolders`` it is an instance of. diffusers models also get
    their config restored on load (e.g. a projection's sizes).
    """

    def subfolder_of(model: torch.nn.Module) -> str:
        for cls, subfolder in subfolders.items():
            if isinstance(model, cls):
                return subfolder
        raise TypeError(f"No checkpoint subfolder for {type(model).__name__}; known types: {list(subfolders)}.")

    def save_model_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                model.save_pretrained(os.path.join(output_dir, subfolder_of(model)))
                weights.pop()  # saved above: accelerate must not save it again

    def load_model_hook(models: list, input_dir: str) -> None:
        for _ in range(len(models)):
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, ConfigMixin):  # a diffusers model: its config (e.g. sizes) is restored too
                loaded = type(model).from_pretrained(input_dir, subfolder=subfolder_of(model))
                model.register_to_config(**loaded.config)
            else:
                loaded = type(model).from_pretrained(os.path.join(input_dir, subfolder_of(model)))
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def create_optimizer(args: argparse.Namespace, param_groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each with its own ``lr``) with the ``--adam_*`` flags."""
    return torch.optim.AdamW(
        param_groups,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def create_lr_scheduler(
    args: argparse.Namespace,
    optimizer: torch.optim.Optimizer,
    train_dataloader: torch.utils.data.DataLoader,
    accelerator: Accelerator,
) -> torch.optim.lr_scheduler.LRScheduler:
    """``--lr_scheduler`` over the run; sets ``args.max_train_steps`` from ``--num_train_epochs`` when not given.

    Call it before ``accelerator.prepare`` (as diffusers' scripts do): the step counts are scaled by the number of
    processes because the prepared scheduler steps once per process.
    """
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * math.ceil(
            len(train_dataloader) / args.gradient_accumulation_steps
        )
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )


def backward_and_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
) -> None:
    """One step inside ``accelerator.accumulate``: backward, clip every optimized parameter to ``max_grad_norm`` when
    gradients are synchronised, optimizer and scheduler steps (no-ops between accumulation boundaries), zero grad."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()


# ---------------------------------------------------------------------------------------------- data
def image_transform(
    resolution: int, center_crop: bool, random_flip: bool
) -> Callable[[Image.Image, random.Random], torch.Tensor]:
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


def load_train_dataset(args: argparse.Namespace, columns: Mapping[str, str]) -> Dataset:
    """The ``train`` split of ``--dataset_name`` or of the ``imagefolder`` at ``--train_data_dir``.

    ``columns`` maps each column flag to the column it names (``{"--image_column": args.image_column, ...}``); a
    missing column raises a ``ValueError`` naming the flags to set. ``--max_train_samples`` keeps a seeded random
    subset.
    """
    from datasets import load_dataset

    if args.dataset_name is not None:
        dataset = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
    else:
        dataset = load_dataset("imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir)
    train = dataset["train"]
    missing = [c for c in columns.values() if c not in train.column_names]
    if missing:
        raise ValueError(
            f"Columns {missing} are not in the dataset (it has {train.column_names}): set {' / '.join(columns)} "
            "accordingly."
        )
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    return train


class SeededImageAugmentation:
    """A ``datasets`` ``with_transform`` function adding ``pixel_values`` and a per-example ``_rng``.

    Each example gets ``random.Random(f"{seed}-{epoch}-{row}")``: it drives the random crop/flip and is passed on
    (as ``_rng``) for any other per-example choice (e.g. one caption of several). Set :attr:`epoch` at each epoch
    start. Use :meth:`apply` to attach it to a dataset.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.seed = args.seed
        self.image_column = args.image_column
        self.transform = image_transform(args.resolution, args.center_crop, args.random_flip)
        self.epoch = 0

    def __call__(self, examples: dict[str, list]) -> dict[str, list]:
        rngs = [random.Random(f"{self.seed}-{self.epoch}-{row}") for row in examples["_row"]]
        examples["pixel_values"] = [
            self.transform(image, rng) for image, rng in zip(examples[self.image_column], rngs)
        ]
        examples["_rng"] = rngs
        return examples

    def apply(self, dataset: Dataset, accelerator: Accelerator) -> Dataset:
        """``dataset`` with a ``_row`` index column and this transform."""
        with accelerator.main_process_first():
            dataset = dataset.add_column("_row", list(range(len(dataset))))
            return dataset.with_transform(self)


def create_train_dataloader(
    train_dataset: Dataset, collate_fn: Callable[[list[dict]], dict], args: argparse.Namespace
) -> torch.utils.data.DataLoader:
    """A shuffling dataloader with its own generator seeded by ``--seed`` (0 when unset)."""
    return torch.utils.data.DataLoader(
        train_dataset,
        shuffle=True,
        collate_fn=collate_fn,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        # its own generator: creating the iterator then draws no number from the global RNG, so a resumed run's
        # noise and timesteps continue exactly where the checkpoint's RNG state left off
        generator=torch.Generator().manual_seed(args.seed if args.seed is not None else 0),
    )


def epoch_batches(
    accelerator: Accelerator, train_dataloader: torch.utils.data.DataLoader, epoch: int, skip_batches: int = 0
) -> Iterable[dict[str, Any]]:
    """The (prepared) dataloader for ``epoch``, without its first ``skip_batches`` batches when resuming."""
    if hasattr(train_dataloader, "set_epoch"):
        train_dataloader.set_epoch(epoch)
    if skip_batches:
        return accelerator.skip_first_batches(train_dataloader, skip_batches)
    return train_dataloader


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(output_dir: str) -> list[str]:
    """Names of the ``checkpoint-N`` folders in ``output_dir``, oldest step first."""
    dirs = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return sorted(dirs, key=lambda d: int(d.split("-")[1]))


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, global_step: int) -> None:
    """`accelerator.save_state` into a temporary folder renamed at the end, so a checkpoint is never half-written.

    Older checkpoints beyond ``--checkpoints_total_limit`` are removed first.
    """
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


def resolve_resume_path(args: argparse.Namespace) -> str | None:
    """The folder ``--resume_from_checkpoint`` names (a path, a ``checkpoint-N`` in ``--output_dir``, or
    ``"latest"``); ``None`` when not resuming or when ``"latest"`` finds no checkpoint."""
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


def resume_from_checkpoint(
    accelerator: Accelerator, args: argparse.Namespace, num_update_steps_per_epoch: int
) -> tuple[int, int, int]:
    """Load the state ``--resume_from_checkpoint`` names, if any.

    Returns ``(global_step, first_epoch, resume_batches)``: the step to continue from, its epoch, and how many
    batches of that epoch to skip. ``(0, 0, 0)`` for a new run.
    """
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
    return global_step, first_epoch, resume_batches


# ---------------------------------------------------------------------------------------------- validation
def save_validation_images(images: Sequence[Image.Image], folder: Path, prompts: Sequence[str]) -> None:
    """``folder/00.png``, ``01.png``, ... and ``folder/prompts.txt``, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        with atomic_write(folder / f"{i:02d}.png", "wb") as f:
            image.save(f, format="PNG")
    with atomic_write(folder / "prompts.txt", "w") as f:
        f.write("\n".join(prompts) + "\n")


def log_validation(
    pipeline, args: argparse.Namespace, accelerator: Accelerator, global_step: int
) -> list[Image.Image]:
    """Render ``--validation_prompts`` with ``pipeline`` (one seeded generator for the whole list), save them under
    ``output_dir/validation/step-N/`` and log them to TensorBoard / W&B trackers."""
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
            np_images = np.stack([np.asarray(img) for img in images])
            tracker.writer.add_images("validation", np_images, global_step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(img, caption=p) for img, p in zip(images, args.validation_prompts)]}
            )
    return images
