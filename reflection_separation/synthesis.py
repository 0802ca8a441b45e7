"""Synthetic reflection mixtures: recipes from the literature, applied to whole batches on any device.

`ReflectionSynthesizer` draws, per sample, one recipe (by configurable weight) and its parameters, then composes
`(mixture I, transmission T, reflection R)` from two photos. Every operation works on a batch `(B, 3, H, W)` with
per-sample parameters, so the same code runs one sample on a CPU (the data loader path) and a whole batch on the
GPU (`BatchedSynthesis` in `data.py`); the two agree within float tolerance.

Recipes (the ground truth each one returns; `R` is always the reflection as it appears in `I`):

| recipe | models | identity (before the degradations) |
|---|---|---|
| `additive` | Zhang et al. 2018 / DSRNet (Hu & Guo 2023): Gaussian-blurred, attenuated, sometimes ghosted reflection added, overflow compensated | `I = min(T + R, 1)` |
| `screen` | DSRNet's screen blend `I = T + R_b - T R_b` | `I = T + R` exactly, with `R = R_b (1 - T)` |
| `vignette` | Zhang et al.'s spatial vignette on the reflection (glass seen at an angle, a lamp's falloff) | `I = min(T + R, 1)` |
| `sharp` | in-focus reflections (camera focused near the glass): no blur, weaker | `I = min(T + R, 1)` |
| `ghost` | double reflection of thick glass, always on, longer offsets | `I = min(T + R, 1)` |
| `glass_tint` | glass that dims and tints the scene; the true `T` is the undimmed scene, as in real benchmarks where `T` is shot without the glass | `I = min(g * T + R, 1)`, `g` a per-channel gain in [0.57, 1] (deviation: `I != T + R`) |
| `defocus_disk` | out-of-focus reflection with a disk (bokeh) kernel instead of a Gaussian | `I = min(T + R, 1)` |
| `strong` | strong reflections that dominate part of the frame (a bright window, a lamp) | `I = min(T + R, 1)` |
| `faint` | the additive recipe with a faint reflection (glass lit from the scene's side, an anti-reflective coating) | `I = min(T + R, 1)` |
| `none` | no reflection at all (a photo without glass, or a part of one): the model should give the photo back | `I = T`, `R = 0` |

Degradations, applied to `I` only, with their own probabilities on top of any recipe: sensor noise (Gaussian with
a signal-dependent variance `s_read^2 + k_shot * I`) and JPEG compression (8x8 DCT with the standard quantization
tables scaled by the quality, 4:4:4, in torch). `T` and `R` stay clean: they are what the model should output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

RECIPES = ("additive", "screen", "vignette", "sharp", "ghost", "glass_tint", "defocus_disk", "strong", "faint", "none")

# Recipe-specific ranges (documented in the module docstring's table).
SHARP_ATTENUATION = (0.15, 0.5)
GHOST_RECIPE_OFFSET = (4.0, 20.0)
DISK_RADIUS = (1.5, 6.0)
VIGNETTE_STRENGTH = (0.3, 1.0)
GLASS_GAIN = (0.6, 0.95)
GLASS_TINT = 0.05  # per-channel deviation of the gain
STRONG_ATTENUATION = (0.7, 1.0)
STRONG_OVERFLOW = (0.3, 0.8)
STRONG_SOFTNESS = (0.05, 0.3)
FAINT_ATTENUATION = (0.03, 0.15)

_EXTRA_DRAWS = 12  # uniforms drawn after the 7 of the additive recipe (recipe choice, its parameters, degradations)


@dataclass(frozen=True)
class SynthesisParameters:
    """The random draws behind one synthesized mixture (see `ReflectionSynthesizer`).

    Args:
        sigma: Gaussian blur standard deviation of the reflection, in pixels (0 means no blur).
        attenuation: Factor the blurred reflection is multiplied by.
        ghost_offset: `(dy, dx)` pixel shift of the ghost copy, or `None` for no ghosting.
        ghost_attenuation: Relative strength of the ghost copy (unused without ghosting).
        overflow_factor: Multiplier of the per-channel mean excess subtracted from the reflection.
        recipe: One of `RECIPES`.
        disk_radius: Radius of the disk defocus kernel in pixels (0: none; `defocus_disk` only).
        vignette: `(center_y, center_x, strength)` in relative coordinates, or `None` (`vignette` only).
        region: `(angle, offset, softness)` of the soft half-plane where a `strong` reflection dominates, or `None`.
        transmission_gain: Per-channel gain of the glass on `T` in the mixture (`glass_tint` only).
        noise: `(read_sigma, shot_coefficient)` of the sensor noise, or `None`.
        noise_seed: Seed of the noise generator (on the mixture's device).
        jpeg_quality: JPEG quality of the mixture in [1, 100], or 0 for none.
    """

    sigma: float
    attenuation: float
    ghost_offset: tuple[int, int] | None
    ghost_attenuation: float
    overflow_factor: float
    recipe: str = "additive"
    disk_radius: float = 0.0
    vignette: tuple[float, float, float] | None = None
    region: tuple[float, float, float] | None = None
    transmission_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: tuple[float, float] | None = None
    noise_seed: int = 0
    jpeg_quality: int = 0


def to_device(values: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small host-side tensor (a list of per-sample values, a table) on ``device`` without stalling the host: on
    CUDA it is staged in pinned memory and copied asynchronously (a copy from pageable memory waits for the GPU to
    finish everything queued before it), so the host can prepare the next batch while the GPU trains on this one."""
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return tensor.to(dtype).pin_memory().to(device, non_blocking=True)
    return tensor.to(device, dtype)


def _column(values: list[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One value per sample as a `(B, 1, 1, 1)` tensor on the device, to scale a batch of images."""
    return to_device(values, device, dtype).view(-1, 1, 1, 1)


@contextlib.contextmanager
def _no_autotuning() -> Iterator[None]:
    """cuDNN without benchmark mode: the blur kernels' sizes and the number of samples per recipe change every
    batch, and training turns benchmark mode on, which would autotune each new shape (a pause each time)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _uniform(bounds: Sequence[float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u


@dataclass
class ReflectionSynthesizer:
    """Composes a mixture from a transmission photo `T` and a reflection photo `R` by one of `RECIPES`.

    The base (`additive`) steps, following Zhang et al. 2018 and DSRNet (Hu & Guo 2023):

    1. Blur: `R_b = G_sigma * R`, a Gaussian with `sigma ~ U(sigma_range)` px (out-of-focus reflection).
    2. Ghost, with probability `ghost_probability`: `R_b <- (R_b + c * shift(R_b, d)) / (1 + c)`, the double
       reflection from the two glass surfaces; `|d| ~ U(ghost_offset_range)` px in a uniformly random
       direction, `c ~ U(ghost_attenuation_range)`. Dividing by `1 + c` keeps the brightness.
    3. Attenuate: `R_a = a * R_b`, `a ~ U(attenuation_range)`.
    4. Overflow (Zhang et al.): per channel, take the mean `m` of `T + R_a` over the pixels where it exceeds 1
       and subtract `f * (m - 1)` from the reflection, `f ~ U(overflow_factor_range)`; then
       `R' = clip(R_a - f * (m - 1), 0, 1)`, so that most saturation disappears.
    5. Mix: `I = clip(T + R', 0, 1)`.

    The other recipes change one of these steps (module docstring). `recipes` maps recipe names to weights
    (the default, `{"additive": 1}`, draws exactly the parameters and mixtures of the single-recipe synthesizer
    this package had before); `noise_probability` and `jpeg_probability` add the degradations.

    Args:
        sigma_range: Range of the blur sigma in pixels; `(0, 0)` disables blurring.
        attenuation_range: Range of the reflection attenuation `a`, within `[0, 1]`.
        ghost_probability: Probability of adding a ghost copy.
        ghost_offset_range: Range of the ghost shift length in pixels.
        ghost_attenuation_range: Range of the ghost strength `c` relative to the primary reflection.
        overflow_factor_range: Range of the overflow multiplier `f`; `(0, 0)` disables the compensation.
        recipes: Recipe name -> non-negative weight; at least one weight must be positive.
        noise_probability: Probability of sensor noise on the mixture.
        noise_read_range: Range of the noise's signal-independent standard deviation.
        noise_shot_range: Range of the noise's signal-dependent variance coefficient.
        jpeg_probability: Probability of JPEG compression of the mixture.
        jpeg_quality_range: Range of the JPEG quality.
    """

    sigma_range: tuple[float, float] = (1.0, 5.0)
    attenuation_range: tuple[float, float] = (0.4, 1.0)
    ghost_probability: float = 0.3
    ghost_offset_range: tuple[float, float] = (2.0, 12.0)
    ghost_attenuation_range: tuple[float, float] = (0.3, 0.7)
    overflow_factor_range: tuple[float, float] = (1.08, 1.18)
    recipes: dict[str, float] = field(default_factory=lambda: {"additive": 1.0})
    noise_probability: float = 0.0
    noise_read_range: tuple[float, float] = (0.002, 0.02)
    noise_shot_range: tuple[float, float] = (0.0, 0.004)
    jpeg_probability: float = 0.0
    jpeg_quality_range: tuple[float, float] = (40.0, 95.0)

    def __post_init__(self) -> None:
        for name in (
            "sigma_range", "attenuation_range", "ghost_offset_range", "ghost_attenuation_range",
            "overflow_factor_range", "noise_read_range", "noise_shot_range", "jpeg_quality_range",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"`{name}` must satisfy 0 <= low <= high, got {(low, high)}.")
            setattr(self, name, (float(low), float(high)))
        if self.attenuation_range[1] > 1:
            raise ValueError(f"`attenuation_range` must lie within [0, 1], got {self.attenuation_range}.")
        if not (1 <= self.jpeg_quality_range[0] and self.jpeg_quality_range[1] <= 100):
            raise ValueError(f"`jpeg_quality_range` must lie within [1, 100], got {self.jpeg_quality_range}.")
        for name in ("ghost_probability", "noise_probability", "jpeg_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must lie within [0, 1], got {getattr(self, name)}.")
        unknown = set(self.recipes) - set(RECIPES)
        if unknown:
            raise ValueError(f"Unknown recipes {sorted(unknown)}; choose from {RECIPES}.")
        if any(weight < 0 for weight in self.recipes.values()) or sum(self.recipes.values()) <= 0:
            raise ValueError(f"Recipe weights must be >= 0 with a positive sum, got {self.recipes}.")
        self.recipes = {name: float(weight) for name, weight in self.recipes.items() if weight > 0}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ReflectionSynthesizer":
        """Builds a synthesizer from plain (JSON) values, e.g. a training config's `synthesis` entry."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown synthesis settings {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}.")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def only(self, recipe: str) -> "ReflectionSynthesizer":
        """The same synthesizer restricted to one recipe (e.g. to report validation per recipe)."""
        if recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {recipe!r}; choose from {RECIPES}.")
        return replace(self, recipes={recipe: 1.0})

    @property
    def _needs_extra_draws(self) -> bool:
        return set(self.recipes) != {"additive"} or self.noise_probability > 0 or self.jpeg_probability > 0

    def sample_parameters(self, generator: torch.Generator | None = None) -> SynthesisParameters:
        """Draws the parameters of one mixture; `generator=None` uses torch's global generator."""
        draws = torch.rand(7, generator=generator, dtype=torch.float64).tolist()
        ghost_offset = None
        if draws[2] < self.ghost_probability:
            length, angle = _uniform(self.ghost_offset_range, draws[3]), 2 * math.pi * draws[4]
            ghost_offset = (round(length * math.sin(angle)), round(length * math.cos(angle)))
        parameters = SynthesisParameters(
            sigma=_uniform(self.sigma_range, draws[0]),
            attenuation=_uniform(self.attenuation_range, draws[1]),
            ghost_offset=ghost_offset,
            ghost_attenuation=_uniform(self.ghost_attenuation_range, draws[5]),
            overflow_factor=_uniform(self.overflow_factor_range, draws[6]),
        )
        if not self._needs_extra_draws:
            return parameters
        extra = torch.rand(_EXTRA_DRAWS, generator=generator, dtype=torch.float64).tolist()
        names, weights = list(self.recipes), list(self.recipes.values())
        threshold, recipe = extra[0] * sum(weights), names[-1]
        for name, cumulative in zip(names, torch.tensor(weights, dtype=torch.float64).cumsum(0).tolist()):
            if threshold < cumulative:
                recipe = name
                break
        updates: dict[str, Any] = {"recipe": recipe}
        if recipe == "vignette":
            updates["vignette"] = (extra[1], extra[2], _uniform(VIGNETTE_STRENGTH, extra[3]))
        elif recipe == "sharp":
            updates.update(sigma=0.0, attenuation=_uniform(SHARP_ATTENUATION, extra[1]))
        elif recipe == "ghost":
            length, angle = _uniform(GHOST_RECIPE_OFFSET, draws[3]), 2 * math.pi * draws[4]
            updates["ghost_offset"] = (round(length * math.sin(angle)), round(length * math.cos(angle)))
        elif recipe == "glass_tint":
            gain = _uniform(GLASS_GAIN, extra[1])
            updates["transmission_gain"] = tuple(
                min(1.0, gain * (1 + GLASS_TINT * (2 * u - 1))) for u in extra[2:5]
            )
        elif recipe == "defocus_disk":
            updates.update(sigma=0.0, disk_radius=_uniform(DISK_RADIUS, extra[1]))
        elif recipe == "strong":
            updates.update(
                attenuation=_uniform(STRONG_ATTENUATION, extra[1]),
                overflow_factor=_uniform(STRONG_OVERFLOW, extra[2]),
                region=(2 * math.pi * extra[3], extra[4] - 0.5, _uniform(STRONG_SOFTNESS, extra[5])),
            )
        elif recipe == "faint":
            updates["attenuation"] = _uniform(FAINT_ATTENUATION, extra[1])
        elif recipe == "none":
            updates["attenuation"] = 0.0
        if extra[6] < self.noise_probability:
            updates["noise"] = (_uniform(self.noise_read_range, extra[7]), _uniform(self.noise_shot_range, extra[8]))
            updates["noise_seed"] = int(extra[9] * 2**53)
        if extra[10] < self.jpeg_probability:
            updates["jpeg_quality"] = round(_uniform(self.jpeg_quality_range, extra[11]))
        return replace(parameters, **updates)

    def apply(
        self, transmission: torch.Tensor, reflection: torch.Tensor, parameters: SynthesisParameters
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composes one mixture with fixed parameters; returns `(mixture, transmission, reflection_in_mixture)`."""
        if transmission.ndim != 3 or transmission.shape != reflection.shape:
            raise ValueError(
                f"Expected two (C, H, W) tensors of equal shape, got {tuple(transmission.shape)} and "
                f"{tuple(reflection.shape)}."
            )
        mixture, transmission, layer = self.apply_batch(transmission[None], reflection[None], [parameters])
        return mixture[0], transmission[0], layer[0]

    def apply_batch(
        self, transmission: torch.Tensor, reflection: torch.Tensor, parameters: Sequence[SynthesisParameters]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composes a batch: `(B, 3, H, W)` photos in [0, 1] and one `SynthesisParameters` per sample, on any device."""
        return compose(transmission, reflection, parameters)

    def __call__(
        self, transmission: torch.Tensor, reflection: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composes a mixture with freshly drawn parameters.

        Args:
            transmission: `(3, H, W)` photo in `[0, 1]` that stays behind the glass.
            reflection: `(3, H, W)` photo in `[0, 1]` that becomes the reflection.
            generator: Source of randomness, or an integer seed; the same seed gives the same triplet.

        Returns:
            `(mixture, transmission, reflection_in_mixture)`, all `(3, H, W)` in `[0, 1]`.
        """
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        return self.apply(transmission, reflection, self.sample_parameters(generator))


def compose(
    transmission: torch.Tensor, reflection: torch.Tensor, parameters: Sequence[SynthesisParameters]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipes of the module docstring on a batch, vectorized over samples (see `ReflectionSynthesizer`)."""
    if transmission.ndim != 4 or transmission.shape != reflection.shape or len(parameters) != transmission.shape[0]:
        raise ValueError(
            f"Expected two (B, C, H, W) tensors of equal shape and B parameter sets, got {tuple(transmission.shape)}, "
            f"{tuple(reflection.shape)} and {len(parameters)}."
        )
    device, dtype = transmission.device, transmission.dtype

    column = partial(_column, device=device, dtype=dtype)
    layer = blur_batch(reflection, [p.sigma for p in parameters])
    disks = [i for i, p in enumerate(parameters) if p.disk_radius > 0]
    if disks:
        rows = to_device(disks, device, torch.long)
        layer[rows] = disk_blur_batch(reflection[rows], [parameters[i].disk_radius for i in disks])
    ghosts = [i for i, p in enumerate(parameters) if p.ghost_offset is not None]
    if ghosts:
        rows = to_device(ghosts, device, torch.long)
        offsets = [parameters[i].ghost_offset for i in ghosts]
        c = column([parameters[i].ghost_attenuation for i in ghosts])
        layer[rows] = (layer[rows] + c * shift_batch(layer[rows], offsets)) / (1 + c)
    layer = layer * spatial_gain(parameters, layer.shape[-2:], device, dtype) * column([p.attenuation for p in parameters])

    gain = to_device([p.transmission_gain for p in parameters], device, dtype).view(-1, 3, 1, 1)
    seen_transmission = transmission * gain
    screen = column([float(p.recipe == "screen") for p in parameters])
    layer = layer * (1 - screen * seen_transmission)

    excess = (seen_transmission + layer - 1).clamp(min=0)
    mean_excess = excess.sum(dim=(2, 3)) / (excess > 0).sum(dim=(2, 3)).clamp(min=1)
    layer = (layer - column([p.overflow_factor for p in parameters]) * mean_excess[..., None, None]).clamp(0, 1)
    mixture = (seen_transmission + layer).clamp(0, 1)
    mixture = degrade(mixture, parameters)
    return mixture, transmission, layer


def spatial_gain(
    parameters: Sequence[SynthesisParameters], size: torch.Size, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Per-sample `(B, 1, H, W)` multiplier of the reflection: a vignette, a `strong` region, or ones."""
    height, width = size
    y = torch.linspace(0, 1, height, device=device, dtype=dtype).view(1, 1, -1, 1)
    x = torch.linspace(0, 1, width, device=device, dtype=dtype).view(1, 1, 1, -1)
    column = partial(_column, device=device, dtype=dtype)
    vignette = [p.vignette or (0.5, 0.5, 0.0) for p in parameters]
    distance = (y - column([v[0] for v in vignette])) ** 2 + (x - column([v[1] for v in vignette])) ** 2
    gain = (1 - column([v[2] for v in vignette]) * distance / 2).clamp(0, 1)  # 1 - strength at 1.41 away
    regions = [p.region for p in parameters]
    strong = column([float(r is not None) for r in regions])
    angle, offset, softness = (column([(r or (0.0, 0.0, 1.0))[k] for r in regions]) for k in range(3))
    side = torch.sigmoid(((x - 0.5) * torch.cos(angle) + (y - 0.5) * torch.sin(angle) - offset) / softness)
    return gain * (1 - strong + strong * (0.35 + 0.65 * side))


def blur_batch(images: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (radius `ceil(3 sigma)`, replicated borders; 0: identity)."""
    radii = [math.ceil(3 * s) if s > 0 else 0 for s in sigmas]
    radius = max(radii)
    if radius == 0:
        return images.clone()
    coords = torch.arange(-radius, radius + 1, dtype=images.dtype)  # the kernels are made on the host
    sigma = torch.tensor(sigmas, dtype=images.dtype).view(-1, 1)
    spread = torch.tensor([2 * s**2 if s > 0 else 1.0 for s in sigmas], dtype=images.dtype).view(-1, 1)
    gaussian = torch.exp(-(coords**2) / spread) * (coords.abs() <= torch.tensor(radii).view(-1, 1))
    kernels = torch.where(sigma > 0, gaussian, (coords == 0).to(images.dtype))  # sigma 0: the identity
    kernels = to_device(kernels / kernels.sum(dim=1, keepdim=True), images.device, images.dtype)
    batch, channels, height, width = images.shape
    weight = kernels.repeat_interleave(channels, dim=0)  # (B * C, K)
    out = F.pad(images.reshape(1, batch * channels, height, width), (radius,) * 4, mode="replicate")
    with _no_autotuning():
        out = F.conv2d(out, weight[:, None, None, :], groups=batch * channels)
        out = F.conv2d(out, weight[:, None, :, None], groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def disk_blur_batch(images: torch.Tensor, radii: Sequence[float]) -> torch.Tensor:
    """Defocus blur with a disk (pillbox) kernel per sample, anti-aliased at its rim, replicated borders."""
    reach = math.ceil(max(radii))
    coords = torch.arange(-reach, reach + 1, dtype=images.dtype)  # the kernels are made on the host
    distance = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    kernels = (torch.tensor(radii, dtype=images.dtype).view(-1, 1, 1) + 0.5 - distance).clamp(0, 1)
    kernels = to_device(kernels / kernels.sum(dim=(1, 2), keepdim=True), images.device, images.dtype)
    batch, channels, height, width = images.shape
    weight = kernels.repeat_interleave(channels, dim=0)[:, None]
    out = F.pad(images.reshape(1, batch * channels, height, width), (reach,) * 4, mode="replicate")
    with _no_autotuning():
        out = F.conv2d(out, weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def shift_batch(images: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """`out[b, :, y, x] = images[b, :, y - dy_b, x - dx_b]`, replicating the border instead of wrapping around."""
    batch, channels, height, width = images.shape
    device = images.device
    dy = to_device([o[0] for o in offsets], device, torch.long).view(-1, 1, 1)
    dx = to_device([o[1] for o in offsets], device, torch.long).view(-1, 1, 1)
    rows = (torch.arange(height, device=device).view(1, -1, 1) - dy).clamp(0, height - 1)
    cols = (torch.arange(width, device=device).view(1, 1, -1) - dx).clamp(0, width - 1)
    index = (rows * width + cols).view(batch, 1, height * width).expand(batch, channels, -1)
    return images.reshape(batch, channels, height * width).gather(2, index).view(batch, channels, height, width)


def degrade(mixture: torch.Tensor, parameters: Sequence[SynthesisParameters]) -> torch.Tensor:
    """Sensor noise and JPEG compression of the samples whose parameters ask for them."""
    noisy = [i for i, p in enumerate(parameters) if p.noise is not None]
    if noisy:
        noise = torch.stack([
            torch.randn(
                mixture.shape[1:],
                generator=torch.Generator(device=mixture.device).manual_seed(parameters[i].noise_seed),
                device=mixture.device,
                dtype=mixture.dtype,
            )
            for i in noisy
        ])
        read = to_device([parameters[i].noise[0] for i in noisy], mixture.device, mixture.dtype)
        shot = to_device([parameters[i].noise[1] for i in noisy], mixture.device, mixture.dtype)
        rows = to_device(noisy, mixture.device, torch.long)
        std = (read.view(-1, 1, 1, 1) ** 2 + shot.view(-1, 1, 1, 1) * mixture[rows]).sqrt()
        mixture = mixture.clone()
        mixture[rows] = (mixture[rows] + std * noise).clamp(0, 1)
    compressed = [i for i, p in enumerate(parameters) if p.jpeg_quality > 0]
    if compressed:
        rows = to_device(compressed, mixture.device, torch.long)
        mixture = mixture.clone()
        mixture[rows] = jpeg_compress(mixture[rows], [parameters[i].jpeg_quality for i in compressed])
    return mixture


# JPEG (ITU-T T.81 Annex K) quantization tables.
_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32),
]


def jpeg_tables(qualities: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`(B, 3, 8, 8)` quantization tables (Y, Cb, Cr) scaled by quality as libjpeg does."""
    base = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE, _CHROMA_TABLE], dtype=dtype).view(1, 3, 8, 8)
    quality = torch.tensor([min(max(int(q), 1), 100) for q in qualities], dtype=dtype)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).view(-1, 1, 1, 1)
    return to_device(((base * scale + 50) / 100).floor().clamp(1, 255), device, dtype)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(8, device=device, dtype=dtype)
    matrix = torch.cos((2 * index[None, :] + 1) * index[:, None] * math.pi / 16) / 2
    matrix[0] = matrix[0] / math.sqrt(2)
    return matrix


def jpeg_compress(images: torch.Tensor, qualities: Sequence[int]) -> torch.Tensor:
    """JPEG round trip of `(B, 3, H, W)` images in [0, 1] with a quality per sample (4:4:4, no entropy coding,
    which is lossless): RGB -> YCbCr, 8x8 DCT, quantization, and back, rounded to 8-bit levels."""
    batch, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    to_ycc = torch.tensor(  # made on the host, as every constant here: no copy that waits for the GPU
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=dtype
    )
    to_rgb = to_device(torch.linalg.inv(to_ycc), device, dtype)
    offset = to_device([0.0, 128.0, 128.0], device, dtype).view(1, 3, 1, 1)
    pixels = torch.einsum("kc,bchw->bkhw", to_device(to_ycc, device, dtype), images * 255)
    pixels = pixels + offset - 128
    pad_h, pad_w = -height % 8, -width % 8
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
    rows, cols = pixels.shape[2] // 8, pixels.shape[3] // 8
    blocks = pixels.view(batch, 3, rows, 8, cols, 8).permute(0, 1, 2, 4, 3, 5)
    dct = _dct_matrix(device, dtype)
    tables = jpeg_tables(qualities, device, dtype)[:, :, None, None]
    coefficients = dct @ blocks @ dct.T
    blocks = dct.T @ ((coefficients / tables).round() * tables) @ dct
    pixels = blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, 3, rows * 8, cols * 8)[..., :height, :width]
    pixels = pixels + 128 - offset
    rgb = torch.einsum("kc,bchw->bkhw", to_rgb, pixels)
    return (rgb.round().clamp(0, 255) / 255).to(dtype)
