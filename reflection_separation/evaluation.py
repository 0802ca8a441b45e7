"""Benchmark evaluation for single-image reflection separation.

Scores a separation pipeline, or another method's saved outputs, on the real-image benchmarks used by DSRNet,
DSIT, RDNet and the XReflection toolbox (Real20, Nature, and the SIR2 subsets Objects, Postcard and Wild), and
writes per-image and per-set metrics as JSON and Markdown plus best/worst comparison sheets.

Metric conventions, chosen to match those peers so that numbers are comparable with published tables:

- PSNR and SSIM are computed in RGB on images in [0, 1] (data range 1), band-wise: each colour channel is scored
  on its own and the three values are averaged. This is what DSRNet's ``util/index.py`` and XReflection's
  ``calculate_psnr``/``calculate_ssim`` compute (scikit-image per channel with ``data_range=255`` on [0, 255]
  images, which is the same number). SSIM uses scikit-image defaults (7x7 uniform window, K1=0.01, K2=0.03).
  Predictions are scored from the 8-bit PNGs this module writes, so a rerun gives identical numbers; peers score
  the float output, which differs by about 0.01 dB.
- LPIPS (v0.1, AlexNet trunk by default) and DISTS follow the reference implementations (``lpips``,
  ``DISTS_pytorch``) and run only when their weights are given as local files.
- Leakage, see :func:`gradient_correlation`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import logging
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

logger = logging.get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# ----------------------------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark and the folder names it is distributed under.

    Aliases are compared after lower-casing and dropping non-alphanumerics: DSRNet/DSIT/RDNet ship
    ``test/real20_420``, ``test/Nature`` and ``test/SIR2/{SolidObject,Postcard,WildScene}Dataset``; ERRNet's and
    XReflection's archives use ``real20``, ``objects``, ``postcard`` and ``wild``.
    """

    key: str
    title: str
    aliases: tuple[str, ...]
    group: str | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.key: spec
    for spec in (
        BenchmarkSpec("real20", "Real20", ("real20", "real20420")),
        BenchmarkSpec("nature", "Nature", ("nature", "nature20")),
        BenchmarkSpec(
            "objects",
            "SIR2 Objects",
            ("objects", "solidobject", "solidobjects", "solidobjectdataset", "sir2objects"),
            "SIR2",
        ),
        BenchmarkSpec("postcard", "SIR2 Postcard", ("postcard", "postcarddataset", "sir2postcard"), "SIR2"),
        BenchmarkSpec("wild", "SIR2 Wild", ("wild", "wildscene", "wildscenedataset", "sir2wild"), "SIR2"),
    )
}

# DSRNet/ERRNet ``data/real_test.txt``: the 20 test pairs of Zhang et al.'s real set. Folders that hold the whole
# set (109 pairs) are cut down to these, as those peers do.
REAL20_NAMES = (
    "3",
    "4",
    "9",
    "12",
    "15",
    "22",
    "23",
    "25",
    "29",
    "39",
    "46",
    "47",
    "58",
    "86",
    "87",
    "89",
    "93",
    "103",
    "107",
    "110",
)

_MIXTURE_DIRS = ("blended",)
_TRANSMISSION_DIRS = ("transmission_layer", "transmission")
_REFLECTION_DIRS = ("reflection_layer", "reflection")


@dataclass(frozen=True)
class BenchmarkItem:
    """One test image: float32 RGB arrays of shape (H, W, 3) in [0, 1]; ``reflection`` is None without GT."""

    name: str
    mixture: np.ndarray
    transmission: np.ndarray
    reflection: np.ndarray | None


@dataclass(frozen=True)
class _Entry:
    name: str
    mixture: Path
    transmission: Path
    reflection: Path | None


