"""The model shipped inside the package: size, format, loading, and an end-to-end run on a synthetic mixture."""

from pathlib import Path

import pytest
import torch

import reflection_separation
from reflection_separation import (
    DEFAULT_MODEL,
    FGFMAutoencoderKL,
    LatentCompositionNet,
    ReflectionSeparationPipeline,
)
from reflection_separation.attention import uses_cross_layer_attention

from .conftest import generator, load_script

diagnosis = load_script("benchmarks/diagnose_shipped_model.py")


@pytest.fixture(scope="module")
def shipped() -> ReflectionSeparationPipeline:
    pipe = ReflectionSeparationPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def coffee_mixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return diagnosis.coffee_mixture()


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
    assert shipped.config.default_processing_resolution == 256 and shipped.config.default_denoising_steps == 4


def test_default_model_separates_a_synthetic_mixture_end_to_end(shipped, coffee_mixture):
    mixture, _, _ = coffee_mixture
    out = shipped(mixture, generator=generator(0), output_type="pt")
    again = shipped(mixture, generator=generator(0), output_type="pt")
    for layer, repeat in ((out.transmission, again.transmission), (out.reflection, again.reflection)):
        assert layer.shape == (1, 3, 192, 256)
        assert torch.isfinite(layer).all() and 0 <= layer.min() and layer.max() <= 1
        assert torch.equal(layer, repeat)
    assert not torch.allclose(out.transmission, out.reflection, atol=0.05)


def test_default_model_brings_t_closer_to_the_truth_than_the_mixture(shipped, coffee_mixture):
    """Issue 5's bar. Both photos are among the training photos (not this mixture); the held-out ablation
    (benchmarks/results/ablation_small_model.json) is the measure on unseen photos."""
    mixture, transmission, _ = coffee_mixture
    out = shipped(mixture, generator=generator(0), output_type="pt")
    assert diagnosis.psnr(out.transmission[0], transmission) > diagnosis.psnr(mixture, transmission)


def test_diagnosis_script_on_a_tiny_model(tmp_path):
    from reflection_separation.components import build_pipeline

    pipe = build_pipeline(seed=0)
    pipe.register_to_config(default_processing_resolution=32, default_denoising_steps=2)
    pipe.save_pretrained(tmp_path / "model")
    report = diagnosis.main(["--model", str(tmp_path / "model"), "--downsample", "8", "--output", str(tmp_path / "d.json")])
    mixture, transmission, _ = diagnosis.coffee_mixture(8)
    assert mixture.shape == (3, 50, 64)
    assert report["psnr_t"]["mixture"] == diagnosis.psnr(mixture, transmission)
    assert set(report["psnr_t"]) == {"mixture", "vae_reconstruction", "one_step_true_layers_t500",
                                     "one_step_true_layers_t999", "one_step_pure_noise_t999", "pipeline_defaults"}
    assert all(0 < value < 60 for value in report["psnr_t"].values())
    assert report["signal_left_at_last_timestep"] == pytest.approx(0.0683, abs=1e-3)  # Stable Diffusion's schedule
