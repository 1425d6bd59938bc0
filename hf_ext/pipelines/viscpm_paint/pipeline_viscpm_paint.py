"""VisCPM-Paint as a diffusers pipeline: a Stable Diffusion UNet conditioned on a (multilingual) LLM's hidden states.

Port of OpenBMB/VisCPM's Paint model (arXiv 2308.12038). The released code (``VisCPM/models/stablediffusion.py``,
``VisCPMPaintBeePipeline`` on the Hub) encodes one string prompt at a time, always returns
``cat([uncond, cond])`` and ignores ``prompt_embeds``; this pipeline keeps its data flow
(LLM final hidden states -> ``Linear(bias=False)`` -> ``LayerNorm`` -> UNet cross-attention) and adds what users expect
of a diffusers pipeline: prompt batches, negative prompts, precomputed embeddings, ``num_images_per_prompt``,
generators, ``output_type``, ``callback_on_step_end`` and a ``save_pretrained``/``from_pretrained`` round trip.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .._hub import HubSnapshotMixin
from .._prompts import negative_prompt_list
from .modeling_text_projection import VisCPMPaintTextProjection

logger = logging.get_logger(__name__)

__all__ = ["VisCPMPaintPipeline"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from hf_ext.pipelines.viscpm_paint import VisCPMPaintPipeline

        >>> pipe = VisCPMPaintPipeline.from_pretrained("path/to/viscpm-paint-diffusers")
        >>> images = pipe(["一只戴着帽子的猫", "a cat wearing a hat"], generator=torch.Generator().manual_seed(0)).images
        ```
"""


