"""Training and evaluation data for reflection separation.

Two sources of `(mixture, transmission, reflection)` triplets:

* `SyntheticReflectionDataset` pairs arbitrary photos and composes them with `ReflectionSynthesizer`
  (`synthesis.py`: the Zhang et al. 2018 / DSRNet additive recipe and the other recipes from the literature,
  chosen per sample by weight). `dataset[i]` decodes its two photos with PIL (the CPU data-loader path);
  `BatchedSynthesis` makes the same items for a whole batch on a device from photos decoded once (`PhotoBank`),
  which is what keeps a GPU fed during training.
* `PairedReflectionDataset` reads real captures laid out like Real89 / Nature / SIR2
  (`blended/`, `transmission_layer/`, optional `reflection_layer/`).

All images are float tensors of shape `(3, H, W)` with values in `[0, 1]`; the trainer maps them to `[-1, 1]`.
All randomness comes from an explicit `torch.Generator` (or a seed from which one is built), so samples are
reproducible, identical in every `DataLoader` worker, and identical after resuming a run.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset

from .synthesis import RECIPES, ReflectionSynthesizer, SynthesisParameters, blur_batch, shift_batch

__all__ = [
    "RECIPES", "BatchedSynthesis", "PairedReflectionDataset", "PhotoBank", "ReflectionSynthesizer",
    "SynthesisParameters", "SyntheticReflectionDataset", "gaussian_blur", "is_validation_file", "list_images",
    "load_image", "random_crop_flip", "shift_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# What PIL raises for unreadable files (UnidentifiedImageError and truncation errors are OSErrors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# How many times `SyntheticReflectionDataset` redraws a photo pair when a file fails to decode.
_MAX_DRAWS = 8


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blurs a `(C, H, W)` image with a separable Gaussian (radius `ceil(3 sigma)`, replicated borders)."""
    return blur_batch(image[None], [sigma])[0]


