"""Training stack: the VAE (from scratch only), the UNet, the composition net C, the FGFM blocks, and the UNet's
one-step fine-tuning.

Each stage is an objective module whose ``forward`` returns the loss, so ``accelerate`` (one GPU, or many
with ``accelerate launch``, DDP) wraps it unchanged. Stages read the pipeline from ``<output_dir>/pipeline``
(or build it: from scratch with :mod:`.components`, or from a Stable Diffusion 2.x checkpoint), train
their part, and save the complete pipeline back there.

Losses:
* ``vae``: L1 + ``0.2 * (1 - SSIM)`` reconstruction + ``1e-6`` KL, on photos and synthetic mixtures; the
  latent ``scaling_factor`` is then set to ``1 / std`` of the training latents, as in Stable Diffusion.
* ``unet``: the noise (or v) prediction loss of both branches jointly: each batch holds the T and R rows of
  the same images with their prompts and the same timestep, CLSA active, ``[z_t, z_I]`` as input.
* ``composition``: ``L_comp = ||C(E(T), E(R)) - E(I)||^2``.
* ``fgfm``: only the fusion blocks train, VAE frozen; L1 + ``0.2 * (1 - SSIM)`` between the decoded layers
  and the true ones. The decoder is fed the true layers' latents perturbed by Gaussian noise of a random
  level in ``[0, fgfm_latent_noise]`` so the fusion learns to restore what sampling loses.
* ``onestep``: the UNet, end to end through the frozen FGFM decoder: one UNet call on a zero start latent at the
  last timestep gives both layers' clean latents (``ReflectionSeparationPipeline.one_step_latents``), decoded with
  the mixture's features at the pipeline's ``default_fgfm_strength``; L1 + ``0.2 * (1 - SSIM)`` against the true
  layers, plus ``onestep_composition_weight * L_comp`` of the estimates (frozen C). The saved pipeline defaults to
  one-step separation (``default_one_step``).
* ``control``: not part of the method: a plain pixel-space U-Net regressor mapping the mixture to T and R
  directly (what a discriminative method does), with the same data and L1 + SSIM loss, saved to
  ``<output_dir>/control`` as the control of the ablation.

Determinism, resume and scaling: micro-batch ``k`` of step ``s`` draws its global batch of dataset items from
a generator seeded by ``(seed, s, k)``, and each sample its noise and timestep from a generator seeded by
``(seed, s, k, position in the global batch)``. A run resumed from a checkpoint therefore continues exactly as
an uninterrupted run, and N processes with per-process batch B/N see the same samples and noise as one
process with batch B (tested with two CPU processes).
Checkpoints are ``accelerate`` states (weights as safetensors; optimizer state as accelerate saves it) plus
the EMA weights as safetensors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .attention import set_cross_layer_attention
from .components import ModelSizeConfig, build_pipeline, deepen_unet
from .composition import composition_loss
from .data import BatchedSynthesis, ReflectionSynthesizer, SyntheticReflectionDataset, list_images
from .pipeline import ReflectionSeparationPipeline
from .synthesis import to_device
from .vae import FGFM_PREFIX, FGFMAutoencoderKL

STAGES = ("vae", "unet", "composition", "fgfm", "onestep", "control")
FINISHED = "finished.json"  # written into a stage's folder once its pipeline (or control) is saved
EXIT_TIME_LIMIT = 75  # exit status when --time-limit-minutes stopped a run: rerun the same command to continue


@dataclass
class StageConfig:
    """Optimization settings of one stage; ``mixed_precision`` (``"no"``/``"bf16"``) overrides the run's.

    ``batch_size`` is the global batch of one micro-step, summed over all processes: the same config trains
    the same way on one GPU or several. ``channels_last`` stores the pipeline's convolutional models in NHWC,
    which cuDNN often runs faster. ``compile`` runs the trained network and the VAE encoder through
    ``torch.compile`` (``None``: on CUDA); if compiling or the first compiled step fails, the stage falls back to
    eager mode and says so in its log.
    """

    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 500
    log_steps: int = 10
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    num_workers: int = 0
    mixed_precision: str | None = None
    channels_last: bool = False
    compile: bool | None = None


@dataclass
class TrainingConfig:
    """A whole training run, read from a JSON file (see ``examples/configs/``).

    ``model`` is one of ``{"from_scratch": {<ModelSizeConfig fields>}}``,
    ``{"stable_diffusion": "<hub id or folder>"}`` or ``{"pipeline": "<our pipeline folder>"}``.
    ``cross_layer_attention`` overrides the pipeline's setting (False trains the paper's baseline UNet) and
    ``reset_unet`` re-initializes the UNet of the starting model (e.g. to retrain it beside a trained VAE).
    ``unet_transformer_layers`` deepens the starting model's UNet to that many transformer layers per attention block
    (``deepen_unet``: the new layers start as the identity, so a trained UNet grows without losing what it learned).
    ``control_channels`` sizes the control regressor's U-Net; ``control_from`` starts it from a saved regressor
    (e.g. an earlier run's fp16 export, trained on in float32 with a new optimizer) instead of from scratch, so that
    the control's training can go on in a later session as the shipped model's does. ``synthesis`` configures the
    mixing recipes (``ReflectionSynthesizer.from_dict``; empty: the additive recipe alone). ``batched_synthesis``
    makes each batch on the training device from photos decoded once (``BatchedSynthesis``) instead of in DataLoader
    workers (``None``: on CUDA); both give the same samples. ``onestep_composition_weight`` weighs ``L_comp`` of the
    one-step estimates in the ``onestep`` stage's loss (0: the pixel loss alone).
    """

    output_dir: str
    photos: str
    model: dict[str, Any] = field(default_factory=lambda: {"from_scratch": {}})
    stages: dict[str, StageConfig] = field(default_factory=dict)
    resolution: int = 256
    photo_long_side: int | None = None
    seed: int = 0
    mixed_precision: str = "no"
    num_samples: int = 100_000
    validation_fraction: float = 0.1
    validation_images: int = 4
    validation_inference_steps: int = 10
    fgfm_latent_noise: float = 0.3
    onestep_composition_weight: float = 0.0
    cross_layer_attention: bool | None = None
    reset_unet: bool = False
    unet_transformer_layers: int | None = None
    control_channels: tuple[int, ...] = (32, 64, 128, 256)
    control_from: str | None = None
    push_to_hub: str | None = None
    synthesis: dict[str, Any] = field(default_factory=dict)
    batched_synthesis: bool | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown training config keys {sorted(unknown)}.")
        stages = values.pop("stages", {})
        bad = set(stages) - set(STAGES)
        if bad:
            raise ValueError(f"Unknown stages {sorted(bad)}; valid stages: {STAGES}.")
        if "control_channels" in values:
            values["control_channels"] = tuple(values["control_channels"])
        config = cls(**values)
        config.stages = {name: StageConfig(**settings) for name, settings in stages.items()}
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainingConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config {str(path)!r} does not exist.")
        return cls.from_dict(json.loads(path.read_text()))

    def stage_settings(self, stage: str) -> StageConfig:
        """The optimization settings of ``stage`` (defaults where the config has none)."""
        return self.stages.get(stage, StageConfig())

    def stage_precision(self, stage: str) -> str:
        """``stage``'s mixed precision: its own setting, else the run's."""
        return self.stage_settings(stage).mixed_precision or self.mixed_precision

    @property
    def pipeline_dir(self) -> Path:
        return Path(self.output_dir) / "pipeline"

    @property
    def control_dir(self) -> Path:
        return Path(self.output_dir) / "control"


# ---------------------------------------------------------------------------- losses


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Differentiable mean SSIM (Gaussian window, constants of Wang et al. 2004) for images in [0, 1]."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean()


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + 0.2 (1 - SSIM) on images in [-1, 1], always in float32.

    SSIM's variances are differences of close numbers (``E[x^2] - E[x]^2``); under bf16 autocast they are
    noise and the gradient with them, which stopped our first GPU runs of the VAE and FGFM stages.
    """
    with torch.autocast(prediction.device.type, enabled=False):
        prediction, target = prediction.float(), target.float()
        structural = 1 - ssim((prediction.clamp(-1, 1) + 1) / 2, (target + 1) / 2)
        return F.l1_loss(prediction, target) + 0.2 * structural


def _to_model_range(images: torch.Tensor) -> torch.Tensor:
    return images * 2 - 1


def per_sample_randn(shape: tuple[int, ...], generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Noise of ``shape = (k * B, ...)`` whose rows ``b, B + b, 2B + b, ...`` come from ``generators[b]``.

    Rows are stacked by layer (e.g. ``[T rows; R rows]``), so each sample's rows depend on its generator only.
    """
    per = shape[0] // len(generators)
    draws = torch.stack([torch.randn((per, *shape[1:]), generator=g) for g in generators], dim=1)
    return to_device(draws.reshape(shape), like.device, like.dtype)


# ---------------------------------------------------------------------------- objectives


class Objective(nn.Module):
    """A stage: ``forward(batch, generators)`` returns the loss, with one generator per sample for its noise;
    ``trainable`` is what the optimizer updates."""

    def __init__(self, pipe: ReflectionSeparationPipeline, trainable: nn.Module) -> None:
        super().__init__()
        # Only the trained part is a registered submodule: DDP syncs it and checkpoints hold only it.
        object.__setattr__(self, "pipe", pipe)
        for module in (pipe.vae, pipe.unet, pipe.text_encoder, pipe.composition_net):
            module.requires_grad_(False)
        trainable.requires_grad_(True)
        self.trainable = trainable

    def encode(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Batches of images in [0, 1] -> their scaled posterior-mode latents, in one VAE call, without gradient."""
        with torch.no_grad():
            latents = self.pipe.encode_latents(_to_model_range(torch.cat(images)))
        return latents.chunk(len(images))

    def compiled_modules(self) -> list[nn.Module]:
        """What ``torch.compile`` speeds up in this stage: the VAE encoder and the trained network's forward."""
        return [self.pipe.vae.encoder]

    def finalize(self, accelerator: Accelerator, batch: dict[str, torch.Tensor]) -> None:
        """Hook run once after training, before the pipeline is saved, with the validation batch."""


class VAEObjective(Objective):
    def __init__(self, pipe: ReflectionSeparationPipeline) -> None:
        super().__init__(pipe, pipe.vae)
        for name, parameter in pipe.vae.named_parameters():
            parameter.requires_grad_(not name.startswith(FGFM_PREFIX))

    def compiled_modules(self) -> list[nn.Module]:
        return [self.pipe.vae.encoder, self.pipe.vae.decoder]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        images = _to_model_range(torch.cat([batch["transmission"], batch["mixture"]]))
        posterior = self.trainable.encode(images).latent_dist
        noise = per_sample_randn(tuple(posterior.mean.shape), generators, posterior.mean)
        latents = posterior.mean + posterior.std * noise
        reconstruction = self.trainable.decode(latents).sample
        return pixel_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()

    def finalize(self, accelerator: Accelerator, batch: dict[str, torch.Tensor]) -> None:
        vae = self.pipe.vae
        with torch.no_grad():
            vae.register_to_config(scaling_factor=1.0)
            (latents,) = self.encode(batch["mixture"].to(vae.device))
            scale = 1.0 / latents.float().std().item()
        vae.register_to_config(scaling_factor=scale)
        accelerator.print(f"latent scaling_factor set to {scale:.5f}")


class UNetObjective(Objective):
    def __init__(self, pipe: ReflectionSeparationPipeline) -> None:
        super().__init__(pipe, pipe.unet)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.register_buffer("prompt_pair", pipe.encode_layer_prompts(pipe.unet.device).detach(), persistent=False)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.pipe.vae.encoder, self.trainable]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        mixture, transmission, reflection = self.encode(batch["mixture"], batch["transmission"], batch["reflection"])
        clean = torch.cat([transmission, reflection])
        size = mixture.shape[0]
        num_train = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, num_train, (1,), generator=g) for g in generators])
        timesteps = to_device(timesteps.repeat(2), clean.device, torch.long)
        noise = per_sample_randn(tuple(clean.shape), generators, clean)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        prompts = self.pipe.layer_prompt_batch(self.prompt_pair.to(noisy.dtype), size)
        unet_input = torch.cat([noisy, mixture.repeat(2, 1, 1, 1)], dim=1)
        prediction = self.trainable(unet_input, timesteps, encoder_hidden_states=prompts).sample
        return F.mse_loss(prediction.float(), target.float())


