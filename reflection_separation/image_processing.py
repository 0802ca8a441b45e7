"""Input validation, resizing and padding for the reflection-separation pipeline.

Inputs follow Marigold's conventions: PIL images, numpy arrays ``HW``/``HWC``/``NHWC`` and torch tensors
``HW``/``CHW``/``NCHW``; integers are scaled by their type's maximum, floats must lie in [0, 1]. Every
unsupported input raises a ``ValueError``/``TypeError`` that says what to pass instead.
"""

from __future__ import annotations

import warnings
from typing import Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

PipelineImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, list]

_PIL_CONVERTIBLE = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBX", "LA", "PA", "RGBa", "La"}
_PIL_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _pil_to_tensor(image: PIL.Image.Image, index: int) -> torch.Tensor:
    mode = image.mode
    if mode in _PIL_SIXTEEN_BIT:
        array = np.asarray(image).astype(np.float32)
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"`image[{index}]` has PIL mode {mode!r} with values outside 0..65535; save it as 8/16-bit.")
        return torch.from_numpy(array / 65535.0)[None].repeat(3, 1, 1)
    if mode == "F":
        array = np.asarray(image).astype(np.float32)
        return _check_float(torch.from_numpy(array)[None].repeat(3, 1, 1), index)
    if mode not in _PIL_CONVERTIBLE:
        raise ValueError(f"`image[{index}]` has unsupported PIL mode {mode!r}; convert it with `image.convert('RGB')`.")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            warnings.warn(
                f"`image[{index}]` has transparent pixels; the alpha channel is dropped. Composite it onto a "
                "background first if transparency matters.",
                stacklevel=3,
            )
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _check_float(tensor: torch.Tensor, index: int) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`image[{index}]` contains NaN or infinite values.")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"`image[{index}]` has values in [{low:.4g}, {high:.4g}]; float images must lie in [0, 1] "
            "(divide uint8 data by 255, or pass it as uint8)."
        )
    return tensor


def _array_to_tensors(image: np.ndarray | torch.Tensor, index: int) -> list[torch.Tensor]:
    is_numpy = isinstance(image, np.ndarray)
    if is_numpy:
        if image.dtype == np.bool_ or np.issubdtype(image.dtype, np.complexfloating):
            raise TypeError(f"`image[{index}]` has dtype {image.dtype}; pass uint8, uint16 or float in [0, 1].")
        if np.issubdtype(image.dtype, np.signedinteger):
            raise TypeError(f"`image[{index}]` has signed dtype {image.dtype}; pass uint8, uint16 or float in [0, 1].")
        scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.unsignedinteger) else None
        tensor = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32))
        if tensor.ndim == 3:
            tensor = tensor.permute(2, 0, 1)
        elif tensor.ndim == 4:
            tensor = tensor.permute(0, 3, 1, 2)
    else:
        if image.dtype == torch.bool or image.is_complex():
            raise TypeError(f"`image[{index}]` has dtype {image.dtype}; pass uint8 or float in [0, 1].")
        if not image.is_floating_point() and image.dtype != torch.uint8:
            raise TypeError(f"`image[{index}]` has dtype {image.dtype}; pass uint8 or float in [0, 1].")
        scale = 255.0 if image.dtype == torch.uint8 else None
        tensor = image.detach().to("cpu", torch.float32)
    layout = "HW, HWC or NHWC" if is_numpy else "HW, CHW or NCHW"
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(f"`image[{index}]` has shape {tuple(image.shape)}; expected {layout}.")
    channels = tensor.shape[1]
    if channels == 4:
        tensor = tensor[:, :3]
    elif channels == 1:
        tensor = tensor.repeat(1, 3, 1, 1)
    elif channels != 3:
        raise ValueError(
            f"`image[{index}]` has {channels} channels (shape {tuple(image.shape)}); expected 1, 3 or 4 in {layout} layout."
        )
    tensor = tensor / scale if scale is not None else _check_float(tensor, index)
    return list(tensor.unbind(0))