class BenchmarkSet:
    """The pairs (or SIR2 triplets) of one benchmark folder; images load lazily on indexing.

    Args:
        key: a key of :data:`BENCHMARKS`.
        root: the folder holding ``blended/`` and ``transmission_layer/`` (and ``reflection_layer/``).
        align_multiple: resize every layer down to a multiple of this (bicubic), reproducing the ``if_align``
            option of DSRNet/XReflection test loaders (they use 32); None keeps the native size.
    """

    def __init__(self, key: str, root: str | os.PathLike, align_multiple: int | None = None) -> None:
        if key not in BENCHMARKS:
            raise ValueError(f"`key` must be one of {sorted(BENCHMARKS)}, got {key!r}.")
        self.spec = BENCHMARKS[key]
        self.root = Path(root)
        self.align_multiple = align_multiple
        self.entries = _pair_files(self.root)
        if key == "real20" and len(self.entries) > len(REAL20_NAMES):
            by_name = {entry.name: entry for entry in self.entries}
            if all(name in by_name for name in REAL20_NAMES):
                self.entries = [by_name[name] for name in REAL20_NAMES]

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    @property
    def has_reflection(self) -> bool:
        return any(entry.reflection is not None for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> BenchmarkItem:
        entry = self.entries[index]
        paths = [entry.mixture, entry.transmission] + ([entry.reflection] if entry.reflection else [])
        images = [_read_rgb(path) for path in paths]
        for path, image in zip(paths[1:], images[1:], strict=True):
            if image.size != images[0].size:
                raise ValueError(
                    f"{path} is {image.width}x{image.height} but its mixture {entry.mixture} is "
                    f"{images[0].width}x{images[0].height}."
                )
        if self.align_multiple:
            images = [_align(image, self.align_multiple) for image in images]
        arrays = [_to_float(image) for image in images]
        return BenchmarkItem(
            name=entry.name,
            mixture=arrays[0],
            transmission=arrays[1],
            reflection=arrays[2] if len(arrays) > 2 else None,
        )

    def __repr__(self) -> str:
        return f"BenchmarkSet({self.key!r}, {str(self.root)!r}, {len(self)} images)"


def discover_benchmarks(root: str | os.PathLike, align_multiple: int | None = None) -> dict[str, BenchmarkSet]:
    """Find the benchmarks under ``root``, in the order of :data:`BENCHMARKS`.

    Looks at ``root`` itself and its children, ``root/test``, ``root/SIR2`` and ``root/test/SIR2``, so the
    DSRNet-style ``base_dir``, its ``test`` folder, a flat ERRNet/XReflection folder or one benchmark folder all
    work. A folder counts when its name is an alias of a benchmark and it holds ``blended/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset root {root} is not a folder.")
    candidates = [root] + [
        child
        for parent in (root, root / "test", root / "SIR2", root / "test" / "SIR2")
        if parent.is_dir()
        for child in sorted(parent.iterdir())
        if child.is_dir()
    ]
    alias_to_key = {alias: spec.key for spec in BENCHMARKS.values() for alias in spec.aliases}
    found: dict[str, Path] = {}
    for folder in candidates:
        key = alias_to_key.get(_alias(folder.name))
        if key is None or not _find_dir(folder, _MIXTURE_DIRS):
            continue
        if key in found and found[key].resolve() != folder.resolve():
            raise ValueError(
                f"Two folders look like {BENCHMARKS[key].title}: {found[key]} and {folder}. "
                "Point `--dataset-root` at the one to use."
            )
        found[key] = folder
    if not found:
        raise FileNotFoundError(
            f"No benchmark found under {root}: expected folders such as real20_420, Nature, "
            "SIR2/SolidObjectDataset (or real20, objects, postcard, wild), each with a `blended` folder."
        )
    return {key: BenchmarkSet(key, found[key], align_multiple) for key in BENCHMARKS if key in found}


def _alias(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _index_images(folder: Path) -> dict[str, Path]:
    """Map stem to file; SIR2 mixes .jpg and .png, so layers are matched by stem, not by file name."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in index:
            raise ValueError(
                f"Two images share the name {path.stem!r} in {folder}: {index[path.stem].name}, {path.name}."
            )
        index[path.stem] = path
    return index


def _sir2_name(stem: str, tag: str) -> str | None:
    """SIR2 tags each file of a triplet with a standalone token, ``m``/``g``/``r`` (``1-m``, ``ab-10-m-3``,
    ``1_m``); return ``stem`` with its one ``m`` token swapped for ``tag``, or None when it has no such token."""
    parts = re.split(r"([-_])", stem)
    hits = [i for i in range(0, len(parts), 2) if parts[i].lower() == "m"]
    if len(hits) != 1:
        return None
    parts[hits[0]] = tag
    return "".join(parts)


def _match(stem: str, index: dict[str, Path], tag: str) -> Path | None:
    if stem in index:
        return index[stem]
    tagged = _sir2_name(stem, tag)
    return index.get(tagged) if tagged else None


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _pair_files(root: Path) -> list[_Entry]:
    if not root.is_dir():
        raise FileNotFoundError(f"Benchmark folder {root} does not exist.")
    folders = {}
    for role, names in (("mixture", _MIXTURE_DIRS), ("transmission", _TRANSMISSION_DIRS)):
        folders[role] = _find_dir(root, names)
        if folders[role] is None:
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"{root} has no {role} folder (looked for {' or '.join(names)}; found {present or 'no folders'})."
            )
    mixtures = _index_images(folders["mixture"])
    if not mixtures:
        raise FileNotFoundError(f"{folders['mixture']} holds no images.")
    transmissions = _index_images(folders["transmission"])
    reflection_dir = _find_dir(root, _REFLECTION_DIRS)
    reflections = _index_images(reflection_dir) if reflection_dir else None

    entries, unmatched = [], []
    for stem, mixture in mixtures.items():
        transmission = _match(stem, transmissions, "g")
        reflection = _match(stem, reflections, "r") if reflections is not None else None
        if transmission is None or (reflections is not None and reflection is None):
            unmatched.append(mixture.name)
            continue
        entries.append(_Entry(stem, mixture, transmission, reflection))
    if unmatched:
        used = {entry.transmission for entry in entries} | {entry.reflection for entry in entries}
        orphans = sorted(p.name for p in [*transmissions.values(), *(reflections or {}).values()] if p not in used)
        raise ValueError(
            f"In {root}, {len(unmatched)} mixture(s) have no matching layer file: {unmatched[:5]}; files left "
            f"unpaired in the layer folders: {orphans[:5]}. Layers must share the mixture's name (any image "
            "extension) or follow SIR2's m/g/r tags (1-m.jpg -> 1-g.jpg, 1-r.jpg)."
        )
    return sorted(entries, key=lambda entry: _natural_key(entry.name))


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _align(image: Image.Image, multiple: int) -> Image.Image:
    width, height = image.width // multiple * multiple, image.height // multiple * multiple
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Pixel metrics
# ----------------------------------------------------------------------------------------------------------------


