"""Synthesis recipes, degradations and the batched device path (CPU, small tensors)."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reflection_separation.data import (
    RECIPES,
    BatchedSynthesis,
    PhotoBank,
    ReflectionSynthesizer,
    SyntheticReflectionDataset,
    random_crop_flip,
)
from reflection_separation.synthesis import jpeg_compress

ALL_RECIPES = {name: 1.0 for name in RECIPES}


def photo_tensor(seed: int, size: int = 64) -> torch.Tensor:
    """A smooth colourful image with texture, `(3, size, size)` in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 5, 5))).float()
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0]
    return (0.8 * smooth + 0.2 * torch.from_numpy(rng.random((3, size, size))).float()).clamp(0, 1)


def reference_additive(transmission, reflection, p):
    """The additive recipe written out directly (the single-recipe synthesizer this package had before)."""
    layer = reflection
    if p.sigma > 0:
        radius = math.ceil(3 * p.sigma)
        coords = torch.arange(-radius, radius + 1, dtype=layer.dtype)
        kernel = torch.exp(-(coords**2) / (2 * p.sigma**2))
        kernel = kernel / kernel.sum()
        out = F.pad(layer[None], (radius,) * 4, mode="replicate")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        layer = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    if p.ghost_offset is not None:
        dy, dx = p.ghost_offset
        height, width = layer.shape[-2:]
        rows = (torch.arange(height) - dy).clamp(0, height - 1)
        cols = (torch.arange(width) - dx).clamp(0, width - 1)
        shifted = layer[:, rows][:, :, cols]
        layer = (layer + p.ghost_attenuation * shifted) / (1 + p.ghost_attenuation)
    layer = p.attenuation * layer
    excess = (transmission + layer - 1).clamp(min=0)
    mean_excess = excess.sum(dim=(1, 2)) / (excess > 0).sum(dim=(1, 2)).clamp(min=1)
    layer = (layer - p.overflow_factor * mean_excess[:, None, None]).clamp(0, 1)
    return (transmission + layer).clamp(0, 1), transmission, layer