class CompositionObjective(Objective):
    def __init__(self, pipe: ReflectionSeparationPipeline) -> None:
        super().__init__(pipe, pipe.composition_net)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.pipe.vae.encoder, self.trainable]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        latents = self.encode(batch["transmission"], batch["reflection"], batch["mixture"])
        return composition_loss(self.trainable, *latents).mean()


class FGFMObjective(Objective):
    def __init__(self, pipe: ReflectionSeparationPipeline, latent_noise: float) -> None:
        super().__init__(pipe, pipe.vae.fgfm_fusions)
        self.latent_noise = latent_noise

    def compiled_modules(self) -> list[nn.Module]:
        """The encoder and the decoder: their FGFM paths are plain forward code (no hooks), so the fusions and
        each call's features are part of the compiled graphs (tested against eager)."""
        return [self.pipe.vae.encoder, self.pipe.vae.decoder]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            _, features = self.pipe.encode_mixture(_to_model_range(batch["mixture"]))
        layers = torch.cat([batch["transmission"], batch["reflection"]])
        latents = torch.cat(self.encode(batch["transmission"], batch["reflection"]))
        levels = per_sample_randn((latents.shape[0], 1, 1, 1), generators, latents).abs() * self.latent_noise
        latents = latents + levels * per_sample_randn(tuple(latents.shape), generators, latents)
        decoded = vae.decode(latents / vae.config.scaling_factor, mixture_features=features, fgfm_strength=1.0).sample
        return pixel_loss(decoded, _to_model_range(layers))


