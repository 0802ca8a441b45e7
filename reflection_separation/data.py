"""Training and evaluation data for reflection separation.

Two sources of `(mixture, transmission, reflection)` triplets:

* `SyntheticReflectionDataset` pairs arbitrary photos and composes them with `ReflectionSynthesizer`, the
  Zhang et al. 2018 ("Single Image Reflection Separation with Perceptual Losses") / DSRNet recipe: the
  reflection photo is Gaussian-blurred, attenuated, sometimes ghosted, and added to the transmission photo.
* `PairedReflectionDataset` reads real captures laid out like Real89 / Nature / SIR2
  (`blended/`, `transmission_layer/`, optional `reflection_layer/`).

All images are float tensors of shape `(3, H, W)` with values in `[0, 1]`; the trainer maps them to `[-1, 1]`.
All randomness comes from an explicit `torch.Generator` (or a seed from which one is built), so samples are
reproducible, identical in every `DataLoader` worker, and identical after resuming a run.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# What PIL raises for unreadable files (UnidentifiedImageError and truncation errors are OSErrors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# How many times `SyntheticReflectionDataset` redraws a photo pair when a file fails to decode.
_MAX_DRAWS = 8


@dataclass(frozen=True)
class SynthesisParameters:
    """The random draws behind one synthesized mixture (see `ReflectionSynthesizer`).

    Args:
        sigma: Gaussian blur standard deviation of the reflection, in pixels (0 means no blur).
        attenuation: Factor the blurred reflection is multiplied by.
        ghost_offset: `(dy, dx)` pixel shift of the ghost copy, or `None` for no ghosting.
        ghost_attenuation: Relative strength of the ghost copy (unused without ghosting).
        overflow_factor: Multiplier of the per-channel mean excess subtracted from the reflection.
    """

    sigma: float
    attenuation: float
    ghost_offset: tuple[int, int] | None
    ghost_attenuation: float
    overflow_factor: float


@dataclass
class ReflectionSynthesizer:
    """Composes a mixture `I = T + R'` from a transmission photo `T` and a reflection photo `R`.

    Steps, following Zhang et al. 2018 and DSRNet (Hu & Guo 2023):

    1. Blur: `R_b = G_sigma * R`, a Gaussian with `sigma ~ U(sigma_range)` px (out-of-focus reflection).
    2. Ghost, with probability `ghost_probability`: `R_b <- (R_b + c * shift(R_b, d)) / (1 + c)`, the double
       reflection from the two glass surfaces; `|d| ~ U(ghost_offset_range)` px in a uniformly random
       direction, `c ~ U(ghost_attenuation_range)`. Dividing by `1 + c` keeps the brightness, which the
       attenuation controls alone.
    3. Attenuate: `R_a = a * R_b`, `a ~ U(attenuation_range)`.
    4. Overflow (Zhang et al.): per channel, take the mean `m` of `T + R_a` over the pixels where it exceeds 1
       and subtract `f * (m - 1)` from the reflection, `f ~ U(overflow_factor_range)` (Zhang et al. use
       `1.08 + U(0, 0.1)`); then `R' = clip(R_a - f * (m - 1), 0, 1)`. This darkens the reflection so that most
       saturation disappears instead of leaving large blown-out areas.
    5. Mix: `I = clip(T + R', 0, 1)`.

    `R'` is the reflection as it appears in `I`: `I = min(T + R', 1)` exactly, so `I == T + R'` wherever
    `T + R' <= 1` and the only residual is the saturation `max(T + R' - 1, 0)` at the remaining overflow pixels.
    On desktop-wallpaper photos at 512 px with the default ranges, on average 8% of the values stay saturated
    (90th percentile 22%) and the mean of `|I - (T + R')|` is 0.007 (at most 0.03 per image).
    Unlike both recipes, `T` is neither attenuated nor gamma-linearized, and neither Zhang et al.'s spatial
    vignette on `R` nor DSRNet's alternative screen blend `T + R - T R` is used: each would break the identity
    above. The paper's latent composition network is what learns the real, non-additive mixing.

    Args:
        sigma_range: Range of the blur sigma in pixels; `(0, 0)` disables blurring.
        attenuation_range: Range of the reflection attenuation `a`, within `[0, 1]`.
        ghost_probability: Probability of adding a ghost copy.
        ghost_offset_range: Range of the ghost shift length in pixels.
        ghost_attenuation_range: Range of the ghost strength `c` relative to the primary reflection.
        overflow_factor_range: Range of the overflow multiplier `f`; `(0, 0)` disables the compensation.
    """

    sigma_range: tuple[float, float] = (1.0, 5.0)
    attenuation_range: tuple[float, float] = (0.4, 1.0)
    ghost_probability: float = 0.3
    ghost_offset_range: tuple[float, float] = (2.0, 12.0)
    ghost_attenuation_range: tuple[float, float] = (0.3, 0.7)
    overflow_factor_range: tuple[float, float] = (1.08, 1.18)

    def __post_init__(self) -> None:
        for name in (
            "sigma_range",
            "attenuation_range",
            "ghost_offset_range",
            "ghost_attenuation_range",
            "overflow_factor_range",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"`{name}` must satisfy 0 <= low <= high, got {(low, high)}.")
        if self.attenuation_range[1] > 1:
            raise ValueError(f"`attenuation_range` must lie within [0, 1], got {self.attenuation_range}.")
        if not 0 <= self.ghost_probability <= 1:
            raise ValueError(f"`ghost_probability` must lie within [0, 1], got {self.ghost_probability}.")

    def sample_parameters(self, generator: torch.Generator | None = None) -> SynthesisParameters:
        """Draws the random parameters of one mixture; `generator=None` uses torch's global generator."""
        draws = torch.rand(7, generator=generator, dtype=torch.float64).tolist()

        def uniform(bounds: tuple[float, float], u: float) -> float:
            return bounds[0] + (bounds[1] - bounds[0]) * u

        ghost_offset = None
        if draws[2] < self.ghost_probability:
            length, angle = uniform(self.ghost_offset_range, draws[3]), 2 * math.pi * draws[4]
            ghost_offset = (round(length * math.sin(angle)), round(length * math.cos(angle)))
        return SynthesisParameters(
            sigma=uniform(self.sigma_range, draws[0]),
            attenuation=uniform(self.attenuation_range, draws[1]),
            ghost_offset=ghost_offset,
            ghost_attenuation=uniform(self.ghost_attenuation_range, draws[5]),
            overflow_factor=uniform(self.overflow_factor_range, draws[6]),
        )

    def apply(
        self, transmission: torch.Tensor, reflection: torch.Tensor, parameters: SynthesisParameters
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composes the mixture with fixed parameters; returns `(mixture, transmission, reflection_in_mixture)`."""
        if transmission.ndim != 3 or transmission.shape != reflection.shape:
            raise ValueError(
                f"Expected two (C, H, W) tensors of equal shape, got {tuple(transmission.shape)} and "
                f"{tuple(reflection.shape)}."
            )
        layer = gaussian_blur(reflection, parameters.sigma)
        if parameters.ghost_offset is not None:
            c = parameters.ghost_attenuation
            layer = (layer + c * shift_image(layer, *parameters.ghost_offset)) / (1 + c)
        layer = parameters.attenuation * layer

        blend = transmission + layer
        excess = (blend - 1).clamp(min=0)
        mean_excess = excess.sum(dim=(1, 2)) / (excess > 0).sum(dim=(1, 2)).clamp(min=1)
        layer = (layer - parameters.overflow_factor * mean_excess[:, None, None]).clamp(0, 1)

        mixture = (transmission + layer).clamp(0, 1)
        return mixture, transmission, layer

    def __call__(
        self, transmission: torch.Tensor, reflection: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Composes a mixture with freshly drawn parameters.

        Args:
            transmission: `(3, H, W)` photo in `[0, 1]` that stays behind the glass.
            reflection: `(3, H, W)` photo in `[0, 1]` that becomes the reflection.
            generator: Source of randomness, or an integer seed; the same seed gives the same triplet.

        Returns:
            `(mixture, transmission, reflection_in_mixture)`, all `(3, H, W)` in `[0, 1]`, with
            `mixture == clip(transmission + reflection_in_mixture, 0, 1)`.
        """
        return self.apply(transmission, reflection, self.sample_parameters(_as_generator(generator)))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blurs a `(C, H, W)` image with a separable Gaussian (radius `ceil(3 sigma)`, replicated borders)."""
    if sigma <= 0:
        return image
    radius = math.ceil(3 * sigma)
    coords = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return out[0]


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Returns `out[:, y, x] = image[:, y - dy, x - dx]`, replicating the border instead of wrapping around."""
    height, width = image.shape[-2:]
    padded = F.pad(image[None], (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")[0]
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top : top + height, left : left + width]


def load_image(path: str | Path) -> Image.Image:
    """Opens an image file as RGB, applying its EXIF orientation."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Converts an RGB PIL image to a float `(3, H, W)` tensor in `[0, 1]`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def random_crop_flip(
    images: Sequence[Image.Image],
    resolution: int,
    generator: torch.Generator | None = None,
    flip_probability: float = 0.5,
) -> list[torch.Tensor]:
    """Crops the same random `resolution`-pixel square from each image and flips all of them together.

    Images whose short side is below `resolution` are first upscaled (bicubic, aspect ratio kept) so that the
    short side equals it; larger images are cropped at their native scale. All images must share one size, so
    aligned layers (mixture, transmission, reflection) stay aligned. The draws are, in order: crop top, crop
    left, flip; the same generator state gives the same crop.

    Returns:
        One `(3, resolution, resolution)` float tensor in `[0, 1]` per input image.
    """
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"All images must have the same size to be cropped together, got {sorted(sizes)}.")
    width, height = sizes.pop()
    if min(width, height) < resolution:
        scale = resolution / min(width, height)
        width, height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
        images = [image.resize((width, height), Image.Resampling.BICUBIC) for image in images]
    top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    flip = float(torch.rand(1, generator=generator)) < flip_probability
    crops = []
    for image in images:
        crop = image.crop((left, top, left + resolution, top + resolution))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(pil_to_tensor(crop))
    return crops


def list_images(root: str | Path) -> list[Path]:
    """Lists image files under `root` recursively (by extension, case-insensitive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {str(root)!r} does not exist.")
    return sorted(
        (path for path in root.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda path: path.relative_to(root).as_posix(),
    )


def is_validation_file(relative_path: str, validation_fraction: float) -> bool:
    """Assigns a file to the validation split by a hash of its relative POSIX path.

    The assignment depends on nothing but the path, so it is stable across machines, runs and added files.
    The relative path, not the bare file name, is hashed because wallpaper packs reuse names such as
    `5120x2880.jpg` in many folders.
    """
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < validation_fraction


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def _item_seed(seed: int, index: int) -> int:
    """Mixes a dataset seed and an item index into an independent 63-bit generator seed."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _oriented_size(path: Path) -> tuple[int, int]:
    """The `(width, height)` that `load_image` will return, read from the header only."""
    with Image.open(path) as image:
        width, height = image.size
        transposed = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (height, width) if transposed else (width, height)


def _is_readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except _DECODE_ERRORS:
        return False
    return True


class SyntheticReflectionDataset(Dataset):
    """Synthetic mixtures composed on the fly from a folder of ordinary photos.

    Item `i` draws, from a generator seeded by `(seed, i)` only: a transmission photo, a different reflection
    photo, an independent random crop and flip of each, and the synthesis parameters. Items therefore do not
    depend on access order, worker process or resumption. For fresh samples in each epoch, make `num_samples`
    cover the whole run (or change `seed`).

    Files that PIL cannot verify are skipped with one warning at construction. A file that passes verification
    but fails to decode later (e.g. a truncated JPEG) is reported with a warning and the pair is redrawn from
    the same generator, so training does not stop and stays deterministic.

    Args:
        root: Folder searched recursively for photos (`IMAGE_EXTENSIONS`).
        resolution: Side of the square crops.
        num_samples: Length of the dataset; defaults to the number of usable photos.
        seed: Base seed of all item draws.
        split: `"train"` or `"validation"` keeps only that part of the photos (see `is_validation_file`);
            `"all"` keeps every photo. Validation photos never appear in a `"train"` item, in either layer.
        validation_fraction: Expected share of photos assigned to validation.
        synthesizer: Mixture recipe; defaults to `ReflectionSynthesizer()`.
        flip_probability: Probability of a horizontal flip of each layer.

    Items are dicts `{"mixture": I, "transmission": T, "reflection": R'}` of `(3, resolution, resolution)`
    float tensors in `[0, 1]`, so the default `DataLoader` collate stacks them.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 512,
        num_samples: int | None = None,
        seed: int = 0,
        split: Literal["all", "train", "validation"] = "all",
        validation_fraction: float = 0.05,
        synthesizer: ReflectionSynthesizer | None = None,
        flip_probability: float = 0.5,
    ) -> None:
        if split not in ("all", "train", "validation"):
            raise ValueError(f"`split` must be 'all', 'train' or 'validation', got {split!r}.")
        self.root = Path(root)
        self.resolution = resolution
        self.seed = seed
        self.synthesizer = synthesizer if synthesizer is not None else ReflectionSynthesizer()
        self.flip_probability = flip_probability

        photos = list_images(self.root)
        if split != "all":
            keep_validation = split == "validation"
            photos = [
                path
                for path in photos
                if is_validation_file(path.relative_to(self.root).as_posix(), validation_fraction) == keep_validation
            ]
        broken = [path for path in photos if not _is_readable(path)]
        if broken:
            names = ", ".join(str(path.relative_to(self.root)) for path in broken[:10])
            warnings.warn(f"Skipping {len(broken)} unreadable image file(s) under {str(self.root)!r}: {names}")
        self.photos: list[Path] = [path for path in photos if path not in broken]
        if len(self.photos) < 2:
            raise ValueError(
                f"Need at least 2 readable photos for split {split!r} under {str(self.root)!r}, "
                f"found {len(self.photos)}."
            )
        self.num_samples = len(self.photos) if num_samples is None else num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"Index {index} out of range for a dataset of {self.num_samples} samples.")
        generator = torch.Generator().manual_seed(_item_seed(self.seed, index))
        count = len(self.photos)
        for _ in range(_MAX_DRAWS):
            first = int(torch.randint(0, count, (1,), generator=generator))
            second = int(torch.randint(0, count - 1, (1,), generator=generator))
            second += second >= first
            try:
                transmission_image, reflection_image = load_image(self.photos[first]), load_image(self.photos[second])
            except _DECODE_ERRORS as error:
                warnings.warn(f"Redrawing sample {index}: could not decode a photo ({error}).")
                continue
            (transmission,) = random_crop_flip([transmission_image], self.resolution, generator, self.flip_probability)
            (reflection,) = random_crop_flip([reflection_image], self.resolution, generator, self.flip_probability)
            mixture, transmission, reflection = self.synthesizer(transmission, reflection, generator)
            return {"mixture": mixture, "transmission": transmission, "reflection": reflection}
        raise RuntimeError(f"Could not decode a photo pair for sample {index} in {_MAX_DRAWS} draws.")


class PairedReflectionDataset(Dataset):
    """Real captured mixtures with ground-truth layers, in the Real89 / Nature / SIR2 folder layout.

    Expected layout (folder names configurable)::

        root/blended/<name>.<ext>              mixture I
        root/transmission_layer/<name>.<ext>   transmission T
        root/reflection_layer/<name>.<ext>     reflection R (optional)

    Files are matched by stem, so extensions may differ between folders. Missing folders raise
    `FileNotFoundError`; stems that are not present in every folder, or aligned files of different sizes,
    raise `ValueError` naming them.

    Without a reflection folder, `missing_reflection` decides the `"reflection"` entry:
    `"residual"` (default) gives `clip(I - T, 0, 1)`, the reflection as it appears in the mixture under the
    additive model used for synthetic data (a noisy estimate: real captures are not exactly additive);
    `"omit"` leaves the key out, so that the loss of the reflection branch can be skipped. Items from one
    dataset always have the same keys and, with `resolution` set, the same shapes.

    Args:
        root: Dataset folder containing the layer folders.
        resolution: If given, a random square crop of this size (shared by all layers); if `None`, full images
            (use batch size 1 unless all images have one size).
        flip_probability: Probability of a horizontal flip shared by all layers (only with `resolution`).
        seed: Base seed of the crop and flip draws; item `i` is a function of `(seed, i)`.
        mixture_dir, transmission_dir, reflection_dir: Layer folder names; `reflection_dir=None` ignores
            reflections even if present.
        missing_reflection: `"residual"` or `"omit"`, see above.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int | None = None,
        flip_probability: float = 0.0,
        seed: int = 0,
        mixture_dir: str = "blended",
        transmission_dir: str = "transmission_layer",
        reflection_dir: str | None = "reflection_layer",
        missing_reflection: Literal["residual", "omit"] = "residual",
    ) -> None:
        if missing_reflection not in ("residual", "omit"):
            raise ValueError(f"`missing_reflection` must be 'residual' or 'omit', got {missing_reflection!r}.")
        self.root = Path(root)
        self.resolution = resolution
        self.flip_probability = flip_probability
        self.seed = seed
        self.missing_reflection = missing_reflection

        layers = {"mixture": mixture_dir, "transmission": transmission_dir}
        if reflection_dir is not None and (self.root / reflection_dir).is_dir():
            layers["reflection"] = reflection_dir
        self.has_reflection = "reflection" in layers

        files = {layer: self._index_folder(folder) for layer, folder in layers.items()}
        all_stems = set().union(*(set(stems) for stems in files.values()))
        mismatches = [
            f"{folder}/ lacks {', '.join(missing[:10])}"
            for layer, folder in layers.items()
            if (missing := sorted(all_stems - set(files[layer])))
        ]
        if mismatches:
            raise ValueError(
                f"File names (stems) do not match across the layer folders of {str(self.root)!r}: "
                + "; ".join(mismatches)
            )
        if not all_stems:
            raise ValueError(f"No images found in {str(self.root / mixture_dir)!r}.")
        self.names: list[str] = sorted(all_stems)
        self.files: list[dict[str, Path]] = [{layer: files[layer][name] for layer in layers} for name in self.names]

        for name, entry in zip(self.names, self.files):
            sizes = {layer: _oriented_size(path) for layer, path in entry.items()}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"Layers of {name!r} have different sizes: {sizes}.")

    def _index_folder(self, folder: str) -> dict[str, Path]:
        path = self.root / folder
        if not path.is_dir():
            present = (
                sorted(child.name for child in self.root.iterdir() if child.is_dir()) if self.root.is_dir() else []
            )
            raise FileNotFoundError(f"Missing folder {str(path)!r}; folders present in {str(self.root)!r}: {present}")
        index: dict[str, Path] = {}
        for file in sorted(path.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                if file.stem in index:
                    raise ValueError(
                        f"Ambiguous stem {file.stem!r} in {str(path)!r}: {index[file.stem].name}, {file.name}"
                    )
                index[file.stem] = file
        return index

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        entry = self.files[index]
        layers = list(entry)
        images = [load_image(entry[layer]) for layer in layers]
        if self.resolution is None:
            tensors = [pil_to_tensor(image) for image in images]
        else:
            generator = torch.Generator().manual_seed(_item_seed(self.seed, index))
            tensors = random_crop_flip(images, self.resolution, generator, self.flip_probability)
        item = dict(zip(layers, tensors))
        if not self.has_reflection and self.missing_reflection == "residual":
            item["reflection"] = (item["mixture"] - item["transmission"]).clamp(0, 1)
        return item