class VisCPMPaintPipeline(HubSnapshotMixin, DiffusionPipeline, StableDiffusionMixin):
    r"""
    Text-to-image generation with a Stable Diffusion UNet conditioned on a language model (VisCPM-Paint).

    The text features are the text encoder's final hidden states (after its final norm, as VisCPM takes CPM-Bee's
    ``output_layernorm`` states), mapped to the UNet's cross-attention width by `text_projection`.

    This model inherits from [`DiffusionPipeline`]: see the superclass documentation for the generic methods
    (downloading, saving, running on a device, ...). Load a saved pipeline with `VisCPMPaintPipeline.from_pretrained`
    (not `DiffusionPipeline.from_pretrained`, which only resolves classes that live in diffusers).

    Args:
        vae ([`AutoencoderKL`]):
            Variational auto-encoder that maps images to and from latents.
        text_encoder ([`~transformers.PreTrainedModel`]):
            Any transformers model whose hidden states serve as text features (a multilingual LM such as CPM-Bee, a
            `LlamaForCausalLM`, a `BertModel`, ...). Base models give `last_hidden_state`; models with a head give
            their last `hidden_states` entry (logits are computed for one position only when the model supports
            `logits_to_keep`). With a CPM-Bee text encoder (the released VisCPM-Paint) prompts are CPM-Bee structured
            inputs `{"caption": prompt, "objects": ""}` (or dicts you pass), encoded with CPM-Bee's bidirectional
            context attention; the states after its output norm at *all* positions (padding included) feed the
            projection, as VisCPM does.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of `text_encoder`. Prompts are right-padded with its pad token (or EOS when it has none).
        text_projection ([`VisCPMPaintTextProjection`]):
            `Linear(text hidden -> cross_attention_dim, bias=False)` then `LayerNorm`.
        unet ([`UNet2DConditionModel`]):
            Denoising UNet; its `cross_attention_dim` must equal `text_projection`'s `out_features`.
        scheduler ([`SchedulerMixin`]):
            Scheduler used with `unet` to denoise (VisCPM uses `DDPMScheduler`; any diffusers scheduler works).
        use_encoder_attention_mask (`bool`, *optional*, defaults to `True`):
            Pass the prompt's padding mask to the UNet's cross-attention, so padding tokens are not attended and a
            prompt gives the same image alone or in a batch. VisCPM's released code passes no mask (the padded
            states of the shorter of the conditional/unconditional prompts are attended); set `False` to reproduce it.
    """

    model_cpu_offload_seq = "text_encoder->text_projection->unet->vae"
    _optional_components = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        text_projection: VisCPMPaintTextProjection,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        use_encoder_attention_mask: bool = True,
    ):
        super().__init__()
        if (
            text_projection is not None
            and unet is not None
            and text_projection.config.out_features != unet.config.cross_attention_dim
        ):
            raise ValueError(
                f"`text_projection` outputs {text_projection.config.out_features} features but the UNet's "
                f"`cross_attention_dim` is {unet.config.cross_attention_dim}: build the projection with "
                f"`out_features={unet.config.cross_attention_dim}`."
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_projection=text_projection,
            unet=unet,
            scheduler=scheduler,
        )
        self.register_to_config(use_encoder_attention_mask=use_encoder_attention_mask)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ text
    def _pad_token_id(self) -> int:
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                return int(value)
        raise ValueError(
            "The tokenizer has no pad, EOS or BOS token to pad prompts with: set `tokenizer.pad_token` before "
            "building the pipeline."
        )

    def tokenize_prompts(
        self, texts: list[str], max_sequence_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)` of `texts`: truncated to `max_sequence_length` (default
        `tokenizer.model_max_length`), right-padded; an empty prompt becomes one pad token (a 0-length key is invalid).
        """
        max_length = max_sequence_length or getattr(self.tokenizer, "model_max_length", None)
        if max_length is not None and max_length > 100_000:  # tokenizers without a limit report a huge sentinel
            max_length = None
        encoded = self.tokenizer(texts, padding=False, truncation=False, add_special_tokens=True)["input_ids"]
        if max_length is not None:
            for text, ids in zip(texts, encoded):
                if len(ids) > max_length:
                    logger.warning(f"A prompt was truncated from {len(ids)} to {max_length} tokens: {text[:60]!r}...")
            encoded = [ids[:max_length] for ids in encoded]
        pad_id = self._pad_token_id()
        length = max(1, max(len(ids) for ids in encoded))
        input_ids = torch.full((len(texts), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if len(ids) == 0:
                # an empty prompt (tokenizer without BOS) becomes one pad token, so no key sequence is empty
                attention_mask[row, 0] = 1
                continue
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def text_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: torch.device | None = None
    ) -> torch.Tensor:
        """The text encoder's final hidden states (before `text_projection`), `[batch, seq_len, hidden]`."""
        device = device or self._execution_device
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if getattr(self.text_encoder, "base_model", self.text_encoder) is self.text_encoder:
            outputs = self.text_encoder(**inputs)
            hidden = getattr(outputs, "last_hidden_state", None)
            return hidden if hidden is not None else outputs[0]
        # a model with a head (e.g. *ForCausalLM): call the model itself, so offload hooks on it fire, and take the
        # last hidden state (after the final norm in transformers 5); compute logits for one position only
        if "logits_to_keep" in inspect.signature(self.text_encoder.forward).parameters:
            inputs["logits_to_keep"] = 1
        return self.text_encoder(**inputs, output_hidden_states=True).hidden_states[-1]

    def _encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        hidden = self.text_hidden_states(input_ids, attention_mask, device)
        return self.text_projection(hidden.to(self.text_projection.dtype))

    # ------------------------------------------------------------------ CPM-Bee text encoder (released VisCPM-Paint)
    def _is_cpmbee(self) -> bool:
        config = getattr(getattr(self, "text_encoder", None), "config", None)
        return getattr(config, "model_type", None) == "cpmbee"

    @staticmethod
    def caption_data(prompt: str | Mapping[str, Any]) -> dict[str, Any]:
        """VisCPM-Paint's structured input of a prompt: `{"caption": prompt, "objects": ""}` (a dict is used as is)."""
        if isinstance(prompt, Mapping):
            return dict(prompt)
        if not isinstance(prompt, str):
            raise ValueError(f"A prompt must be a string or a CPM-Bee dict, got {type(prompt).__name__}.")
        return {"caption": prompt, "objects": ""}

    def _encode_cpmbee(self, data: list[Mapping[str, Any]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack `data` into one right-padded batch (VisCPM's collater) and project CPM-Bee's final states."""
        enc = self.tokenizer.pack([[[d]] for d in data])
        enc = {k: v.to(device) for k, v in enc.items() if k != "labels"}
        model = getattr(self.text_encoder, "cpmbee", self.text_encoder)
        hidden = model(**enc, use_cache=False).last_hidden_state
        return self.text_projection(hidden.to(self.text_projection.dtype)), enc["attention_mask"]

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        r"""
        Encode prompts into the (projected) text states the UNet's cross-attention reads.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                Prompt(s) to encode; not needed when `prompt_embeds` is given.
            device (`torch.device`, *optional*):
                Device of the returned tensors (defaults to the pipeline's execution device).
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Each prompt's states are repeated this many times.
            do_classifier_free_guidance (`bool`, *optional*, defaults to `True`):
                Whether to also return the negative (unconditional) states.
            negative_prompt (`str` or `list[str]`, *optional*):
                Negative prompt(s); `""` when omitted.
            prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed projected states `[batch, seq_len, cross_attention_dim]`, e.g. from a previous call.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed projected negative states.
            prompt_attention_mask (`torch.Tensor`, *optional*):
                `[batch, seq_len]` mask of `prompt_embeds` (1 = token, 0 = padding); all ones when omitted.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                Mask of `negative_prompt_embeds`.
            max_sequence_length (`int`, *optional*):
                Truncate prompts to this many tokens (defaults to `tokenizer.model_max_length`).

        Returns:
            `tuple`: `(prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask)`,
            each repeated `num_images_per_prompt` times; the negative entries are `None` without guidance. With
            guidance the positive and negative states are padded to a common length (padding masked).
        """
        device = device or self._execution_device
        if self._is_cpmbee() and (
            prompt_embeds is None or (do_classifier_free_guidance and negative_prompt_embeds is None)
        ):
            # VisCPM-Paint: conditional and unconditional inputs go through CPM-Bee in one batch, padded together
            conds = [] if prompt_embeds is not None else [self.caption_data(p) for p in self._prompt_list(prompt)]
            batch = len(conds) if prompt_embeds is None else prompt_embeds.shape[0]
            negatives = []
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negatives = [self.caption_data(n) for n in negative_prompt_list(negative_prompt, batch)]
            embeds, masks = self._encode_cpmbee(conds + negatives, device)
            if prompt_embeds is None:
                prompt_embeds, prompt_attention_mask = embeds[: len(conds)], masks[: len(conds)]
            if negatives:
                negative_prompt_embeds, negative_prompt_attention_mask = embeds[len(conds) :], masks[len(conds) :]
        elif prompt_embeds is None:
            if prompt is None:
                raise ValueError("Provide either `prompt` or `prompt_embeds`.")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            input_ids, prompt_attention_mask = self.tokenize_prompts(prompts, max_sequence_length)
            negative_ids = None
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negatives = negative_prompt_list(negative_prompt, len(prompts))
                negative_ids, negative_prompt_attention_mask = self.tokenize_prompts(negatives, max_sequence_length)
                if not self.config.use_encoder_attention_mask:
                    # unmasked (VisCPM) mode: pad the token ids, as VisCPM's collater does, so both sides have the
                    # same length and padding positions are real encoder states
                    length = max(input_ids.shape[1], negative_ids.shape[1])
                    input_ids, prompt_attention_mask = self._pad_ids(input_ids, prompt_attention_mask, length)
                    negative_ids, negative_prompt_attention_mask = self._pad_ids(
                        negative_ids, negative_prompt_attention_mask, length
                    )
            prompt_embeds = self._encode_text(input_ids, prompt_attention_mask, device)
            if negative_ids is not None:
                negative_prompt_embeds = self._encode_text(negative_ids, negative_prompt_attention_mask, device)
        elif do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompt_list(negative_prompt, prompt_embeds.shape[0])
            negative_ids, negative_prompt_attention_mask = self.tokenize_prompts(negatives, max_sequence_length)
            negative_prompt_embeds = self._encode_text(negative_ids, negative_prompt_attention_mask, device)

        # a pipeline holding only the text side (unet=None, to encode prompts with a large text encoder apart) casts
        # to the projection's dtype
        target_dtype = self.unet.dtype if getattr(self, "unet", None) is not None else self.text_projection.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=target_dtype)
        prompt_attention_mask = self._default_mask(prompt_embeds, prompt_attention_mask, device)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=target_dtype)
            negative_prompt_attention_mask = self._default_mask(
                negative_prompt_embeds, negative_prompt_attention_mask, device
            )
            if negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                raise ValueError(
                    f"`negative_prompt_embeds` has batch size {negative_prompt_embeds.shape[0]} but `prompt_embeds` "
                    f"has {prompt_embeds.shape[0]}: give one negative prompt per prompt."
                )
            length = max(prompt_embeds.shape[1], negative_prompt_embeds.shape[1])
            if (
                prompt_embeds.shape[1] != negative_prompt_embeds.shape[1]
                and not self.config.use_encoder_attention_mask
            ):
                raise ValueError(
                    f"`prompt_embeds` ({prompt_embeds.shape[1]} tokens) and `negative_prompt_embeds` "
                    f"({negative_prompt_embeds.shape[1]} tokens) differ in length while "
                    "`use_encoder_attention_mask=False`: pad them to the same length before encoding."
                )
            prompt_embeds, prompt_attention_mask = self._pad_embeds(prompt_embeds, prompt_attention_mask, length)
            negative_prompt_embeds, negative_prompt_attention_mask = self._pad_embeds(
                negative_prompt_embeds, negative_prompt_attention_mask, length
            )
            negative_prompt_embeds = self._repeat(negative_prompt_embeds, num_images_per_prompt)
            negative_prompt_attention_mask = self._repeat(negative_prompt_attention_mask, num_images_per_prompt)
        else:
            negative_prompt_embeds = negative_prompt_attention_mask = None

        prompt_embeds = self._repeat(prompt_embeds, num_images_per_prompt)
        prompt_attention_mask = self._repeat(prompt_attention_mask, num_images_per_prompt)
        return prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask

    @staticmethod
    def _prompt_list(prompt) -> list:
        if prompt is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`.")
        return [prompt] if isinstance(prompt, (str, Mapping)) else list(prompt)

    def _pad_ids(self, ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - ids.shape[1]
        if extra == 0:
            return ids, mask
        return F.pad(ids, (0, extra), value=self._pad_token_id()), F.pad(mask, (0, extra), value=0)

    @staticmethod
    def _default_mask(embeds: torch.Tensor, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if mask is None:
            return torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        if mask.shape != embeds.shape[:2]:
            raise ValueError(
                f"An attention mask has shape {tuple(mask.shape)} but its embeddings have shape "
                f"{tuple(embeds.shape)}: the mask must be `[batch, seq_len]` = {tuple(embeds.shape[:2])}."
            )
        return mask.to(device=device, dtype=torch.long)

    @staticmethod
    def _pad_embeds(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - embeds.shape[1]
        if extra == 0:
            return embeds, mask
        return F.pad(embeds, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=0)

    @staticmethod
    def _repeat(tensor: torch.Tensor, times: int) -> torch.Tensor:
        return tensor.repeat_interleave(times, dim=0) if times > 1 else tensor

    # ------------------------------------------------------------------ diffusion helpers
    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_extra_step_kwargs
    # (differs: same behaviour, written shorter)
    def prepare_extra_step_kwargs(self, generator, eta):
        # eta (η) is only used by DDIMScheduler; other schedulers do not take it
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_latents
    # (differs: also checks the shape of user-given `latents`)
    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        shape = (
            batch_size,
            num_channels_latents,
            int(height) // self.vae_scale_factor,
            int(width) // self.vae_scale_factor,
        )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You passed {len(generator)} generators but the effective batch size is {batch_size} "
                "(prompts x `num_images_per_prompt`): pass one generator per image, or a single generator."
            )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}.")
            latents = latents.to(device)
        return latents * self.scheduler.init_noise_sigma

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.check_inputs
    # (differs: also validates the numeric arguments, CPM-Bee dict prompts and attention masks; no IP-Adapter, no `callback_steps`)
    def check_inputs(
        self,
        prompt,
        height,
        width,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
        callback_on_step_end_tensor_inputs=None,
        num_inference_steps=50,
        timesteps=None,
        sigmas=None,
        guidance_scale=7.5,
        guidance_rescale=0.0,
        eta=0.0,
        num_images_per_prompt=1,
    ):
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass only one of `timesteps` and `sigmas`.")
        for name, values in (("timesteps", timesteps), ("sigmas", sigmas)):
            if values is not None and len(values) == 0:
                raise ValueError(f"`{name}` is empty: pass at least one value, or leave it `None`.")
        if (
            timesteps is None
            and sigmas is None
            and (
                isinstance(num_inference_steps, bool)
                or not isinstance(num_inference_steps, int)
                or num_inference_steps < 1
            )
        ):
            raise ValueError(
                f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r} (VisCPM-Paint uses 50)."
            )
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")
        for name, value in (("guidance_scale", guidance_scale), ("guidance_rescale", guidance_rescale), ("eta", eta)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"`{name}` must be a finite number >= 0, got {value!r} (guidance_scale <= 1 turns guidance off)."
                )
        if guidance_rescale > 1:
            raise ValueError(f"`guidance_rescale` must be in [0, 1], got {guidance_rescale}.")
        if height <= 0 or width <= 0:
            raise ValueError(f"`height` and `width` must be positive, got {height} and {width}.")
        if height % self.vae_scale_factor != 0 or width % self.vae_scale_factor != 0:
            raise ValueError(
                f"`height` and `width` must be divisible by {self.vae_scale_factor} but are {height} and {width}."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {bad}, which are not in {self._callback_tensor_inputs}."
            )
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`.")
        allowed = (str, list, Mapping) if self._is_cpmbee() else (str, list)
        if prompt is not None and not isinstance(prompt, allowed):
            raise ValueError(
                f"`prompt` has to be a `str` or a `list[str]`{' (or CPM-Bee dicts)' if self._is_cpmbee() else ''} but "
                f"is {type(prompt)}."
            )
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        cross_dim = self.unet.config.cross_attention_dim
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (embeds.ndim != 3 or embeds.shape[-1] != cross_dim):
                raise ValueError(
                    f"`{name}` must have shape `[batch, seq_len, {cross_dim}]` (projected states, as returned by "
                    f"`encode_prompt`) but has shape {tuple(embeds.shape)}."
                )
        if prompt_attention_mask is not None and prompt_embeds is None:
            raise ValueError("`prompt_attention_mask` is only used together with `prompt_embeds`.")
        if negative_prompt_attention_mask is not None and negative_prompt_embeds is None:
            raise ValueError("`negative_prompt_attention_mask` is only used together with `negative_prompt_embeds`.")

    # ------------------------------------------------------------------ reranking (VisCPM: best of 4 by Chinese-CLIP)
    @torch.no_grad()
    def clip_scores(self, images: Sequence[Any], texts: Sequence[str], clip_model, clip_processor) -> torch.Tensor:
        """Cosine similarity of each image with its text under a CLIP model (e.g. `ChineseCLIPModel`
        `OFA-Sys/chinese-clip-vit-base-patch16`, which VisCPM uses); `images[i]` is scored against `texts[i]`."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: give one text per image.")
        device = next(clip_model.parameters()).device
        inputs = clip_processor(text=list(texts), images=list(images), return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        image_features = clip_model.get_image_features(pixel_values=inputs["pixel_values"])
        text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        text_features = clip_model.get_text_features(**text_inputs)
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        return F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)

    def generate_reranked(
        self,
        prompt: str | list[str],
        clip_model,
        clip_processor,
        num_candidates: int = 4,
        clip_texts: str | list[str] | None = None,
        **kwargs,
    ) -> tuple[list[Any], torch.Tensor]:
        """VisCPM-Paint's optional reranking: draw `num_candidates` images per prompt and keep the one whose CLIP
        score (see [`clip_scores`]) with the prompt (or `clip_texts`) is highest.

        Returns:
            `tuple`: the best PIL image per prompt and the `[num_prompts, num_candidates]` scores.
        """
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"`num_candidates` must be a positive integer, got {num_candidates!r}.")
        prompts = [prompt] if isinstance(prompt, (str, Mapping)) else list(prompt)
        texts = prompts if clip_texts is None else ([clip_texts] if isinstance(clip_texts, str) else list(clip_texts))
        if len(texts) != len(prompts) or not all(isinstance(t, str) for t in texts):
            raise ValueError("Pass one string `clip_texts` entry per prompt (needed when prompts are CPM-Bee dicts).")
        kwargs["output_type"] = "pil"
        images = self(prompts, num_images_per_prompt=num_candidates, **kwargs).images
        scores = self.clip_scores(
            images, [t for t in texts for _ in range(num_candidates)], clip_model, clip_processor
        )
        scores = scores.view(len(prompts), num_candidates)
        best = scores.argmax(dim=-1).tolist()
        return [images[i * num_candidates + b] for i, b in enumerate(best)], scores

    @property
    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.guidance_scale
    def guidance_scale(self):
        return self._guidance_scale

    @property
    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.guidance_rescale
    def guidance_rescale(self):
        return self._guidance_rescale

    @property
    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.do_classifier_free_guidance
    # (differs: no guidance-embedding (`time_cond_proj_dim`) UNets, so the scale alone decides)
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1

    @property
    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.cross_attention_kwargs
    def cross_attention_kwargs(self):
        return self._cross_attention_kwargs

    @property
    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.num_timesteps
    def num_timesteps(self):
        return self._num_timesteps

    @property
    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.interrupt
    def interrupt(self):
        return self._interrupt

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.__call__
    # (differs: prompt padding masks reach the UNet's cross-attention; no IP-Adapter, LoRA scale, `clip_skip`, guidance embedding or safety checker)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
    ):
        r"""
        Generate images from prompts.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                Prompt(s) in any language the text encoder understands. Not needed with `prompt_embeds`.
            height (`int`, *optional*, defaults to `unet.config.sample_size * vae_scale_factor`):
                Image height in pixels (a multiple of the VAE scale factor).
            width (`int`, *optional*, defaults to `unet.config.sample_size * vae_scale_factor`):
                Image width in pixels.
            num_inference_steps (`int`, *optional*, defaults to 50):
                Number of denoising steps.
            timesteps (`list[int]`, *optional*):
                Custom timesteps for schedulers that accept them.
            sigmas (`list[float]`, *optional*):
                Custom sigmas for schedulers that accept them.
            guidance_scale (`float`, *optional*, defaults to 7.5):
                Classifier-free guidance scale (VisCPM's default); guidance is off when `<= 1`.
            negative_prompt (`str` or `list[str]`, *optional*):
                What not to draw; `""` when omitted (as VisCPM's unconditional input).
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images generated per prompt.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's η; ignored by other schedulers.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) for reproducible sampling; one per image for per-image control.
            latents (`torch.Tensor`, *optional*):
                Initial noisy latents (sampled from `generator` when omitted).
            prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed projected text states (`encode_prompt`'s first output).
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Precomputed projected negative text states.
            prompt_attention_mask (`torch.Tensor`, *optional*):
                Padding mask of `prompt_embeds`.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*):
                Padding mask of `negative_prompt_embeds`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`StableDiffusionPipelineOutput`] instead of a tuple.
            cross_attention_kwargs (`dict`, *optional*):
                Passed to the UNet's attention processors.
            guidance_rescale (`float`, *optional*, defaults to 0.0):
                Guidance rescale factor of "Common Diffusion Noise Schedules and Sample Steps are Flawed".
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called as `callback_on_step_end(self, step, timestep, callback_kwargs)` after every step; the tensors
                it returns replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Tensors handed to `callback_on_step_end` (from `_callback_tensor_inputs`).
            max_sequence_length (`int`, *optional*):
                Truncate prompts to this many tokens (defaults to `tokenizer.model_max_length`).

        Examples:

        Returns:
            [`~pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`: the images and `None` (this
            pipeline has no safety checker).
        """
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Default height and width to unet
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, (list, tuple)):
            default_h, default_w = sample_size
        else:
            default_h = default_w = sample_size
        height = height or default_h * self.vae_scale_factor
        width = width or default_w * self.vae_scale_factor

        # 1. Check inputs. Raise error if not correct
        self.check_inputs(
            prompt,
            height,
            width,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
            callback_on_step_end_tensor_inputs,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            eta=eta,
            num_images_per_prompt=num_images_per_prompt,
        )
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, (str, Mapping)) else len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device

        # 3. Encode input prompt
        prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask = (
            self.encode_prompt(
                prompt,
                device,
                num_images_per_prompt,
                self.do_classifier_free_guidance,
                negative_prompt,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                prompt_attention_mask=prompt_attention_mask,
                negative_prompt_attention_mask=negative_prompt_attention_mask,
                max_sequence_length=max_sequence_length,
            )
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            prompt_attention_mask = torch.cat([negative_prompt_attention_mask, prompt_attention_mask])
        encoder_attention_mask = prompt_attention_mask if self.config.use_encoder_attention_mask else None
        if encoder_attention_mask is not None and bool(encoder_attention_mask.all()):
            encoder_attention_mask = None  # nothing to mask: skip the attention bias entirely

        # 4. Prepare timesteps
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )

        # 5. Prepare latent variables
        num_channels_latents = self.unet.config.in_channels
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # 6. Prepare extra step kwargs
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 7. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                if hasattr(self.scheduler, "scale_model_input"):
                    latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    encoder_attention_mask=encoder_attention_mask,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    return_dict=False,
                )[0]

                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(
                            noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale
                        )

                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[
                0
            ]
        else:
            image = latents
        image = self.image_processor.postprocess(image, output_type=output_type)

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, None)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None)