class OneStepObjective(Objective):
    """The ``onestep`` stage: the UNet (CLSA as configured) learns to give both layers in one call, with the pixel
    loss of their FGFM-decoded images; gradients flow through the frozen decoder. The UNet, the encoder and the
    decoder are compiled (as in the ``fgfm`` stage)."""

    def __init__(self, pipe: ReflectionSeparationPipeline, composition_weight: float) -> None:
        super().__init__(pipe, pipe.unet)
        self.composition_weight = composition_weight
        self.register_buffer("prompt_pair", pipe.encode_layer_prompts(pipe.unet.device).detach(), persistent=False)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.trainable, self.pipe.vae.encoder, self.pipe.vae.decoder]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        pipe = self.pipe
        with torch.no_grad():
            mixture, features = pipe.encode_mixture(_to_model_range(batch["mixture"]))
        prompts = pipe.layer_prompt_batch(self.prompt_pair.to(mixture.dtype), mixture.shape[0])
        latents = pipe.one_step_latents(mixture, prompts)
        decoded = pipe.decode_latents(latents, features, pipe.config.default_fgfm_strength)
        loss = pixel_loss(decoded, _to_model_range(torch.cat([batch["transmission"], batch["reflection"]])))
        if self.composition_weight:
            loss = loss + self.composition_weight * composition_loss(pipe.composition_net, *latents.chunk(2),
                                                                     mixture).mean()
        return loss

    def finalize(self, accelerator: Accelerator, batch: dict[str, torch.Tensor]) -> None:
        self.pipe.register_to_config(default_one_step=True)
        accelerator.print("default_one_step set: the saved pipeline separates in one step")


def build_control_regressor(channels: tuple[int, ...]) -> UNet2DModel:
    """The control: a pixel-space U-Net from the mixture to ``[T, R]`` (6 channels), in [-1, 1]."""
    return UNet2DModel(
        in_channels=3,
        out_channels=6,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        layers_per_block=2,
        norm_num_groups=min(32, channels[0]),
    )


