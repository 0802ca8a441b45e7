"""diffusers conformance: the checks of diffusers' ``PipelineTesterMixin`` (``tests/pipelines/test_pipelines_common.py``)
that apply to an image-to-two-images pipeline, run on tiny components on CPU."""

import numpy as np
import pytest
import torch

from reflection_separation.attention import uses_cross_layer_attention

from .conftest import FAST, generator, random_image


def get_dummy_inputs(seed: int = 0, **overrides) -> dict:
    """One 64 px image (the processing resolution: no resize), three steps, a fixed generator."""
    rng = np.random.default_rng(seed)
    return {"image": random_image(rng, 64, 64), "generator": generator(seed), **FAST, **overrides}


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("slice_size", ["auto", "max", 1])
def test_attention_slicing_forward_pass(tiny_pipe, slice_size):
    plain = tiny_pipe(**get_dummy_inputs())
    tiny_pipe.enable_attention_slicing(slice_size)
    assert uses_cross_layer_attention(tiny_pipe.unet)
    sliced = tiny_pipe(**get_dummy_inputs())
    assert max_diff(plain.transmission, sliced.transmission) < 1e-5
    assert max_diff(plain.reflection, sliced.reflection) < 1e-5
    tiny_pipe.disable_attention_slicing()
    again = tiny_pipe(**get_dummy_inputs())
    assert max_diff(plain.transmission, again.transmission) < 1e-5