def _check_pair(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(f"Expected two (H, W, C) images of one shape, got {prediction.shape} and {target.shape}.")


def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """Band-wise PSNR in dB of (H, W, C) images in [0, 1]: per-channel PSNR, averaged (DSRNet/XReflection).

    Not capped: a channel that matches exactly makes the result ``inf``, as scikit-image's PSNR does.
    """
    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    _check_pair(prediction, target)
    mse = ((prediction - target) ** 2).reshape(-1, prediction.shape[-1]).mean(axis=0)
    with np.errstate(divide="ignore"):
        return float(np.mean(10.0 * np.log10(1.0 / mse)))


def ssim(prediction: np.ndarray, target: np.ndarray) -> float:
    """Band-wise SSIM of (H, W, C) images in [0, 1]: scikit-image defaults per channel, averaged (as peers)."""
    from skimage.metrics import structural_similarity

    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    _check_pair(prediction, target)
    return float(structural_similarity(target, prediction, data_range=1.0, channel_axis=-1))


def gradient_correlation(image: np.ndarray, layer: np.ndarray, scales: Sequence[int] = (1, 2, 4)) -> float:
    """How much of ``layer``'s structure ``image`` contains: the normalized cross-correlation of their image
    gradients (x and y differences of all channels), averaged over box-downsampled scales.

    Used as a leakage score: ``gradient_correlation(predicted_T, true_R)`` measures reflection left in the
    transmission and ``gradient_correlation(predicted_R, true_T)`` scene content pulled into the reflection.
    Gradients rather than intensities because the two true layers are unrelated scenes whose edges rarely
    coincide, while their intensities share smooth colour and illumination trends that would correlate with no
    leakage at all; the same reasoning underlies the exclusion loss of Zhang et al. (2018). Reflections are
    usually defocused, so their edges live at coarse scales, hence the scale average. About 0 means no leakage,
    1 means ``image``'s structure is ``layer``'s; negative values mean inverted (over-subtracted) structure.
    """
    image, layer = np.asarray(image, np.float64), np.asarray(layer, np.float64)
    _check_pair(image, layer)
    values = []
    for scale in scales:
        if min(image.shape[:2]) // scale < 2:
            continue
        a, b = (_gradients(_box_downsample(x, scale)).ravel() for x in (image, layer))
        a, b = a - a.mean(), b - b.mean()
        norm = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
        values.append(float(np.dot(a, b)) / norm if norm > 0 else 0.0)
    return float(np.mean(values)) if values else 0.0


def reflection_proxy(mixture: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """What of the mixture its transmission does not explain: ``M - a * T``, with a per-channel gain ``a`` fitted
    by least squares on image gradients, so the proxy's gradients are orthogonal to T's.

    Stands in for the true reflection in :func:`gradient_correlation` on sets without one (Real20, Nature). The
    plain residual ``M - T`` (DSRNet's reflection target there) would also count the glass's dimming of T as
    reflection, making a perfect T look leaky (negative); with the fit, the true T scores about 0 and the mixture
    itself the share of its structure that T does not explain.
    """
    mixture, transmission = np.asarray(mixture, np.float64), np.asarray(transmission, np.float64)
    _check_pair(mixture, transmission)

    grad_m, grad_t = _gradients(mixture), _gradients(transmission)
    energy = (grad_t**2).sum(axis=0)
    gain = np.divide((grad_m * grad_t).sum(axis=0), energy, out=np.zeros_like(energy), where=energy > 0)
    return mixture - gain * transmission


def _box_downsample(image: np.ndarray, scale: int) -> np.ndarray:
    height, width = image.shape[0] // scale * scale, image.shape[1] // scale * scale
    image = image[:height, :width]
    return image.reshape(height // scale, scale, width // scale, scale, -1).mean(axis=(1, 3))


def _gradients(image: np.ndarray) -> np.ndarray:
    """Vertical and horizontal differences of an (H, W, C) image, as rows of an (N, C) array."""
    channels = image.shape[-1]
    return np.concatenate([np.diff(image, axis=0).reshape(-1, channels), np.diff(image, axis=1).reshape(-1, channels)])


# ----------------------------------------------------------------------------------------------------------------
# Perceptual metrics (LPIPS, DISTS) from local weights
# ----------------------------------------------------------------------------------------------------------------

# torchvision's ``vgg16().features`` layout: numbers are 3x3 convolutions (each followed by ReLU), "M" 2x2 pools.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# State-dict names of the reference packages, mapped onto torchvision's (``features.N``) and ours (``lins.K``).
_KEY_RENAMES = (
    (re.compile(r"^net\.slice\d+\.(\d+)\."), r"features.\1."),  # lpips: LPIPS.net.sliceK keeps torchvision indices
    (re.compile(r"^stage\d+\.(\d+)\."), r"features.\1."),  # DISTS_pytorch: DISTS.stageK, same indices
    (re.compile(r"^lins?\.?(\d+)\.model\.\d+\."), r"lins.\1."),  # lpips: linK.model.1 (with dropout) or lins.K...
)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` in plain torch, with its parameter names (``0.weight`` ... ``28.bias``)."""
    layers: list[nn.Module] = []
    channels = 3
    for width in _VGG16_LAYOUT:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` in plain torch, with its parameter names."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_local_weights(module: nn.Module, paths: Iterable[str | os.PathLike] | None, what: str, hint: str) -> None:
    """Merge the state dicts in ``paths`` (safetensors or torch files), rename reference-package keys, and load
    every parameter of ``module`` from them; nothing is downloaded."""
    paths = [Path(path) for path in paths or ()]
    if not paths:
        raise ValueError(f"{what} needs local weights and none were given: {hint}")
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{what} weights file {path} does not exist.")
        for key, value in _read_state_dict(path).items():
            for pattern, replacement in _KEY_RENAMES:
                key = pattern.sub(replacement, key)
            merged[key] = value
    expected = module.state_dict().keys()
    missing = [key for key in expected if key not in merged]
    if missing:
        raise ValueError(
            f"{what} weights in {[str(p) for p in paths]} lack {len(missing)} tensor(s), e.g. {missing[:4]}: {hint}"
        )
    module.load_state_dict({key: merged[key] for key in expected})
    module.requires_grad_(False).eval()


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (Zhang et al. 2018), the computation of the ``lpips`` package, on images in [0, 1].

    Build it with :meth:`from_weights`; ``forward(x, y)`` takes (N, 3, H, W) tensors and returns (N,) distances.
    """

    _TAPS: ClassVar[dict[str, tuple[int, ...]]] = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # ReLUs read
    _CHANNELS: ClassVar[dict[str, tuple[int, ...]]] = {
        "alex": (64, 192, 384, 256, 256),
        "vgg": (64, 128, 256, 512, 512),
    }

    def __init__(self, net: Literal["alex", "vgg"] = "alex") -> None:
        super().__init__()
        if net not in self._TAPS:
            raise ValueError(f"`net` must be 'alex' or 'vgg', got {net!r}.")
        self.net = net
        self.features = alexnet_features() if net == "alex" else vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self._CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_weights(cls, paths: Iterable[str | os.PathLike] | None, net: Literal["alex", "vgg"] = "alex") -> LPIPS:
        """Load the trunk (torchvision ``features.*`` or lpips ``net.slice*``) and the linear heads (lpips
        ``lin0..lin4``) from local files, e.g. ``alexnet-owt-7be5be79.pth`` plus ``lpips/weights/v0.1/alex.pth``."""
        module = cls(net)
        trunk = "alexnet" if net == "alex" else "vgg16"
        _load_local_weights(
            module,
            paths,
            f"LPIPS ({net})",
            (
                f"pass `--lpips-weights` with torchvision's ImageNet {trunk} state dict (keys `features.*`) and the "
                f"LPIPS v0.1 linear layers (`lin0`..`lin4`, the lpips package's weights/v0.1/{net}.pth), or one file "
                "holding both."
            ),
        )
        return module

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, last = [], self._TAPS[self.net][-1]
        for index, layer in enumerate(self.features[: last + 1]):
            x = layer(x)
            if index in self._TAPS[self.net]:
                taps.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = ((2 * image - 1 - self.shift) / self.scale for image in (x, y))
        distance = sum(
            lin((a - b) ** 2).mean(dim=(2, 3))
            for lin, a, b in zip(self.lins, self._taps(x), self._taps(y), strict=True)
        )
        return distance.flatten()


class _L2Pool(nn.Module):
    """DISTS' anti-aliased pooling: sqrt of a Hann-weighted 3x3 blur of x^2, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        window = torch.from_numpy(np.hanning(5)[1:-1]).float()
        kernel = window[:, None] * window[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS distance (Ding et al. 2020), the computation of ``DISTS_pytorch``, on images in [0, 1].

    A VGG16 trunk whose max-pools are replaced by L2 pooling; ``alpha``/``beta`` weigh per-channel structure and
    texture similarities. Build it with :meth:`from_weights`; ``forward(x, y)`` returns (N,) distances.
    """

    _TAPS = (3, 8, 15, 22, 29)
    _POOLS: ClassVar[dict[int, int]] = {4: 0, 9: 1, 16: 2, 23: 3}  # features index -> L2 pool replacing its max-pool
    _CHANNELS = (3, 64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.l2pools = nn.ModuleList(_L2Pool(c) for c in (64, 128, 256, 512))
        self.alpha = nn.Parameter(torch.full((1, sum(self._CHANNELS), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(self._CHANNELS), 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_weights(cls, paths: Iterable[str | os.PathLike] | None) -> DISTS:
        """Load the VGG16 trunk (torchvision ``features.*`` or DISTS_pytorch ``stage*``) and ``alpha``/``beta``
        (DISTS_pytorch's ``weights.pt``) from local files."""
        module = cls()
        _load_local_weights(
            module,
            paths,
            "DISTS",
            (
                "pass `--dists-weights` with torchvision's ImageNet vgg16 state dict (keys `features.*`) and DISTS' "
                "`alpha`/`beta` (DISTS_pytorch's weights.pt), or one file holding both."
            ),
        )
        return module

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, h = [x], (x - self.mean) / self.std
        for index, layer in enumerate(self.features[: self._TAPS[-1] + 1]):
            h = self.l2pools[self._POOLS[index]](h) if index in self._POOLS else layer(h)
            if index in self._TAPS:
                taps.append(h)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c1 = c2 = 1e-6
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, self._CHANNELS, dim=1)
        betas = torch.split(self.beta / total, self._CHANNELS, dim=1)
        structure = texture = 0
        for alpha, beta, a, b in zip(alphas, betas, self._taps(x), self._taps(y), strict=True):
            mean_a, mean_b = a.mean(dim=(2, 3), keepdim=True), b.mean(dim=(2, 3), keepdim=True)
            var_a = ((a - mean_a) ** 2).mean(dim=(2, 3), keepdim=True)
            var_b = ((b - mean_b) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (a * b).mean(dim=(2, 3), keepdim=True) - mean_a * mean_b
            structure = structure + (alpha * (2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1)).sum(1)
            texture = texture + (beta * (2 * cov + c2) / (var_a + var_b + c2)).sum(1)
        return (1 - structure - texture).flatten()


@torch.no_grad()
def perceptual_distance(metric: nn.Module, prediction: np.ndarray, target: np.ndarray) -> float:
    """Run an :class:`LPIPS` or :class:`DISTS` module on two (H, W, 3) images in [0, 1]."""
    _check_pair(prediction, target)
    parameter = next(metric.parameters())
    x, y = (
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)
        for image in (prediction, target)
    )
    return float(metric(x, y)[0])


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


class SeparationPipeline(Protocol):
    """What :func:`evaluate` calls: ``ReflectionSeparationPipeline`` or any callable of this shape whose result has
    ``.transmission`` and ``.reflection`` (an NHWC array in [0, 1], a list of PIL images, or an NCHW tensor)."""

    def __call__(self, image: Image.Image, *, output_type: str, generator: torch.Generator, **kwargs: Any) -> Any: ...


METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("t_psnr", "T PSNR↑", "{:.2f}"),
    ("t_ssim", "T SSIM↑", "{:.3f}"),
    ("t_lpips", "T LPIPS↓", "{:.3f}"),
    ("t_dists", "T DISTS↓", "{:.3f}"),
    ("r_psnr", "R PSNR↑", "{:.2f}"),
    ("r_ssim", "R SSIM↑", "{:.3f}"),
    ("r_lpips", "R LPIPS↓", "{:.3f}"),
    ("r_dists", "R DISTS↓", "{:.3f}"),
    ("leak_t", "Leak R→T↓", "{:.3f}"),
    ("leak_r", "Leak T→R↓", "{:.3f}"),
)

CONVENTIONS = (
    "PSNR/SSIM: RGB, data range 1, per channel then averaged (DSRNet/XReflection); SSIM with scikit-image "
    "defaults; PSNR uncapped. LPIPS v0.1 and DISTS on [0, 1] RGB at full resolution. Leak R→T: gradient NCC of "
    "predicted T with true R (where a set has no R ground truth, with M minus the part of M explained by T); "
    "Leak T→R: of predicted R with true T. Scores from the 8-bit prediction PNGs. Set rows average their images; "
    "SIR2 and All average all images they cover."
)


def image_metrics(
    item: BenchmarkItem,
    transmission: np.ndarray,
    reflection: np.ndarray | None,
    lpips: LPIPS | None = None,
    dists: DISTS | None = None,
) -> dict[str, float]:
    """Score one prediction (float (H, W, 3) arrays in [0, 1], at the ground truth's size) against ``item``.

    T metrics always; R metrics when both a predicted and a true R exist; ``leak_t`` always (against the true R,
    or :func:`reflection_proxy` where there is none); ``leak_r`` with a predicted R.
    """
    pairs = {"t": (transmission, item.transmission)}
    if reflection is not None and item.reflection is not None:
        pairs["r"] = (reflection, item.reflection)
    scores: dict[str, float] = {}
    for layer, (prediction, target) in pairs.items():
        scores[f"{layer}_psnr"] = psnr(prediction, target)
        scores[f"{layer}_ssim"] = ssim(prediction, target)
        if lpips is not None:
            scores[f"{layer}_lpips"] = perceptual_distance(lpips, prediction, target)
        if dists is not None:
            scores[f"{layer}_dists"] = perceptual_distance(dists, prediction, target)
    true_reflection = item.reflection
    if true_reflection is None:
        true_reflection = reflection_proxy(item.mixture, item.transmission)
    scores["leak_t"] = gradient_correlation(transmission, true_reflection)
    if reflection is not None:
        scores["leak_r"] = gradient_correlation(reflection, item.transmission)
    return scores


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over the records that have it, plus ``count``."""
    summary: dict[str, Any] = {"count": len(records)}
    for key, _, _ in METRIC_COLUMNS:
        values = [record[key] for record in records if key in record]
        if values:
            summary[key] = float(np.mean(values))
    return summary


def format_markdown_table(rows: Sequence[tuple[str, dict[str, Any]]], label: str = "Set") -> str:
    """A paper-style table: one row per (label, metrics) pair, one column per metric any row has."""
    columns = [column for column in METRIC_COLUMNS if any(row.get(column[0]) is not None for _, row in rows)]
    with_count = any("count" in row for _, row in rows)
    header = [label] + (["N"] if with_count else []) + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows:
        cells = [name] + ([str(row.get("count", ""))] if with_count else [])
        cells += [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate(
    dataset_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    pipeline: SeparationPipeline | None = None,
    predictions_dir: str | os.PathLike | None = None,
    sets: Sequence[str] | None = None,
    limit: int | None = None,
    lpips: LPIPS | None = None,
    dists: DISTS | None = None,
    seed: int = 0,
    align_multiple: int | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    sheet_rows: int = 3,
) -> dict[str, Any]:
    """Score a pipeline or saved predictions on the benchmarks under ``dataset_root``.

    Exactly one source: ``pipeline`` is called once per image as ``pipeline(mixture_pil, output_type="np",
    generator=torch.Generator().manual_seed(seed), **pipeline_kwargs)`` and its layers are saved to
    ``output_dir/predictions/<set>/<name>_{transmission,reflection}.png``; images whose transmission PNG already
    exists are not run again, so an interrupted evaluation resumes. ``predictions_dir`` holds another method's
    outputs in that same layout (any image extension; the reflection is optional).

    Writes ``output_dir/<set>/metrics.{json,md}`` (per image), ``output_dir/<set>/sheet_{worst,best}.png`` and
    ``output_dir/metrics.{json,md}`` (per set, SIR2 and All). Input or prediction files that cannot be read are
    reported in the JSON ``failures`` and skipped; pipeline errors propagate (finished images stay saved).

    Returns:
        The content of ``output_dir/metrics.json``.
    """
    if (pipeline is None) == (predictions_dir is None):
        raise ValueError("Pass exactly one of `pipeline` and `predictions_dir`.")
    output_dir = Path(output_dir)
    benchmarks = discover_benchmarks(dataset_root, align_multiple)
    if sets is not None:
        unknown = [key for key in sets if key not in benchmarks]
        if unknown:
            raise ValueError(f"`sets` {unknown} not found under {dataset_root}; found {list(benchmarks)}.")
        benchmarks = {key: benchmarks[key] for key in sets}
    sizes = {key: min(len(bench), limit) if limit is not None else len(bench) for key, bench in benchmarks.items()}
    prediction_root = output_dir / "predictions" if pipeline is not None else Path(predictions_dir)

    results: dict[str, tuple[list[dict[str, Any]], list[dict[str, str]]]] = {}
    progress = tqdm(total=sum(sizes.values()), desc="Evaluating", unit="image")
    for key, bench in benchmarks.items():
        progress.set_postfix_str(bench.spec.title)
        folder = prediction_root / key
        records, failures = [], []
        for index in range(sizes[key]):
            try:
                records.append(_score_image(bench, index, folder, pipeline, seed, pipeline_kwargs or {}, lpips, dists))
            except _UnreadableFileError as error:
                logger.warning(f"Skipping {bench.spec.title} image {bench.names[index]!r}: {error}")
                failures.append({"name": bench.names[index], "error": str(error)})
            progress.update()
        results[key] = (records, failures)
        _write_set_report(output_dir / key, bench, records, failures)
        _write_sheets(output_dir / key, bench, records, folder, sheet_rows)
    progress.close()

    report = _json_safe(_total_report(benchmarks, results, lpips))
    _write_json(output_dir / "metrics.json", report)
    rows = [(row["title"], row) for row in report["summary"].values()]
    (output_dir / "metrics.md").write_text(format_markdown_table(rows) + "\n" + CONVENTIONS + "\n")
    return report


class _UnreadableFileError(Exception):
    """An input or prediction file of one image could not be read; that image is skipped and reported."""


def _score_image(
    bench: BenchmarkSet,
    index: int,
    folder: Path,
    pipeline: SeparationPipeline | None,
    seed: int,
    pipeline_kwargs: dict[str, Any],
    lpips: LPIPS | None,
    dists: DISTS | None,
) -> dict[str, Any]:
    """Separate image ``index`` of ``bench`` unless its prediction is in ``folder`` already, then score it."""
    try:
        item = bench[index]
    except (OSError, ValueError) as error:
        raise _UnreadableFileError(f"input: {error}") from error
    record: dict[str, Any] = {"name": item.name}
    if pipeline is not None and _find_layer(folder, item.name, "transmission") is None:
        record["seconds"] = _run_pipeline(pipeline, item, folder, seed, pipeline_kwargs)
    try:
        transmission, reflection, resized = _read_prediction(folder, item.name, item.transmission.shape)
    except (OSError, ValueError) as error:
        raise _UnreadableFileError(f"prediction: {error}") from error
    record.update(image_metrics(item, transmission, reflection, lpips, dists))
    if resized:
        record["resized"] = True
    return record


def _run_pipeline(
    pipeline: SeparationPipeline, item: BenchmarkItem, folder: Path, seed: int, kwargs: dict[str, Any]
) -> float:
    """Separate one mixture and save its layers as PNG (written to a temporary name, then renamed, so a killed
    run never leaves a half-written file that a resume would trust). Returns the pipeline's wall time."""
    start = time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    output = pipeline(Image.fromarray(_to_uint8(item.mixture)), output_type="np", generator=generator, **kwargs)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    # The reflection goes first: a transmission file marks the image as done.
    for layer in ("reflection", "transmission"):
        value = getattr(output, layer, None)
        if value is None:
            continue
        path = folder / f"{item.name}_{layer}.png"
        temporary = path.with_name(path.name + ".partial")
        Image.fromarray(_first_image(value)).save(temporary, format="PNG")
        os.replace(temporary, path)
    return seconds


def _first_image(layer: Any) -> np.ndarray:
    """The first image of a pipeline output layer as uint8 (H, W, 3)."""
    if isinstance(layer, (list, tuple)):
        layer = layer[0]
    if isinstance(layer, Image.Image):
        return np.asarray(layer.convert("RGB"))
    if isinstance(layer, torch.Tensor):
        layer = layer.detach().float().cpu()
        layer = (layer[0] if layer.ndim == 4 else layer).permute(1, 2, 0).numpy()
    array = np.asarray(layer)
    if array.ndim == 4:
        array = array[0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array if array.dtype == np.uint8 else _to_uint8(array.astype(np.float32))


def _find_layer(folder: Path, name: str, layer: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{name}_{layer}{suffix}"
        if path.is_file():
            return path
    return None


def _read_prediction(folder: Path, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Load predicted T (required) and R (optional), resized (bicubic) to the ground truth's size if needed."""
    transmission_path = _find_layer(folder, name, "transmission")
    if transmission_path is None:
        raise FileNotFoundError(f"no {name}_transmission.* in {folder}")
    reflection_path = _find_layer(folder, name, "reflection")
    size = (shape[1], shape[0])
    layers, resized = [], False
    for path in (transmission_path, reflection_path):
        if path is None:
            layers.append(None)
            continue
        image = _read_rgb(path)
        if image.size != size:
            image, resized = image.resize(size, Image.Resampling.BICUBIC), True
        layers.append(_to_float(image))
    return layers[0], layers[1], resized


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (an exact-match ``inf`` PSNR) as None, so the JSON stays standard."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


def _write_set_report(
    folder: Path, bench: BenchmarkSet, records: list[dict[str, Any]], failures: list[dict[str, str]]
) -> None:
    summary = summarize(records)
    _write_json(
        folder / "metrics.json",
        {
            "set": bench.key,
            "title": bench.spec.title,
            "root": str(bench.root),
            "summary": summary,
            "images": records,
            "failures": failures,
        },
    )
    mean = {key: value for key, value in summary.items() if key != "count"}
    rows = [(record["name"], record) for record in records] + [(f"**mean of {len(records)}**", mean)]
    text = f"# {bench.spec.title}\n\n" + format_markdown_table(rows, label="Image")
    if failures:
        text += "\nSkipped:\n" + "".join(f"- {f['name']}: {f['error']}\n" for f in failures)
    (folder / "metrics.md").write_text(text)


def _total_report(
    benchmarks: dict[str, BenchmarkSet],
    results: dict[str, tuple[list[dict[str, Any]], list[dict[str, str]]]],
    lpips: LPIPS | None,
) -> dict[str, Any]:
    summary = {
        key: {"title": bench.spec.title, **summarize(results[key][0]), "failed": len(results[key][1])}
        for key, bench in benchmarks.items()
    }
    groups = {bench.spec.group for bench in benchmarks.values() if bench.spec.group}
    for group in sorted(groups):
        members = [key for key, bench in benchmarks.items() if bench.spec.group == group]
        records = [record for key in members for record in results[key][0]]
        summary[group] = {"title": group, **summarize(records), "failed": sum(len(results[k][1]) for k in members)}
    if len(benchmarks) > 1:
        records = [record for records, _ in results.values() for record in records]
        summary["all"] = {"title": "All", **summarize(records), "failed": sum(len(f) for _, f in results.values())}
    return {
        "conventions": CONVENTIONS,
        "lpips_net": lpips.net if lpips is not None else None,
        "align_multiple": next(iter(benchmarks.values())).align_multiple,
        "summary": summary,
        "failures": {key: failures for key, (_, failures) in results.items() if failures},
    }


# ----------------------------------------------------------------------------------------------------------------
# Comparison sheets
# ----------------------------------------------------------------------------------------------------------------


def save_comparison_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray | None]]],
    path: str | os.PathLike,
    tile_height: int = 192,
    headers: Sequence[str] = ("mixture", "pred T", "true T", "pred R", "true R"),
) -> None:
    """Save a grid PNG: one row per (caption, images) pair, images (H, W, 3) in [0, 1] scaled to
    ``tile_height``; None draws an empty grey tile (no prediction or no ground truth)."""
    label_height, padding = 16, 4
    widths = [
        max(round(image.shape[1] * tile_height / image.shape[0]) for image in images if image is not None)
        for _, images in rows
    ]
    tile_width = max(widths)
    width = len(headers) * (tile_width + padding) + padding
    height = label_height + len(rows) * (tile_height + label_height + padding)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for column, header in enumerate(headers):
        draw.text((padding + column * (tile_width + padding), 2), header, fill="black")
    for row, (caption, images) in enumerate(rows):
        top = label_height + row * (tile_height + label_height + padding)
        draw.text((padding, top), caption, fill="black")
        for column, image in enumerate(images):
            left = padding + column * (tile_width + padding)
            if image is None:
                draw.rectangle(
                    [left, top + label_height, left + tile_width - 1, top + label_height + tile_height - 1],
                    fill=(200, 200, 200),
                )
                continue
            tile = Image.fromarray(_to_uint8(image))
            tile = tile.resize((round(tile.width * tile_height / tile.height), tile_height), Image.Resampling.BICUBIC)
            sheet.paste(tile, (left, top + label_height))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _write_sheets(
    folder: Path, bench: BenchmarkSet, records: list[dict[str, Any]], predictions: Path, count: int
) -> None:
    """Comparison sheets of the ``count`` worst and best images by transmission PSNR."""
    if not records or count <= 0:
        return
    ranked = sorted(records, key=lambda record: record["t_psnr"])
    index = {name: position for position, name in enumerate(bench.names)}
    for kind, chosen in (("worst", ranked[:count]), ("best", ranked[::-1][:count])):
        rows = []
        for record in chosen:
            item = bench[index[record["name"]]]
            transmission, reflection, _ = _read_prediction(predictions, record["name"], item.transmission.shape)
            caption = f"{record['name']}  T PSNR {record['t_psnr']:.2f}  SSIM {record['t_ssim']:.3f}"
            rows.append((caption, [item.mixture, transmission, item.transmission, reflection, item.reflection]))
        save_comparison_sheet(rows, folder / f"sheet_{kind}.png")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def load_pipeline(path: str, device: str, torch_dtype: torch.dtype) -> SeparationPipeline:
    """Load a saved pipeline folder: with ``ReflectionSeparationPipeline`` when the package provides it,
    else through ``DiffusionPipeline`` (which reads the class from ``model_index.json``)."""
    try:
        from reflection_separation import ReflectionSeparationPipeline as pipeline_class
    except ImportError:
        from diffusers import DiffusionPipeline as pipeline_class

    pipeline = pipeline_class.from_pretrained(path, torch_dtype=torch_dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``evaluate`` options to ``parser`` (for a ``reflection-separation evaluate`` subcommand)."""
    parser.add_argument(
        "--dataset-root",
        type=Path,
        required=True,
        help="folder holding the benchmarks (e.g. DSRNet's base_dir or its test/ folder)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="saved pipeline folder to run on every mixture")
    source.add_argument(
        "--predictions",
        type=Path,
        help="another method's outputs: <set>/<name>_transmission.png (and _reflection.png)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="folder for predictions, metrics and sheets"
    )
    parser.add_argument("--sets", nargs="+", choices=list(BENCHMARKS), help="benchmarks to run (default: all found)")
    parser.add_argument("--limit", type=int, help="evaluate at most N images per set")
    parser.add_argument(
        "--lpips-weights",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="local LPIPS weights: trunk state dict and linear layers (safetensors or torch)",
    )
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS trunk (default: alex)")
    parser.add_argument(
        "--dists-weights",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="local DISTS weights: vgg16 state dict and alpha/beta (safetensors or torch)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="pipeline weights dtype"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of each image's generator")
    parser.add_argument(
        "--align-multiple",
        type=int,
        help="resize all layers down to a multiple of N first (DSRNet/XReflection `if_align` uses 32)",
    )
    parser.add_argument(
        "--pipeline-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra pipeline call argument, VALUE parsed as JSON when it can be (repeatable)",
    )
    parser.add_argument("--sheet-rows", type=int, default=3, help="images per best/worst sheet (0: none)")
    return parser


def _parse_pipeline_args(pairs: Sequence[str]) -> dict[str, Any]:
    kwargs = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"`--pipeline-arg` takes KEY=VALUE, got {pair!r}.")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def run_evaluate(
    args: argparse.Namespace,
    pipeline_loader: Callable[[str, str, torch.dtype], SeparationPipeline] = load_pipeline,
) -> dict[str, Any]:
    """Run :func:`evaluate` from parsed :func:`add_evaluate_arguments` options, print the summary table, and
    return the report. ``pipeline_loader(path, device, dtype)`` loads ``--pipeline`` (injectable for tests)."""
    lpips = LPIPS.from_weights(args.lpips_weights, args.lpips_net).to(args.device) if args.lpips_weights else None
    dists = DISTS.from_weights(args.dists_weights).to(args.device) if args.dists_weights else None
    pipeline = None
    if args.pipeline is not None:
        pipeline = pipeline_loader(args.pipeline, args.device, getattr(torch, args.dtype))
    report = evaluate(
        args.dataset_root,
        args.output,
        pipeline=pipeline,
        predictions_dir=args.predictions,
        sets=args.sets,
        limit=args.limit,
        lpips=lpips,
        dists=dists,
        seed=args.seed,
        align_multiple=args.align_multiple,
        pipeline_kwargs=_parse_pipeline_args(args.pipeline_arg),
        sheet_rows=args.sheet_rows,
    )
    print(format_markdown_table([(row["title"], row) for row in report["summary"].values()]))
    print(f"Reports written to {args.output}")
    return report


def main_evaluate(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``reflection-separation evaluate`` as a standalone entry point."""
    parser = argparse.ArgumentParser(
        prog="reflection-separation evaluate",
        description="Score reflection separation on Real20, Nature and SIR2.",
    )
    return run_evaluate(add_evaluate_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    main_evaluate()
