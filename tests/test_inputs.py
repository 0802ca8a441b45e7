"""Bad inputs get clear errors; convertible inputs are converted the way the messages promise."""

import numpy as np
import PIL.Image
import pytest
import torch

from reflection_separation.image_processing import ReflectionImageProcessor

from .conftest import FAST, generator, random_image

to_tensors = ReflectionImageProcessor.to_tensors


def test_grayscale_and_palette_become_rgb():
    gray = PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    tensor = to_tensors(gray)[0]
    assert tensor.shape == (3, 8, 8)
    assert torch.equal(tensor[0], tensor[2]) and abs(float(tensor[0, 7, 7]) - 63 / 255) < 1e-6
    assert to_tensors(gray.convert("P"))[0].shape == (3, 8, 8)
    assert to_tensors(np.zeros((8, 8), dtype=np.uint8))[0].shape == (3, 8, 8)


def test_rgba_drops_alpha_and_warns_only_when_transparent():
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[..., 0] = 10
    with pytest.warns(UserWarning, match="transparent") as record:
        rgba[0, 0, 3] = 0
        tensor = to_tensors(PIL.Image.fromarray(rgba, "RGBA"))[0]
    assert len(record) == 1
    assert tensor.shape == (3, 8, 8) and abs(float(tensor[0, 3, 3]) - 10 / 255) < 1e-6


def test_sixteen_bit_images_are_scaled_to_unit_range():
    data = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    pil16 = PIL.Image.fromarray(data)
    assert pil16.mode == "I;16"
    tensor = to_tensors(pil16)[0]
    np.testing.assert_allclose(tensor[1].numpy(), data / 65535.0, atol=1e-6)
    rgb16 = np.stack([data] * 3, axis=-1)
    np.testing.assert_allclose(to_tensors(rgb16)[0][0].numpy(), data / 65535.0, atol=1e-6)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.full((8, 8, 3), np.nan, dtype=np.float32), ValueError, "NaN"),
        (torch.full((3, 8, 8), float("inf")), ValueError, "NaN or infinite"),
        (np.full((8, 8, 3), 2.0, dtype=np.float32), ValueError, r"\[0, 1\]"),
        (-torch.ones(3, 8, 8), ValueError, r"\[0, 1\]"),
        (np.zeros((8, 8, 3), dtype=np.int32), TypeError, "signed"),
        (np.zeros((8, 8, 3), dtype=bool), TypeError, "dtype bool"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "uint8 or float"),
        (np.zeros((8, 8, 5), dtype=np.uint8), ValueError, "5 channels"),
        (np.zeros((1, 1, 8, 8, 3), dtype=np.uint8), ValueError, "expected HW, HWC or NHWC"),
        ("photo.jpg", TypeError, "PIL image, a numpy array"),
        ([], ValueError, "empty list"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        to_tensors(image)


def test_float_pil_images_must_be_in_unit_range():
    assert to_tensors(PIL.Image.new("F", (8, 8), 0.5))[0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_tensors(PIL.Image.new("F", (8, 8), 5.0))


def test_tiny_and_huge_images_are_refused(tiny_pipe, rng):
    with pytest.raises(ValueError, match="at least 16 pixels"):
        tiny_pipe(random_image(rng, 8, 40), **FAST)
    with pytest.raises(ValueError, match="maximum side of 100"):
        tiny_pipe(random_image(rng, 48, 120), max_input_size=100, **FAST)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_inference_steps": -1}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"processing_resolution": -64}, "processing_resolution"),
        ({"processing_resolution": 2}, "at least 4"),
        ({"disjoint_strength": 1.5}, "disjoint_strength"),
        ({"fgfm_strength": -0.1}, "fgfm_strength"),
        ({"composition_guidance": "slow"}, "composition_guidance"),
        ({"composition_guidance_scale": 3.0}, "composition_guidance_scale"),
        ({"composition_guidance_steps": -1}, "composition_guidance_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"output_type": "latents"}, "output_type"),
        ({"output_type": "latent", "tile_size": 64}, "tile_size=None"),
        ({"generator": [torch.Generator(), torch.Generator()]}, "one generator per image"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "not available"),
    ],
)
def test_invalid_arguments_raise_value_errors(tiny_pipe, rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(random_image(rng), **{**FAST, **kwargs})


def test_generator_of_wrong_type(tiny_pipe, rng):
    with pytest.raises(TypeError, match="torch.Generator"):
        tiny_pipe(random_image(rng), generator=0, **FAST)


def test_half_precision_and_uint8_tensors_are_accepted(tiny_pipe, rng):
    image = random_image(rng)
    as_half = torch.from_numpy(image).permute(2, 0, 1).half()
    as_uint8 = torch.from_numpy((image * 255).round().astype(np.uint8)).permute(2, 0, 1)
    a = tiny_pipe(as_half, generator=generator(0), **FAST).transmission
    b = tiny_pipe(as_uint8, generator=generator(0), **FAST).transmission
    assert a.shape == b.shape == (1, 48, 40, 3)
    assert np.abs(a - b).max() < 0.05