def test_additive_only_is_the_direct_formula_and_draws_as_before():
    synthesizer = ReflectionSynthesizer(ghost_probability=0.5)
    transmission, reflection = photo_tensor(0), photo_tensor(1)
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        parameters = synthesizer.sample_parameters(generator)
        assert parameters.recipe == "additive" and parameters.noise is None and parameters.jpeg_quality == 0
        # Only the seven draws of the single recipe are taken from the generator.
        assert torch.equal(generator.get_state(), _advanced(seed, 7))
        expected = reference_additive(transmission, reflection, parameters)
        for got, want in zip(synthesizer.apply(transmission, reflection, parameters), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def _advanced(seed: int, draws: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    torch.rand(draws, generator=generator, dtype=torch.float64)
    return generator.get_state()


def parameters_for(recipe: str, seed: int = 0, **settings):
    synthesizer = ReflectionSynthesizer(recipes={recipe: 1.0}, **settings)
    return synthesizer, synthesizer.sample_parameters(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r not in ("screen", "glass_tint")])
def test_additive_family_identity(recipe):
    synthesizer, parameters = parameters_for(recipe, seed=3)
    assert parameters.recipe == recipe
    transmission, reflection = photo_tensor(2), photo_tensor(3)
    mixture, true_t, layer = synthesizer.apply(transmission, reflection, parameters)
    assert torch.equal(true_t, transmission)
    torch.testing.assert_close(mixture, (transmission + layer).clamp(max=1), rtol=0, atol=1e-6)
    assert layer.min() >= 0 and layer.max() <= 1


def test_screen_identity_is_exact_without_clipping():
    synthesizer, parameters = parameters_for("screen", seed=4)
    transmission, reflection = photo_tensor(4), photo_tensor(5)
    mixture, _, layer = synthesizer.apply(transmission, reflection, parameters)
    torch.testing.assert_close(mixture, transmission + layer, rtol=0, atol=1e-6)
    # R = R_b (1 - T): the reflection cannot push a pixel past 1, and it is weaker where T is bright.
    assert (transmission + layer).max() <= 1 + 1e-6


def test_glass_tint_dims_the_scene_and_returns_the_undimmed_transmission():
    synthesizer, parameters = parameters_for("glass_tint", seed=5)
    gain = torch.tensor(parameters.transmission_gain).view(3, 1, 1)
    assert all(0.55 <= g <= 1 for g in parameters.transmission_gain)
    transmission, reflection = photo_tensor(6), photo_tensor(7)
    mixture, true_t, layer = synthesizer.apply(transmission, reflection, parameters)
    assert torch.equal(true_t, transmission)
    torch.testing.assert_close(mixture, (gain * transmission + layer).clamp(max=1), rtol=0, atol=1e-6)
    assert (mixture - (transmission + layer)).mean() < -0.01  # the documented deviation: I is darker than T + R


def test_recipe_specific_effects():
    transmission, point = torch.zeros(3, 41, 41), torch.zeros(3, 41, 41)
    point[:, 20, 20] = 1.0
    _, disk = parameters_for("defocus_disk", seed=1, attenuation_range=(1, 1), overflow_factor_range=(0, 0),
                             ghost_probability=0)
    synthesizer = ReflectionSynthesizer(recipes={"defocus_disk": 1.0})
    _, _, layer = synthesizer.apply(transmission, point, disk)
    spread = layer[0]
    # A disk kernel is flat inside its radius (unlike a Gaussian) and zero beyond it.
    radius = int(disk.disk_radius)
    assert spread[20, 20] == pytest.approx(spread[20, 20 + max(radius - 1, 0)].item(), rel=1e-5)
    assert spread[20, 20 + radius + 2] == 0
    assert spread.sum() == pytest.approx(1.0, rel=1e-5)

    _, sharp = parameters_for("sharp", seed=2)
    assert sharp.sigma == 0 and 0.15 <= sharp.attenuation <= 0.5
    _, ghost = parameters_for("ghost", seed=2)
    assert ghost.ghost_offset is not None and 3 <= math.hypot(*ghost.ghost_offset) <= 21
    _, vignette = parameters_for("vignette", seed=2)
    _, _, vignetted = ReflectionSynthesizer(recipes={"vignette": 1.0}).apply(transmission, torch.ones(3, 41, 41),
                                                                                replace(vignette, sigma=0.0))
    cy, cx = round(vignette.vignette[0] * 40), round(vignette.vignette[1] * 40)
    assert vignetted[0, cy, cx] >= vignetted[0].max() - 1e-3  # brightest at the vignette's centre
    _, strong = parameters_for("strong", seed=2)
    _, _, layer = ReflectionSynthesizer(recipes={"strong": 1.0}).apply(transmission, torch.ones(3, 41, 41),
                                                                         replace(strong, sigma=0.0))
    assert layer.max() / layer.min().clamp(min=1e-6) > 1.5  # one side of the frame dominates
    _, faint = parameters_for("faint", seed=2)
    assert 0.03 <= faint.attenuation <= 0.15


def test_no_reflection_recipe_gives_the_photo_back_with_its_degradations_only():
    synthesizer, parameters = parameters_for("none", seed=6)
    transmission, reflection = photo_tensor(6), photo_tensor(7)
    mixture, true_t, layer = synthesizer.apply(transmission, reflection, parameters)
    assert parameters.recipe == "none" and parameters.attenuation == 0
    assert torch.equal(mixture, transmission) and torch.equal(true_t, transmission)
    assert torch.count_nonzero(layer) == 0
    noisy = ReflectionSynthesizer(recipes={"none": 1.0}, noise_probability=1.0)
    mixture, _, layer = noisy(transmission, reflection, torch.Generator().manual_seed(6))
    assert torch.count_nonzero(layer) == 0 and 1e-3 < (mixture - transmission).abs().mean() < 0.05


def test_recipe_statistics_stay_in_range():
    """Mean reflection strength and saturated fraction over a few dozen mixtures of each recipe."""
    photos = [photo_tensor(seed) for seed in range(8)]
    for recipe in (r for r in RECIPES if r != "none"):
        synthesizer = ReflectionSynthesizer(recipes={recipe: 1.0})
        strengths, saturated = [], []
        for seed in range(24):
            generator = torch.Generator().manual_seed(seed)
            mixture, _, layer = synthesizer(photos[seed % 8], photos[(seed + 3) % 8], generator)
            strengths.append(layer.mean().item())
            saturated.append((mixture >= 1).float().mean().item())
        assert 0.01 < np.mean(strengths) < 0.45, recipe
        assert np.mean(saturated) < 0.25, recipe


def test_degradations_change_only_the_mixture():
    synthesizer = ReflectionSynthesizer(recipes=ALL_RECIPES, noise_probability=1.0, jpeg_probability=1.0)
    clean = ReflectionSynthesizer(recipes=ALL_RECIPES)
    transmission, reflection = photo_tensor(8), photo_tensor(9)
    parameters = synthesizer.sample_parameters(torch.Generator().manual_seed(0))
    assert parameters.noise is not None and 40 <= parameters.jpeg_quality <= 95
    degraded = synthesizer.apply(transmission, reflection, parameters)
    plain = clean.apply(transmission, reflection, replace(parameters, noise=None, jpeg_quality=0))
    torch.testing.assert_close(degraded[1], plain[1])
    torch.testing.assert_close(degraded[2], plain[2])
    difference = (degraded[0] - plain[0]).abs().mean().item()
    assert 1e-3 < difference < 0.05


def test_jpeg_matches_pil_at_the_same_quality():
    image = (photo_tensor(10, size=64) * 255).round() / 255
    for quality in (20, 50, 75, 95):
        ours = jpeg_compress(image[None], [quality])[0]
        buffer = io.BytesIO()
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            buffer, format="JPEG", quality=quality, subsampling=0
        )
        pil = torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255).permute(2, 0, 1)
        # Same tables and transform: the same loss of fidelity; libjpeg's integer DCT moves pixels by a level or two.
        ours_error, pil_error = (ours - image).abs().mean(), (pil - image).abs().mean()
        assert abs(ours_error - pil_error) < 0.05 * pil_error, quality
        assert (ours - pil).abs().mean() < 2 / 255, quality
    low, high = jpeg_compress(image[None], [20])[0], jpeg_compress(image[None], [95])[0]
    assert (low - image).abs().mean() > 2 * (high - image).abs().mean()


