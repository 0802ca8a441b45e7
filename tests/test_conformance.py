"""diffusers conformance: the checks of diffusers' ``PipelineTesterMixin`` (``tests/pipelines/test_pipelines_common.py``)
that apply to an image-to-two-images pipeline, run on tiny components on CPU."""

import numpy as np
import pytest
import torch

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.attention import uses_cross_layer_attention

from .conftest import FAST, generator, random_image

pytestmark = pytest.mark.usefixtures("single_thread")


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


# ------------------------------------------------------------------------------------------------ ensembling


OUTPUT_FIELDS = ("transmission", "reflection", "transmission_uncertainty", "reflection_uncertainty")


def advanced_generator(pipe, seed: int, draws: int) -> torch.Generator:
    """``generator(seed)`` after ``draws`` initial-noise draws of a 64 px image: what ensemble member ``draws`` of
    ``generator(seed)`` starts from."""
    factor = pipe.vae_scale_factor
    g = generator(seed)
    for _ in range(draws):
        torch.randn((2, pipe.vae.config.latent_channels, 64 // factor, 64 // factor), generator=g)
    return g


def test_ensemble_is_the_median_of_single_runs_with_the_same_noise_draws(tiny_pipe):
    size = 3
    ensemble = tiny_pipe(**get_dummy_inputs(ensemble_size=size, output_uncertainty=True))
    singles = [tiny_pipe(**get_dummy_inputs(generator=advanced_generator(tiny_pipe, 0, m))) for m in range(size)]
    for layer in ("transmission", "reflection"):
        members = np.stack([getattr(single, layer)[0] for single in singles])
        median = np.median(members, axis=0)
        mad = np.median(np.abs(members - median), axis=0)
        assert mad.max() > 1e-2  # the members differ: the test compares something
        np.testing.assert_allclose(getattr(ensemble, layer)[0], median, atol=1e-5)
        np.testing.assert_allclose(getattr(ensemble, f"{layer}_uncertainty")[0], mad, atol=1e-5)


def test_ensemble_size_one_is_the_plain_call_and_uncertainty_is_none_unless_asked(tiny_pipe):
    plain = tiny_pipe(**get_dummy_inputs())
    one = tiny_pipe(**get_dummy_inputs(ensemble_size=1, batch_size=1))
    assert np.array_equal(plain.transmission, one.transmission) and np.array_equal(plain.reflection, one.reflection)
    assert plain.transmission_uncertainty is None and plain.reflection_uncertainty is None
    assert len(tiny_pipe(**get_dummy_inputs(return_dict=False))) == 2
    median_only = tiny_pipe(**get_dummy_inputs(ensemble_size=3))
    assert median_only.transmission_uncertainty is None and median_only.reflection_uncertainty is None
    with_uncertainty = tiny_pipe(**get_dummy_inputs(ensemble_size=3, output_uncertainty=True))
    as_tuple = tiny_pipe(**get_dummy_inputs(ensemble_size=3, output_uncertainty=True, return_dict=False))
    assert len(as_tuple) == 4
    for value, name in zip(as_tuple, OUTPUT_FIELDS):
        assert np.array_equal(value, getattr(with_uncertainty, name))
    assert np.array_equal(median_only.transmission, with_uncertainty.transmission)


def test_ensemble_members_fill_the_batch_and_batching_does_not_change_the_result(tiny_pipe):
    rng = np.random.default_rng(1)
    images = [random_image(rng, 64, 64) for _ in range(2)]
    rows = []

    def record(pipe, step, timestep, tensors):
        rows.append(tensors["latents"].shape[0])
        return {}

    def run(**kwargs):
        return tiny_pipe(**get_dummy_inputs(image=images, generator=[generator(0), generator(1)], ensemble_size=3,
                                            output_uncertainty=True, callback_on_step_end=record,
                                            callback_on_step_end_tensor_inputs=["latents"], **kwargs))

    default = run()  # one image's ensemble per batch: 3 members, [T; R] rows each
    assert rows == [6] * 6
    rows.clear()
    members = run(batch_size=1)
    assert rows == [2] * 18
    rows.clear()
    everything = run(batch_size=6)
    assert rows == [12] * 3
    for other in (members, everything):
        for name in OUTPUT_FIELDS:
            np.testing.assert_allclose(getattr(other, name), getattr(default, name), atol=1e-5)


def test_uncertainty_has_the_output_format_and_follows_residual_detail_transfer(tiny_pipe):
    rng = np.random.default_rng(2)
    kwargs = get_dummy_inputs(image=random_image(rng, 100, 72), processing_resolution=48, ensemble_size=3,
                              output_uncertainty=True, detail_transfer="residual", output_type="pt")
    out = tiny_pipe(**kwargs)
    assert out.transmission_uncertainty.shape == out.reflection_uncertainty.shape == (1, 3, 100, 72)
    # T is the photo minus the upsampled R, so it varies exactly as R does
    assert torch.equal(out.transmission_uncertainty, out.reflection_uncertainty)
    assert 0 < out.reflection_uncertainty.max() <= 1 and out.reflection_uncertainty.min() >= 0
    plain = tiny_pipe(**{**kwargs, "detail_transfer": "none", "output_type": "pil", "generator": generator(0)})
    assert [image.size for image in plain.transmission_uncertainty] == [(72, 100)]
    spreads = [np.asarray(images[0]) for images in (plain.transmission_uncertainty, plain.reflection_uncertainty)]
    assert not np.array_equal(*spreads)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ensemble_size": 0}, "`ensemble_size` must be a positive integer"),
        ({"ensemble_size": 2.0}, "`ensemble_size` must be a positive integer"),
        ({"ensemble_size": True}, "`ensemble_size` must be a positive integer"),
        ({"output_uncertainty": True}, "pass `ensemble_size` of 2 or more"),
        ({"ensemble_size": 2, "output_type": "latent"}, "combined in pixel space"),
    ],
)
def test_invalid_ensemble_arguments_raise_a_value_error_saying_what_to_pass(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(**get_dummy_inputs(**kwargs))


# ------------------------------------------------------------------------------------------- components, dtypes


def test_components_function(tiny_pipe):
    """diffusers' ``test_components_function``: ``pipe.components`` holds every module and rebuilds the pipeline."""
    assert set(tiny_pipe.components) == {"vae", "unet", "text_encoder", "tokenizer", "scheduler", "composition_net"}
    rebuilt = ReflectionSeparationPipeline(**tiny_pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    assert max_diff(rebuilt(**get_dummy_inputs()).transmission, tiny_pipe(**get_dummy_inputs()).transmission) < 1e-6


def test_to_dtype(tiny_pipe):
    """diffusers' ``test_to_dtype``: ``pipe.to(dtype)`` casts every module component."""
    modules = [c for c in tiny_pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert {module.dtype for module in modules} == {torch.float32}
    tiny_pipe.to(dtype=torch.bfloat16)
    assert {module.dtype for module in modules} == {torch.bfloat16}


def test_save_load_float16(tiny_pipe, tmp_path):
    """diffusers' ``test_save_load_float16``: fp16 weights load in fp16 with ``torch_dtype``; without it (issue #22)
    every component, the CLIP text encoder included, is float32 and separates as the fp16 weights cast to float32."""
    tiny_pipe.to(torch.float16).save_pretrained(tmp_path)
    modules = ("vae", "unet", "text_encoder", "composition_net")
    half = ReflectionSeparationPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert {getattr(half, name).dtype for name in modules} == {torch.float16}
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    assert {getattr(loaded, name).dtype for name in modules} == {torch.float32}
    loaded.set_progress_bar_config(disable=True)
    tiny_pipe.to(torch.float32)  # the fp16-rounded weights, back in float32
    expected, output = tiny_pipe(**get_dummy_inputs()), loaded(**get_dummy_inputs())
    assert max_diff(output.transmission, expected.transmission) < 1e-5
    assert max_diff(output.reflection, expected.reflection) < 1e-5
