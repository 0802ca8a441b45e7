"""``ReflectionSeparationPipeline``: single-image reflection separation with joint latent diffusion.

One UNet, conditioned on the mixture latent (channel concat ``[z_t, z_I]``) and on one of two fixed
prompts, denoises the transmission and the reflection together as one batch ``[T rows; R rows]``.
Each sampling step (method-notes section 6):

1. UNet on ``[z_t^T; z_t^R]`` with cross-layer self-attention -> ``eps_T, eps_R``;
2. disjoint combination -> ``eps_T', eps_R'``;
3. latent-composition guidance on ``z_t`` using Tweedie estimates from ``eps'``;
4. scheduler step of each branch with its ``eps'`` at its (updated) ``z_t``.

After the loop both latents are decoded by the FGFM decoder, fed the mixture's encoder features.

One-step mode (``one_step=True``, ``num_inference_steps=1``, or a model saved with ``default_one_step``) skips the
loop: the UNet runs once at the last training timestep on a zero start latent and its clean-latent estimate of both
layers is decoded (:meth:`ReflectionSeparationPipeline.one_step_latents`); the ``onestep`` training stage fine-tunes
a UNet for it end to end.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from .attention import set_cross_layer_attention, uses_cross_layer_attention
from .composition import GUIDANCE_MODES, LatentCompositionGuidance, LatentCompositionNet
from .cuda_graphs import CUDAGraphed
from .image_processing import (
    DETAIL_TRANSFER_MODES,
    PipelineImageInput,
    ReflectionImageProcessor,
    transfer_detail,
    transfer_detail_uncertainty,
    transmission_replaced,
)
from .scheduling import DisjointSampling, to_sample, tweedie_x0
from .tiling import blend_tiles, tile_boxes
from .vae import FGFMAutoencoderKL

TRANSMISSION_PROMPT = "Transmission"
REFLECTION_PROMPT = "Reflection"

RENAMED_ARGUMENTS = {
    "guidance_mode": "composition_guidance",
    "guidance_scale": "composition_guidance_scale",
    "guidance_steps": "composition_guidance_steps",
}
"""Call arguments renamed so that the latent-composition guidance's names say "composition": ``guidance_scale`` is
classifier-free guidance everywhere else in diffusers."""

RENAMED_CONFIG_KEYS = {f"default_{old}": f"default_{new}" for old, new in RENAMED_ARGUMENTS.items()}
"""The matching config keys: folders saved with the old keys load with them mapped to the new ones."""


def check_renamed_arguments(kwargs: dict[str, Any]) -> None:
    """Refuse call arguments the pipeline does not take, naming the new name of a renamed one."""
    for name in kwargs:
        if name in RENAMED_ARGUMENTS:
            note = (" (`guidance_scale` is classifier-free guidance in diffusers; this pipeline has none, its prompts "
                    "are fixed)") if name == "guidance_scale" else ""
            raise TypeError(
                f"`{name}` was renamed `{RENAMED_ARGUMENTS[name]}`: the latent-composition guidance{note}. Pass "
                f"`{RENAMED_ARGUMENTS[name]}=` instead."
            )
    if kwargs:
        raise TypeError(f"`ReflectionSeparationPipeline.__call__` got unexpected arguments {sorted(kwargs)}.")


@dataclass
class ReflectionSeparationPipelineOutput(BaseOutput):
    """Output of :class:`ReflectionSeparationPipeline`.

    Args:
        transmission: the scene behind the glass, one per input image: a list of PIL images, an ``NHWC``
            numpy array or an ``NCHW`` tensor, values in [0, 1], each in its input's size when
            ``match_input_resolution`` is set. With ``output_type="latent"``: the transmission's final latents,
            undecoded, ``(N, latent_channels, h, w)`` in the UNet's latent space (scaled by the VAE's
            ``scaling_factor``, of the padded image at the processing resolution); decode them with
            :meth:`ReflectionSeparationPipeline.decode_latents`.
        reflection: the reflection as it appears in the photo, same format (its final latents with
            ``output_type="latent"``).
        transmission_uncertainty, reflection_uncertainty: with ``output_uncertainty``, each layer's per-pixel
            spread over the ensemble (median absolute deviation of the members from their median, in [0, 1]
            units), in the format of the layers; ``None`` otherwise.
    """

    transmission: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    reflection: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    transmission_uncertainty: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None
    reflection_uncertainty: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None = None


def widen_conv_in(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Add ``extra_channels`` zero-initialized input channels after the existing ones (the ``z_I`` slot).

    With the new weights at zero the widened UNet computes exactly what it computed on ``z_t`` alone.
    """
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return unet