def shift_image(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Returns `out[:, y, x] = image[:, y - dy, x - dx]`, replicating the border instead of wrapping around."""
    return shift_batch(image[None], [(dy, dx)])[0]


def load_image(path: str | Path) -> Image.Image:
    """Opens an image file as RGB, applying its EXIF orientation."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Converts an RGB PIL image to a float `(3, H, W)` tensor in `[0, 1]`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def upscaled_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The size a photo is brought to before cropping: upscaled (aspect kept) so its short side reaches
    `resolution`, unchanged if it is large enough."""
    if min(width, height) >= resolution:
        return width, height
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def draw_crop(
    width: int, height: int, resolution: int, generator: torch.Generator | None, flip_probability: float
) -> tuple[int, int, bool]:
    """Draws `(top, left, flip)` of a `resolution` square in a `width x height` image (in that order)."""
    top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    flip = float(torch.rand(1, generator=generator)) < flip_probability
    return top, left, flip


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
    size = sizes.pop()
    width, height = upscaled_size(*size, resolution)
    if (width, height) != size:
        images = [image.resize((width, height), Image.Resampling.BICUBIC) for image in images]
    top, left, flip = draw_crop(width, height, resolution, generator, flip_probability)
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

    def draw(
        self, index: int, size_of: Callable[[int], tuple[int, int] | None]
    ) -> tuple[tuple[int, int], tuple[tuple[int, int, bool], tuple[int, int, bool]], SynthesisParameters]:
        """The random choices of item `index`: photo pair, crop `(top, left, flip)` of each, synthesis parameters.

        `size_of(photo)` gives a photo's size as it is cropped (after `upscaled_size`), or None if it cannot be
        decoded: the pair is then redrawn from the same generator. Both the per-sample path (`__getitem__`) and
        `BatchedSynthesis` draw through here, so they choose the same samples.
        """
        if not 0 <= index < self.num_samples:
            raise IndexError(f"Index {index} out of range for a dataset of {self.num_samples} samples.")
        generator = torch.Generator().manual_seed(_item_seed(self.seed, index))
        count = len(self.photos)
        for _ in range(_MAX_DRAWS):
            first = int(torch.randint(0, count, (1,), generator=generator))
            second = int(torch.randint(0, count - 1, (1,), generator=generator))
            second += second >= first
            sizes = size_of(first), size_of(second)
            if None in sizes:
                continue
            crops = tuple(draw_crop(*size, self.resolution, generator, self.flip_probability) for size in sizes)
            return (first, second), crops, self.synthesizer.sample_parameters(generator)
        raise RuntimeError(f"Could not decode a photo pair for sample {index} in {_MAX_DRAWS} draws.")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        images: dict[int, Image.Image] = {}

        def size_of(photo: int) -> tuple[int, int] | None:
            try:
                image = load_image(self.photos[photo])
            except _DECODE_ERRORS as error:
                warnings.warn(f"Redrawing sample {index}: could not decode a photo ({error}).")
                return None
            size = upscaled_size(*image.size, self.resolution)
            images[photo] = image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)
            return size

        pair, crops, parameters = self.draw(index, size_of)
        layers = []
        for photo, (top, left, flip) in zip(pair, crops):
            crop = images[photo].crop((left, top, left + self.resolution, top + self.resolution))
            layers.append(pil_to_tensor(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop))
        mixture, transmission, reflection = self.synthesizer.apply(*layers, parameters)
        return {"mixture": mixture, "transmission": transmission, "reflection": reflection}


class PhotoBank:
    """Every photo of a dataset decoded once, as uint8 `(3, H, W)` tensors on a device (GPU memory when it fits:
    1,000 photos at 768 px take about 1.8 GB), brought to the size they are cropped at (`upscaled_size`, the same
    bicubic resize as `random_crop_flip`), so its crops equal the per-sample path's pixel for pixel."""

    def __init__(self, paths: Sequence[Path], resolution: int, device: torch.device | str = "cpu") -> None:
        self.resolution = resolution
        self.device = torch.device(device)
        self.photos: list[torch.Tensor | None] = []
        broken = []
        for path in paths:
            try:
                image = load_image(path)
            except _DECODE_ERRORS:
                broken.append(str(path))
                self.photos.append(None)
                continue
            size = upscaled_size(*image.size, resolution)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
            array = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
            self.photos.append(array.to(self.device))
        if broken:
            warnings.warn(f"{len(broken)} photo(s) could not be decoded and are never drawn: {', '.join(broken[:10])}")

    def size_of(self, photo: int) -> tuple[int, int] | None:
        """`(width, height)` of a decoded photo, or None for one that failed to decode."""
        image = self.photos[photo]
        return None if image is None else (image.shape[2], image.shape[1])

    def crop(self, photo: int, top: int, left: int, flip: bool) -> torch.Tensor:
        crop = self.photos[photo][:, top : top + self.resolution, left : left + self.resolution]
        return crop.flip(-1) if flip else crop

    @property
    def nbytes(self) -> int:
        return sum(image.numel() for image in self.photos if image is not None)


class BatchedSynthesis:
    """Batches of `SyntheticReflectionDataset` items made on a device: photos decoded once (`PhotoBank`), each
    item's choices drawn on the CPU exactly as `dataset[i]` draws them, the recipes applied to the whole batch.

    `batch(indices)` equals stacking `dataset[i]` for `i` in `indices` within float tolerance (the batched blur
    sums in another order). On CPU the sensor noise is identical too; on CUDA it comes from a CUDA generator
    seeded with the same per-sample seed, so it has the same distribution and determinism but other numbers.
    """

    def __init__(self, dataset: "SyntheticReflectionDataset", device: torch.device | str = "cpu") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.bank = PhotoBank(dataset.photos, dataset.resolution, self.device)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """`{"mixture", "transmission", "reflection"}`: `(B, 3, res, res)` float32 on the device, in [0, 1]."""
        transmissions, reflections, parameters = [], [], []
        for index in indices:
            (first, second), (crop_t, crop_r), drawn = self.dataset.draw(int(index), self.bank.size_of)
            transmissions.append(self.bank.crop(first, *crop_t))
            reflections.append(self.bank.crop(second, *crop_r))
            parameters.append(drawn)
        transmission = torch.stack(transmissions).float() / 255
        reflection = torch.stack(reflections).float() / 255
        mixture, transmission, reflection = self.dataset.synthesizer.apply_batch(transmission, reflection, parameters)
        return {"mixture": mixture, "transmission": transmission, "reflection": reflection}


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