def run_control_regressor(regressor: UNet2DModel, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtures in [0, 1] ``(B, 3, H, W)`` -> predicted T and R in [0, 1], padding to the U-Net's multiple."""
    multiple = 2 ** (len(regressor.config.block_out_channels) - 1)
    height, width = mixture.shape[-2:]
    padded = F.pad(_to_model_range(mixture), (0, -width % multiple, 0, -height % multiple), mode="replicate")
    timestep = torch.zeros(mixture.shape[0], device=mixture.device)
    output = regressor(padded.to(regressor.dtype), timestep).sample[..., :height, :width].float()
    transmission, reflection = ((output.clamp(-1, 1) + 1) / 2).chunk(2, dim=1)
    return transmission, reflection


class ControlObjective(Objective):
    def __init__(self, pipe: ReflectionSeparationPipeline, regressor: UNet2DModel) -> None:
        super().__init__(pipe, regressor)

    def compiled_modules(self) -> list[nn.Module]:
        return [self.trainable]

    def forward(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]) -> torch.Tensor:
        timestep = torch.zeros(batch["mixture"].shape[0], device=batch["mixture"].device)
        output = self.trainable(_to_model_range(batch["mixture"]), timestep).sample
        transmission, reflection = output.chunk(2, dim=1)
        return pixel_loss(transmission, _to_model_range(batch["transmission"])) + pixel_loss(
            reflection, _to_model_range(batch["reflection"])
        )


def build_objective(stage: str, pipe: ReflectionSeparationPipeline, config: TrainingConfig) -> Objective:
    if stage == "vae":
        return VAEObjective(pipe)
    if stage == "unet":
        return UNetObjective(pipe)
    if stage == "composition":
        return CompositionObjective(pipe)
    if stage == "fgfm":
        return FGFMObjective(pipe, config.fgfm_latent_noise)
    if stage == "onestep":
        return OneStepObjective(pipe, config.onestep_composition_weight)
    if stage == "control":
        for source in (config.control_dir, config.control_from):  # this run's own regressor first
            if source is not None and (Path(source) / "config.json").exists():
                return ControlObjective(pipe, UNet2DModel.from_pretrained(source, torch_dtype=torch.float32))
        if config.control_from is not None:
            raise FileNotFoundError(f"`control_from` {config.control_from!r} holds no saved control regressor "
                                    "(config.json); pass the folder an earlier `control` stage or its export wrote.")
        torch.manual_seed(config.seed)
        return ControlObjective(pipe, build_control_regressor(config.control_channels))
    raise ValueError(f"Unknown stage {stage!r}; choose one of {STAGES}.")


# ---------------------------------------------------------------------------- data and model


def prepare_photos(config: TrainingConfig) -> Path:
    """The photo folder to train on; with ``photo_long_side`` set, copies no longer than that cached in the output dir.

    Each copy keeps its photo's relative path, extension included, because the validation split hashes that path
    (`is_validation_file`): renamed copies would fall into other splits and let validation photos into training.
    The copies are PNG-encoded whatever their extension (PIL reads them by content), so resizing is the only loss.
    """
    source = Path(config.photos)
    if not source.is_dir():
        raise FileNotFoundError(f"Photo folder {str(source)!r} does not exist; gather photos with examples/gather_photos.py.")
    if config.photo_long_side is None:
        return source
    cache = Path(config.output_dir) / f"photos_{config.photo_long_side}"
    for path in list_images(source):
        target = cache / path.relative_to(source)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = config.photo_long_side / max(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            partial = target.with_name(target.name + ".partial")
            image.save(partial, format="PNG")
            partial.replace(target)
    return cache


def load_pipeline(config: TrainingConfig) -> ReflectionSeparationPipeline:
    """The pipeline the next stage starts from: the run's saved pipeline, else one built from ``config.model``."""
    if (config.pipeline_dir / "model_index.json").exists():
        pipe = ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir)
    else:
        (kind, value), = config.model.items()
        if kind == "from_scratch":
            pipe = build_pipeline(ModelSizeConfig.from_dict(value), seed=config.seed)
        elif kind == "stable_diffusion":
            pipe = ReflectionSeparationPipeline.from_stable_diffusion(value)
        elif kind == "pipeline":
            pipe = ReflectionSeparationPipeline.from_pretrained(value)
        else:
            raise ValueError(f"`model` must be one of from_scratch, stable_diffusion, pipeline; got {kind!r}.")
        if config.reset_unet:
            torch.manual_seed(config.seed)
            pipe.unet = UNet2DConditionModel.from_config(pipe.unet.config)
            set_cross_layer_attention(pipe.unet, pipe.config.cross_layer_attention)
        if config.unet_transformer_layers not in (None, pipe.unet.config.transformer_layers_per_block):
            pipe.unet = deepen_unet(pipe.unet, config.unet_transformer_layers)
    if config.cross_layer_attention is not None:
        pipe.register_to_config(cross_layer_attention=config.cross_layer_attention)
        set_cross_layer_attention(pipe.unet, config.cross_layer_attention)
    return pipe


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    return value


class BatchSource:
    """Deterministic batches: micro-batch ``k`` of step ``s`` depends on (seed, s, k) only.

    ``batch_size`` is the global batch, split round-robin over the processes, so a run gets the same samples
    and noise on any number of GPUs and can resume from a checkpoint on a different number.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        process: int,
        num_processes: int,
        maker: BatchedSynthesis | None = None,
    ) -> None:
        if batch_size % num_processes:
            raise ValueError(
                f"The global batch_size {batch_size} must be divisible by the number of processes ({num_processes}); "
                "change `batch_size` in the stage config or launch a divisor of it."
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.process = process
        self.num_processes = num_processes
        self.maker = maker

    def indices(self, step: int, micro: int) -> list[int]:
        generator = torch.Generator().manual_seed(_seed(self.seed, step, micro))
        global_batch = torch.randint(0, len(self.dataset), (self.batch_size,), generator=generator)
        return global_batch[self.process :: self.num_processes].tolist()

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        """This process's share of micro-batch ``(step, micro)``: made on the maker's device when there is a maker
        (anything with ``batch(indices)``, e.g. ``BatchedSynthesis``), else by stacking dataset items."""
        indices = self.indices(step, micro)
        if self.maker is not None:
            return self.maker.batch(indices)
        items = [self.dataset[i] for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    def batches(self, first_step: int, last_step: int, accumulation: int, num_workers: int):
        """The micro-batches of steps ``first_step..last_step - 1`` in order: from the maker directly, or
        prefetched by DataLoader workers."""
        if self.maker is not None:
            return (self.batch(s, k) for s in range(first_step, last_step) for k in range(accumulation))
        return iter(PrefetchingBatches(self, first_step, last_step, accumulation, num_workers))

    def generators(self, step: int, micro: int) -> list[torch.Generator]:
        """One generator per local sample, seeded by the sample's position in the global batch."""
        positions = range(self.batch_size)[self.process :: self.num_processes]
        return [torch.Generator().manual_seed(_seed(self.seed + 1, step, micro, p)) for p in positions]