DETAIL_TRANSFER_MODES = ("none", "highpass", "residual")


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(N, C, H, W)` images in [0, 1] to `size`: antialiased bilinear, the resize of both pre- and postprocessing."""
    resized = F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def transmission_replaced(mode: str, processed_size: tuple[int, int], photo_size: tuple[int, int]) -> bool:
    """Whether :func:`transfer_detail` with `mode` replaces T by the photo minus R (`"residual"` on layers separated at
    another size than the photo's), so that the model's own T does not matter."""
    return mode == "residual" and tuple(processed_size) != tuple(photo_size)


def transfer_detail(layers: torch.Tensor, photo: torch.Tensor, processed_size: tuple[int, int], mode: str) -> torch.Tensor:
    """Full-resolution layers that keep the photo's detail, from layers separated at `processed_size`.

    The model sees the photo at `processing_resolution`; resized back, both layers hold only that much detail.
    Reflections are mostly smooth (out of focus, seen through the glass), so the detail the model never saw
    belongs to the transmission:

    * `"highpass"`: `T = up(T_low) + (I - up(down(I)))`, the photo's high frequencies (what the round trip
      through `processed_size` removes from it) added to the transmission; `R = up(R_low)`. Where the model's
      layers add up to its input (`T_low + R_low = down(I)`), `T + R = I` exactly.
    * `"residual"`: `T = I - up(R_low)`, `R = up(R_low)`: exact for additive mixing only (it leaves glass tint and
      other non-additive effects in T).
    * `"none"`: plain upsampling, as given.

    Args:
        layers: `(2, 3, H, W)` `[T, R]` in [0, 1], already resized to the photo's size.
        photo: `(3, H, W)` the input in [0, 1].
        processed_size: `(h, w)` the photo was separated at (without padding).
        mode: one of `DETAIL_TRANSFER_MODES`.
    """
    if mode not in DETAIL_TRANSFER_MODES:
        raise ValueError(f"`detail_transfer` must be one of {DETAIL_TRANSFER_MODES}, got {mode!r}.")
    if mode == "none" or tuple(processed_size) == tuple(photo.shape[-2:]):
        return layers
    photo = photo.to(layers)
    transmission, reflection = layers[0], layers[1]
    if mode == "residual":
        transmission = photo - reflection
    else:
        transmission = transmission + photo - resize(resize(photo[None], processed_size), photo.shape[-2:])[0]
    return torch.stack([transmission.clamp(0.0, 1.0), reflection])


def transfer_detail_uncertainty(
    spread: torch.Tensor, photo: torch.Tensor, processed_size: tuple[int, int], mode: str
) -> torch.Tensor:
    """The per-pixel spread `(2, 3, H, W)` of an ensemble's `[T, R]` after :func:`transfer_detail` with `mode`.

    `"highpass"` adds the same photo detail to every member's T, which leaves its spread as it is; `"residual"` makes
    T the photo minus R, so T varies exactly as R does.
    """
    if not transmission_replaced(mode, processed_size, photo.shape[-2:]):
        return spread
    return torch.stack([spread[1], spread[1]])


class ReflectionImageProcessor:
    """Turns user images into padded model inputs and model outputs back into images."""

    def __init__(self, size_multiple: int = 64) -> None:
        self.size_multiple = size_multiple

    @staticmethod
    def to_tensors(image: PipelineImageInput) -> list[torch.Tensor]:
        """Canonical list of ``(3, H, W)`` float32 tensors in [0, 1]; raises on anything else."""
        images = image if isinstance(image, list) else [image]
        if len(images) == 0:
            raise ValueError("`image` is an empty list; pass at least one image.")
        tensors: list[torch.Tensor] = []
        for index, item in enumerate(images):
            if isinstance(item, PIL.Image.Image):
                tensors.append(_pil_to_tensor(item, index))
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                tensors.extend(_array_to_tensors(item, index))
            else:
                raise TypeError(
                    f"`image[{index}]` has type {type(item).__name__}; pass a PIL image, a numpy array, a torch "
                    "tensor, or a list of them."
                )
        return tensors

    @staticmethod
    def check_size(tensors: list[torch.Tensor], min_size: int, max_size: int) -> None:
        for index, tensor in enumerate(tensors):
            height, width = tensor.shape[-2:]
            if min(height, width) < min_size:
                raise ValueError(f"`image[{index}]` is {width}x{height}; each side must be at least {min_size} pixels.")
            if max(height, width) > max_size:
                raise ValueError(
                    f"`image[{index}]` is {width}x{height}, above the maximum side of {max_size} pixels; downscale "
                    "it or raise `max_input_size`."
                )

    def preprocess(
        self, tensor: torch.Tensor, processing_resolution: int
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Resize so the long side is ``processing_resolution`` (0 keeps it), pad to the size multiple.

        Returns the image in [-1, 1] with a batch axis, the padding ``(bottom, right)`` and the original size.
        """
        height, width = tensor.shape[-2:]
        image = tensor[None]
        if processing_resolution > 0:
            scale = processing_resolution / max(height, width)
            new_size = (max(round(height * scale), 1), max(round(width * scale), 1))
            if new_size != (height, width):
                image = resize(image, new_size)
        pad_h = -image.shape[-2] % self.size_multiple
        pad_w = -image.shape[-1] % self.size_multiple
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        return image * 2.0 - 1.0, (pad_h, pad_w), (height, width)

    @classmethod
    def postprocess(
        cls, image: torch.Tensor, padding: tuple[int, int], original_size: tuple[int, int] | None
    ) -> torch.Tensor:
        """Decoder output in [-1, 1] -> [0, 1], padding removed, optionally resized to ``original_size``."""
        return cls.unpad(cls.denormalize(image), padding, original_size)

    @staticmethod
    def denormalize(image: torch.Tensor) -> torch.Tensor:
        """Decoder output in [-1, 1] -> float32 values in [0, 1]."""
        return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def unpad(image: torch.Tensor, padding: tuple[int, int], original_size: tuple[int, int] | None) -> torch.Tensor:
        """Images in [0, 1] (or per-pixel spreads) with the padding ``(bottom, right)`` removed, optionally resized
        to ``original_size``."""
        pad_h, pad_w = padding
        image = image[..., : image.shape[-2] - pad_h, : image.shape[-1] - pad_w]
        if original_size is not None and tuple(image.shape[-2:]) != tuple(original_size):
            image = resize(image, original_size)
        return image

    @staticmethod
    def to_output(images: list[torch.Tensor], output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """``(3, H, W)`` tensors in [0, 1] -> PIL list, ``NHWC`` numpy array or ``NCHW`` tensor (``"pt"``, and
        ``"latent"`` for latents, stacked as they are)."""
        if output_type == "pil":
            return [
                PIL.Image.fromarray((image.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8))
                for image in images
            ]
        if len({tuple(image.shape) for image in images}) > 1:
            raise ValueError(
                f"Images of different sizes cannot be stacked for `output_type={output_type!r}`; use "
                "`output_type='pil'` or call the pipeline once per size."
            )
        stacked = torch.stack(images)
        if output_type in ("pt", "latent"):
            return stacked
        return stacked.permute(0, 2, 3, 1).cpu().numpy()