class ReflectionSeparationPipeline(DiffusionPipeline):
    """Separate a photo taken through glass into transmission and reflection.

    Implements "Reflection Separation from a Single Image via Joint Latent Diffusion" (CVPR 2026).

    Args:
        vae: FGFM-augmented autoencoder.
        unet: conditional UNet with ``2 * latent_channels`` inputs (``[z_t, z_I]``).
        text_encoder, tokenizer: CLIP, used once per call for the two fixed prompts.
        scheduler: any diffusers scheduler that steps on a model output.
        composition_net: the learned latent composition ``C``.
        default_denoising_steps, default_processing_resolution, default_disjoint_strength,
        default_fgfm_strength, default_composition_guidance, default_composition_guidance_scale,
        default_composition_guidance_steps, default_detail_transfer, default_autoencoder_detail: values used when the
            call leaves the matching argument as ``None``;
            saved with the model (configs saved with the earlier ``default_guidance_mode``/``_scale``/``_steps``
            keys load too, see :data:`RENAMED_CONFIG_KEYS`).
        default_one_step: the UNet was fine-tuned for one-step separation (the ``onestep`` training stage), so calls
            that give neither ``one_step`` nor ``num_inference_steps`` run one step.
        cross_layer_attention: install CLSA on every self-attention (False gives the paper's baseline).
        min_input_size, max_input_size: accepted image side lengths in pixels.
        transmission_prompt, reflection_prompt: the two fixed prompts.
    """

    # C runs between the UNet's calls at every guided step: in the chain, each of its calls would move the UNet off
    # the GPU and the next step would move it back. Outside it, diffusers gives C its own hook (like a ControlNet's).
    model_cpu_offload_seq = "text_encoder->vae->unet"
    _callback_tensor_inputs = ["latents", "mixture_latents", "prompt_embeds"]

    def __init__(
        self,
        vae: FGFMAutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler,
        composition_net: LatentCompositionNet,
        default_denoising_steps: int = 50,
        default_processing_resolution: int = 960,
        default_disjoint_strength: float = 0.2,
        default_fgfm_strength: float = 0.8,
        default_composition_guidance: str = "fast",
        default_composition_guidance_scale: float = 0.01,
        default_composition_guidance_steps: int = 1,
        default_detail_transfer: str = "none",
        default_autoencoder_detail: bool = False,
        default_one_step: bool = False,
        cross_layer_attention: bool = True,
        min_input_size: int = 16,
        max_input_size: int = 8192,
        transmission_prompt: str = TRANSMISSION_PROMPT,
        reflection_prompt: str = REFLECTION_PROMPT,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            composition_net=composition_net,
        )
        self.register_to_config(
            default_denoising_steps=default_denoising_steps,
            default_processing_resolution=default_processing_resolution,
            default_disjoint_strength=default_disjoint_strength,
            default_fgfm_strength=default_fgfm_strength,
            default_composition_guidance=default_composition_guidance,
            default_composition_guidance_scale=default_composition_guidance_scale,
            default_composition_guidance_steps=default_composition_guidance_steps,
            default_detail_transfer=default_detail_transfer,
            default_autoencoder_detail=default_autoencoder_detail,
            default_one_step=default_one_step,
            cross_layer_attention=cross_layer_attention,
            min_input_size=min_input_size,
            max_input_size=max_input_size,
            transmission_prompt=transmission_prompt,
            reflection_prompt=reflection_prompt,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.image_processor = ReflectionImageProcessor(size_multiple=self.vae_scale_factor * unet_factor)
        set_cross_layer_attention(self.unet, cross_layer_attention)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_stable_diffusion(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        scheduler=None,
        torch_dtype: torch.dtype | None = None,
        fgfm_config: dict[str, Any] | None = None,
        composition_config: dict[str, Any] | None = None,
        **pipeline_config,
    ) -> "ReflectionSeparationPipeline":
        """Build an untrained pipeline from a Stable Diffusion 2.x checkpoint (Hub id or diffusers folder).

        The UNet's ``conv_in`` is widened to take ``[z_t, z_I]`` with the new channels at zero, the VAE gets
        fresh zero-initialized FGFM blocks, and ``C`` is new. Fine-tune it with the training stack.
        ``scheduler`` defaults to the checkpoint's scheduler config as a ``DDIMScheduler`` with trailing
        timesteps (keeps its ``prediction_type``: epsilon for SD 2.1-base, v for SD 2.1-768).
        """
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        path = pretrained_model_name_or_path
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs)
        unet = widen_conv_in(unet, unet.config.in_channels)
        base_vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs)
        vae = FGFMAutoencoderKL.from_vae(base_vae, **(fgfm_config or {}))
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", timestep_spacing="trailing")
        composition_net = LatentCompositionNet(
            **{"latent_channels": vae.config.latent_channels, **(composition_config or {})}
        ).to(device=unet.device, dtype=unet.dtype)
        return cls(
            vae=vae,
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            composition_net=composition_net,
            **pipeline_config,
        )

    # ------------------------------------------------------------------ helpers

    def set_attention_slice(self, slice_size: int | str | None) -> None:
        """Behind diffusers' ``enable_attention_slicing(slice_size)`` / ``disable_attention_slicing()``: the UNet
        picks each layer's slice size as in diffusers (``"auto"``: half the heads, ``"max"``: one, an int, ``None``:
        off), then CLSA is reinstalled on the self-attentions with those sizes (sliced joined attention), so the
        layers keep attending to each other. Cross-attention to the prompt uses diffusers' sliced processor.
        ``"auto"`` slices layers with a single head in one slice (diffusers would ask for slices of 0 heads)."""
        if slice_size == "auto":
            sliceable = [m for m in self.unet.modules() if m is not self.unet and hasattr(m, "set_attention_slice")]
            slice_size = [max(module.sliceable_head_dim // 2, 1) for module in sliceable]
        super().set_attention_slice(slice_size)
        set_cross_layer_attention(self.unet, self.config.cross_layer_attention)

    @torch.no_grad()
    def encode_layer_prompts(self, device: torch.device | None = None) -> torch.Tensor:
        """Embeddings of the transmission and reflection prompts, shape ``(2, tokens, dim)``."""
        device = device or self._execution_device
        tokens = self.tokenizer(
            [self.config.transmission_prompt, self.config.reflection_prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def predict_noise(
        self,
        latent_input: torch.Tensor,
        timestep: torch.Tensor,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Raw UNet output for stacked ``[T; R]`` latents already scaled by ``scheduler.scale_model_input``."""
        conditioning = mixture_latents.repeat(2, 1, 1, 1)
        unet_input = torch.cat([latent_input, conditioning.to(latent_input.dtype)], dim=1)
        return self.unet(unet_input, timestep, encoder_hidden_states=prompt_embeds, return_dict=False)[0]

    def one_step_latents(
        self,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        predict_noise: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Both layers' clean latents ``[T rows; R rows]`` from one UNet call, differentiable (the ``onestep`` stage
        trains through it).

        The UNet sees the last timestep of the scheduler's training schedule and a zero start latent, and its output
        is read as a clean-latent estimate according to the scheduler's ``prediction_type`` (``to_sample``). Zero,
        not noise: on a zero-terminal-SNR schedule the last timestep's latent is pure noise that says nothing about
        the image, and its mean, zero, makes the step deterministic (Garcia et al., WACV 2025, fine-tune depth
        estimators the same way). Every scheduler's ``scale_model_input`` keeps zero at zero, so no scheduler state
        is involved. ``predict_noise`` replaces :meth:`predict_noise` (the CUDA-graphed one).
        """
        timestep = self.scheduler.config.num_train_timesteps - 1
        alpha_prod = self.scheduler.alphas_cumprod[timestep].to(torch.float64)
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "epsilon" and alpha_prod == 0:
            raise ValueError(
                "One-step separation reads the clean latents from the UNet's output at the last timestep, where this "
                "zero-terminal-SNR schedule leaves no signal: an epsilon-prediction model says nothing about the image "
                "there. Use a v-prediction (or sample-prediction) model, or sample with `num_inference_steps` > 1."
            )
        rows = 2 * mixture_latents.shape[0]
        start = torch.zeros((rows, *mixture_latents.shape[1:]), device=mixture_latents.device, dtype=self.unet.dtype)
        timesteps = torch.full((), timestep, device=mixture_latents.device, dtype=torch.long)
        output = (predict_noise or self.predict_noise)(start, timesteps, mixture_latents, prompt_embeds)
        return to_sample(output, start, alpha_prod, prediction_type)

    def progress_bar(self, iterable=None, total=None, desc: str | None = None, leave: bool = True):
        """diffusers' progress bar with a description; ``set_progress_bar_config`` still overrides it."""
        config = {"desc": desc, "leave": leave, **getattr(self, "_progress_bar_config", {})}
        return tqdm(iterable, total=total, **config)

    @staticmethod
    def layer_prompt_batch(prompt_embeds: torch.Tensor, batch: int) -> torch.Tensor:
        """``(2, L, D)`` prompt pair -> ``(2B, L, D)`` rows ``[T x B; R x B]``."""
        return prompt_embeds.repeat_interleave(batch, dim=0)

    def check_inputs(
        self,
        num_inference_steps: int,
        processing_resolution: int,
        disjoint_strength: float,
        fgfm_strength: float,
        composition_guidance: str,
        composition_guidance_scale: float,
        composition_guidance_steps: int,
        batch_size: int,
        output_type: str,
        num_images: int,
        generator: torch.Generator | list[torch.Generator] | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        detail_transfer: str = "none",
        ensemble_size: int = 1,
        output_uncertainty: bool = False,
        one_step: bool = False,
        autoencoder_detail: bool = False,
    ) -> None:
        """Validate call arguments; raise ``ValueError``/``TypeError`` naming the argument and its valid values."""
        if not isinstance(autoencoder_detail, bool):
            raise TypeError(f"`autoencoder_detail` must be True or False, got {autoencoder_detail!r}.")
        if one_step and composition_guidance == "full":
            raise ValueError(
                "`composition_guidance='full'` differentiates the composition loss through the UNet with respect to "
                "the noisy latents, which one-step separation does not have (it starts from a fixed zero latent). "
                "Pass `composition_guidance='fast'` (gradient steps on the one-step estimate) or 'off', or sample "
                "with `one_step=False`."
            )
        if one_step and ensemble_size != 1:
            raise ValueError(
                f"`ensemble_size={ensemble_size}` with one-step separation: one step is deterministic, so every member "
                "would be the same separation. Pass `ensemble_size=1`, or sample with `one_step=False`."
            )
        if detail_transfer not in DETAIL_TRANSFER_MODES:
            raise ValueError(f"`detail_transfer` must be one of {DETAIL_TRANSFER_MODES}, got {detail_transfer!r}.")

        def is_int(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

        if not is_int(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if not is_int(processing_resolution) or processing_resolution < 0:
            raise ValueError(
                f"`processing_resolution` must be a non-negative integer (0 = native size), got {processing_resolution!r}."
            )
        if 0 < processing_resolution < self.image_processor.size_multiple:
            raise ValueError(
                f"`processing_resolution` must be 0 or at least {self.image_processor.size_multiple}, got "
                f"{processing_resolution}."
            )
        if not is_number(disjoint_strength) or not 0.0 <= disjoint_strength <= 1.0:
            raise ValueError(f"`disjoint_strength` must be in [0, 1] (paper: 0.2), got {disjoint_strength!r}.")
        if not is_number(fgfm_strength) or not 0.0 <= fgfm_strength <= 2.0:
            raise ValueError(f"`fgfm_strength` must be in [0, 2] (paper: 0.8), got {fgfm_strength!r}.")
        if composition_guidance not in (*GUIDANCE_MODES, "off"):
            raise ValueError(
                f"`composition_guidance` must be one of 'fast', 'full', 'off' or None, got {composition_guidance!r}."
            )
        if not is_number(composition_guidance_scale) or not 0.0 <= composition_guidance_scale <= 1.0:
            raise ValueError(
                f"`composition_guidance_scale` must be in [0, 1] (a relative step size), got "
                f"{composition_guidance_scale!r}."
            )
        if not is_int(composition_guidance_steps) or composition_guidance_steps < 0:
            raise ValueError(
                f"`composition_guidance_steps` must be a non-negative integer, got {composition_guidance_steps!r}."
            )
        if not is_int(ensemble_size) or ensemble_size < 1:
            raise ValueError(
                f"`ensemble_size` must be a positive integer (1: no ensemble; Marigold uses 10), got {ensemble_size!r}."
            )
        if output_uncertainty and ensemble_size < 2:
            raise ValueError(
                "`output_uncertainty=True` measures the spread of an ensemble; pass `ensemble_size` of 2 or more "
                f"(got {ensemble_size})."
            )
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}.")
        if output_type == "latent" and ensemble_size > 1:
            raise ValueError(
                "`output_type='latent'` returns undecoded latents, but an ensemble is combined in pixel space; pass "
                "`ensemble_size=1` or another `output_type`."
            )
        if output_type == "latent" and tile_size is not None:
            raise ValueError(
                "`output_type='latent'` returns each image's final latents, which tiled images do not have as one "
                "tensor; pass `tile_size=None` or another `output_type`."
            )
        if isinstance(generator, list):
            if len(generator) != num_images:
                raise ValueError(
                    f"`generator` is a list of {len(generator)} generators but {num_images} images were given; "
                    "pass one generator per image or a single generator."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise TypeError("`generator` list must hold only `torch.Generator` objects.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a `torch.Generator` or a list of them, got {type(generator).__name__}.")
        multiple = self.image_processor.size_multiple
        if tile_size is not None and (not is_int(tile_size) or tile_size < multiple or tile_size % multiple):
            raise ValueError(f"`tile_size` must be None or a positive multiple of {multiple}, got {tile_size!r}.")
        if tile_size is not None and (not is_int(tile_overlap) or not 0 <= tile_overlap < tile_size // 2):
            raise ValueError(f"`tile_overlap` must be an integer in [0, tile_size / 2), got {tile_overlap!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` {unknown} are not available; choose from "
                    f"{self._callback_tensor_inputs}."
                )

    def _initial_noise(
        self,
        images: list[int],
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Noise for the images at ``images`` (indices): each draws its T then R latent from its own generator."""
        draws = []
        for index in images:
            g = generator[index] if isinstance(generator, list) else generator
            draws.append(randn_tensor((2, *shape), generator=g, device=device, dtype=dtype))
        stacked = torch.stack(draws)  # (B, 2, C, h, w)
        return torch.cat([stacked[:, 0], stacked[:, 1]], dim=0)

    # ------------------------------------------------------------------ call

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        image: PipelineImageInput,
        num_inference_steps: int | None = None,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        detail_transfer: str | None = None,
        autoencoder_detail: bool | None = None,
        disjoint_strength: float | None = None,
        fgfm_strength: float | None = None,
        composition_guidance: str | None = None,
        composition_guidance_scale: float | None = None,
        composition_guidance_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int | None = None,
        ensemble_size: int = 1,
        output_uncertainty: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_input_size: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        guidance_checkpointing: bool = False,
        cuda_graphs: bool | None = None,
        one_step: bool | None = None,
        **kwargs,
    ) -> ReflectionSeparationPipelineOutput | tuple:
        """Separate each image into transmission and reflection.

        Args:
            image: a PIL image, numpy array (``HW``/``HWC``/``NHWC``), torch tensor (``HW``/``CHW``/``NCHW``),
                or a list of them; uint8/uint16, or float in [0, 1]. Images may differ in size.
            num_inference_steps: sampling steps (default from the config); 1 runs the one-step path (see
                ``one_step``) on any model.
            processing_resolution: long side the image is resized to before encoding; 0 keeps the native
                size (default from the config; the paper uses 960).
            match_input_resolution: resize the outputs back to each input's size.
            detail_transfer: how the layers get back the detail that processing at ``processing_resolution`` left
                out when they are resized back: ``"highpass"`` adds the photo's high frequencies to the
                transmission, ``"residual"`` takes the transmission as the photo minus the upsampled reflection,
                ``"none"`` upsamples both (see :func:`~reflection_separation.image_processing.transfer_detail`);
                default from the config.
            autoencoder_detail: give the transmission the part of the photo that the autoencoder cannot reproduce
                from its latent, ``T += I - D(E(I))`` at the processing resolution (``D`` the same FGFM decode as
                the layers'): the fine structure lost in the latent bottleneck belongs mostly to the transmission,
                as reflections are mostly smooth. One more decode per image (not per ensemble member); decoded outputs
                only.
                Default from the config.
            disjoint_strength: ``k`` of disjoint sampling; 0 disables it.
            fgfm_strength: ``w`` of the FGFM decoder; 0 decodes with the plain VAE.
            composition_guidance: latent-composition guidance: ``"fast"`` (gradient through Tweedie and ``C``),
                ``"full"`` (through the UNet),
                ``"off"``; ``None`` takes the config default.
            composition_guidance_scale: relative step size of the latent-composition guidance, in [0, 1] (see
                ``composition.py``). Not classifier-free guidance: this pipeline has none (its prompts are fixed),
                and ``guidance_scale=`` raises a ``TypeError`` naming this argument.
            composition_guidance_steps: inner gradient steps of that guidance per sampling step.
            generator: one generator, or one per image (then results do not depend on ``batch_size``).
            batch_size: ensemble members denoised together, each two UNet rows ``[T; R]`` (without an ensemble, an
                image or tile is one member); default ``ensemble_size``: one image's whole ensemble per batch.
            ensemble_size: separations per image, as in Marigold: ``ensemble_size`` noise draws, taken in turn from
                the image's generator and denoised together in the batch dimension, whose decoded layers are
                combined per pixel by their median (``torch.median``: for an even size the lower of the two middle
                values, so every pixel is one member's), before tiles are blended, the layers resized back and
                detail transferred. 1 (default) runs a single separation.
            output_uncertainty: also return each layer's per-pixel spread over the ensemble, the median absolute
                deviation of the members (as images in [0, 1]) from their median, as ``transmission_uncertainty``
                and ``reflection_uncertainty``; needs ``ensemble_size`` >= 2.
            output_type: ``"pil"``, ``"np"`` (``NHWC``) or ``"pt"`` (``NCHW``), values in [0, 1]; or ``"latent"``:
                both layers' final latents, undecoded (images of one size, no tiles; the VAE decoder does not run).
            return_dict: return a :class:`ReflectionSeparationPipelineOutput` instead of a tuple
                ``(transmission, reflection)``.
            callback_on_step_end: called as ``callback(pipe, step, timestep, callback_kwargs)`` after each
                scheduler step; may return replacements for ``latents``.
            callback_on_step_end_tensor_inputs: names from ``_callback_tensor_inputs`` passed to the callback.
            max_input_size: largest accepted image side in pixels (default from the config).
            tile_size: separate images larger than this (at the processing resolution) in overlapping square
                tiles of this side, blended across ``tile_overlap`` pixels, so memory depends on the tile, not
                the photo; each tile's two layers still run together. ``None`` processes whole images.
            tile_overlap: pixels shared by neighbouring tiles (default: a quarter of ``tile_size``).
            guidance_checkpointing: in ``"full"`` composition guidance, recompute the UNet's activations in the backward pass
                instead of keeping them: less memory, one more forward per guidance step (SD 2.1 size at 960 px on an
                H200: 3.2 instead of 6.9 GiB, 1.3-2x the time; ``benchmarks/results/``). Off by default.
            cuda_graphs: replay the denoising loop's UNet calls from CUDA graphs (captured on the first call of
                each latent shape, kept for later calls); ``None`` (default) turns them on for CUDA devices without
                CPU offload. ``False`` runs every call eagerly.
            one_step: separate with one UNet call instead of the sampling loop: the UNet at the last training
                timestep on a zero start latent gives both layers' clean latents, which are decoded as usual
                (:meth:`one_step_latents`; what the ``onestep`` training stage fine-tunes for). It is deterministic
                (``generator`` does not matter), skips disjoint sampling (a trajectory has no steps to push apart)
                and runs no composition guidance unless ``composition_guidance="fast"`` is passed explicitly, which
                then takes ``composition_guidance_steps`` gradient steps of ``L_comp`` on the estimate itself
                (``"full"`` raises a ``ValueError``). ``callback_on_step_end`` is called once, with the estimate as
                ``latents``. ``None``: ``num_inference_steps == 1`` if that is given, else the config's
                ``default_one_step``; ``True`` with ``num_inference_steps`` > 1, or ``False`` with 1, raises a
                ``ValueError``.
        """
        check_renamed_arguments(kwargs)
        config = self.config
        if one_step is None:
            one_step = num_inference_steps == 1 if num_inference_steps is not None else config.default_one_step
        elif num_inference_steps is not None and one_step != (num_inference_steps == 1):
            raise ValueError(
                f"`one_step={one_step}` contradicts `num_inference_steps={num_inference_steps}`: one-step separation "
                "is one UNet call; pass only one of them."
            )
        if one_step:
            num_inference_steps = 1
            composition_guidance = composition_guidance or "off"  # only explicitly asked-for guidance in one step
        elif num_inference_steps is None:
            num_inference_steps = config.default_denoising_steps
        if processing_resolution is None:
            processing_resolution = config.default_processing_resolution
        disjoint_strength = disjoint_strength if disjoint_strength is not None else config.default_disjoint_strength
        fgfm_strength = fgfm_strength if fgfm_strength is not None else config.default_fgfm_strength
        if composition_guidance is None:
            composition_guidance = config.default_composition_guidance
        if composition_guidance_scale is None:
            composition_guidance_scale = config.default_composition_guidance_scale
        if composition_guidance_steps is None:
            composition_guidance_steps = config.default_composition_guidance_steps
        max_input_size = max_input_size if max_input_size is not None else config.max_input_size
        detail_transfer = detail_transfer if detail_transfer is not None else config.default_detail_transfer
        if autoencoder_detail is None:
            autoencoder_detail = config.default_autoencoder_detail
        if batch_size is None:
            batch_size = ensemble_size
        if tile_overlap is None and isinstance(tile_size, int):
            tile_overlap = tile_size // 4
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check and canonicalize inputs.
        tensors = self.image_processor.to_tensors(image)
        self.check_inputs(
            num_inference_steps,
            processing_resolution,
            disjoint_strength,
            fgfm_strength,
            composition_guidance,
            composition_guidance_scale,
            composition_guidance_steps,
            batch_size,
            output_type,
            len(tensors),
            generator,
            callback_on_step_end_tensor_inputs,
            tile_size,
            tile_overlap,
            detail_transfer,
            ensemble_size,
            output_uncertainty,
            one_step,
            autoencoder_detail,
        )
        self.image_processor.check_size(tensors, config.min_input_size, max_input_size)
        if config.cross_layer_attention and not uses_cross_layer_attention(self.unet):
            raise ValueError(
                "The UNet's self-attention no longer runs cross-layer self-attention (CLSA): its processors were "
                "replaced (for example by `unet.fuse_qkv_projections()`, `unet.set_attn_processor(...)` or "
                "`unet.set_attention_slice(...)`), so the two layers would be denoised without seeing each other. "
                "Reinstall it with `reflection_separation.set_cross_layer_attention(pipe.unet)` (fused projections "
                "are supported); for attention slicing use `pipe.enable_attention_slicing()`, which keeps CLSA."
            )
        device = self._execution_device
        if isinstance(generator, torch.Generator) or isinstance(generator, list):
            gen_device = (generator[0] if isinstance(generator, list) else generator).device
            if gen_device.type != "cpu" and gen_device.type != torch.device(device).type:
                raise ValueError(f"`generator` is on {gen_device} but the pipeline runs on {device}; use a CPU generator.")

        if cuda_graphs is None:
            offloaded = any(hasattr(module, "_hf_hook") for module in self.unet.modules())  # accelerate's hooks
            cuda_graphs = torch.device(device).type == "cuda" and not offloaded
        elif cuda_graphs and torch.device(device).type != "cuda":
            raise ValueError(f"`cuda_graphs=True` needs the pipeline on a CUDA device, but it runs on {device}; "
                             "leave `cuda_graphs=None` (on for CUDA devices) or pass False.")
        predict_noise = self._graphed_predict_noise() if cuda_graphs else self.predict_noise

        # 2. Prompts (encoded once per call) and guidance.
        prompt_pair = self.encode_layer_prompts(device).to(self.unet.dtype)
        guidance = None
        if composition_guidance != "off" and composition_guidance_steps > 0 and composition_guidance_scale > 0:
            guidance = LatentCompositionGuidance(self.composition_net, composition_guidance_scale,
                                                 composition_guidance_steps)
        sampler = DisjointSampling(self.scheduler)

        # 3. Preprocess; cut images larger than `tile_size` into overlapping tiles; one member per work unit and
        #    ensemble draw, consecutive; batch the members.
        prepared = [self.image_processor.preprocess(t, processing_resolution) for t in tensors]
        units, tiled = self._work_units(prepared, tile_size, tile_overlap)
        members = [position for position in range(len(units)) for _ in range(ensemble_size)]  # each one's unit
        chunks = self._batches([units[position][1] for position in members], batch_size)

        results: list[torch.Tensor] = [None] * len(members)  # per member: stacked [T, R] latents or decoded layers
        self._num_timesteps = num_inference_steps
        for chunk in self.progress_bar(chunks, desc="Images", leave=True):
            chunk_units = [members[member] for member in chunk]
            images = [units[position][0] for position in chunk_units]
            encoded = list(dict.fromkeys(chunk_units))  # a unit's mixture is encoded once for all its members
            pixels = torch.cat([units[position][1] for position in encoded]).to(device=device, dtype=self.vae.dtype)
            batch = len(chunk)
            # Where every image of the batch gets `T = I - up(R)` (residual detail transfer after a resize), the
            # model's own T is never used: only R is decoded, and the autoencoder detail (T's) is skipped.
            decode_transmission = not match_input_resolution or not all(
                transmission_replaced(detail_transfer, self._processed_size(*prepared[image][:2]), prepared[image][2])
                for image in images
            )

            # 4. Encode the mixture (posterior mode) and keep its features for FGFM; with `autoencoder_detail`, what
            #    its round trip through the autoencoder loses (once per mixture); one row per member.
            mixture_latents, mixture_features = self.encode_mixture(pixels)
            lost_detail = None
            if autoencoder_detail and output_type != "latent" and decode_transmission:
                lost_detail = pixels - self.decode_latents(mixture_latents, mixture_features, fgfm_strength)
            if len(encoded) < batch:
                rows = torch.tensor([encoded.index(position) for position in chunk_units], device=device)
                mixture_latents, mixture_features = mixture_latents[rows], [f[rows] for f in mixture_features]
                lost_detail = lost_detail[rows] if lost_detail is not None else None
            prompt_embeds = self.layer_prompt_batch(prompt_pair, batch)

            # 5-6. Initial noise [T rows; R rows], then denoise (or one UNet call).
            if one_step:
                latents = self._denoise_one_step(mixture_latents, prompt_embeds, guidance, predict_noise,
                                                 callback_on_step_end, callback_on_step_end_tensor_inputs)
            else:
                latents = self._denoise(
                    images, mixture_latents, prompt_embeds, num_inference_steps, generator, sampler,
                    disjoint_strength, guidance, composition_guidance, guidance_checkpointing, predict_noise,
                    callback_on_step_end, callback_on_step_end_tensor_inputs,
                )

            # 7. Decode with FGFM (unless the latents are the output); rows [T; R] of each member; T gets the
            #    detail the autoencoder lost where asked.
            if output_type != "latent" and decode_transmission:
                latents = self.decode_latents(latents, mixture_features, fgfm_strength)
            elif output_type != "latent":
                reflection = self.decode_latents(latents[batch:], mixture_features, fgfm_strength)
                latents = torch.cat([torch.zeros_like(reflection), reflection])  # T rows: replaced in `_finish`
            if lost_detail is not None:
                latents = self.add_autoencoder_detail(latents, lost_detail)
            for row, member in enumerate(chunk):
                results[member] = torch.stack([latents[row], latents[batch + row]])

        # 8. Combine each unit's ensemble; blend tiles, remove padding, resize back, transfer detail (decoded
        #    images), or stack the latents.
        self.maybe_free_model_hooks()
        uncertainty = None
        if output_type == "latent":
            layers = results
        else:
            combined = [
                self._combine_ensemble(torch.stack(results[start : start + ensemble_size]), output_uncertainty)
                for start in range(0, len(members), ensemble_size)
            ]
            finish = partial(self._finish, units=units, tiled=tiled, prepared=prepared, photos=tensors,
                             tile_size=tile_size, tile_overlap=tile_overlap,
                             match_input_resolution=match_input_resolution, detail_transfer=detail_transfer)
            layers = finish([median for median, _ in combined], spread=False)
            if output_uncertainty:
                uncertainty = finish([spread for _, spread in combined], spread=True)
        def to_output(images: list[torch.Tensor] | None, layer: int):
            return None if images is None else self.image_processor.to_output([i[layer] for i in images], output_type)

        output = ReflectionSeparationPipelineOutput(
            transmission=to_output(layers, 0),
            reflection=to_output(layers, 1),
            transmission_uncertainty=to_output(uncertainty, 0),
            reflection_uncertainty=to_output(uncertainty, 1),
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _work_units(
        prepared: list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]], tile_size: int | None, tile_overlap: int | None
    ) -> tuple[list[tuple[int, torch.Tensor]], dict[int, list[tuple[int, int, int, int]]]]:
        """``(image index, pixels)`` per whole image or per tile of an image larger than ``tile_size``, and the tile
        boxes of each tiled image."""
        units: list[tuple[int, torch.Tensor]] = []
        tiled: dict[int, list[tuple[int, int, int, int]]] = {}
        for index, (pixels, _, _) in enumerate(prepared):
            height, width = pixels.shape[-2:]
            if tile_size is not None and max(height, width) > tile_size:
                tiled[index] = tile_boxes(height, width, tile_size, tile_overlap)
                units.extend((index, pixels[..., t:b, l:r]) for t, l, b, r in tiled[index])
            else:
                units.append((index, pixels))
        return units, tiled

    @staticmethod
    def _batches(pixels: list[torch.Tensor], batch_size: int) -> list[list[int]]:
        """Positions of consecutive work units of the same size, at most ``batch_size`` per batch."""
        chunks: list[list[int]] = []
        for position, unit in enumerate(pixels):
            if chunks and len(chunks[-1]) < batch_size and pixels[chunks[-1][0]].shape == unit.shape:
                chunks[-1].append(position)
            else:
                chunks.append([position])
        return chunks

    def _denoise(
        self,
        images: list[int],
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        sampler: DisjointSampling,
        disjoint_strength: float,
        guidance: LatentCompositionGuidance | None,
        guidance_mode: str,
        guidance_checkpointing: bool,
        predict_noise: Callable[..., torch.Tensor],
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> torch.Tensor:
        """The sampling loop for one batch: noise drawn per image from its generator, then every step. Returns the
        final latents ``[T rows; R rows]``."""
        device = mixture_latents.device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self._initial_noise(images, tuple(mixture_latents.shape[1:]), generator, device, self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        step_generator = [generator[i] for i in images] * 2 if isinstance(generator, list) else generator
        accepted = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": step_generator} if "generator" in accepted else {}

        timesteps = self.scheduler.timesteps
        host_timesteps = timesteps.tolist()  # one copy to the host: the noise-level lookups need no sync per step
        for step, t in enumerate(self.progress_bar(timesteps, desc="Denoising", leave=False)):
            model_output, latents = self.guided_model_output(
                latents, t, host_timesteps[step], mixture_latents, prompt_embeds, sampler, disjoint_strength,
                guidance, guidance_mode, guidance_checkpointing, predict_noise,
            )
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs, return_dict=False)[0]
            latents = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, step, t, latents,
                                          mixture_latents, prompt_embeds)
        return latents

    def _denoise_one_step(
        self,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance: LatentCompositionGuidance | None,
        predict_noise: Callable[..., torch.Tensor],
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> torch.Tensor:
        """One-step separation of one batch: :meth:`one_step_latents`, then the guidance's gradient steps on the
        estimate itself (if any; with ``a_t = 0`` each moves it by ``composition_guidance_scale`` of its norm) and the
        step callback. Returns the clean latents ``[T rows; R rows]``."""
        bar = self.progress_bar(total=1, desc="Denoising", leave=False)
        latents = self.one_step_latents(mixture_latents, prompt_embeds, predict_noise)
        if guidance is not None:
            latents = guidance(latents, lambda x0: x0, mixture_latents, torch.zeros((), dtype=torch.float64))
        timestep = torch.tensor(self.scheduler.config.num_train_timesteps - 1)
        latents = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, 0, timestep, latents,
                                      mixture_latents, prompt_embeds)
        bar.update(1)
        bar.close()
        return latents

    def _step_callback(
        self,
        callback_on_step_end: Callable | None,
        tensor_inputs: list[str] | None,
        step: int,
        timestep: torch.Tensor | int,
        latents: torch.Tensor,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Run ``callback_on_step_end`` (if any) on the requested tensors; returns its replacement latents, if any."""
        if callback_on_step_end is None:
            return latents
        available = {"latents": latents, "mixture_latents": mixture_latents, "prompt_embeds": prompt_embeds}
        callback_kwargs = {k: available[k] for k in tensor_inputs or []}
        callback_outputs = callback_on_step_end(self, step, timestep, callback_kwargs)
        return (callback_outputs or {}).get("latents", latents)

    def _combine_ensemble(
        self, members: torch.Tensor, output_uncertainty: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One unit's decoded ensemble ``(N, 2, 3, H, W)`` in [-1, 1] -> its per-pixel median (``torch.median``, the
        lower middle value for an even ``N``: a member's value, so taking it commutes with mapping to [0, 1]) and,
        with ``output_uncertainty``, the median absolute deviation of the members' images in [0, 1]."""
        members = members.float()
        median = members.median(dim=0).values
        if not output_uncertainty:
            return median, None
        images = self.image_processor.denormalize(members)
        spread = (images - self.image_processor.denormalize(median)).abs().median(dim=0).values
        return median, spread

    def _finish(
        self,
        per_unit: list[torch.Tensor],
        spread: bool,
        units: list[tuple[int, torch.Tensor]],
        tiled: dict[int, list[tuple[int, int, int, int]]],
        prepared: list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]],
        photos: list[torch.Tensor],
        tile_size: int | None,
        tile_overlap: int | None,
        match_input_resolution: bool,
        detail_transfer: str,
    ) -> list[torch.Tensor]:
        """Per image, its ``[T, R]`` ``(2, 3, H, W)`` from its work units' decoded layers (or their spreads, with
        ``spread``): tiles blended, padding removed, and with ``match_input_resolution`` resized back to the photo
        and its detail transferred."""
        images = []
        for index, (pixels, padding, original_size) in enumerate(prepared):
            layers = [per_unit[position] for position, (image, _) in enumerate(units) if image == index]
            if index in tiled:
                height, width = pixels.shape[-2:]
                joined = blend_tiles([layer.flatten(0, 1) for layer in layers], height, width, tile_size, tile_overlap)
                layers = [joined.unflatten(0, (2, -1))]
            size = original_size if match_input_resolution else None
            unpad = self.image_processor.unpad if spread else self.image_processor.postprocess
            layer = unpad(layers[0], padding, size)
            if match_input_resolution:
                transfer = transfer_detail_uncertainty if spread else transfer_detail
                layer = transfer(layer, photos[index], self._processed_size(pixels, padding), detail_transfer)
            images.append(layer)
        return images

    @staticmethod
    def _processed_size(pixels: torch.Tensor, padding: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` a prepared image was separated at: its padded size minus the padding."""
        return pixels.shape[-2] - padding[0], pixels.shape[-1] - padding[1]

    def guided_model_output(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        host_timestep: int | float,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        sampler: DisjointSampling,
        disjoint_strength: float,
        guidance: LatentCompositionGuidance | None,
        guidance_mode: str,
        guidance_checkpointing: bool = False,
        predict_noise: Callable[..., torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step up to the scheduler's: the UNet on both branches, disjoint combination and
        latent-composition guidance. Returns the model output for ``scheduler.step`` and the (guided) latents.

        In "full" guidance the step's UNet forward runs with gradients and also serves the first guidance
        gradient (both evaluate the UNet at the same latents), so a guided step costs one forward and one
        backward instead of two forwards and a backward. ``predict_noise`` replaces :meth:`predict_noise` for
        the no-grad forward (the CUDA-graphed one).
        """
        predict_noise = predict_noise or self.predict_noise
        if not ((disjoint_strength != 0 or guidance is not None) and sampler.acts_at(host_timestep)):
            latent_input = self.scheduler.scale_model_input(latents, timestep)
            return predict_noise(latent_input, timestep, mixture_latents, prompt_embeds), latents
        alpha_prod = sampler.alpha_prod(host_timestep)
        full = guidance is not None and guidance_mode == "full"
        with self._guided_unet(full, guidance_checkpointing), torch.enable_grad() if full else nullcontext():
            latents = latents.detach().requires_grad_(full)
            latent_input = self.scheduler.scale_model_input(latents, timestep)
            forward = self.predict_noise if full else predict_noise
            epsilon = sampler.epsilon(forward(latent_input, timestep, mixture_latents, prompt_embeds), host_timestep,
                                      latent_input, disjoint_strength)
            if guidance is not None:
                predict_x0 = self._x0_predictor(guidance_mode, epsilon, timestep, host_timestep, alpha_prod, sampler,
                                                disjoint_strength, mixture_latents, prompt_embeds)
                first_x0 = tweedie_x0(latent_input, epsilon, alpha_prod) if full else None
                latents = guidance(latents, predict_x0, mixture_latents, alpha_prod, first_x0=first_x0)
        latent_input = self.scheduler.scale_model_input(latents, timestep)
        return sampler.model_output(epsilon.detach(), host_timestep, latent_input), latents

    def release_cuda_graphs(self) -> None:
        """Free the CUDA graphs (and their memory) that calls with ``cuda_graphs`` captured."""
        graphed = getattr(self, "_cuda_graphed", None)
        if graphed is not None:
            graphed.release()

    def _graphed_predict_noise(self) -> CUDAGraphed:
        """:meth:`predict_noise` through CUDA graphs kept on the pipeline (so later calls skip the capture);
        new graphs when the UNet was replaced, moved, changed or compiled (see ``cuda_graphs.capture_signature``)."""
        graphed = getattr(self, "_cuda_graphed", None)
        if graphed is None or graphed.owner is not self.unet:
            graphed = self._cuda_graphed = CUDAGraphed(self.predict_noise, owner=self.unet)
        graphed.check_owner()
        return graphed

    def _x0_predictor(
        self,
        guidance_mode: str,
        epsilon: torch.Tensor,
        timestep: torch.Tensor,
        host_timestep: int | float,
        alpha_prod: torch.Tensor,
        sampler: DisjointSampling,
        disjoint_strength: float,
        mixture_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Map stacked latents to Tweedie estimates: with ``eps'`` fixed ("fast") or recomputed ("full")."""
        fixed_epsilon = epsilon.detach()

        def fast(latents: torch.Tensor) -> torch.Tensor:
            latent_input = self.scheduler.scale_model_input(latents, timestep)
            return tweedie_x0(latent_input, fixed_epsilon, alpha_prod)

        def full(latents: torch.Tensor) -> torch.Tensor:
            latent_input = self.scheduler.scale_model_input(latents, timestep)
            output = self.predict_noise(latent_input, timestep, mixture_latents, prompt_embeds)
            eps = sampler.epsilon(output, host_timestep, latent_input, disjoint_strength)
            return tweedie_x0(latent_input, eps, alpha_prod)

        return fast if guidance_mode == "fast" else full

    def encode_mixture(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mixture in [-1, 1] -> UNet-space latent ``z_I`` (posterior mode, scaled) and its FGFM features."""
        latents, features = self.vae.encode_with_features(pixels.to(self.vae.dtype))
        return self._to_unet_space(latents), features

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> UNet-space latents, like ``encode_mixture`` without the FGFM features: one plain
        VAE encode (no feature hooks), which ``torch.compile`` traces once (the training stack uses it)."""
        return self._to_unet_space(self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode())

    def _to_unet_space(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae.config.shift_factor is not None:
            latents = latents - self.vae.config.shift_factor
        return (latents * self.vae.config.scaling_factor).to(self.unet.dtype)

    @contextmanager
    def _guided_unet(self, active: bool, checkpointing: bool) -> Iterator[None]:
        """For "full" guidance (gradients w.r.t. the latents only, through the UNet), around forward and backward:
        frozen UNet weights (autograd then keeps no activations for weight gradients) and optional activation
        checkpointing (blocks keep their inputs and recompute the rest in the backward pass). Restored after."""
        if not active:
            yield
            return
        trainable = [p for p in self.unet.parameters() if p.requires_grad]
        switch = checkpointing and not self.unet.is_gradient_checkpointing
        for parameter in trainable:
            parameter.requires_grad_(False)
        if switch:
            self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            if switch:
                self.unet.disable_gradient_checkpointing()
            for parameter in trainable:
                parameter.requires_grad_(True)

    @staticmethod
    def add_autoencoder_detail(layers: torch.Tensor, lost_detail: torch.Tensor) -> torch.Tensor:
        """Decoded ``[T; R]`` rows in [-1, 1] with ``lost_detail`` (mixture minus its autoencoder round trip, one row
        per member) added to the T rows, which are clamped to [-1, 1]."""
        batch = lost_detail.shape[0]
        transmission = (layers[:batch] + lost_detail.to(layers)).clamp(-1, 1)
        return torch.cat([transmission, layers[batch:]])

    def decode_latents(
        self, latents: torch.Tensor, mixture_features: list[torch.Tensor], fgfm_strength: float
    ) -> torch.Tensor:
        """Stacked ``[T; R]`` UNet latents -> decoder output in [-1, 1] (FGFM-modulated unless strength is 0)."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        if self.vae.config.shift_factor is not None:
            latents = latents + self.vae.config.shift_factor
        return self.vae.decode(
            latents, mixture_features=mixture_features, fgfm_strength=fgfm_strength, return_dict=False
        )[0]

    # ------------------------------------------------------------------ saving with code, loading (hub.py)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """``DiffusionPipeline.save_pretrained`` plus the code of the custom classes, copied from this package.

        The folder (and a Hub repo written by ``push_to_hub`` or ``push_to_hub=True``) loads without this package:
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``; with it installed,
        ``ReflectionSeparationPipeline.from_pretrained(folder)`` uses the installed classes. ``pipeline_code=False``
        saves only the components' code (for the single-file community pipeline). See ``hub.py``.
        """
        from .hub import save_pipeline

        save_pipeline(self, save_directory, super().save_pretrained, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> ReflectionSeparationPipeline:
        """``DiffusionPipeline.from_pretrained``; without ``torch_dtype`` (or ``dtype``) every loaded component is
        float32, whatever its saved weights (transformers 5 keeps a CLIP text encoder saved in fp16 in fp16, which
        then meets the float32 UNet). Components passed in ``kwargs`` are left as given."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if kwargs.get("torch_dtype") is None and kwargs.get("dtype") is None:
            for name, component in pipe.components.items():
                if name not in kwargs and isinstance(component, nn.Module) and any(
                    p.is_floating_point() and p.dtype != torch.float32 for p in component.parameters()
                ):
                    component.to(dtype=torch.float32)
        return pipe

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs):
        """diffusers' ``extract_init_dict`` on a config whose :data:`RENAMED_CONFIG_KEYS` were renamed (a key of the
        current name wins), so folders saved before the rename load with the same defaults."""
        config_dict = dict(config_dict)
        for old, new in RENAMED_CONFIG_KEYS.items():
            if old in config_dict:
                value = config_dict.pop(old)
                config_dict.setdefault(new, value)
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        from .hub import use_installed_pipeline_class

        return use_installed_pipeline_class(super()._dict_from_json_file(json_file))

    @classmethod
    def load_config(cls, *args, **kwargs):
        from .hub import use_installed_component_classes

        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        use_installed_component_classes(cls, config)
        return loaded