def test_same_seed_same_parameters_all_recipes():
    synthesizer = ReflectionSynthesizer(recipes=ALL_RECIPES, noise_probability=0.5, jpeg_probability=0.5)
    first = [synthesizer.sample_parameters(torch.Generator().manual_seed(s)) for s in range(40)]
    again = [synthesizer.sample_parameters(torch.Generator().manual_seed(s)) for s in range(40)]
    assert first == again
    assert len({p.recipe for p in first}) >= 6


def test_config_round_trip_and_errors():
    synthesizer = ReflectionSynthesizer(recipes={"additive": 2.0, "screen": 1.0}, jpeg_probability=0.2)
    assert ReflectionSynthesizer.from_dict(synthesizer.to_dict()) == synthesizer
    assert synthesizer.only("screen").recipes == {"screen": 1.0}
    with pytest.raises(ValueError, match="Unknown recipes"):
        ReflectionSynthesizer(recipes={"mirror": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        ReflectionSynthesizer(recipes={"additive": 0.0})
    with pytest.raises(ValueError, match="positive sum"):
        ReflectionSynthesizer(recipes={"additive": -1.0, "screen": 2.0})
    with pytest.raises(ValueError, match="Unknown synthesis settings"):
        ReflectionSynthesizer.from_dict({"recipe": {"additive": 1}})
    with pytest.raises(ValueError, match="Unknown recipe"):
        synthesizer.only("mirror")


def write_photos(folder, count=12):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        size = (40, 30) if index == 0 else (70 + 3 * index, 56 + 2 * index)  # photo 0 is upscaled before cropping
        array = (photo_tensor(index, size=80)[:, : size[1], : size[0]].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"photo_{index:02d}.{'png' if index % 2 else 'jpg'}", quality=95)
    return folder


def test_photo_bank_crops_equal_the_pil_path(tmp_path):
    folder = write_photos(tmp_path / "photos")
    dataset = SyntheticReflectionDataset(folder, resolution=48, seed=1)
    bank = PhotoBank(dataset.photos, 48)
    for photo in (0, 3, 7):
        image = Image.open(dataset.photos[photo]).convert("RGB")
        for seed in range(3):
            expected = random_crop_flip([image], 48, torch.Generator().manual_seed(seed), flip_probability=0.5)[0]
            from reflection_separation.data import draw_crop

            top, left, flip = draw_crop(*bank.size_of(photo), 48, torch.Generator().manual_seed(seed), 0.5)
            assert torch.equal(bank.crop(photo, top, left, flip).float() / 255, expected)


def test_batched_synthesis_equals_the_per_sample_path(tmp_path):
    folder = write_photos(tmp_path / "photos")
    synthesizer = ReflectionSynthesizer(recipes=ALL_RECIPES, noise_probability=0.4, jpeg_probability=0.4)
    dataset = SyntheticReflectionDataset(folder, resolution=48, num_samples=64, seed=3, synthesizer=synthesizer)
    indices = list(range(0, 64, 2))
    batch = BatchedSynthesis(dataset, "cpu").batch(indices)
    recipes = {dataset.draw(i, lambda photo: (100, 100))[2].recipe for i in indices}
    assert len(recipes) >= 6  # the batch mixes recipes (draw sizes only steer the crops)
    for key in ("mixture", "transmission", "reflection"):
        singles = torch.stack([dataset[i][key] for i in indices])
        assert batch[key].shape == singles.shape == (32, 3, 48, 48)
        # Noise and rounding to 8-bit JPEG levels can turn a 1e-7 difference into one level in rare pixels.
        difference = (batch[key] - singles).abs()
        assert difference.mean() < 1e-5 and (difference > 1e-5).float().mean() < 1e-3, key