class PrefetchingBatches:
    """Loads the batches of the coming steps in DataLoader workers, in order."""

    def __init__(self, source: "BatchSource", first_step: int, last_step: int, accumulation: int, num_workers: int):
        keys = [(s, k) for s in range(first_step, last_step) for k in range(accumulation)]
        self._loader = torch.utils.data.DataLoader(
            _KeyedBatches(source, keys), batch_size=None, num_workers=num_workers, prefetch_factor=4 if num_workers else None
        )

    def __iter__(self):
        return iter(self._loader)


class _KeyedBatches(Dataset):
    def __init__(self, source: BatchSource, keys: list[tuple[int, int]]) -> None:
        self.source = source
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.source.batch(*self.keys[index])


# ---------------------------------------------------------------------------- loop


def _latest_checkpoint(folder: Path) -> tuple[Path | None, int]:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        return None, 0
    return checkpoints[-1], int(checkpoints[-1].name.split("-")[1])


def _save_ema(ema: EMAModel, module: nn.Module, path: Path) -> None:
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    tensors = {name: shadow.detach().cpu().contiguous() for name, shadow in zip(names, ema.shadow_params)}
    save_file(tensors, str(path), metadata={"optimization_step": str(ema.optimization_step)})


def _load_ema(ema: EMAModel, module: nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    for shadow, name in zip(ema.shadow_params, names):
        shadow.data.copy_(tensors[name].to(shadow.device))
    with safe_open(str(path), framework="pt") as handle:
        ema.optimization_step = int(handle.metadata()["optimization_step"])


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def validate(
    stage: str, objective: Objective, batch: dict[str, torch.Tensor], config: TrainingConfig, path: Path
) -> dict[str, float]:
    """Stage-specific validation numbers on held-out synthetic mixtures, plus an image sheet at ``path``."""
    pipe = objective.pipe
    device = pipe.unet.device
    batch = {k: v.to(device) for k, v in batch.items()}
    metrics: dict[str, float] = {}
    with torch.no_grad():
        if stage == "vae":
            reconstruction = pipe.vae.decode(pipe.vae.encode(_to_model_range(batch["mixture"])).latent_dist.mode()).sample
            shown = [batch["mixture"], (reconstruction.clamp(-1, 1) + 1) / 2]
            metrics["val_psnr_reconstruction"] = _psnr(shown[1], batch["mixture"])
        elif stage == "control":
            transmission, reflection = run_control_regressor(objective.trainable, batch["mixture"])
            shown = [batch["mixture"], transmission, batch["transmission"], reflection, batch["reflection"]]
            metrics["val_psnr_t"] = _psnr(transmission, batch["transmission"])
            metrics["val_psnr_r"] = _psnr(reflection, batch["reflection"])
        elif stage == "composition":
            latents = [pipe.encode_mixture(_to_model_range(batch[k]))[0] for k in ("transmission", "reflection", "mixture")]
            metrics["val_l_comp"] = composition_loss(pipe.composition_net, *latents).mean().item()
            metrics["val_l_comp_sum_baseline"] = ((latents[0] + latents[1] - latents[2]) ** 2).mean().item()
            shown = [batch["mixture"]]
        else:
            steps = ({"one_step": True} if stage == "onestep"
                     else {"num_inference_steps": config.validation_inference_steps})
            out = pipe(
                list(batch["mixture"]),
                **steps,
                processing_resolution=0,
                generator=[torch.Generator().manual_seed(i) for i in range(len(batch["mixture"]))],
                batch_size=len(batch["mixture"]),
                output_type="pt",
            )
            shown = [batch["mixture"], out.transmission, batch["transmission"], out.reflection, batch["reflection"]]
            metrics["val_psnr_t"] = _psnr(out.transmission, batch["transmission"])
            metrics["val_psnr_r"] = _psnr(out.reflection, batch["reflection"])
            metrics["val_psnr_mixture_vs_t"] = _psnr(batch["mixture"], batch["transmission"])
    rows = [torch.cat(list(images.float().cpu()), dim=2) for images in shown]
    sheet = (torch.cat(rows, dim=1).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return metrics


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    mse = ((prediction.float() - target.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


def training_step(
    config: TrainingConfig, stage: str, batch: int, device: torch.device
) -> tuple[Callable[[], None], Objective]:
    """One micro-step of ``stage`` (forward and backward on a batch of synthetic mixtures, under the stage's
    precision) as a closure, with its objective, for measuring what a batch size costs: memory, FLOPs."""
    pipe = load_pipeline(config).to(device)
    objective = build_objective(stage, pipe, config).to(device)  # the control regressor is built on the CPU
    dataset = SyntheticReflectionDataset(config.photos, resolution=config.resolution, num_samples=batch,
                                         synthesizer=ReflectionSynthesizer.from_dict(config.synthesis))
    source = BatchSource(dataset, batch, seed=config.seed, process=0, num_processes=1)
    data = {k: v.to(device) for k, v in source.batch(0, 0).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.stage_precision(stage) == "bf16")

    def step() -> None:
        with autocast:
            loss = objective(data, source.generators(0, 0))
        loss.backward()

    return step, objective


def step_peak_gib(config: TrainingConfig, stage: str, batch: int, device: torch.device) -> float:
    """Peak CUDA memory of one training micro-step of ``stage`` at ``batch`` (weights, activations, gradients),
    plus the fp32 state that only the first optimizer step allocates: AdamW's two moments and the EMA copy."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step, objective = training_step(config, stage, batch, device)
    step()
    trained = sum(p.numel() for p in objective.trainable.parameters() if p.requires_grad)
    copies = 2 + (1 if config.stage_settings(stage).ema_decay else 0)
    return (torch.cuda.max_memory_allocated(device) + 4 * copies * trained) / 2**30


def largest_batch_size(
    config: TrainingConfig,
    stage: str,
    memory_budget_gib: float,
    device: torch.device,
    candidates: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024),
    measure: Callable[[TrainingConfig, str, int, torch.device], float] = step_peak_gib,
) -> tuple[int | None, dict[int, float | None]]:
    """The largest of ``candidates`` whose training step peaks within ``memory_budget_gib`` on ``device``, and the
    peak of each batch tried (None: out of memory). Tries them in increasing order and stops at the first over."""
    peaks: dict[int, float | None] = {}
    best = None
    for batch in sorted(candidates):
        try:
            peaks[batch] = measure(config, stage, batch, device)
        except torch.OutOfMemoryError:
            peaks[batch] = None
        if peaks[batch] is None or peaks[batch] > memory_budget_gib:
            break
        best = batch
    return best, peaks


def train_stage(
    config: TrainingConfig, stage: str, stop_after: int | None = None, time_limit_minutes: float | None = None
) -> Path | None:
    """Train one stage (resuming from its latest checkpoint) and save the complete pipeline.

    ``stop_after`` ends the run right after that step's checkpoint without saving the pipeline, as a
    crash would; rerunning resumes from the checkpoint. ``time_limit_minutes`` does the same at the first log step
    after that much wall-clock time (all processes agree there), so that a long run can be split over commands of
    limited length: it then returns None instead of the saved folder. One process checks after every step,
    several at log steps; the limit does not cover what comes before the first step (loading, compilation).
    """
    started = time.perf_counter()
    settings = config.stage_settings(stage)
    precision = config.stage_precision(stage)
    if precision not in ("no", "bf16"):
        raise ValueError(f"`mixed_precision` must be 'no' or 'bf16' (fp16 would need loss scaling), got {precision!r}.")
    accelerator = Accelerator()
    stage_dir = Path(config.output_dir) / stage
    checkpoint_dir = stage_dir / "checkpoints"
    if (stage_dir / FINISHED).exists():  # a rerun of a longer command line goes on with the next stage
        accelerator.print(f"{stage}: finished earlier ({stage_dir / FINISHED}); skipping")
        return config.control_dir if stage == "control" else config.pipeline_dir

    pipe = load_pipeline(config)
    pipe.set_progress_bar_config(disable=True)
    if stage == "vae" and "from_scratch" not in config.model:
        raise ValueError("The `vae` stage trains an autoencoder from scratch; pretrained models keep their VAE.")
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)  # the logged peak is this stage's own
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pipe.to(accelerator.device)
    objective = build_objective(stage, pipe, config)
    if settings.channels_last:
        for module in (pipe.vae, pipe.unet, pipe.composition_net, objective.trainable):
            module.to(memory_format=torch.channels_last)
    if settings.gradient_checkpointing and hasattr(objective.trainable, "enable_gradient_checkpointing"):
        objective.trainable.enable_gradient_checkpointing()
    parameters = [p for p in objective.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay,
        fused=accelerator.device.type == "cuda",  # one kernel for all parameters
    )
    lr_scheduler = get_scheduler(
        settings.lr_scheduler, optimizer, num_warmup_steps=settings.lr_warmup_steps, num_training_steps=settings.steps
    )
    ema = EMAModel(parameters, decay=settings.ema_decay, foreach=True) if settings.ema_decay else None
    compiled = settings.compile if settings.compile is not None else accelerator.device.type == "cuda"
    if compiled:
        for module in objective.compiled_modules():
            module.compile()
    model, optimizer = accelerator.prepare(objective, optimizer)

    if accelerator.is_main_process:  # writes the resized cache once; the others then find it complete
        prepare_photos(config)
    accelerator.wait_for_everyone()
    photos = prepare_photos(config)
    common = {"resolution": config.resolution, "seed": config.seed, "validation_fraction": config.validation_fraction}
    common["synthesizer"] = ReflectionSynthesizer.from_dict(config.synthesis)
    train_set = SyntheticReflectionDataset(photos, num_samples=config.num_samples, split="train", **common)
    val_set = SyntheticReflectionDataset(photos, num_samples=config.validation_images, split="validation", **common)
    batched = config.batched_synthesis if config.batched_synthesis is not None else accelerator.device.type == "cuda"
    maker = BatchedSynthesis(train_set, accelerator.device) if batched else None
    source = BatchSource(
        train_set, settings.batch_size, config.seed, accelerator.process_index, accelerator.num_processes, maker
    )
    val_batch = BatchSource(val_set, config.validation_images, config.seed, 0, 1).batch(0, 0)

    checkpoint, start = _latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        if ema is not None:
            _load_ema(ema, objective.trainable, checkpoint / "ema.safetensors")
        with warnings.catch_warnings():  # replaying the schedule, not skipping an optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(start):
                lr_scheduler.step()
        accelerator.print(f"resumed {stage} from {checkpoint} at step {start}")

    log_path = stage_dir / "log.jsonl"
    accumulation = settings.gradient_accumulation_steps
    batches = source.batches(start, settings.steps, accumulation, settings.num_workers)
    bar = tqdm(total=settings.steps, initial=start, desc=f"train {stage}", disable=not accelerator.is_main_process)
    tick, images_seen = time.perf_counter(), 0
    if accelerator.is_main_process:
        _append_log(log_path, {"stage": stage, "step": start, "event": "start", "compile": compiled,
                               "batched_synthesis": batched, "batch_size": settings.batch_size,
                               "photos": len(train_set.photos), "validation_photos": len(val_set.photos)})

    def micro_step(step: int, micro: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sync = micro == accumulation - 1
        context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with context, autocast:
            loss = model(batch, source.generators(step, micro)) / accumulation
            accelerator.backward(loss)
        return loss.detach()

    for step in range(start, settings.steps):
        model.train()
        total = torch.zeros((), device=accelerator.device)  # summed on the device: no host sync per step
        for micro in range(accumulation):
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
            try:
                loss = micro_step(step, micro, batch)
            except Exception as error:  # noqa: BLE001 - inductor/triton failures surface as many types
                if not (compiled and step == start and micro == 0):
                    raise
                compiled = False
                for module in objective.compiled_modules():
                    module._compiled_call_impl = None  # back to eager (what nn.Module.compile set)
                optimizer.zero_grad(set_to_none=True)
                message = f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); continuing eagerly"
                accelerator.print(message)
                if accelerator.is_main_process:
                    _append_log(log_path, {"stage": stage, "step": step, "event": "compile_fallback", "error": message})
                loss = micro_step(step, micro, batch)
            total += accelerator.reduce(loss, reduction="mean")
            images_seen += batch["mixture"].shape[0] * accelerator.num_processes
        grad_norm = accelerator.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(parameters)
        done = step + 1
        bar.update(1)

        at_log_step = done % settings.log_steps == 0 or done == settings.steps
        if accelerator.is_main_process and at_log_step:
            elapsed = time.perf_counter() - tick
            record = {
                "stage": stage,
                "step": done,
                "loss": total.item(),
                "grad_norm": float(grad_norm),
                "lr": lr_scheduler.get_last_lr()[0],
                "it_per_s": settings.log_steps / elapsed if elapsed > 0 else math.nan,
                "images_per_s": images_seen / elapsed if elapsed > 0 else math.nan,
                "memory_gib": _memory_gib(accelerator.device),
                "processes": accelerator.num_processes,
            }
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", mem=f"{record['memory_gib']:.1f}G")
            _append_log(log_path, record)
            tick, images_seen = time.perf_counter(), 0

        if done % settings.validation_steps == 0 and accelerator.is_main_process:
            model.eval()
            with _eager(objective.compiled_modules()):  # other shapes than training's: no recompilation
                metrics = validate(stage, objective, val_batch, config, stage_dir / "validation" / f"step-{done:06d}.png")
            _append_log(log_path, {"stage": stage, "step": done, **metrics})
            accelerator.print(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        out_of_time = False
        if time_limit_minutes is not None and done < settings.steps:
            late = time.perf_counter() - started > 60 * time_limit_minutes
            if accelerator.num_processes == 1:  # every step: a host-side check costs nothing
                out_of_time = late
            elif at_log_step:  # the processes agree at log steps (one small all-reduce)
                flag = torch.tensor(float(late), device=accelerator.device)
                out_of_time = accelerator.reduce(flag, reduction="sum").item() > 0
        if done % settings.checkpointing_steps == 0 or done == stop_after or out_of_time:
            _checkpoint(accelerator, ema, objective.trainable, checkpoint_dir, done, settings.checkpoints_total_limit)
        if out_of_time:
            accelerator.print(f"{stage}: time limit of {time_limit_minutes} min reached at step {done}; checkpointed")
            if accelerator.is_main_process:
                _append_log(log_path, {"stage": stage, "step": done, "event": "time_limit"})
            bar.close()
            return None
        if done == stop_after:
            bar.close()
            return checkpoint_dir
    bar.close()

    if ema is not None:
        ema.copy_to(parameters)
    for module in objective.compiled_modules():
        module._compiled_call_impl = None  # the saved pipeline and later stages run eagerly
    if accelerator.is_main_process and stage == "control":
        objective.trainable.save_pretrained(config.control_dir)
    elif accelerator.is_main_process:
        objective.finalize(accelerator, val_batch)
        pipe.to("cpu")
        pipe.save_pretrained(config.pipeline_dir)
        if config.push_to_hub:
            pipe.push_to_hub(config.push_to_hub)
    if accelerator.is_main_process:
        (stage_dir / FINISHED).write_text(json.dumps({"steps": settings.steps}) + "\n")
    accelerator.wait_for_everyone()
    return config.control_dir if stage == "control" else config.pipeline_dir


@contextlib.contextmanager
def _eager(modules: list[nn.Module]):
    """Runs ``modules`` uncompiled inside the block (``nn.Module.compile`` keeps its compiled call aside)."""
    saved = [module._compiled_call_impl for module in modules]
    for module in modules:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, call in zip(modules, saved):
            module._compiled_call_impl = call


def _append_log(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _checkpoint(
    accelerator: Accelerator, ema: EMAModel | None, module: nn.Module, folder: Path, step: int, keep: int
) -> None:
    path = folder / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        if ema is not None:
            _save_ema(ema, module, path / "ema.safetensors")
        checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in checkpoints[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def export_fp16(config: TrainingConfig, stage: str, target: str | Path) -> Path:
    """Write what ``stage`` produced as fp16 safetensors without code (the form shipped inside this package):
    the control regressor after ``control``, else the run's pipeline."""
    if stage == "control":
        UNet2DModel.from_pretrained(config.control_dir).to(torch.float16).save_pretrained(target)
    else:
        pipe = ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir)
        pipe.to(torch.float16).save_pretrained(target, remote_code=False)
    return Path(target)


def seed_with_trained_vae(config: TrainingConfig, source: str | Path) -> Path:
    """Start the run as if its ``vae`` stage had just produced ``source``'s autoencoder.

    The pipeline is built from ``config.model`` as usual; only the VAE's base weights come from ``source`` (FGFM
    stays at its initialization, since the ``fgfm`` stage trains it later). Use it to retrain the later stages
    (e.g. the UNet on a new noise schedule) beside an autoencoder already trained with the same config.
    """
    if (config.pipeline_dir / "model_index.json").exists():
        raise ValueError(f"{str(config.pipeline_dir)!r} already holds a pipeline; --vae-from only starts a new run.")
    pipe = load_pipeline(config)
    trained_vae = FGFMAutoencoderKL.from_pretrained(source, subfolder="vae")
    pipe.vae.load_base_weights(trained_vae.state_dict())
    pipe.vae.register_to_config(scaling_factor=trained_vae.config.scaling_factor)  # measured by the vae stage
    pipe.to(torch.float32).save_pretrained(config.pipeline_dir)
    return config.pipeline_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reflection-separation-train",
        description="Train a stage of the reflection-separation model (resumes from the stage's last checkpoint).",
        epilog="Example: accelerate launch --multi_gpu --num_processes 2 -m reflection_separation.training "
        "--config examples/configs/small_model.json --stage unet",
    )
    parser.add_argument("--config", required=True, help="training config JSON")
    parser.add_argument("--stage", choices=STAGES, nargs="+", default=[],
                        help="stages to run, in order (none: only --vae-from's seeding)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this step's checkpoint (testing)")
    parser.add_argument("--time-limit-minutes", type=float, default=None,
                        help="checkpoint and exit with status 75 once this much time has passed; the same command "
                        "continues the run (finished stages are skipped)")
    parser.add_argument("--export-fp16", type=Path, metavar="DIR", help="afterwards, write the last stage's result "
                        "in fp16 to DIR (the pipeline, or the control regressor after `control`)")
    parser.add_argument("--vae-from", metavar="PIPELINE", help="start a new run with this pipeline's trained VAE "
                        "(base weights; FGFM re-initialized) instead of running the `vae` stage")
    parser.add_argument("--find-batch-size", type=float, metavar="GIB", help="instead of training, print for each "
                        "--stage the largest power-of-two batch whose step fits in GIB of GPU memory (CUDA only)")
    parser.add_argument("--pipeline-from", metavar="PIPELINE", help="start the run from this saved pipeline (e.g. the "
                        "shipped fp16 model, trained in float32) instead of the config's `model`: for later stages "
                        "such as `onestep`; only used while the run holds no pipeline yet")
    parser.add_argument("--control-from", metavar="DIR", help="start the `control` stage from this saved regressor "
                        "(e.g. an earlier run's fp16 export) instead of from scratch; only used while the run holds "
                        "no regressor yet")
    parser.add_argument("--output-dir", metavar="DIR", help="the run's folder, instead of the config's `output_dir`")
    args = parser.parse_args(argv)
    config = TrainingConfig.from_file(args.config)
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    if args.pipeline_from is not None:
        config.model = {"pipeline": args.pipeline_from}
    if args.control_from is not None:
        config.control_from = args.control_from
    if args.find_batch_size is not None:
        if not torch.cuda.is_available():
            parser.error("--find-batch-size measures GPU memory and needs CUDA")
        for stage in args.stage:
            batch, peaks = largest_batch_size(config, stage, args.find_batch_size, torch.device("cuda"))
            print(json.dumps({"stage": stage, "memory_budget_gib": args.find_batch_size, "batch_size": batch,
                              "peak_gib": peaks}))
        return 0
    if not args.stage and args.vae_from is None:
        parser.error("pass --stage (or --vae-from to only start a run from a trained VAE)")
    if args.vae_from is not None and "vae" in args.stage:
        parser.error("--vae-from replaces the `vae` stage; drop it from --stage")
    if args.pipeline_from is not None and (args.vae_from is not None or "vae" in args.stage):
        parser.error("--pipeline-from starts from a trained pipeline; drop --vae-from and the `vae` stage")
    if args.export_fp16 is not None and (args.stop_after is not None or not args.stage):
        parser.error("--export-fp16 needs finished stages; pass --stage and drop --stop-after")
    accelerator = Accelerator()
    if args.vae_from is not None:
        if accelerator.is_main_process:
            seed_with_trained_vae(config, args.vae_from)
        accelerator.wait_for_everyone()
    started = time.perf_counter()
    for stage in args.stage:
        remaining = None
        if args.time_limit_minutes is not None:
            remaining = args.time_limit_minutes - (time.perf_counter() - started) / 60
        if train_stage(config, stage, stop_after=args.stop_after, time_limit_minutes=remaining) is None:
            accelerator.end_training()
            return EXIT_TIME_LIMIT
    if args.export_fp16 is not None and accelerator.is_main_process:
        export_fp16(config, args.stage[-1], args.export_fp16)
    accelerator.end_training()  # once, after all stages: it tears down the process group the stages share
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
